"""Trainer configuration: TrainingArguments, collators, checkpoints and resume."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import (
    ProgressCallback,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_utils import get_last_checkpoint

from finetune_api.models import FineTuneJobSpec
from finetune_trainer import autobatch, distributed, speedups
from finetune_trainer.data import LENGTH_COLUMN
from finetune_trainer.modeling import PrecisionChoice

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
SPEC_FINGERPRINT = "spec-fingerprint.json"
# Spec fields that do not change what is trained (a resumed run may differ in these).
NOT_TRAINING = {
    "output",
    "resources",
    "secrets",
    "volumes",
    "image",
    "backoffLimit",
    "activeDeadlineSeconds",
    "suspend",
    "cache",
    "checkpoint",
    "budget",
}


def total_steps(spec: FineTuneJobSpec, train_rows: int, world_size: int = 1) -> int:
    """Optimizer steps; each step takes batchSize rows on each of world_size workers."""
    hp = spec.hyperparameters
    if hp.max_steps > 0:
        return hp.max_steps
    batches = math.ceil(train_rows / (autobatch.per_device(hp) * world_size))
    per_epoch = max(1, batches // hp.gradient_accumulation_steps)
    return max(1, math.ceil(per_epoch * hp.epochs))


def training_arguments(
    spec: FineTuneJobSpec,
    *,
    output_dir: Path,
    precision: PrecisionChoice,
    progress_bar: bool,
    best_metric: tuple[str, bool] = ("loss", False),
    gradient_checkpointing: bool = False,
) -> TrainingArguments:
    """Dynamic padding is the collator's job; here: length grouping, eval/save cadence.
    best_metric: (name, greater is better), restored at the end under early stopping."""
    hp = spec.hyperparameters
    early = hp.early_stopping_patience is not None
    if hp.eval_steps is not None:
        eval_kwargs: dict[str, Any] = {"eval_strategy": "steps", "eval_steps": hp.eval_steps}
    else:
        eval_kwargs = {"eval_strategy": "epoch"}
    if early:
        # Early stopping restores the best checkpoint, so saves must line up with evals.
        save_kwargs: dict[str, Any] = {
            "save_strategy": eval_kwargs["eval_strategy"],
            "save_steps": hp.eval_steps or 500,
            "load_best_model_at_end": True,
            "metric_for_best_model": best_metric[0],
            "greater_is_better": best_metric[1],
        }
    elif hp.eval_steps is not None:
        save_kwargs = {"save_strategy": "steps", "save_steps": hp.eval_steps}
    else:
        # Every epoch, plus every FINETUNE_CHECKPOINT_SECONDS (TimedCheckpoints): a killed
        # long run loses little, a short run pays for no checkpoint it will never use.
        save_kwargs = {"save_strategy": "epoch"}
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=autobatch.per_device(hp),
        per_device_eval_batch_size=autobatch.per_device(hp) * 2,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        num_train_epochs=hp.epochs,
        max_steps=hp.max_steps,
        weight_decay=hp.weight_decay,
        warmup_steps=hp.warmup_ratio,  # a float in [0, 1) is a ratio in transformers 5
        train_sampling_strategy="group_by_length",
        length_column_name=LENGTH_COLUMN,
        logging_strategy="steps",
        logging_steps=hp.logging_steps,
        save_total_limit=1,
        seed=hp.seed,
        data_seed=hp.seed,
        bf16=precision.bf16,
        fp16=precision.fp16,
        report_to="none",
        disable_tqdm=not progress_bar,
        # (transformers 5's name for gradient checkpointing; TRL's configs read it too)
        activation_checkpointing=gradient_checkpointing,
        # non-reentrant: correct with frozen inputs (LoRA), no enable_input_require_grads
        activation_checkpointing_kwargs={"use_reentrant": False}
        if gradient_checkpointing
        else None,
        **speedups.training_arguments(),  # fused AdamW, loader workers (measured in docs)
        **eval_kwargs,
        **save_kwargs,
        **distributed.training_kwargs(spec, distributed.world().size),  # gloo/nccl, FSDP
    )


def fingerprint(spec: FineTuneJobSpec) -> str:
    wire = {k: v for k, v in spec.dump().items() if k not in NOT_TRAINING}
    # Only the effective batch shapes training: a retry with half the batch and twice
    # the accumulation (out-of-memory recovery, batchSize auto) resumes the checkpoints.
    hp = wire["hyperparameters"]
    hp["effectiveBatch"] = autobatch.effective_batch(spec.hyperparameters)
    hp.pop("batchSize", None)
    hp.pop("gradientAccumulationSteps", None)
    return hashlib.sha256(json.dumps(wire, sort_keys=True).encode()).hexdigest()


def resume_checkpoint(output_dir: Path, spec: FineTuneJobSpec) -> str | None:
    """The last checkpoint of an earlier run of the same spec, if any; stale ones are removed."""
    directory = output_dir / CHECKPOINTS
    marker = directory / SPEC_FINGERPRINT
    current = fingerprint(spec)
    if directory.is_dir() and get_last_checkpoint(str(directory)) is not None:
        previous = json.loads(marker.read_text()).get("sha256") if marker.is_file() else None
        if previous != current:
            log.warning("%s holds checkpoints of a different spec; starting afresh", directory)
            shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"sha256": current}))
    return get_last_checkpoint(str(directory))


def checkpoint_interval(spec: FineTuneJobSpec | None = None) -> float:
    """spec.checkpoint.intervalSeconds, else FINETUNE_CHECKPOINT_SECONDS (default 600)."""
    if spec is not None and spec.checkpoint is not None and spec.checkpoint.interval_seconds:
        return float(spec.checkpoint.interval_seconds)
    return float(os.environ.get("FINETUNE_CHECKPOINT_SECONDS", "600"))


class TimedCheckpoints(TrainerCallback):
    """Save a checkpoint when `interval` seconds passed since the last one; never at the
    final step (the run saves its artifacts right after)."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.last = clock()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        now = self.clock()
        if now - self.last >= self.interval:
            control.should_save = True
        if state.global_step >= state.max_steps:
            control.should_save = False
        if control.should_save:
            self.last = now

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if state.global_step >= state.max_steps and not args.load_best_model_at_end:
            control.should_save = False


class QuietProgressCallback(ProgressCallback):
    """The Trainer's tqdm bar without its raw log dicts (our StdoutSink prints lines)."""

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        return None
