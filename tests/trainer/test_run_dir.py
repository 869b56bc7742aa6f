"""A run directory is safe to reuse: one run at a time (a lock naming its holder), a
failed run keeps an earlier success's records, SIGTERM ends in one line, exit 143 and a
terminal phase; and the output path's own errors are one clean line."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import sentiment_rows, write_rows
from typer.testing import CliRunner

from finetune_cli.app import app

pytestmark = pytest.mark.trainer

FINETUNE = [sys.executable, "-c", "from finetune_cli.app import main; main()"]


def write_job(root: Path, model: Path, **hp: object) -> Path:
    write_rows(root / "train.csv", sentiment_rows(48, seed=1))
    write_rows(root / "dev.csv", sentiment_rows(16, seed=2))
    doc = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "reuse"},
        "spec": {
            "task": "classification",
            "model": {"path": str(model)},
            "dataset": {"train": {"path": "train.csv"}, "eval": {"path": "dev.csv"}},
            "hyperparameters": {"maxSteps": 2, "batchSize": 8, "maxLength": 16} | hp,
        },
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FINETUNE, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_a_failed_run_keeps_the_earlier_success_and_predict_says_which_it_reads(
    bert_dir: Path, tmp_path: Path
) -> None:
    spec = write_job(tmp_path, bert_dir)
    assert cli("run", str(spec), cwd=tmp_path).returncode == 0
    out = tmp_path / "runs" / "reuse"
    good = json.loads((out / "metrics.json").read_text())
    assert good["phase"] == "Succeeded" and good["completionTime"]
    # The README's line with a model path that does not exist here.
    failed = cli("run", str(spec), "--set", "spec.model={path: /models/minilm}", cwd=tmp_path)
    assert failed.returncode == 2
    (line,) = error_lines(failed.stderr)
    assert line.startswith("error: model.path /models/minilm: no such directory")
    assert json.loads((out / "metrics.json").read_text()) == good  # untouched
    (record,) = out.glob("failed-*.json")
    state = json.loads(record.read_text())
    assert state["phase"] == "Failed" and "/models/minilm" in state["message"]
    assert f"{out} still holds the earlier successful run (finished" in failed.stderr
    assert record.name in failed.stderr
    predicted = cli("predict", str(out), "a fine film", cwd=tmp_path)
    assert predicted.returncode == 0 and len(predicted.stdout.splitlines()) == 1
    assert f"reading the run in {out}, finished {good['completionTime']}" in predicted.stderr
    assert f"a later run failed ({record.name})" in predicted.stderr


def test_a_second_run_into_a_locked_directory_is_refused_at_once(
    bert_dir: Path, tmp_path: Path
) -> None:
    spec = write_job(tmp_path, bert_dir)
    out = tmp_path / "runs" / "reuse"
    out.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from finetune_trainer.rundir import "
            "RunLock; lock = RunLock(Path(sys.argv[1])); lock.acquire(); print('held', flush=True); "
            "time.sleep(120)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        second = cli("run", str(spec), cwd=tmp_path)
        assert time.monotonic() - started < 60  # refused before any model is loaded
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2, second.stderr
    (line,) = error_lines(second.stderr)
    assert line.startswith(f"error: output directory {out} is in use by another run: ")
    assert f"pid {holder.pid} on " in line and "--output DIR" in line
    assert not (out / "metrics.json").exists()
    # The lock went with its holder: the same command now runs.
    assert cli("run", str(spec), cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("entry", ["cli", "image"])
def test_sigterm_ends_in_one_line_exit_143_and_a_terminal_phase(
    bert_dir: Path, tmp_path: Path, entry: str
) -> None:
    spec = write_job(tmp_path, bert_dir, maxSteps=100000, loggingSteps=1)
    out = tmp_path / "out"
    if entry == "cli":
        command = [*FINETUNE, "run", str(spec), "--output", str(out)]
    else:
        command = [sys.executable, "-m", "finetune_trainer", "--spec", str(spec)]
        command += ["--output", str(out)]
    env = dict(os.environ, FINETUNE_TERMINATION_LOG=str(tmp_path / "termination"))
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:  # training has begun: metrics.json has a step
            live = out / "metrics.json"
            state = json.loads(live.read_text()) if live.is_file() else {}
            if (state.get("progress") or {}).get("step"):
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("finetune: stopped by SIGTERM"), stderr[-2000:]
    state = json.loads((out / "metrics.json").read_text())
    assert state["phase"] == "Failed" and state["message"].startswith("stopped by SIGTERM")
    if entry == "image":
        termination = json.loads((tmp_path / "termination").read_text())
        assert termination["phase"] == "Failed" and "SIGTERM" in termination["message"]


def test_output_that_is_a_file_is_one_clean_line(bert_dir: Path, tmp_path: Path) -> None:
    spec = write_job(tmp_path, bert_dir)
    target = tmp_path / "out.txt"
    target.write_text("not a folder")
    result = CliRunner().invoke(app, ["run", str(spec), "--output", str(target)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --output {target}: is a file, not a directory; give a directory path"
    ]


def test_output_on_a_read_only_mount_is_one_clean_line(
    bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_job(tmp_path, bert_dir)
    readonly = tmp_path / "mnt"
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if self.is_relative_to(readonly):  # what a read-only mount answers
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        real_mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "mkdir", mkdir)
    result = CliRunner().invoke(app, ["run", str(spec), "--output", str(readonly / "run")])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line == (
        f"error: --output {readonly / 'run'}: cannot create it: Read-only file system; "
        "choose a writable place with --output DIR (or spec.output.path)"
    )


def test_relative_set_paths_resolve_against_the_current_directory(
    bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_dir = tmp_path / "examples"
    spec_dir.mkdir()
    spec = write_job(spec_dir, bert_dir)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny").symlink_to(bert_dir)
    monkeypatch.chdir(tmp_path)  # as a shell user in the repo root
    result = CliRunner().invoke(
        app, ["run", str(spec), "--set", "spec.model.path=models/tiny", "--output", "o"]
    )
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "o" / "run.json").read_text())
    assert info["baseModel"] == str(tmp_path / "models" / "tiny")
    # The YAML file's own relative paths still resolve against its folder (train.csv).


def test_predict_refuses_an_empty_input(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["predict", str(tmp_path), "good", ""])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "error: input 2 of 2 is empty: give the text to classify or continue, e.g. "
        'finetune predict RUN_DIR "a gorgeous, moving film"'
    ]
