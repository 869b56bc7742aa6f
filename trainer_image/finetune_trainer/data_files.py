"""Reading a local data file: keep the builders' raw error logs quiet, and say in words
why a file could not be read.

`datasets`' csv/json/parquet builders log "Failed to read file ... ParserError ..." at
ERROR level before they raise; the trainer raises its own DataError with the file and
the reason, so that log line is only noise ahead of it. When a load fails, `explain`
looks at the file for the causes a person can fix: no rows at all, a header and no rows,
or a byte that is not UTF-8 (reported by line, not by byte offset). A `.txt` file is read
as plain text, one example per line; `looks_delimited` spots a csv/tsv saved as .txt.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

BUILDERS_LOGGER = "datasets.packaged_modules"
TEXT_FORMATS = frozenset({".csv", ".tsv", ".json", ".jsonl", ".txt"})
DELIMITED = frozenset({".csv", ".tsv", ".tab"})


@contextlib.contextmanager
def quiet_builders() -> Iterator[None]:
    """Silence the builders' own error logs for the duration (we raise a clearer error)."""
    logger = logging.getLogger(BUILDERS_LOGGER)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def first_undecodable_line(path: Path) -> tuple[int, int, int] | None:
    """(1-based line, 1-based column, byte) of the first byte that is not UTF-8, or None."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return number, err.start + 1, raw[err.start]
    return None


def has_rows(path: Path) -> bool:
    """Whether the file holds anything but whitespace."""
    with path.open("rb") as f:
        return any(line.strip() for line in f)


def header_only(path: Path) -> str | None:
    """A csv/tsv file holding a header line and nothing else: the header, else None."""
    if path.suffix.lower() not in DELIMITED:
        return None
    with path.open("rb") as f:
        lines = [line for line in (raw.strip() for raw in f) if line]
        if len(lines) != 1:
            return None
    return lines[0].decode("utf-8", errors="replace")


def looks_delimited(path: Path) -> str | None:
    """The first line of a .txt file when it looks like a csv/tsv header (a comma or tab
    separating two or more names), else None."""
    try:
        with path.open("rb") as f:
            first = f.readline().decode("utf-8", errors="replace").strip()
    except OSError:
        return None
    for sep in ("\t", ","):
        names = [n.strip() for n in first.split(sep)]
        if len(names) >= 2 and all(n and len(n) <= 64 and " " not in n for n in names):
            return first
    return None


def explain(path: Path) -> str | None:
    """Why `path` could not be read, when the file shows it; None when it does not."""
    if not has_rows(path):
        return "the file has no rows (it is empty)"
    header = header_only(path)
    if header is not None:
        sep = "\t" if "\t" in header else ","
        names = ", ".join(n.strip() for n in header.split(sep))
        return f"the file has a header line (columns: {names}) but no data rows: it is empty"
    if path.suffix.lower() in TEXT_FORMATS:
        bad = first_undecodable_line(path)
        if bad is not None:
            line, column, byte = bad
            return (
                f"line {line} is not valid UTF-8 (byte 0x{byte:02x} at column {column}); "
                "the file must be UTF-8 encoded: re-save it as UTF-8 "
                "(e.g. iconv -f latin1 -t utf-8 in > out)"
            )
    return None
