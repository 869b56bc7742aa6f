"""Causal language modelling on a text column (+ an optional target column, scored by
BLEU on generations); perplexity before and after."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import datasets
from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from finetune_api.models import Task
from finetune_trainer import autobatch, evaluation
from finetune_trainer.data import Table, lm_text, tokenize_texts
from finetune_trainer.tasks.recipe import Recipe

if TYPE_CHECKING:
    from finetune_trainer.runstate import RunState

BLEU_LIMIT = 200  # eval rows generated from for BLEU (generation is slow)
BATCH = 32


class CausalLm(Recipe):
    task = Task.causal_lm
    auto_class = AutoModelForCausalLM
    peft_task_type = "CAUSAL_LM"
    causal_lm = True
    packs = True
    kind = "causal-LM fine-tuning"

    @property
    def target_column(self) -> str | None:
        return self.spec.dataset.target_column

    def tokenize(
        self, table: Table, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> datasets.Dataset:
        text, target = self.spec.dataset.text_column, self.target_column
        return tokenize_texts(
            table,
            tokenizer,
            lambda b: lm_text(b, text, target),
            max_length,
            end_with_eos=True,  # so generation learns to stop
            labels_from_inputs=True,
            drop_empty=True,
        )

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Any:
        # Labels were made at tokenisation (ids + eos); padding gets -100, so a pad token
        # borrowed from eos does not hide the real eos the model must learn to emit.
        return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)

    def evaluate(self, state: RunState) -> None:
        """BLEU of generations from the eval prompts against targetColumn, when set."""
        if self.target_column is not None:
            state.final["bleu"] = _bleu(state, self.target_column)

    @classmethod
    def predict(
        cls,
        info: dict[str, Any],
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        texts: Sequence[str],
        max_new_tokens: int,
    ) -> list[str]:
        return evaluation.continuations(
            info, model, tokenizer, texts, max_new_tokens, batch_size=BATCH
        )


def _bleu(state: RunState, target: str) -> float:
    """Generate from the eval prompts (textColumn) and score against the target column."""
    tokenizer, spec = state.tokenizer, state.spec
    rows = state.raw.eval.data.select(range(min(len(state.raw.eval.data), BLEU_LIMIT)))
    prompts = [str(t) for t in rows[spec.dataset.text_column]]
    references = [str(t) for t in rows[target]]
    new_tokens = max(8, min(128, max(len(tokenizer(r)["input_ids"]) for r in references) + 4))
    model: Any = state.trainer.model
    outputs = evaluation.generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=new_tokens,
        max_length=state.max_length,
        batch_size=autobatch.per_device(spec.hyperparameters),
    )
    with (state.output_dir / "generations.jsonl").open("w") as f:
        for p, o, r in zip(prompts, outputs, references, strict=True):
            f.write(json.dumps({"prompt": p, "generated": o, "reference": r}) + "\n")
    return evaluation.bleu(outputs, references)
