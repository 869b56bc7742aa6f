"""Datasets: read a spec's train/eval sources, validate them, map labels, tokenise once.

Files are read with `datasets.load_dataset` builders (csv, tsv, json/jsonl, parquet,
txt, chosen by extension), so both the raw table and every later `map` (label
encoding, tokenisation) are cached on disk and reused by the next run. Every
problem the user can fix raises `DataError` naming the file, row or column.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
from transformers import PreTrainedTokenizerBase

from finetune_api.models import Dataset as DatasetSpec
from finetune_api.models import DataSource
from finetune_trainer import data_files
from finetune_trainer.errors import DataError

if TYPE_CHECKING:
    from finetune_trainer.tasks.recipe import Recipe

# File extension -> (datasets builder, extra builder kwargs).
FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE}),
    ".tab": ("csv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".ndjson": ("json", {}),
    ".parquet": ("parquet", {}),
    ".pq": ("parquet", {}),
    ".txt": ("text", {}),
}
LENGTH_COLUMN = "length"


@dataclass(frozen=True)
class Table:
    """A loaded split and a human-readable name for error messages."""

    data: datasets.Dataset
    where: str
    path: Path | None = None  # the local file read, if any
    held_out: str | None = None  # the train part of a split: what evalFraction held out
    whole: datasets.Dataset | None = None  # ... and the file's rows before the split


@dataclass(frozen=True)
class LabelMap:
    """Class ids <-> original labels; ids follow the sorted order of the labels (stable)."""

    labels: tuple[str, ...]
    """The original labels as text, index = class id."""
    values: tuple[Any, ...]
    """The original label values as read (int or str), index = class id."""

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    @property
    def value2id(self) -> dict[Any, int]:
        return {v: i for i, v in enumerate(self.values)}

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class RawData:
    train: Table
    eval: Table
    label_map: LabelMap | None


def resolve(path: str, spec_dir: Path | None) -> Path:
    """A spec path: absolute as given, relative against the spec file's folder."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = (spec_dir or Path.cwd()) / p
    return p


def load_table(source: DataSource, spec_dir: Path | None, role: str) -> Table:
    """Read one data source (file by extension, or a hub dataset split)."""
    if source.hub is not None:
        return _load_hub(source, role)
    if source.uri is not None:  # downloaded into the source cache first (sources.py)
        from finetune_trainer import sources

        path = sources.fetch(source.uri, f"spec.dataset.{role}.uri", single=True)
        where = f"dataset.{role} file {source.uri}"
    else:
        assert source.path is not None
        path = resolve(source.path, spec_dir)
        where = f"dataset.{role} file {path}"
    if not path.is_file():
        raise DataError(
            f"{where}: no such file" + (" (it is a directory)" if path.is_dir() else "")
        )
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(
            f"{where}: unknown format {suffix or '(no extension)'!r}; "
            f"use one of {', '.join(sorted(FORMATS))}"
        )
    builder, kwargs = FORMATS[suffix]
    try:
        with data_files.quiet_builders():
            data = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as err:  # the builders raise many types; all mean "cannot read"
        reason = data_files.explain(path) or f"cannot read it as {suffix[1:]}: {_last_line(err)}"
        raise DataError(f"{where}: {reason}") from None
    assert isinstance(data, datasets.Dataset)
    return Table(data, where, path)


def hold_out(train: Table, fraction: float, seed: int) -> tuple[Table, Table]:
    """Split `train` into train and a held-out eval share (dataset.evalFraction), or say
    why the file cannot be split that way."""
    rows = len(train.data)
    held = math.ceil(rows * fraction)
    if rows < 2 or held >= rows:
        raise DataError(
            f"{train.where}: dataset.evalFraction {fraction:g} of its {rows} row(s) leaves "
            f"{max(rows - held, 0)} for training; lower dataset.evalFraction, add rows or "
            "set dataset.eval"
        )
    split = train.data.train_test_split(test_size=fraction, seed=seed)
    evaluation = Table(split["test"], f"{train.where} (held-out {fraction:g})", train.path)
    note = f"dataset.evalFraction {fraction:g} held out {len(split['test'])} of its {rows} rows"
    return Table(split["train"], train.where, train.path, note, train.data), evaluation


