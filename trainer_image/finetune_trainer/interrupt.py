"""What an interrupted run (Ctrl-C) says: in its status/metrics.json and on the terminal.

Not "KeyboardInterrupt:", but that it was interrupted and what a rerun does: the same
command resumes from the last checkpoint in the output directory when there is one
(training.resume_checkpoint), and starts over when there is none.
"""

from __future__ import annotations

from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint

from finetune_trainer.errors import TrainerUserError
from finetune_trainer.training import CHECKPOINTS


def interrupted_message(output_dir: Path) -> str:
    directory = output_dir / CHECKPOINTS
    last = get_last_checkpoint(str(directory)) if directory.is_dir() else None
    if last is None:
        return (
            "interrupted (Ctrl-C) before the first checkpoint was saved; running the same "
            "command again starts from the beginning"
        )
    return (
        f"interrupted (Ctrl-C); running the same command again resumes from the last "
        f"checkpoint, {Path(last).name} in {directory}"
    )


def failure_message(err: BaseException, output_dir: Path) -> str:
    """The status message of a failed run: the user's error as is, an interruption in words,
    anything else as `Type: message`."""
    if isinstance(err, TrainerUserError):
        return str(err)
    if isinstance(err, KeyboardInterrupt):
        return interrupted_message(output_dir)
    return f"{type(err).__name__}: {err}"
