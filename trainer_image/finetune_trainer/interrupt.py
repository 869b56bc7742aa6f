"""What an interrupted run (Ctrl-C, or SIGTERM) says: in its status/metrics.json and on
the terminal.

Not "KeyboardInterrupt:", but that it was interrupted and what a rerun does: the same
command resumes from the last checkpoint in the output directory when there is one
(training.resume_checkpoint), and starts over when there is none.

A SIGTERM during a run (signals.py) ends it the same way, worded "stopped by SIGTERM".
"""

from __future__ import annotations

from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint

from finetune_trainer.errors import TrainerUserError
from finetune_trainer.signals import Terminated
from finetune_trainer.training import CHECKPOINTS


def interrupted_message(output_dir: Path, how: str = "Ctrl-C") -> str:
    directory = output_dir / CHECKPOINTS
    last = get_last_checkpoint(str(directory)) if directory.is_dir() else None
    what = "interrupted (Ctrl-C)" if how == "Ctrl-C" else f"stopped by {how}"
    if last is None:
        return (
            f"{what} before the first checkpoint was saved; running the same "
            "command again starts from the beginning"
        )
    return (
        f"{what}; running the same command again resumes from the last "
        f"checkpoint, {Path(last).name} in {directory}"
    )


def failure_message(err: BaseException, output_dir: Path) -> str:
    """The status message of a failed run: the user's error as is, an interruption in words,
    anything else as `Type: message`."""
    if isinstance(err, TrainerUserError):
        return str(err)
    if isinstance(err, KeyboardInterrupt):
        return interrupted_message(output_dir)
    if isinstance(err, Terminated):
        return interrupted_message(output_dir, "SIGTERM")
    return f"{type(err).__name__}: {err}"
