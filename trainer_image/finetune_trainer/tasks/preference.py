"""Preference tuning on a causal LM (spec.method dpo | orpo) with TRL's trainers.

Rows hold `prompt`, `chosen` and `rejected`: text, or the messages form of each (TRL
renders those with the chat template). TRL tokenises them itself; the recipe adds a
`length` column (prompt + chosen tokens) for the throughput meter and leaves the rest
to `DPOTrainer` / `ORPOTrainer`, whose config is built from the run's
TrainingArguments, so our callbacks, reporting, resume and OOM recovery apply as
for any run. With LoRA the reference model of DPO is the base with the adapter
disabled (no second copy in memory); without, TRL loads a frozen reference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import datasets
from transformers import (
    AutoModelForCausalLM,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
)

from finetune_api.models import Task
from finetune_trainer import evaluation
from finetune_trainer.data import LENGTH_COLUMN, Table
from finetune_trainer.tasks.recipe import Recipe

COLUMNS = ("prompt", "chosen", "rejected")
BATCH = 8


class Preference(Recipe):
    task = Task.causal_lm
    auto_class = AutoModelForCausalLM
    peft_task_type = "CAUSAL_LM"
    causal_lm = True
    reports_perplexity = False
    best_metric = ("rewards/accuracies", True)
    kind = "preference tuning"

    def describe(self) -> str:
        return f"causal-lm {self.spec.method.type} (beta {self.spec.method.beta:g})"

    def columns(self) -> list[tuple[str, str]]:
        method = self.spec.method.type
        return [(c, f"method.type {method}: column") for c in COLUMNS]

    def texts(self, table: Table) -> list[str]:
        return _pairs(table.data["prompt"], table.data["chosen"])

    def tokenize(
        self, table: Table, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> datasets.Dataset:
        """The rows as they are (TRL tokenises them), with their length in tokens."""

        def lengths(batch: dict[str, list[Any]]) -> dict[str, list[int]]:
            texts = _pairs(batch["prompt"], batch["chosen"])
            ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
            return {LENGTH_COLUMN: [len(i) for i in ids]}

        keep = [c for c in table.data.column_names if c in COLUMNS]
        data = table.data.select_columns(keep)
        return data.map(lengths, batched=True, desc="Measuring")

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Any:
        return None  # TRL's preference collator (prompt + chosen / rejected pairs)

    def trainer_class(self, base: type[Trainer]) -> Callable[..., Trainer]:
        """A factory with the Trainer's keyword arguments, building TRL's trainer."""
        method, beta = self.spec.method.type, self.spec.method.beta
        max_length = self.spec.hyperparameters.max_length

        def make(*, args: TrainingArguments, data_collator: Any = None, **kwargs: Any) -> Trainer:
            if method == "dpo":
                from trl import DPOConfig, DPOTrainer

                config = _config(DPOConfig, args, beta=beta, max_length=max_length)
                return DPOTrainer(args=config, **kwargs)
            from trl.experimental.orpo import ORPOConfig, ORPOTrainer

            config = _config(ORPOConfig, args, beta=beta, max_length=max_length)
            return ORPOTrainer(args=config, **kwargs)

        return make

    @classmethod
    def predict(
        cls,
        info: dict[str, Any],
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        texts: Sequence[str],
        max_new_tokens: int,
    ) -> list[str]:
        return evaluation.continuations(info, model, tokenizer, texts, max_new_tokens)

    def run_info(self) -> dict[str, Any]:
        return {"method": self.spec.method.type, "beta": self.spec.method.beta}


def _config(cls: Any, args: TrainingArguments, **extra: Any) -> Any:
    """TRL's config with every TrainingArguments field the run chose, plus `extra`."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainingArguments)
        if f.init and f.name in names
    }
    # The Trainer resolved these in __post_init__; TRL's config resolves them again.
    values.pop("logging_dir", None)
    values["remove_unused_columns"] = False  # TRL picks its own columns
    return cls(**values, **extra)


def _pairs(prompts: Sequence[Any], chosen: Sequence[Any]) -> list[str]:
    """Prompt plus chosen answer as one text: what the length and the token meter count."""
    return [_text(p) + " " + _text(c) for p, c in zip(prompts, chosen, strict=True)]


def _text(value: Any) -> str:
    if isinstance(value, list):  # the messages form
        return " ".join(str(m.get("content", "")) for m in value if isinstance(m, dict))
    return str(value)
