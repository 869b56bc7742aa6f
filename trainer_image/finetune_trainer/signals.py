"""SIGTERM during a run: `kill PID`, a pod being stopped, a scheduler's time limit.

Within `sigterm_raises()` SIGTERM raises `Terminated` in the main thread, so the run ends
like a Ctrl-C (interrupt.py): metrics.json in phase Failed with the reason, one line on
stderr, and the process exits 143 (128 + SIGTERM), as a shell expects. No heavy imports:
the CLI's parent process of local workers uses it too.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

SIGTERM_EXIT = 128 + signal.SIGTERM  # 143


class Terminated(BaseException):  # like KeyboardInterrupt: not an Exception
    """The process received SIGTERM during a run."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread (elsewhere, and
    outside the block, the handler in place before stays)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
