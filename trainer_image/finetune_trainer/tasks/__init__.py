"""One module per task (and per training method on a task), each a `Recipe`
(recipe.py). `recipe_for` is the one place that maps a spec to its recipe."""

from __future__ import annotations

from typing import Any

from finetune_api.models import DataFormat, FineTuneJobSpec, Task
from finetune_trainer.tasks.recipe import Recipe


def recipe_class(task: Task) -> type[Recipe]:
    """The recipe of a task (imported on demand: each pulls only what its task needs)."""
    if task is Task.classification:
        from finetune_trainer.tasks.classification import Classification

        return Classification
    if task is Task.causal_lm:
        from finetune_trainer.tasks.causal_lm import CausalLm

        return CausalLm
    from finetune_trainer.tasks.masked_lm import MaskedLm

    return MaskedLm


def recipe_for_run(info: dict[str, Any]) -> type[Recipe]:
    """The recipe that predicts for a finished run, from its run.json: a chat run (it
    saved its template) wraps prompts in it."""
    if info.get("chatTemplate"):
        from finetune_trainer.tasks.chat_sft import ChatSft

        return ChatSft
    return recipe_class(Task(info["task"]))


def recipe_for(spec: FineTuneJobSpec) -> Recipe:
    """The spec's recipe: its task's, or its method's (preference tuning), or chat SFT
    for a causal-lm spec with a chat dataset.format."""
    if spec.method.type != "sft":
        from finetune_trainer.tasks.preference import Preference

        return Preference(spec)
    if spec.task is Task.causal_lm and spec.dataset.format is not DataFormat.text:
        from finetune_trainer.tasks.chat_sft import ChatSft

        return ChatSft(spec)
    return recipe_class(spec.task)(spec)
