"""One module per task (and per training method on a task), each a `Recipe`
(recipe.py). `recipe_for` is the one place that maps a spec to its recipe."""

from __future__ import annotations

from finetune_api.models import FineTuneJobSpec, Task
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


def recipe_for(spec: FineTuneJobSpec) -> Recipe:
    return recipe_class(spec.task)(spec)
