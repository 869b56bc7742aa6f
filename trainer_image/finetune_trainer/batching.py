"""Training batches without per-sample Python work: pad once, bucket by length, slice.

The Trainer's default loader reads a `datasets` row per sample and pads each batch
in the collator (`tokenizer.pad` over a list of dicts): Python work per sample and
per step. Here every tokenised column is padded once into one tensor, a batch
sampler groups rows of similar length (random mega-batches sorted by length, as
transformers' `LengthGroupedSampler` does), and a batch is one fancy index and one
slice to the batch's longest row, rounded up to `multiple` (8 on GPU: tensor-core
friendly and a bounded set of shapes). `FastTrainer` uses it for the training set
when the rows fit this shape (classification, causal LM) and falls back to the
Trainer's own loader otherwise; `FINETUNE_FAST_BATCHES=0` turns it off.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from transformers import Trainer

# = finetune_trainer.data.LENGTH_COLUMN (tested); not imported from there because data
# imports `datasets`, and this module must load without it (benchmarks/gpu_throughput.py).
LENGTH_COLUMN = "length"
TOKEN_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")
MEGABATCH = 50  # batches per length-sorted mega-batch (transformers' default)


def enabled() -> bool:
    return os.environ.get("FINETUNE_FAST_BATCHES", "1").lower() not in {"0", "false", "no", "off"}


def pad_multiple() -> int:
    """8 on GPU (tensor cores, few shapes); 1 on CPU, where every pad column is paid for.
    `FINETUNE_PAD_MULTIPLE` overrides it."""
    value = os.environ.get("FINETUNE_PAD_MULTIPLE")
    if value:
        return max(1, int(value))
    return 8 if torch.cuda.is_available() else 1


class PaddedRows(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """All rows of a tokenised dataset, right-padded once to the longest row."""

    def __init__(self, data: Any, pad_values: dict[str, int], multiple: int = 1) -> None:
        self.multiple = multiple
        table = _columns(data, [LENGTH_COLUMN, *pad_values])
        self.lengths = np.asarray(table[LENGTH_COLUMN], dtype=np.int64)
        width = math.ceil(int(self.lengths.max(initial=1)) / multiple) * multiple
        self.columns: dict[str, torch.Tensor] = {}
        for name, pad in pad_values.items():
            flat = _flat(table[name])
            if flat is not None:
                self.columns[name] = _pad_rows(flat, self.lengths, width, pad)
            else:
                self.columns[name] = torch.from_numpy(np.array(table[name], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """One whole batch (the DataLoader hands the batch sampler's indices at once)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        longest = int(self.lengths[np.asarray(indices)].max())
        width = math.ceil(longest / self.multiple) * self.multiple
        return {
            name: (column[index, :width] if column.dim() == 2 else column[index])
            for name, column in self.columns.items()
        }


def _columns(data: Any, names: list[str]) -> dict[str, Any]:
    """Column name -> values: Arrow arrays from a `datasets.Dataset` (its select/split
    indices applied), Python lists from anything else with column access."""
    if hasattr(data, "with_format"):
        table = data.with_format("arrow")[:]
        return {name: table.column(name).combine_chunks() for name in names}
    return {name: data[name] for name in names}


def _flat(column: Any) -> np.ndarray | None:
    """All values of a column of token lists, concatenated; None for a scalar column."""
    if hasattr(column, "flatten") and hasattr(column, "offsets"):  # an Arrow list array
        return np.asarray(column.flatten().to_numpy(), dtype=np.int64)
    if hasattr(column, "to_numpy") or not column or not isinstance(column[0], list | tuple):
        return None
    return np.fromiter((v for row in column for v in row), dtype=np.int64)


def _pad_rows(flat: np.ndarray, lengths: np.ndarray, width: int, pad: int) -> torch.Tensor:
    """A (rows, width) tensor of the rows in `flat` (lengths given), right-padded with `pad`."""
    if len(flat) != int(lengths.sum()):
        raise ValueError("the length column does not match the token columns")
    out = np.full((len(lengths), width), pad, dtype=np.int64)
    mask = np.arange(width)[None, :] < lengths[:, None]
    out[mask] = flat
    return torch.from_numpy(out)


class LengthBuckets(Sampler[list[int]]):
    """Batches of similar length: per epoch, a seeded permutation is cut into mega-batches,
    each sorted by length and cut into optimizer-step chunks (`group` batches: the
    gradient accumulation), whose order is shuffled, the longest first (an out-of-memory
    error shows at the first step, not hours later) and a short remainder last.

    The chunks depend only on the effective batch (batch_size x group), so halving the
    batch and doubling the accumulation (autobatch.py) yields the same optimizer steps."""

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, group: int = 1) -> None:
        self.lengths = lengths
        self.batch_size = batch_size
        self.group = group
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.lengths))
        chunk = self.batch_size * self.group
        size = chunk * MEGABATCH
        chunks: list[np.ndarray] = []
        for start in range(0, len(order), size):
            mega = order[start : start + size]
            chunks.extend(_split(mega[np.argsort(-self.lengths[mega], kind="stable")], chunk))
        rest = [chunks.pop()] if len(chunks[-1]) < chunk else []
        chunks = [chunks[i] for i in rng.permutation(len(chunks))] + rest
        longest = max(range(len(chunks)), key=lambda i: int(self.lengths[chunks[i]].max()))
        if not rest or longest < len(chunks) - 1:
            chunks[0], chunks[longest] = chunks[longest], chunks[0]
        return iter([b.tolist() for c in chunks for b in _split(c, self.batch_size)])


