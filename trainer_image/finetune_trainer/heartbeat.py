"""A progress line at least every 30 s of training, whatever hyperparameters.loggingSteps:
a 7-step QAT run whose steps take 40 s each is not silent for minutes.

A daemon thread looks once a second; when nothing was reported for `interval` seconds it
publishes a progress event (step, epoch, the latest metrics) through the Reporter, whose
lock keeps it apart from the Trainer's own events. It runs from train begin to train end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from finetune_trainer.report import Reporter

INTERVAL_S = 30.0


class Heartbeat(TrainerCallback):
    def __init__(
        self,
        reporter: Reporter,
        interval: float = INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        tick: float = 1.0,
    ) -> None:
        self.reporter = reporter
        self.interval = interval
        self.clock = clock
        self.tick = tick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state: TrainerState | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self._state = state
        self.reporter.touch(self.clock())
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="finetune-heartbeat", daemon=True)
        self._thread.start()

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _beat(self) -> None:
        while not self._stop.wait(self.tick):
            state = self._state
            if state is None or self.clock() - self.reporter.last_event < self.interval:
                continue
            self.reporter.progress(step=state.global_step, epoch=state.epoch or 0.0, metrics={})
