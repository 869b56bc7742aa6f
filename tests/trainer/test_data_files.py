"""A data file that cannot be read is explained in words, with no raw builder log first."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.trainer


def _load_error(path: Path) -> str:
    from finetune_api.models import DataSource
    from finetune_trainer.data import load_table
    from finetune_trainer.errors import DataError

    with pytest.raises(DataError) as err:
        load_table(DataSource(path=str(path)), None, "train")
    return str(err.value)


def test_non_utf8_byte_is_reported_by_line(tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_bytes(b"text,label\ngood film,1\ncaf\xe9 au lait,0\nbad,0\n")
    msg = _load_error(train)
    assert "train.csv" in msg
    assert "line 3 is not valid UTF-8 (byte 0xe9 at column 4)" in msg
    assert "must be UTF-8 encoded" in msg


def test_empty_file_says_it_has_no_rows(tmp_path: Path) -> None:
    for name, content in (("train.csv", b""), ("train.jsonl", b"\n\n"), ("train.tsv", b"")):
        path = tmp_path / name
        path.write_bytes(content)
        msg = _load_error(path)
        assert name in msg and "the file has no rows (it is empty)" in msg, msg
        assert "Instruction" not in msg


def test_parser_error_has_no_raw_log_line_first(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    train = tmp_path / "train.csv"
    train.write_text("text,label\ngood,1\nx,1,2,3,4\n")  # pandas ParserError on line 3
    msg = _load_error(train)
    assert msg.startswith(f"dataset.train file {train}: cannot read it as csv:")
    captured = capfd.readouterr()
    assert "Failed to read file" not in captured.err + captured.out
