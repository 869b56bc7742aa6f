"""LoRA adapters via peft: default target modules per architecture, checked targets."""

from __future__ import annotations

from collections.abc import Sequence

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from finetune_api.models import Lora
from finetune_trainer.errors import ModelError

# Our defaults where they differ from peft's (GPT-2: all of attention and MLP, not only c_attn).
DEFAULT_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
}
# Heads that are never adapted by default (the classification head is trained in full).
HEAD_NAMES = {"classifier", "score", "lm_head", "pre_classifier", "qa_outputs", "decoder"}
ADAPTABLE = (nn.Linear, Conv1D, nn.Embedding, nn.Conv2d)


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct leaf names of the model's Linear (and GPT-2 Conv1D) layers."""
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, m in model.named_modules()
            if isinstance(m, nn.Linear | Conv1D)
        }
    )


def default_targets(model: PreTrainedModel) -> list[str]:
    model_type = str(getattr(model.config, "model_type", ""))
    if model_type in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[model_type]
    if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])
    names = [n for n in linear_module_names(model) if n not in HEAD_NAMES]
    if not names:
        raise ModelError(
            f"lora: model type {model_type!r} has no Linear layers to adapt; set lora.targetModules"
        )
    return names


def check_targets(model: nn.Module, targets: list[str]) -> None:
    """Every target must name at least one adaptable module (by name or dotted suffix)."""
    names = [(n, m) for n, m in model.named_modules() if n]
    for target in targets:
        matches = [m for n, m in names if n == target or n.endswith("." + target)]
        if not any(isinstance(m, ADAPTABLE) for m in matches):
            model_type = getattr(getattr(model, "config", None), "model_type", "?")
            raise ModelError(
                f"lora.targetModules: {target!r} matches no Linear layer of this {model_type} "
                f"model; its Linear layers are named: {', '.join(linear_module_names(model))}"
            )


def apply_lora(
    model: PreTrainedModel,
    spec: Lora,
    peft_task_type: str | None,
    also_train: Sequence[str] = (),
    trainable_tokens: Sequence[int] = (),
) -> PeftModel:
    """LoRA adapters on `targets`; `also_train` (base modules that start random, such as a
    pooler missing from the checkpoint) are trained in full and saved with the adapter, so
    that the reloaded run is the trained one. peft adds the classification head itself."""
    targets = list(spec.target_modules) if spec.target_modules else default_targets(model)
    check_targets(model, targets)
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,  # type: ignore[arg-type]  # peft accepts floats
        lora_dropout=spec.dropout,
        target_modules=targets,
        task_type=TaskType[peft_task_type] if peft_task_type else None,
        fan_in_fan_out=isinstance(_first_match(model, targets), Conv1D),
        modules_to_save=list(also_train) or None,
        # new tokens (a chat template's) train their embedding rows, not the whole matrix
        trainable_token_indices=list(trainable_tokens) or None,
    )
    return get_peft_model(model, config)


def _first_match(model: nn.Module, targets: list[str]) -> nn.Module | None:
    for name, module in model.named_modules():
        if any(name == t or name.endswith("." + t) for t in targets):
            return module
    return None
