"""A run killed mid-way, restarted with the same spec, resumes and ends at the same step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeJob

pytestmark = pytest.mark.trainer


class Killed(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_total_steps(
    bert_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from transformers import TrainerCallback

    from finetune_trainer.report import Event, RunState
    from finetune_trainer.run import run

    class KillAt(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == 7:
                raise Killed

    class Record:
        def __init__(self) -> None:
            self.starts: list[str] = []

        def emit(self, event: Event, state: RunState) -> None:
            if event.kind == "start":
                self.starts.append(event.message)

    train, dev = sentiment_data
    out = tmp_path / "out"
    # 96 rows / batch 8 = 12 steps; evaluations and checkpoints every 3 steps.
    job = make_job(
        task="classification",
        model_path=bert_dir,
        train=train,
        eval=dev,
        hyperparameters={"epochs": 1, "batchSize": 8, "evalSteps": 3},
    )
    with pytest.raises(Killed):
        run(job, spec_dir=tmp_path, output_dir=out, callbacks=[KillAt()])
    assert json.loads((out / "metrics.json").read_text())["phase"] == "Failed"
    assert (out / "checkpoints" / "checkpoint-6").is_dir()

    record = Record()
    run(job, spec_dir=tmp_path, output_dir=out, sinks=[record])
    assert "resuming from checkpoint-6" in record.starts[0]
    history = json.loads((out / "log_history.json").read_text())
    assert max(h["step"] for h in history) == 12
    state = json.loads((out / "metrics.json").read_text())
    assert state["phase"] == "Succeeded" and state["progress"]["step"] == 12
    # the evaluations from before the interruption stay in the history
    assert [h["step"] for h in state["history"]] == [3, 6, 9, 12]
    assert all("accuracy" in h and "evalLoss" in h for h in state["history"])


def test_ctrl_c_says_interrupted_and_what_a_rerun_does(
    bert_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from transformers import TrainerCallback

    from finetune_trainer.run import run

    class CtrlCAt(TrainerCallback):
        def __init__(self, step: int) -> None:
            self.step = step

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == self.step:
                raise KeyboardInterrupt

    train, dev = sentiment_data
    out = tmp_path / "out"
    hp = {"epochs": 1, "batchSize": 8, "evalSteps": 3, "maxSteps": 5}
    job = make_job(
        task="classification", model_path=bert_dir, train=train, eval=dev, hyperparameters=hp
    )
    with pytest.raises(KeyboardInterrupt):
        run(job, spec_dir=tmp_path, output_dir=out, callbacks=[CtrlCAt(2)])
    state = json.loads((out / "metrics.json").read_text())
    assert state["phase"] == "Failed"
    assert state["message"].startswith("interrupted (Ctrl-C) before the first checkpoint")
    assert "KeyboardInterrupt" not in state["message"]
    with pytest.raises(KeyboardInterrupt):
        run(job, spec_dir=tmp_path, output_dir=out, callbacks=[CtrlCAt(4)])
    message = json.loads((out / "metrics.json").read_text())["message"]
    assert "resumes from the last checkpoint, checkpoint-3" in message


def test_a_changed_spec_does_not_resume_stale_checkpoints(
    bert_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from finetune_trainer.training import CHECKPOINTS, resume_checkpoint

    train, dev = sentiment_data
    out = tmp_path / "out"
    first = make_job(task="classification", model_path=bert_dir, train=train, eval=dev)
    assert resume_checkpoint(out, first.spec) is None
    (out / CHECKPOINTS / "checkpoint-3").mkdir()
    assert resume_checkpoint(out, first.spec) is not None
    changed = make_job(
        task="classification",
        model_path=bert_dir,
        train=train,
        eval=dev,
        hyperparameters={"learningRate": 1e-4},
    )
    assert resume_checkpoint(out, changed.spec) is None


def test_timed_checkpoints_save_on_the_clock_but_not_at_the_end() -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from finetune_trainer.training import TimedCheckpoints

    now = [0.0]
    callback = TimedCheckpoints(10, clock=lambda: now[0])
    args = TrainingArguments(output_dir="unused", report_to="none")
    state = TrainerState(max_steps=5)
    saved = []
    for step in range(1, 6):
        state.global_step = step
        now[0] = step * 4.0
        control = TrainerControl()
        callback.on_step_end(args, state, control)
        saved.append(control.should_save)
    assert saved == [False, False, True, False, False]  # 12 s > 10 s; step 5 is the end


def test_sigkilled_image_run_resumes_with_the_same_command(
    bert_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    """The real thing: `python -m finetune_trainer` killed with SIGKILL mid-run, restarted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    train, dev = sentiment_data
    out = tmp_path / "out"
    job = make_job(
        task="classification",
        model_path=bert_dir,
        train=train,
        eval=dev,
        hyperparameters={"maxSteps": 600, "batchSize": 8, "evalSteps": 50, "loggingSteps": 50},
        output={"path": str(out)},
    )
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(job.dump()))
    command = [sys.executable, "-m", "finetune_trainer", "--spec", str(spec)]
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        FINETUNE_TERMINATION_LOG=str(tmp_path / "termination-log"),
    )

    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not any((out / "checkpoints").glob("checkpoint-*/trainer_state.json")):
        assert first.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # let the checkpoint finish writing, keep training
    first.send_signal(signal.SIGKILL)
    first.wait()
    steps_done = [int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*")]
    assert steps_done and max(steps_done) < 600

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming from checkpoint-" in second.stdout
    assert "[succeeded] step 600/600" in second.stdout
    history = json.loads((out / "log_history.json").read_text())
    assert max(h["step"] for h in history) == 600


def test_finetune_run_ctrl_c_prints_what_a_rerun_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import finetune_trainer.run
    from finetune_cli.app import app

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune_trainer.run, "run_local", interrupted)
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "apiVersion: finetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: ctrl-c}\n"
        "spec:\n  task: classification\n  model: {path: /m}\n"
        "  dataset: {train: {path: train.csv}}\n"
    )
    out = tmp_path / "out"
    (out / "checkpoints" / "checkpoint-40").mkdir(parents=True)
    result = CliRunner().invoke(app, ["run", str(spec), "--output", str(out)])
    assert result.exit_code == 130, result.output
    assert "resumes from the last checkpoint, checkpoint-40" in result.output
    assert "Traceback" not in result.output and "Aborted" not in result.output
