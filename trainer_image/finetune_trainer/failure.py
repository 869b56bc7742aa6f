"""One clear `error:` line for a failure nobody foresaw, instead of a traceback.

Errors the user can fix are `UserError`s with their own message. Anything else (a
library bug, out of memory, a disk full while saving) still ends in one line naming
the exception and where it was raised, which is what a bug report needs; the full
traceback is printed only with FINETUNE_DEBUG=1.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import TextIO

DEBUG_ENV = "FINETUNE_DEBUG"


def error_message(err: BaseException) -> str:
    """`Type: message (at file.py:LINE in function)`, on one line."""
    text = " ".join(str(err).split()) or "no message"
    message = f"{type(err).__name__}: {text}"
    frames = traceback.extract_tb(err.__traceback__) if err.__traceback__ else []
    if frames:
        last = frames[-1]
        message += f" (at {Path(last.filename).name}:{last.lineno} in {last.name})"
    return message


def close_progress_bars() -> None:
    """End any tqdm bar a failure left open, so the error starts on a line of its own."""
    tqdm_module = sys.modules.get("tqdm")  # never imported here just for this
    for bar in list(getattr(getattr(tqdm_module, "tqdm", None), "_instances", ())):
        bar.close()


def report_unexpected(err: BaseException, stream: TextIO | None = None) -> str:
    """Print `error: <message>` (and the traceback with FINETUNE_DEBUG=1); return the message."""
    close_progress_bars()
    out = stream or sys.stderr
    message = error_message(err)
    if os.environ.get(DEBUG_ENV):
        traceback.print_exception(err, file=out)
        hint = ""
    else:
        hint = f"; set {DEBUG_ENV}=1 for the traceback"
    print(f"error: {message}{hint}", file=out, flush=True)
    return message
