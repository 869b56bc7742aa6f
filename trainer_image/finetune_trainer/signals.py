"""SIGTERM during a run: `kill PID`, a pod being stopped, a scheduler's time limit.

Within `sigterm_raises()` SIGTERM raises `Terminated` in the main thread, so the run ends
like a Ctrl-C (interrupt.py): metrics.json in phase Failed with the reason, one line on
stderr, and the process exits 143 (128 + SIGTERM), as a shell expects. No heavy imports:
the CLI's parent process of local workers uses it too.

Within `deferred()` (the training loop, durable.SaveOnSigterm) SIGTERM only sets a flag:
the loop's next step boundary saves a checkpoint of the last completed optimizer step
and then raises `Terminated` itself, so the run still exits 143, with its work kept.
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


BUDGET_EXHAUSTED = "BudgetExhausted"


class BudgetExhausted(BaseException):
    """spec.budget is spent: a checkpoint was saved and the run stops (phase Suspended,
    reason BudgetExhausted). Not an error: the image exits 0, so the Job is not retried."""

    reason = BUDGET_EXHAUSTED

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.message = message
        self.step = step


_deferring = False
_requested = threading.Event()


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    if _deferring:
        _requested.set()
        return
    raise Terminated()


def requested() -> bool:
    """SIGTERM arrived while deferred (the caller saves, then raises Terminated)."""
    return _requested.is_set()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within the block SIGTERM sets `requested()` instead of raising; a SIGTERM still
    pending at its end raises `Terminated` there."""
    global _deferring
    _requested.clear()
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
    if _requested.is_set():
        _requested.clear()
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
