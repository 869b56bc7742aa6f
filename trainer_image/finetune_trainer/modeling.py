"""Models and tokenizers: where they come from, which head they get, which precision."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from finetune_api.models import ModelSource, Precision
from finetune_trainer import heads, weights
from finetune_trainer.data import LabelMap, resolve
from finetune_trainer.errors import ModelError

if TYPE_CHECKING:
    from finetune_trainer.tasks.recipe import Recipe


@dataclass(frozen=True)
class ModelRef:
    """What from_pretrained gets: a local directory or a hub id (+ revision)."""

    location: str
    revision: str | None
    is_path: bool
    uri: str | None = None  # spec model.uri, when the location is its downloaded copy

    def kwargs(self) -> dict[str, Any]:
        return {} if self.revision is None else {"revision": self.revision}


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def resolve_model(
    source: ModelSource, spec_dir: Path | None, field: str = "spec.model.uri"
) -> ModelRef:
    """Check the model exists (a directory, or a hub id available here) and say where it
    is; a model.uri is downloaded into the source cache first (sources.py)."""
    if source.uri is not None:
        from finetune_trainer import sources

        folder = sources.fetch(source.uri, field, single=False)
        return ModelRef(str(folder), None, True, uri=source.uri)
    if source.path is not None:
        path = resolve(source.path, spec_dir)
        if not path.exists():
            raise ModelError(f"model.path {path}: no such directory")
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelError(
                f"model.path {path}: not a Hugging Face model directory (no config.json)"
            )
        return ModelRef(str(path), None, True)
    assert source.name is not None
    ref = ModelRef(source.name, source.revision, False)
    try:
        AutoConfig.from_pretrained(ref.location, **ref.kwargs())
    except (OSError, ValueError) as err:
        if offline():
            raise ModelError(
                f"model.name {source.name}: {source.name} is not in the local cache and "
                "HF_HUB_OFFLINE=1 forbids downloading; use model.path"
            ) from None
        raise ModelError(f"model.name {source.name}: cannot load it: {err}") from None
    return ref


def load_tokenizer(ref: ModelRef, recipe: Recipe) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref.location, **ref.kwargs())
    except (OSError, ValueError) as err:
        raise ModelError(f"model {ref.location}: cannot load its tokenizer: {err}") from None
    if tokenizer.pad_token is None:
        # Decoder-only models (GPT-2, Llama) ship without a pad token; batches still pad.
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ModelError(f"model {ref.location}: the tokenizer has no pad, eos or unk token")
        tokenizer.pad_token = fallback
    recipe.check_tokenizer(tokenizer, ref.location)
    return tokenizer


def load_model(
    ref: ModelRef,
    recipe: Recipe,
    tokenizer: PreTrainedTokenizerBase,
    label_map: LabelMap | None = None,
) -> PreTrainedModel:
    return load_model_noted(ref, recipe, tokenizer, label_map).model


class LoadedModel(NamedTuple):
    model: PreTrainedModel
    note: str  # "" when every weight came from the checkpoint
    new_base_modules: list[str]


def load_model_noted(
    ref: ModelRef,
    recipe: Recipe,
    tokenizer: PreTrainedTokenizerBase,
    label_map: LabelMap | None = None,
    extra: dict[str, Any] | None = None,
) -> LoadedModel:
    """The model, one line on weights initialised anew (weights.py), e.g. "new
    classification head: 2 labels", instead of transformers' LOAD REPORT table, and the
    base-model modules that start random (LoRA trains and saves them too)."""
    if ref.is_path and heads.is_pruned(Path(ref.location)):
        raise ModelError(
            f"model.path {ref.location}: its attention heads were pruned; `finetune predict` "
            "loads it, but it cannot be the starting model of a new job"
        )
    kwargs: dict[str, Any] = ref.kwargs() | recipe.model_kwargs(label_map) | (extra or {})
    try:
        with weights.quiet_load_report():
            model, info = recipe.auto_class.from_pretrained(
                ref.location, output_loading_info=True, **kwargs
            )
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(
            f"model {ref.location}: cannot load it for task {recipe.task.value}: {err}"
        ) from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(
        model,
        weights.new_weights_note(model, info, lambda n: recipe.head_note(n, label_map)),
        weights.new_base_modules(model, info),
    )


def effective_max_length(model: PreTrainedModel, max_length: int) -> int:
    """hyperparameters.maxLength, capped at the model's position embeddings."""
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", None
    )
    return min(max_length, int(limit)) if limit else max_length


@dataclass(frozen=True)
class PrecisionChoice:
    bf16: bool
    fp16: bool

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "fp32"


def choose_precision(precision: Precision) -> PrecisionChoice:
    """auto: bf16 where the GPU supports it, else fp16 on GPU, fp32 on CPU."""
    cuda = torch.cuda.is_available()
    if precision is Precision.auto:
        if not cuda:
            return PrecisionChoice(False, False)
        return PrecisionChoice(torch.cuda.is_bf16_supported(), not torch.cuda.is_bf16_supported())
    if precision is Precision.fp16 and not cuda:
        raise ModelError("hyperparameters.precision fp16 needs a CUDA GPU; use auto or fp32")
    return PrecisionChoice(precision is Precision.bf16, precision is Precision.fp16)
