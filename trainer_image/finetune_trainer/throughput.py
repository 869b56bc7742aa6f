"""Throughput and cost of a run: samples/s, tokens/s, MFU, GPU-hours, the batch chosen.

- `samplesPerSecond` = training samples / training-loop seconds. The loop clock runs
  from the start of training to the last optimizer step and stops during in-training
  evaluations and checkpoint saves (the gap before `on_evaluate`/`on_save` is dropped).
  transformers' own `train_samples_per_second` divides by the whole `train()` call
  (set-up, evaluations, saves included) and is not used.
- `tokensPerSecond` = samplesPerSecond x the mean non-padding tokens per training row
  (exact over whole epochs; no per-step count, so no device sync per step).
- `mfu` (GPU only) = model FLOP/s / (the device's dense bf16 peak x GPUs), with
  FLOPs per token = 4 N + 2 N_trainable, N = parameters of the matmuls (every weight but
  the input embeddings): forward 2N, backward through the activations 2N, weight
  gradients 2 N_trainable. Full training gives the usual 6N; LoRA ~4N. Attention's
  sequence-length term is left out (small at these lengths).
- `gpuHours` = GPUs x wall hours from trainer set-up to the end of training (0 on CPU).
- `batchSize`, `gradientAccumulationSteps`: the values training ended with (after
  `auto` and any out-of-memory halving).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from finetune_trainer.batching import LENGTH_COLUMN

# Dense (no sparsity) bf16/fp16 tensor-core peak per GPU, TFLOP/s, from NVIDIA's
# datasheets. First matching substring of torch.cuda.get_device_name() wins.
PEAK_TFLOPS: list[tuple[str, float]] = [
    ("H200", 989.0),
    ("GH200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 125.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("A6000", 155.0),
    ("V100", 125.0),
    ("T4", 65.0),
]


def peak_flops(device_name: str) -> float | None:
    """The device's dense bf16 peak in FLOP/s, or None for a GPU not in the table."""
    for key, tflops in PEAK_TFLOPS:
        if key in device_name:
            return tflops * 1e12
    return None


def flops_per_token(model: torch.nn.Module) -> float:
    """4 N + 2 N_trainable (see the module docstring)."""
    embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding)
                  for p in m.parameters(recurse=False)}  # fmt: skip
    total = trainable = 0
    for p in model.parameters():
        if id(p) in embeddings or p.dim() < 2:
            continue
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return 4.0 * total + 2.0 * trainable


class Meter(TrainerCallback):
    """Clocks the training loop (see the module docstring); read with `metrics()`."""

    def __init__(self, train_ds: Any, clock: Callable[[], float] = time.perf_counter) -> None:
        lengths = train_ds[LENGTH_COLUMN] if LENGTH_COLUMN in train_ds.column_names else []
        self.tokens_per_row = float(sum(lengths)) / max(1, len(lengths))
        self.clock = clock
        self.created = clock()
        self.loop_seconds = 0.0
        self.samples = 0
        self.last = self.created
        self.ended = self.created

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.last = self.clock()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        now = self.clock()
        self.loop_seconds += now - self.last
        self.last = now
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        self.samples += per_step * max(1, args.world_size)

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.last = self.clock()

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.last = self.clock()

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.ended = self.clock()


def metrics(trainer: Trainer) -> dict[str, float]:
    """The status metrics of the run's Meter (it must have been added as a callback)."""
    meter = next(c for c in trainer.callback_handler.callbacks if isinstance(c, Meter))
    args = trainer.args
    out = {
        "batchSize": float(args.per_device_train_batch_size),
        "gradientAccumulationSteps": float(args.gradient_accumulation_steps),
    }
    gpus = args.n_gpu * max(1, args.world_size) if torch.cuda.is_available() else 0
    out["gpuHours"] = gpus * (meter.ended - meter.created) / 3600.0
    if meter.loop_seconds <= 0 or meter.samples == 0:
        return out
    out["samplesPerSecond"] = meter.samples / meter.loop_seconds
    out["tokensPerSecond"] = out["samplesPerSecond"] * meter.tokens_per_row
    peak = peak_flops(torch.cuda.get_device_name()) if gpus else None
    if peak and trainer.model is not None:
        model_flops = flops_per_token(trainer.model) * out["tokensPerSecond"]
        out["mfu"] = model_flops / (peak * gpus)
    return out
