"""spec.promote.when.beatsBase: the base model, evaluated once on the run's own eval set
and lm-eval tasks, reported beside the run's result as `base.<metric>` (status.metrics,
metrics.json); the operator's gate compares the run with it.

"The base model" is the model as loaded, before the first training step: for a full
fine-tune that is the pretrained weights; for LoRA the freshly initialised adapter is a
no-op (its B matrix starts at zero), so the same pass costs no second model load. A new
head (classification) is the untrained one the run started from. The result is kept in
the run's checkpoints folder, so a resumed run does not evaluate (or change) it again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from finetune_api.models import FineTuneJobSpec
from finetune_api.task_metrics import base_key
from finetune_trainer import evaluation
from finetune_trainer.report import status_metrics

log = logging.getLogger(__name__)

PREFIX = "base"  # Trainer.evaluate's metric_key_prefix for this pass
CACHE = "base-metrics.json"
LM_EVAL_FOLDER = "base"  # the base model's lm_eval.json, beside the run's


def wanted(spec: FineTuneJobSpec) -> bool:
    return spec.promote is not None and spec.promote.when.beats_base is not None


def eval_metrics(raw: dict[str, Any], perplexity: bool) -> dict[str, float]:
    """Trainer.evaluate's `base_*` keys as status.metrics `base.<name>` (the run's own
    names: base.evalLoss, base.accuracy, ..., base.perplexity for a language model)."""
    renamed = {f"eval_{k[len(PREFIX) + 1 :]}": v for k, v in raw.items() if k.startswith(PREFIX)}
    plain = status_metrics(renamed)
    if perplexity and "evalLoss" in plain:
        plain["perplexity"] = evaluation.perplexity(plain["evalLoss"])
    return {base_key(k): v for k, v in plain.items()}


def evaluate(
    trainer: Any,
    tokenizer: Any,
    spec: FineTuneJobSpec,
    *,
    checkpoints: Path,
    output_dir: Path,
    spec_dir: Path | None,
    perplexity: bool,
    is_main: bool,
) -> dict[str, float]:
    """The base model's metrics (every rank calls: Trainer.evaluate is collective under
    torchrun; lm-eval runs on rank 0 only, into <output>/base/lm_eval.json)."""
    cache = checkpoints / CACHE
    if cache.is_file():
        return {k: float(v) for k, v in json.loads(cache.read_text()).items()}
    metrics = eval_metrics(trainer.evaluate(metric_key_prefix=PREFIX), perplexity)
    lm_eval = spec.evaluation.lm_eval if spec.evaluation else None
    if lm_eval is not None and is_main:
        from finetune_trainer import lm_eval_run  # lm-eval only when asked for

        folder = output_dir / LM_EVAL_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        results = lm_eval_run.evaluate(trainer.model, tokenizer, lm_eval, spec_dir, folder)
        metrics |= {base_key(k): v for k, v in results.metrics.items()}
        trainer.model.train()  # lm-eval's wrapper put it in eval mode
    if is_main:
        checkpoints.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(metrics))
    log.info("base model: %s", metrics)
    return metrics
