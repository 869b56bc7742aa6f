"""`spec.evaluation.lmEval`: EleutherAI's lm-evaluation-harness on the trained model.

Runs after training on rank 0, with lm-eval's `HFLM` wrapping the model already in
memory (a LoRA run: the PEFT model, base plus adapter; merged when `lora.merge` merged
it). `includePath` is lm-eval's `--include_path`: a folder of task YAMLs; relative
`data_files` in those YAMLs resolve against that folder (the harness runs from inside
it). Results: status.metrics `lmEval.<task>.<metric>` (task_metrics.lm_eval_key), with
`<metric>_stderr` beside each, and the harness's results as `lm_eval.json`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_api.manifest import UserError
from finetune_api.models import LmEval
from finetune_api.task_metrics import lm_eval_key

log = logging.getLogger(__name__)

RESULTS_FILE = "lm_eval.json"


@dataclass(frozen=True)
class LmEvalResults:
    metrics: dict[str, float]
    path: Path
    seconds: float


class LmEvalError(UserError):
    """A task lm-eval does not know, or an include path that does not exist."""


def status_metrics(results: dict[str, Any]) -> dict[str, float]:
    """lm-eval's `results` ({task: {"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": ..}})
    -> {"lmEval.<task>.acc": 0.5, "lmEval.<task>.acc_stderr": 0.1} (finite numbers only)."""
    out: dict[str, float] = {}
    for task, values in results.items():
        for key, value in values.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            metric, filter_name = key.split(",", 1)
            if math.isfinite(value):
                out[lm_eval_key(task, metric, filter_name)] = float(value)
    return out


def resolve_include(config: LmEval, spec_dir: Path | None) -> Path | None:
    if config.include_path is None:
        return None
    path = Path(config.include_path).expanduser()
    if not path.is_absolute() and spec_dir is not None:
        path = spec_dir / path
    if not path.is_dir():
        raise LmEvalError(f"evaluation.lmEval.includePath {config.include_path}: no such folder")
    return path.resolve()


@contextlib.contextmanager
def _inside(folder: Path | None) -> Iterator[None]:
    if folder is None:
        yield
        return
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def run_harness(lm: Any, config: LmEval, include: Path | None) -> dict[str, Any]:
    """lm_eval.simple_evaluate on an lm-eval model object; returns the harness's dict."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include) if include else None)
    unknown = [t for t in config.tasks if t not in manager.all_tasks]
    if unknown:
        raise LmEvalError(
            f"evaluation.lmEval.tasks: lm-eval knows no task {', '.join(unknown)}"
            + ("" if include else " (a task of your own needs includePath)")
        )
    with _inside(include):
        results = simple_evaluate(
            model=lm,
            tasks=list(config.tasks),
            num_fewshot=config.num_fewshot,
            limit=config.limit,
            task_manager=manager,
            log_samples=False,
            bootstrap_iters=1000,  # stderr of non-mean metrics; lm-eval's seeds (its CLI's)
        )
    assert results is not None  # None only on non-zero ranks of lm-eval's own launcher
    return results


def wrap(model: Any, tokenizer: Any, batch_size: int) -> Any:
    """lm-eval's HFLM around a model already in memory."""
    from lm_eval.models.huggingface import HFLM

    model.eval()
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def evaluate(
    model: Any, tokenizer: Any, config: LmEval, spec_dir: Path | None, output_dir: Path
) -> LmEvalResults:
    include = resolve_include(config, spec_dir)
    started = time.perf_counter()
    results = run_harness(wrap(model, tokenizer, config.batch_size), config, include)
    seconds = time.perf_counter() - started
    metrics = status_metrics(results["results"])
    path = output_dir / RESULTS_FILE
    keep = {k: results.get(k) for k in ("results", "versions", "n-shot", "config")}
    path.write_text(json.dumps({**keep, "seconds": seconds}, indent=2, default=str))
    log.info("lm-eval %s: %s in %.1f s", ",".join(config.tasks), metrics, seconds)
    return LmEvalResults(metrics, path, seconds)
