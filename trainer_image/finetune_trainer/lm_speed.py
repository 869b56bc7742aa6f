"""Causal-LM speed-ups: padding-free packing and Liger kernels, each with a clean fallback.

**Packing.** transformers' `DataCollatorWithFlattening` concatenates a batch's
documents into one row with `position_ids` restarting at 0 for every document (and
-100 as the first label of each, so no token is predicted across a boundary). The
model keeps documents apart by itself (transformers 5.24, `masking_utils`): with a
flash-attention implementation the restarts become varlen `cu_seqlens` (no padding,
no mask); with `sdpa`/`eager` (CPU, or a GPU without flash-attn) they become a
block-diagonal causal mask over the packed row, correct but no faster than
length-bucketed padding. So packing is on by default only where it pays: models
whose attention implementation is a flash-attention one. `FINETUNE_PACKING=1`/`0`
forces it on/off.

**Liger kernels** (the `liger-kernel` package, Triton: fused linear cross-entropy,
RMSNorm, RoPE, SwiGLU) are applied through transformers' own `use_liger_kernel`
when there is a CUDA device, the package imports, and it has a patch for the model
type; otherwise training runs unchanged and `liger_decision` says why.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from transformers import DataCollatorWithFlattening, Trainer

log = logging.getLogger(__name__)

PACKING_ENV = "FINETUNE_PACKING"


def attention_implementation(model: Any) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", None) or "eager")


def use_packing(model: Any, chosen: bool | None = None) -> bool:
    """hyperparameters.packing when set; else FINETUNE_PACKING; else flash attention only."""
    if chosen is not None:
        return chosen
    forced = os.environ.get(PACKING_ENV, "").lower()
    if forced in {"1", "true", "yes", "on"}:
        return True
    if forced in {"0", "false", "no", "off"}:
        return False
    return attention_implementation(model).startswith("flash")


class PackingCollator(DataCollatorWithFlattening):
    """One row per batch, position_ids restarting per document, and `use_cache=False`.

    The last is not optional: transformers detects packed documents from position_ids
    only when no KV cache is passed, and a causal LM creates one whenever `use_cache`
    (True in most configs) is on, in training too. With the cache, sdpa/eager attention
    silently crosses documents (tests/trainer/test_lm_speed.py shows both)."""

    def __call__(self, features: Any, return_tensors: Any = None, separator_id: Any = None) -> Any:
        batch = super().__call__(features, return_tensors, separator_id)
        batch["use_cache"] = False
        return batch


def packing_collator(model: Any) -> PackingCollator:
    """Flash-attention models also get the cu_seqlens kwargs directly."""
    flash = attention_implementation(model).startswith("flash")
    return PackingCollator(return_position_ids=True, return_flash_attn_kwargs=flash)


def configure(trainer: Trainer, causal_lm: bool, packing: bool | None = None) -> None:
    """Packing and Liger kernels for a causal-LM trainer (the recipe says whether it packs)."""
    if not causal_lm:
        return
    if use_packing(trainer.model, packing):
        trainer.data_collator = packing_collator(trainer.model)
        log.info("packing documents (padding-free, position_ids per document)")
    liger, why = liger_decision(trainer.model)
    trainer.args.use_liger_kernel = liger  # applied by Trainer.train()
    log.info("Liger kernels: %s", why)


def liger_decision(model: Any) -> tuple[bool, str]:
    """(apply?, why) for Liger kernels on this model on this machine."""
    if not torch.cuda.is_available():
        return False, "no CUDA device (Liger kernels are Triton GPU kernels)"
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as err:
        return False, f"liger-kernel is not importable ({err})"
    base = getattr(model, "get_base_model", lambda: model)()
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        return False, f"liger-kernel has no kernels for model type {model_type!r}"
    return True, f"Liger kernels for {model_type}"
