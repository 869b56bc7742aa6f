"""Masked-LM continued pre-training on a text column; predict fills in mask tokens."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import torch
from transformers import (
    AutoModelForMaskedLM,
    DataCollatorForLanguageModeling,
    PreTrainedTokenizerBase,
)

from finetune_api.models import Task
from finetune_trainer import evaluation
from finetune_trainer.data import Table, lm_text, tokenize_texts
from finetune_trainer.errors import ModelError
from finetune_trainer.tasks.recipe import Recipe


class MaskedLm(Recipe):
    task = Task.masked_lm
    auto_class = AutoModelForMaskedLM
    kind = "continued pre-training"
    adapts_domain = True

    def tokenize(
        self, table: Table, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> datasets.Dataset:
        text = self.spec.dataset.text_column
        return tokenize_texts(
            table, tokenizer, lambda b: lm_text(b, text, None), max_length, drop_empty=True
        )

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase, location: str) -> None:
        if tokenizer.mask_token is None:
            raise ModelError(
                f"model {location}: the tokenizer has no mask token; task masked-lm needs an "
                "encoder with a masked-LM head (e.g. BERT)"
            )

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Any:
        hp = self.spec.hyperparameters
        return DataCollatorForLanguageModeling(
            tokenizer, mlm=True, mlm_probability=self.spec.mlm.mask_probability, seed=hp.seed
        )

    @classmethod
    @torch.inference_mode()
    def predict(
        cls,
        info: dict[str, Any],
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        texts: Sequence[str],
        max_new_tokens: int,
    ) -> list[str]:
        batches = evaluation.encoded_batches(tokenizer, texts, int(info.get("maxLength") or 512))
        return [
            text
            for enc in batches
            for text in _fill_masks(tokenizer, enc["input_ids"], model(**enc).logits)
        ]


def _fill_masks(
    tokenizer: PreTrainedTokenizerBase, input_ids: torch.Tensor, logits: torch.Tensor
) -> list[str]:
    mask_id = tokenizer.mask_token_id
    filled = input_ids.clone()
    where = input_ids == mask_id
    filled[where] = logits.argmax(dim=-1)[where]
    return [
        str(tokenizer.decode(row[row != tokenizer.pad_token_id], skip_special_tokens=True))
        for row in filled
    ]
