"""`hyperparameters.batchSize: auto` and out-of-memory recovery inside the process.

The effective batch (per-device batch x gradientAccumulationSteps) is what the
optimisation sees, so it is kept fixed: `auto` means `AUTO_BASE` (16, the default
batchSize) x gradientAccumulationSteps, split into the largest per-device batch
that fits and the accumulation that makes up the rest.

- On GPU the split is probed: a forward + backward pass on the longest training row
  at each candidate size (the effective batch, then halves), plus the optimizer's
  state (two fp32 moments per trainable parameter), must fit in 90% of the device.
- On CPU, and under torchrun (every rank must take the same split), there is no probe:
  the per-device batch is the largest divisor of the effective batch up to `CPU_CAP`
  (64). In-process recovery is off under torchrun too (one rank cannot halve alone);
  the operator's retry Job (half the batch, twice the accumulation) covers them.

When training runs out of memory anyway (torch's OutOfMemoryError, the CPU
allocator's RuntimeError, MemoryError), `train` saves a checkpoint of the last
completed step, halves the per-device batch, doubles the accumulation and resumes
from that step. transformers' `auto_find_batch_size` (accelerate's
`find_executable_batch_size`) was not used: it restarts training from step 0 and
leaves the accumulation alone, so the effective batch shrinks with every retry.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils.memory import should_reduce_batch_size
from transformers import Trainer
from transformers.trainer_utils import TrainOutput, get_last_checkpoint

from finetune_api.models import AUTO, FineTuneJobSpec, Hyperparameters

log = logging.getLogger(__name__)

AUTO_BASE = 16
CPU_CAP = 64
MEMORY_SHARE = 0.9


@dataclass(frozen=True)
class BatchPlan:
    batch_size: int
    accumulation: int

    @property
    def effective(self) -> int:
        return self.batch_size * self.accumulation


def effective_batch(hp: Hyperparameters) -> int:
    base = AUTO_BASE if hp.batch_size == AUTO else int(hp.batch_size)
    return base * hp.gradient_accumulation_steps


def per_device(hp: Hyperparameters) -> int:
    """The per-device batch of a spec (auto: the CPU plan, before any probe)."""
    if hp.batch_size == AUTO:
        return cpu_plan(effective_batch(hp)).batch_size
    return int(hp.batch_size)


def cpu_plan(effective: int) -> BatchPlan:
    batch = max(d for d in range(1, min(effective, CPU_CAP) + 1) if effective % d == 0)
    return BatchPlan(batch, effective // batch)


def probed_plan(effective: int, fits: Callable[[int], bool]) -> BatchPlan:
    """The largest candidate (effective, then halves that divide it) for which fits()."""
    batch = effective
    while batch > 1 and not fits(batch):
        smaller = batch // 2
        while effective % smaller:
            smaller -= 1
        batch = smaller
    return BatchPlan(batch, effective // batch)


def concrete_spec(
    spec: FineTuneJobSpec, model: Any, train_ds: Any, bf16: bool, token_labels: bool = True
) -> FineTuneJobSpec:
    """The spec with batchSize/gradientAccumulationSteps resolved (unchanged unless auto);
    token_labels: the probe's labels are token ids (a language model), else class ids."""
    hp = spec.hyperparameters
    if hp.batch_size != AUTO:
        return spec
    effective = effective_batch(hp)
    # Under torchrun every rank must take the same split: no per-rank probe.
    if torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        longest = max(train_ds["length"]) if len(train_ds) else 8
        plan = probed_plan(effective, lambda b: fits_on_gpu(model, b, longest, bf16, token_labels))
    else:
        plan = cpu_plan(effective)
    log.info("batchSize auto: %d x %d accumulation steps", plan.batch_size, plan.accumulation)
    new_hp = hp.model_copy(
        update={"batch_size": plan.batch_size, "gradient_accumulation_steps": plan.accumulation}
    )
    return spec.model_copy(update={"hyperparameters": new_hp})


def fits_on_gpu(model: Any, batch: int, length: int, bf16: bool, lm: bool) -> bool:
    """One forward + backward at (batch, length) plus the optimizer state within 90%."""
    device = torch.device("cuda")
    model.to(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    vocab = int(getattr(model.config, "vocab_size", 2) or 2)
    ids = torch.randint(0, vocab, (batch, length), device=device)
    labels = ids if lm else torch.zeros(batch, dtype=torch.long, device=device)
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
    except Exception as err:
        if not is_oom(err):
            raise
        return False
    finally:
        model.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    needed = torch.cuda.max_memory_allocated(device) + 8 * trainable
    return needed <= MEMORY_SHARE * torch.cuda.get_device_properties(device).total_memory


def is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(err, Exception) and should_reduce_batch_size(err)


def train(trainer: Trainer, resume: str | None, max_halvings: int = 6) -> TrainOutput:
    """trainer.train(); on out-of-memory: checkpoint, halve the batch, double the
    accumulation, resume from the last completed step (at most `max_halvings` times)."""
    if trainer.args.world_size > 1:  # one rank cannot halve alone: the others would hang
        return trainer.train(resume_from_checkpoint=resume)
    for attempt in range(max_halvings + 1):
        try:
            return trainer.train(resume_from_checkpoint=resume)
        except BaseException as err:
            if not is_oom(err) or attempt == max_halvings or not halvable(trainer):
                raise
            reason = f"{type(err).__name__}: {str(err)[:160]}"
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        resume = _checkpoint_now(trainer) or resume
        halve(trainer)
        log.warning(
            "out of memory (%s); resuming from step %d with batch %d x %d accumulation steps",
            reason,
            trainer.state.global_step,
            trainer.args.per_device_train_batch_size,
            trainer.args.gradient_accumulation_steps,
        )
    raise AssertionError("unreachable")


def halvable(trainer: Trainer) -> bool:
    return trainer.args.per_device_train_batch_size % 2 == 0


def halve(trainer: Trainer) -> None:
    args = trainer.args
    args.per_device_train_batch_size //= 2
    args.gradient_accumulation_steps *= 2
    args.per_device_eval_batch_size = max(1, args.per_device_eval_batch_size // 2)
    trainer._train_batch_size = args.train_batch_size


def _checkpoint_now(trainer: Trainer) -> str | None:
    """A checkpoint of the last completed optimizer step (None before the first)."""
    model = trainer.model
    if trainer.state.global_step == 0 or trainer.optimizer is None or model is None:
        return None
    model.zero_grad(set_to_none=True)  # a half-accumulated step is dropped
    trainer._save_checkpoint(model, trial=None)
    return get_last_checkpoint(trainer.args.output_dir)
