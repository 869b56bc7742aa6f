"""Pruning, after training (one-shot) or during it (gradual), for any task.

magnitude: global unstructured L1 pruning (`torch.nn.utils.prune.global_unstructured`)
of the Linear (and GPT-2 Conv1D) weights inside the repeated transformer blocks. The
embeddings, the pooler and the task head stay dense: they are outside the blocks, the
embeddings are a lookup (a zero row is a lost token, not a cheaper product) and the head
is a small share of the weights that every prediction goes through. Each pruning step is
made permanent at once (`prune.remove`): the state dict stays plain (checkpoints and
resume need nothing special) and, between the steps of a gradual schedule, the callback
re-zeroes the pruned weights after every optimiser step.

heads: see `finetune_trainer.heads` (structured: heads removed, the model shrinks).
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.pytorch_utils import Conv1D

from finetune_api.models import Pruning
from finetune_trainer import heads, sizes
from finetune_trainer.errors import ModelError

BLOCK = re.compile(r"\.\d+\.")  # a module inside a ModuleList of blocks: encoder.layer.3.…
GRADUAL_START, GRADUAL_END = 0.1, 0.7  # share of training steps: dense, prune, recover
GRADUAL_STEPS = 10  # pruning steps along the cubic ramp

Layer = tuple[str, Any]  # (name, Linear or Conv1D): modules typed Any for their .weight


def prunable_layers(model: nn.Module) -> list[Layer]:
    """The Linear/Conv1D modules inside the transformer blocks, by name."""
    layers: list[Layer] = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | Conv1D) and BLOCK.search(f".{name}.")
    ]
    if not layers:
        raise ModelError(
            f"pruning: {type(model).__name__} has no Linear layers inside transformer blocks"
        )
    return layers


def measured_sparsity(layers: list[Layer]) -> float:
    """Share of exact zeros in the layers' weights."""
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    return zeros / sum(m.weight.numel() for _, m in layers)


@torch.no_grad()
def magnitude_prune(layers: list[Layer], sparsity: float) -> None:
    """Zero the smallest |w| across all the layers together, to `sparsity` overall."""
    if sparsity <= 0:
        return
    params = [(m, "weight") for _, m in layers]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    for module, name in params:
        prune.remove(module, name)


def cubic_sparsity(step: int, total_steps: int, final: float) -> float:
    """Zhu & Gupta (2017): 0 until GRADUAL_START of training, then final * (1 - (1 - p)^3)
    over the ramp, in GRADUAL_STEPS increments, final from GRADUAL_END on."""
    begin = round(GRADUAL_START * total_steps)
    end = max(begin + 1, round(GRADUAL_END * total_steps))
    if step < begin:
        return 0.0
    progress = min(1.0, (step - begin) / (end - begin))
    progress = math.floor(progress * GRADUAL_STEPS) / GRADUAL_STEPS
    return final * (1 - (1 - progress) ** 3)


class GradualPruning(TrainerCallback):
    """Raises sparsity on the cubic schedule; keeps pruned weights at zero in between."""

    def __init__(self, model: nn.Module, sparsity: float) -> None:
        self.layers = prunable_layers(model)
        self.final = sparsity
        self.total_steps = 1  # state.max_steps, known at train begin
        self.current = 0.0
        self.masks: list[torch.Tensor] = []

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.total_steps = max(1, state.max_steps)
        # A resumed run starts from a checkpoint saved with its zeros in place.
        self.current = measured_sparsity(self.layers)
        if self.current > 0:
            self.masks = [m.weight != 0 for _, m in self.layers]

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        target = cubic_sparsity(state.global_step, self.total_steps, self.final)
        if target > self.current:
            magnitude_prune(self.layers, target)
            self.current = target
            self.masks = [m.weight != 0 for _, m in self.layers]
        elif self.masks:
            with torch.no_grad():
                for (_, module), mask in zip(self.layers, self.masks, strict=True):
                    module.weight.mul_(mask)


def check(model: nn.Module, spec: Pruning) -> None:
    """Refuse, before training, a model the method cannot prune."""
    if spec.method == "heads":
        heads.attention_blocks(model)
    else:
        prunable_layers(model)


def size_metrics(model: nn.Module, prefix: str = "") -> dict[str, float]:
    """Parameters, nonzero parameters, dense MB and zlib-compressed MB of the model."""
    nonzero = sum(int(p.count_nonzero()) for p in {id(p): p for p in model.parameters()}.values())
    metrics = {
        "parameters": float(sizes.parameters(model)),
        "nonzeroParameters": float(nonzero),
        "sizeMb": round(sizes.dense_mb(model), 3),
        "compressedSizeMb": round(sizes.compressed_mb(model), 3),
    }
    return {_prefixed(prefix, k) if prefix else k: v for k, v in metrics.items()}


def prune_model(model: nn.Module, spec: Pruning) -> float:
    """Prune to spec.sparsity (no-op for weights already there); the measured sparsity:
    zero share of the blocks' weights, or the share of attention heads removed."""
    if spec.method == "heads":
        return heads.prune_heads(model, spec.sparsity)
    layers = prunable_layers(model)
    if measured_sparsity(layers) < spec.sparsity - 1e-3:
        magnitude_prune(layers, spec.sparsity)
    return measured_sparsity(layers)


HEADLINE = ("accuracy", "f1Macro", "evalLoss", "perplexity")


def _current(model: nn.Module, spec: Pruning) -> float:
    return 0.0 if spec.method == "heads" else measured_sparsity(prunable_layers(model))


def finish(trainer: Any, spec: Pruning, final: dict[str, float]) -> dict[str, float]:
    """After training: prune to the target (one-shot; gradual only tops up, e.g. after
    early stopping restored an earlier checkpoint), re-evaluate, measure. One-shot runs
    also report the dense model's headline metrics and sizes (denseAccuracy, ...)."""
    from finetune_trainer import evaluation
    from finetune_trainer.report import status_metrics

    model = trainer.model
    metrics: dict[str, float] = {}
    if spec.effective_schedule == "one-shot":
        metrics |= {_prefixed("dense", k): final[k] for k in HEADLINE if k in final}
        metrics |= size_metrics(model, "dense")
    before = _current(model, spec)
    sparsity = prune_model(model, spec)
    if abs(sparsity - before) > 1e-9:
        after = status_metrics(trainer.evaluate())
        if "perplexity" in final and "evalLoss" in after:
            after["perplexity"] = evaluation.perplexity(after["evalLoss"])
        metrics |= after
    return metrics | size_metrics(model) | {"sparsity": round(sparsity, 4)}


def _prefixed(prefix: str, key: str) -> str:
    return prefix + key[0].upper() + key[1:]
