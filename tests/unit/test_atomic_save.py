"""atomic.save_dir: a model folder is saved all or nothing, and a full disk reads as one
line naming the folder, whatever the library's error type (safetensors has its own)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from finetune_trainer.atomic import no_space, save_dir
from finetune_trainer.errors import RunDirError

pytestmark = pytest.mark.unit


class SafetensorError(Exception):
    """What safetensors raises on a full disk (not an OSError)."""


def _fill(directory: Path, text: str) -> None:
    directory.mkdir()
    (directory / "weights").write_text(text)


def test_a_save_replaces_the_folder(tmp_path: Path) -> None:
    target = tmp_path / "model"
    save_dir(target, lambda d: _fill(d, "one"))
    save_dir(target, lambda d: _fill(d, "two"))
    assert (target / "weights").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        SafetensorError(
            'Error while serializing: IoError(Os { code: 28, message: "No space left on device" })'
        ),
    ],
    ids=["oserror", "safetensors"],
)
def test_a_full_disk_keeps_the_earlier_model_and_leaves_nothing_partial(
    tmp_path: Path, error: Exception
) -> None:
    target = tmp_path / "model"
    save_dir(target, lambda d: _fill(d, "earlier"))

    def partly(directory: Path) -> None:
        _fill(directory, "half")
        raise error

    with pytest.raises(RunDirError) as err:
        save_dir(target, partly)
    message = str(err.value)
    assert message.startswith(f"{target}: no space left on device while saving the model")
    assert "the earlier model/ there is untouched" in message and "\n" not in message
    assert (target / "weights").read_text() == "earlier"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_other_failures_are_not_called_a_full_disk(tmp_path: Path) -> None:
    def broken(directory: Path) -> None:
        _fill(directory, "x")
        raise RuntimeError("shape mismatch")

    assert not no_space(RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        save_dir(tmp_path / "model", broken)
    assert not list(tmp_path.iterdir())
