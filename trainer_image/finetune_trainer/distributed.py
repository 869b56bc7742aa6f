"""The trainer under torchrun: who this process is, and what it may do alone.

torchrun (`python -m torch.distributed.run`, in a pod or from `finetune run` with
`resources.nodes > 1`) starts one process per worker and sets RANK, WORLD_SIZE and
LOCAL_RANK. The HF Trainer (through accelerate) then joins the process group (gloo on
CPU, nccl on GPU), shards the training batches, all-reduces gradients (DDP) or shards
the model (FSDP), and gathers evaluation predictions so every rank computes the same
metrics. What is left to this project: only the main process (rank 0) reports
progress and status, writes metrics.json, plots and the run's files, and every rank
takes part in the collective steps (evaluate, save_model under FSDP).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from finetune_api.models import FineTuneJobSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place among the workers (1 process: rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """From torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE); defaults to one process."""
    env = os.environ
    return World(
        rank=int(env.get("RANK", "0")),
        local_rank=int(env.get("LOCAL_RANK", "0")),
        size=int(env.get("WORLD_SIZE", "1")),
    )


def bind_device(current: World) -> None:
    """Under torchrun on GPUs, make `cuda` mean this worker's GPU (LOCAL_RANK) from the
    start, so anything before the Trainer (the batchSize auto probe) uses its own GPU."""
    if current.distributed and torch.cuda.is_available():
        torch.cuda.set_device(current.local_rank % torch.cuda.device_count())


def backend() -> str:
    """nccl between GPUs, gloo on CPU."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def training_kwargs(spec: FineTuneJobSpec, size: int) -> dict[str, Any]:
    """TrainingArguments for several workers: the backend, and FSDP when asked for.

    fsdp maps to transformers 5's `fsdp=True` + `fsdp_config` (FSDP2 through accelerate:
    each transformer block wrapped, full state dict gathered on save); accelerate runs
    FSDP on GPUs only, so CPU workers fall back to DDP with a warning.
    """
    if size <= 1:
        return {}
    # Each rank's loss is its own batch mean and DDP averages the gradients. transformers'
    # token averaging across devices would multiply the loss by the world size for every
    # model whose loss ignores num_items_in_batch (sequence classification, BERT's MLM).
    kwargs: dict[str, Any] = {"ddp_backend": backend(), "average_tokens_across_devices": False}
    # Every trainable parameter of these models takes part in each forward pass (a LoRA
    # base's frozen weights are not in DDP's buckets): no search for unused ones, which
    # costs a graph traversal per step and warns on every healthy run.
    kwargs["ddp_find_unused_parameters"] = False
    if not torch.cuda.is_available():
        # accelerate makes a CPU process group (MULTI_CPU, gloo) only when asked for the
        # CPU; without it each process would train alone, unsynchronised.
        kwargs["use_cpu"] = True
    if spec.distributed.strategy == "fsdp" and not torch.cuda.is_available():
        # accelerate shards with FSDP on accelerators only; on CPU it would quietly run DDP.
        log.warning("distributed.strategy fsdp needs GPUs; these CPU workers run DDP")
    elif spec.distributed.strategy == "fsdp":
        kwargs["fsdp"] = True
        kwargs["fsdp_config"] = {
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "reshard_after_forward": True,
            "state_dict_type": "FULL_STATE_DICT",
        }
    return kwargs
