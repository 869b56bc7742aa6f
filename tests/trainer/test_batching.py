"""Pre-padded, length-bucketed training batches (finetune_trainer.batching)."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    TrainingArguments,
)

from finetune_trainer.batching import (
    FastTrainer,
    LengthBuckets,
    PaddedRows,
    pad_values,
)


def _rows(tokenizer: object, n: int = 50) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    words = ["good", "bad", "movie", "plot", "very", "the"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 12)))) for _ in range(n)]
    enc = dict(tokenizer(texts))  # type: ignore[operator]
    enc["labels"] = [i % 2 for i in range(n)]
    enc["length"] = [len(ids) for ids in enc["input_ids"]]
    # A split selects rows through an indices mapping: the loader must honour it.
    return datasets.Dataset.from_dict(enc).select(range(n - 1, -1, -1))


@pytest.fixture(scope="module")
def tokenizer(bert_dir: Path) -> object:
    return AutoTokenizer.from_pretrained(bert_dir)


def test_a_batch_equals_what_the_padding_collator_builds(tokenizer: object) -> None:
    data = _rows(tokenizer)
    rows = PaddedRows(data, pad_values(data.column_names, 0))
    indices = [3, 17, 8, 40]
    batch = rows.__getitems__(indices)
    features = [{k: v for k, v in data[i].items() if k != "length"} for i in indices]
    expected = DataCollatorWithPadding(tokenizer)(features)  # type: ignore[arg-type]
    assert set(batch) == set(expected)
    for key, value in expected.items():
        assert torch.equal(batch[key], value), key


def test_multiple_of_8_rounds_the_width_up(tokenizer: object) -> None:
    data = _rows(tokenizer)
    rows = PaddedRows(data, pad_values(data.column_names, 0), multiple=8)
    batch = rows.__getitems__([0, 1, 2])
    longest = max(data[i]["length"] for i in (0, 1, 2))
    assert batch["input_ids"].shape[1] % 8 == 0
    assert longest <= batch["input_ids"].shape[1] < longest + 8


def test_buckets_cover_every_row_once_and_reshuffle_per_epoch() -> None:
    lengths = np.random.default_rng(1).integers(1, 60, size=1003)
    sampler = LengthBuckets(lengths, batch_size=16, seed=7)
    first = list(sampler)
    assert len(first) == len(sampler) == 63
    assert sorted(i for b in first for i in b) == list(range(1003))
    assert list(sampler) == first  # deterministic for a (seed, epoch)
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert max(lengths[first[0]]) == lengths.max()  # longest batch first

    def padded_tokens(batches: list[list[int]]) -> int:
        return sum(len(b) * int(lengths[b].max()) for b in batches)

    rng = np.random.default_rng(3)
    random_batches = [list(b) for b in np.array_split(rng.permutation(1003), 63)]
    assert padded_tokens(first) < 0.7 * padded_tokens(random_batches)


def test_unknown_columns_fall_back() -> None:
    assert pad_values(["input_ids", "attention_mask", "length"], 5) == {
        "input_ids": 5,
        "attention_mask": 0,
    }
    assert pad_values(["input_ids", "special_tokens_mask", "length"], 5) == {}


def test_trainer_uses_the_padded_loader_only_for_padding_collators(
    tokenizer: object, bert_dir: Path, tmp_path: Path
) -> None:
    data = _rows(tokenizer)
    model = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8,
                             report_to="none", train_sampling_strategy="group_by_length")  # fmt: skip
    fast = FastTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                       data_collator=DataCollatorWithPadding(tokenizer))  # type: ignore[arg-type]  # fmt: skip
    batches = list(fast.get_train_dataloader())
    assert fast.fast_batches and len(batches) == 7
    assert set(batches[0]) == set(data.column_names) - {"length"}
    assert sum(len(b["labels"]) for b in batches) == 50
    mlm = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)  # type: ignore[arg-type]
    masked = FastTrainer(model=model, args=args, train_dataset=data.remove_columns("labels"),
                         processing_class=tokenizer, data_collator=mlm)  # type: ignore[arg-type]  # fmt: skip
    masked.get_train_dataloader()
    assert not masked.fast_batches


def test_switch_turns_it_off(
    tokenizer: object, bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINETUNE_FAST_BATCHES", "0")
    model = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    collator = DataCollatorWithPadding(tokenizer)  # type: ignore[arg-type]
    trainer = FastTrainer(
        model=model, args=args, train_dataset=_rows(tokenizer), data_collator=collator
    )
    trainer.get_train_dataloader()
    assert not trainer.fast_batches


class Columns(dict):  # type: ignore[type-arg]
    """Plain Python columns with the one attribute the loader reads."""

    @property
    def column_names(self) -> list[str]:
        return list(self)


def test_plain_python_columns_give_the_same_batches(tokenizer: object) -> None:
    from finetune_trainer import batching, data

    assert batching.LENGTH_COLUMN == data.LENGTH_COLUMN
    rows = _rows(tokenizer)
    plain = Columns({name: list(rows[name]) for name in rows.column_names})
    values = pad_values(rows.column_names, 0)
    arrow_batch = PaddedRows(rows, values).__getitems__([4, 9, 1])
    plain_batch = PaddedRows(plain, values).__getitems__([4, 9, 1])
    for key, value in arrow_batch.items():
        assert torch.equal(plain_batch[key], value), key


def test_speed_settings_and_their_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune_trainer import speedups

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = speedups.training_arguments()
    assert cpu["optim"] == "adamw_torch_fused" and not cpu["torch_compile"]
    assert cpu["dataloader_num_workers"] == 0 and not cpu["dataloader_pin_memory"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = speedups.training_arguments()
    assert gpu["dataloader_num_workers"] == 2 and gpu["dataloader_pin_memory"]
    assert gpu["dataloader_prefetch_factor"] == 4
    monkeypatch.setenv("FINETUNE_OPTIM", "adamw_torch")
    monkeypatch.setenv("FINETUNE_COMPILE", "1")
    monkeypatch.setenv("FINETUNE_LOADER_WORKERS", "0")
    switched = speedups.training_arguments()
    assert switched["optim"] == "adamw_torch" and switched["torch_compile"]
    assert (
        switched["dataloader_num_workers"] == 0 and switched["dataloader_prefetch_factor"] is None
    )
