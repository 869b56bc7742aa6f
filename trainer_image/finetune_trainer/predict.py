"""Load a finished run and predict: labels (classification), generations (causal LM),
filled-in masks (masked LM). Works for full, LoRA-adapter, int8, distilled and pruned
runs (a head-pruned model is rebuilt with its smaller shapes)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from finetune_trainer import heads, weights
from finetune_trainer.errors import RunDirError
from finetune_trainer.rundir import RUN_INFO
from finetune_trainer.tasks import recipe_class, recipe_for_run


def load_run(
    run_dir: Path | str,
) -> tuple[dict[str, Any], Any, PreTrainedTokenizerBase]:
    """run.json, the model (eval mode) and its tokenizer."""
    from transformers.utils import logging as hf_logging

    from finetune_api.models import Task

    hf_logging.disable_progress_bar()  # no "Loading weights" bar before the answer

    run_dir = Path(run_dir)
    info_path = run_dir / RUN_INFO
    if not run_dir.is_dir():
        what = "is a file, not a run directory" if run_dir.exists() else "no such directory"
        raise RunDirError(f"{run_dir}: {what} (give the artifact directory of a finished run)")
    if not info_path.is_file():
        raise RunDirError(f"{run_dir}: no {RUN_INFO}; not the artifact directory of a finished run")
    info = json.loads(info_path.read_text())
    task = Task(info["task"])
    fmt = info["format"]
    auto = recipe_class(task).auto_class
    model: Any
    if fmt == "int8":
        from finetune_trainer import qat

        model = qat.load_int8(run_dir / info["model"], auto.from_config)
        tokenizer_dir = run_dir / info["model"]
    elif fmt == "lora" and info.get("merged") and (run_dir / info["merged"]).is_dir():
        model = auto.from_pretrained(run_dir / info["merged"])
        tokenizer_dir = run_dir / info["merged"]
    elif fmt == "lora":
        from peft import PeftModel

        kwargs: dict[str, Any] = {}
        if info.get("baseModelRevision"):
            kwargs["revision"] = info["baseModelRevision"]
        if info.get("labels"):
            labels = info["labels"]
            kwargs |= {
                "num_labels": len(labels),
                "id2label": dict(enumerate(labels)),
                "label2id": {label: i for i, label in enumerate(labels)},
                "ignore_mismatched_sizes": True,
            }
        if info.get("quantizeBase"):  # QLoRA: the base as it was trained on
            from finetune_api.models import Precision
            from finetune_trainer import qlora
            from finetune_trainer.modeling import choose_precision

            mode, precision = info["quantizeBase"], choose_precision(Precision.auto)
            kwargs["quantization_config"] = qlora.quantization_config(mode, precision)
        try:
            with weights.quiet_load_report():  # its head comes from the adapter, next
                base = auto.from_pretrained(info["baseModel"], **kwargs)
        except OSError as err:
            raise RunDirError(
                f"{run_dir}: cannot load the LoRA adapter's base model {info['baseModel']}: {err}"
            ) from None
        vocabulary = len(AutoTokenizer.from_pretrained(run_dir / info["model"]))
        if vocabulary > base.get_input_embeddings().weight.shape[0]:  # a template's tokens
            base.resize_token_embeddings(vocabulary)
        model = PeftModel.from_pretrained(base, run_dir / info["model"])
        tokenizer_dir = run_dir / info["model"]
    elif heads.is_pruned(run_dir / info["model"]):  # attention heads removed: smaller shapes
        model = heads.load_pruned(run_dir / info["model"], auto.from_config)
        tokenizer_dir = run_dir / info["model"]
    else:
        model = auto.from_pretrained(run_dir / info["model"])
        tokenizer_dir = run_dir / info["model"]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    if config.pad_token_id is None:  # decoder-only base models ship without one
        config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return info, model, tokenizer


@torch.inference_mode()
def predict(run_dir: Path | str, texts: Sequence[str], max_new_tokens: int = 32) -> list[str]:
    """Labels (original strings) for classification, continuations for causal LM,
    the text with each mask token filled in for masked LM, an answer to each text as a
    user turn for chat SFT: the run's recipe says."""
    info, model, tokenizer = load_run(run_dir)
    recipe = recipe_for_run(info)
    return recipe.predict(info, model, tokenizer, [str(t) for t in texts], max_new_tokens)