def _load_hub(source: DataSource, role: str) -> Table:
    assert source.hub is not None
    where = (
        f"dataset.{role} hub dataset {source.hub}"
        + (f" ({source.config})" if source.config else "")
        + f" split {source.split}"
    )
    try:
        data = datasets.load_dataset(source.hub, source.config, split=source.split)
    except Exception as err:
        msg = _last_line(err)
        if _offline():
            raise DataError(
                f"{where}: {source.hub} is not in the local cache and HF_HUB_OFFLINE=1 forbids "
                f"downloading; use dataset.{role}.path ({msg})"
            ) from None
        raise DataError(f"{where}: cannot load it: {msg}") from None
    if not isinstance(data, datasets.Dataset):
        raise DataError(f"{where}: expected one split, got {type(data).__name__}")
    return Table(data, where)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def _last_line(err: BaseException) -> str:
    cause: BaseException = err
    while cause.__cause__ is not None:  # builders wrap the parser error; show the root
        cause = cause.__cause__
    text = str(cause).strip() or type(cause).__name__
    return text.splitlines()[-1] if text else type(cause).__name__


def check_columns(table: Table, columns: Sequence[str], roles: Sequence[str]) -> None:
    existing = table.data.column_names
    for column, role in zip(columns, roles, strict=True):
        if column not in existing:
            raise DataError(
                f"{table.where}: {role} {column!r} not found; the columns are: "
                f"{', '.join(existing) or '(none)'}{_plain_text_hint(table)}"
            )


def _plain_text_hint(table: Table) -> str:
    """A .txt file is read as plain text: one example per line, one column `text`."""
    if table.path is None or table.path.suffix.lower() != ".txt":
        return ""
    hint = " (a .txt file is read as plain text: one example per line, in one column 'text'"
    header = data_files.looks_delimited(table.path)
    if header is not None:
        kind = "tsv" if "\t" in header else "csv"
        hint += (
            f"; its first line, {header!r}, looks like a {kind} header: rename the file "
            f"to .{kind} to read its columns"
        )
    return hint + ")"


def check_not_empty(table: Table) -> None:
    if len(table.data) == 0:
        raise DataError(f"{table.where}: the dataset is empty (no data rows)")


def check_no_missing(table: Table, column: str) -> None:
    for i, value in enumerate(table.data[column]):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise DataError(
                f"{table.where}: row {i + 1} (1-based, header excluded) has no value in "
                f"column {column!r}"
            )


def build_label_map(table: Table, column: str) -> LabelMap:
    """Sorted distinct labels of the training set; ints stay ints, strings stay strings."""
    values = [_label_value(v, table, column, i) for i, v in enumerate(table.data[column])]
    distinct = sorted(set(values), key=lambda v: (isinstance(v, str), v))
    if len(distinct) < 2 and table.held_out is not None and table.whole is not None:
        whole = {_plain(v) for v in table.whole[column]}
        if len(whole) > 1:
            raise DataError(
                f"{table.where}: {table.held_out}, and the {len(table.data)} row(s) left for "
                f"training hold a single label ({distinct[0]!r}) though the file has "
                f"{len(whole)}; lower dataset.evalFraction or set dataset.eval"
            )
    if len(distinct) < 2:
        raise DataError(
            f"{table.where}: column {column!r} holds a single label ({distinct[0]!r}); "
            "classification needs at least two classes"
        )
    return LabelMap(labels=tuple(str(v) for v in distinct), values=tuple(distinct))


def _label_value(value: Any, table: Table, column: str, row: int) -> Any:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | str):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise DataError(
        f"{table.where}: row {row + 1} (1-based, header excluded) column {column!r} holds "
        f"{value!r}; classification labels must be integers or strings"
    )


