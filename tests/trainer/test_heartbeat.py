"""A progress line at least every `interval` seconds of training, whatever loggingSteps."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from conftest import MakeJob
from transformers import TrainerCallback

from finetune_trainer import heartbeat
from finetune_trainer.report import Reporter, StdoutSink

pytestmark = pytest.mark.trainer


class SlowSteps(TrainerCallback):
    def on_step_end(self, args: object, state: object, control: object, **kw: object) -> None:
        time.sleep(0.6)


def test_heartbeat_lines_between_sparse_logs(
    bert_dir: Path,
    make_job: MakeJob,
    sentiment_data: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from finetune_trainer.run import run

    real = heartbeat.Heartbeat.__init__

    def fast(self: heartbeat.Heartbeat, reporter: Reporter, **kw: object) -> None:
        real(self, reporter, interval=0.5, tick=0.05)

    monkeypatch.setattr(heartbeat.Heartbeat, "__init__", fast)
    train, dev = sentiment_data
    # loggingSteps far past the run's end: without the heartbeat no progress line at all
    hp = {"maxSteps": 4, "loggingSteps": 1000, "evalSteps": 1000}
    job = make_job(
        task="classification", model_path=bert_dir, train=train, eval=dev, hyperparameters=hp
    )
    stream = io.StringIO()
    run(
        job,
        spec_dir=tmp_path,
        output_dir=tmp_path / "out",
        sinks=[StdoutSink(stream)],
        callbacks=[SlowSteps()],
    )
    beats = [line for line in stream.getvalue().splitlines() if line.startswith("[progress]")]
    assert len(beats) >= 2, stream.getvalue()
    assert beats[0].startswith("[progress] step ") and "/4 epoch" in beats[0]


def test_no_heartbeat_while_events_flow() -> None:
    now = [0.0]
    stream = io.StringIO()
    reporter = Reporter([StdoutSink(stream)], clock=lambda: now[0])
    beat = heartbeat.Heartbeat(reporter, interval=30, clock=lambda: now[0], tick=0.01)

    class State:
        global_step, epoch = 3, 0.5

    beat._state = State()  # type: ignore[assignment]
    reporter.touch(0.0)
    beat._stop.clear()
    import threading

    thread = threading.Thread(target=beat._beat, daemon=True)
    thread.start()
    now[0] = 29.0
    time.sleep(0.1)
    assert stream.getvalue() == ""  # not yet 30 s
    now[0] = 31.0
    time.sleep(0.1)
    beat._stop.set()
    thread.join()
    assert stream.getvalue().splitlines() == ["[progress] step 3/0 epoch 0.50"]
