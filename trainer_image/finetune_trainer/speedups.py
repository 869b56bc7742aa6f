"""Per-device speed settings for the Trainer: optimizer kernel, loader workers, pinning.

Each choice was measured (docs/trainer.md, "Throughput") and each has an environment
override so a benchmark can measure the alternatives one by one:

- `FINETUNE_OPTIM`: the TrainingArguments `optim`; default `adamw_torch_fused` (one
  kernel per parameter group instead of a loop of small ops; on CUDA and, since
  torch 2.4, on CPU).
- `FINETUNE_LOADER_WORKERS`: DataLoader worker processes; default 2 on GPU (the
  batch for step n+1 is built while step n runs), 0 on CPU (no spare cores).
- `FINETUNE_COMPILE=1`: `torch.compile` the model (the Trainer's `torch_compile`; shapes
  are bounded by the length buckets: widths are multiples of 8 up to maxLength). Off by
  default: not measured on a GPU yet (benchmarks/gpu_throughput.py --variant).
"""

from __future__ import annotations

import os
from typing import Any

import torch

FUSED_ADAMW = "adamw_torch_fused"


def optimizer_name() -> str:
    return os.environ.get("FINETUNE_OPTIM") or FUSED_ADAMW


def loader_workers() -> int:
    value = os.environ.get("FINETUNE_LOADER_WORKERS")
    if value is not None:
        return max(0, int(value))
    return 2 if torch.cuda.is_available() else 0


def loader_arguments() -> dict[str, Any]:
    """TrainingArguments for the training DataLoader on this device."""
    workers = loader_workers()
    cuda = torch.cuda.is_available()
    return {
        "dataloader_num_workers": workers,
        "dataloader_pin_memory": cuda,
        "dataloader_persistent_workers": workers > 0,
        "dataloader_prefetch_factor": 4 if workers > 0 else None,
    }


def compile_model() -> bool:
    return os.environ.get("FINETUNE_COMPILE", "").lower() in {"1", "true", "yes", "on"}


def training_arguments() -> dict[str, Any]:
    """The speed-related TrainingArguments: optimizer, loader, compilation."""
    return {
        "optim": optimizer_name(),
        "torch_compile": compile_model(),
        **loader_arguments(),
    }
