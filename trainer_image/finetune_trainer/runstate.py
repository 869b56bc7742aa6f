"""What the stages of one run pass along (run.py), and what a recipe's `evaluate` reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedTokenizerBase, Trainer

from finetune_api.models import FineTuneJobSpec
from finetune_trainer import distributed
from finetune_trainer.data import RawData
from finetune_trainer.modeling import ModelRef, PrecisionChoice
from finetune_trainer.report import Reporter

if TYPE_CHECKING:
    from finetune_trainer.durable import Publisher
    from finetune_trainer.tasks.recipe import Recipe


@dataclass
class RunState:
    """`_load` -> `_build_trainer` -> `_train` -> `_evaluate` -> `_save`. Each stage reads
    the fields before it and fills its own; hooks (extra metrics, artifacts) go into
    `final` and `artifacts`."""

    spec: FineTuneJobSpec
    recipe: Recipe
    output_dir: Path
    reporter: Reporter
    progress_bar: bool
    precision: PrecisionChoice
    ref: ModelRef
    tokenizer: PreTrainedTokenizerBase
    raw: RawData
    model: Any
    max_length: int
    train_ds: Any
    eval_ds: Any
    qat_layers: list[str] = field(default_factory=list)
    load_note: str = ""  # weights initialised anew (modeling.load_model_noted)
    new_modules: list[str] = field(default_factory=list)  # base modules that start random
    world: distributed.World = field(default_factory=distributed.world)
    # _build_trainer
    trainer: Trainer = field(init=False)
    metrics_fn: Any = None  # the recipe's compute_metrics, kept for its last predictions
    resume: str | None = None
    publisher: Publisher | None = None  # spec.checkpoint.uri (durable.py)
    # _train, _evaluate, _save
    final: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