def encode_labels(table: Table, column: str, label_map: LabelMap) -> Table:
    """Replace the label column by class ids in a `labels` column; unseen labels are errors."""
    value2id = label_map.value2id
    for i, v in enumerate(table.data[column]):
        value = _label_value(v, table, column, i)
        if value not in value2id:
            known = ", ".join(label_map.labels[:20]) + (" ..." if len(label_map) > 20 else "")
            raise DataError(
                f"{table.where}: row {i + 1} (1-based, header excluded) has label {value!r} in "
                f"column {column!r}, never seen in the training data (known labels: {known})"
            )

    def to_ids(batch: dict[str, list[Any]]) -> dict[str, list[int]]:
        return {"labels": [value2id[_plain(v)] for v in batch[column]]}

    data = table.data.map(to_ids, batched=True, desc="Encoding labels")
    return Table(data, table.where)


def _plain(value: Any) -> Any:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return int(value)
    return value


def load_raw(spec: DatasetSpec, recipe: Recipe, spec_dir: Path | None, seed: int) -> RawData:
    """Train and eval tables, validated against the recipe's columns, labels encoded."""
    train = load_table(spec.train, spec_dir, "train")
    columns = recipe.columns()
    target = recipe.target_column
    _validate(train, columns)
    if spec.max_samples is not None and len(train.data) > spec.max_samples:
        train = Table(train.data.select(range(spec.max_samples)), train.where)

    if spec.eval is not None:
        evaluation = load_table(spec.eval, spec_dir, "eval")
        _validate(evaluation, columns + ([(target, "dataset.targetColumn")] if target else []))
    else:
        train, evaluation = hold_out(train, spec.eval_fraction, seed)
        if target is not None:
            check_columns(evaluation, [target], ["dataset.targetColumn"])
    if spec.max_eval_samples is not None and len(evaluation.data) > spec.max_eval_samples:
        evaluation = Table(evaluation.data.select(range(spec.max_eval_samples)), evaluation.where)
    return RawData(*recipe.encode(train, evaluation))


def _validate(table: Table, columns: Sequence[tuple[str, str]]) -> None:
    check_columns(table, [c for c, _ in columns], [role for _, role in columns])
    check_not_empty(table)
    for column, _ in columns:
        check_no_missing(table, column)


def lm_text(batch: dict[str, list[Any]], text: str, target: str | None) -> list[str]:
    """The text a language model trains on: the text, then the target when present."""
    texts = [str(t) for t in batch[text]]
    if target is not None and target in batch:
        return [f"{t} {r}" for t, r in zip(texts, batch[target], strict=True)]
    return texts


def tokenize_texts(
    table: Table,
    tokenizer: PreTrainedTokenizerBase,
    texts: Callable[[dict[str, list[Any]]], list[str]],
    max_length: int,
    *,
    keep: Sequence[str] = (),
    end_with_eos: bool = False,
    labels_from_inputs: bool = False,
    drop_empty: bool = False,
) -> datasets.Dataset:
    """Tokenise once (cached by datasets), truncating only; padding happens per batch.

    end_with_eos: every row ends with eos, so generation learns to stop.
    labels_from_inputs: labels are the input ids (a causal LM's shifted targets)."""
    remove = [c for c in table.data.column_names if c not in keep]
    eos = tokenizer.eos_token_id if end_with_eos else None
    limit = max_length - 1 if eos is not None else max_length

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        enc = dict(tokenizer(texts(batch), truncation=True, max_length=limit))
        if eos is not None:
            enc["input_ids"] = [[*ids, eos] for ids in enc["input_ids"]]
            enc["attention_mask"] = [[*mask, 1] for mask in enc["attention_mask"]]
        if labels_from_inputs:
            enc["labels"] = [list(ids) for ids in enc["input_ids"]]
        enc[LENGTH_COLUMN] = [len(ids) for ids in enc["input_ids"]]
        return enc

    data = table.data.map(encode, batched=True, remove_columns=remove, desc="Tokenizing")
    if drop_empty:
        data = data.filter(lambda n: n > 0, input_columns=LENGTH_COLUMN, desc="Dropping empty")
        if len(data) == 0:
            raise DataError(f"{table.where}: every row is empty after tokenisation")
    return data