def _split(rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]


def _whole_batch(batch: Any) -> Any:
    """The dataset already returned the whole batch (`PaddedRows.__getitems__`)."""
    return batch


def pad_values(columns: Sequence[str], pad_token_id: int, pad_type_id: int = 0) -> dict[str, int]:
    """Pad value per column, or {} when a column is not one this loader knows."""
    known = {"input_ids": pad_token_id, "attention_mask": 0, "token_type_ids": pad_type_id}
    known["labels"] = -100  # 2-D labels (LM) pad with -100; 1-D class ids are not padded
    if any(c not in known and c != LENGTH_COLUMN for c in columns) or "input_ids" not in columns:
        return {}
    return {c: known[c] for c in columns if c != LENGTH_COLUMN}


class FastTrainer(Trainer):
    """The transformers Trainer with `PaddedRows` + `LengthBuckets` as its training loader
    (when the data fits; else the Trainer's own)."""

    fast_batches: bool = False

    def get_train_dataloader(self) -> DataLoader[Any]:
        rows = self._padded_rows()
        self.fast_batches = rows is not None
        if rows is None:
            return super().get_train_dataloader()
        sampler = LengthBuckets(
            rows.lengths,
            self._train_batch_size,
            self.args.data_seed or 42,
            group=self.args.gradient_accumulation_steps,
        )
        loader = DataLoader(
            rows,
            batch_sampler=sampler,
            collate_fn=_whole_batch,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers,
            prefetch_factor=self.args.dataloader_prefetch_factor,
        )
        return self.accelerator.prepare(loader)

    def _padded_rows(self) -> PaddedRows | None:
        cached: PaddedRows | None = getattr(self, "_rows_cache", None)
        if cached is not None:
            return cached
        data = self.train_dataset
        tokenizer = self.processing_class
        if not enabled() or data is None or not hasattr(data, "column_names"):
            return None
        if LENGTH_COLUMN not in data.column_names or tokenizer is None:
            return None
        pad_id = getattr(tokenizer, "pad_token_id", None)
        columns = data.column_names
        if self.args.remove_unused_columns:  # as the Trainer's loader drops them
            self._set_signature_columns_if_needed()
            accepted = set(self._signature_columns or ()) | {LENGTH_COLUMN}
            columns = [c for c in columns if c in accepted]
        values = pad_values(columns, pad_id if pad_id is not None else 0)
        if not values or not _plain_collator(self.data_collator):
            return None
        rows = PaddedRows(data, values, pad_multiple())
        self._rows_cache = rows
        return rows


def _plain_collator(collator: Any) -> bool:
    """Only collators that merely pad can be replaced (MLM masking stays per batch)."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    return isinstance(collator, DataCollatorWithPadding | DataCollatorForSeq2Seq)
