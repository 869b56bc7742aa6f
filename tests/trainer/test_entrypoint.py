"""The image entry point `python -m finetune_trainer` (docs/CONTRACTS.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MakeJob

pytestmark = pytest.mark.trainer


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", FINETUNE_TERMINATION_LOG=str(tmp_path / "termination-log")
    )
    env.update(extra)
    return env


def test_image_entry_point_from_env_writes_termination_message(
    bert_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    train, dev = sentiment_data
    out = tmp_path / "output"
    job = make_job(
        task="classification",
        model_path=bert_dir,
        train=train,
        eval=dev,
        hyperparameters={"maxSteps": 4, "batchSize": 8},
        output={"path": str(out)},
    )
    proc = subprocess.run(
        [sys.executable, "-m", "finetune_trainer"],
        env=_env(tmp_path, FINETUNE_JOB=json.dumps(job.dump())),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[succeeded] step 4/4" in proc.stdout
    message = json.loads((tmp_path / "termination-log").read_text())
    assert message["phase"] == "Succeeded"
    assert "accuracy" in message["metrics"] and message["artifacts"]["model"] == str(out / "model")
    assert (out / "metrics.json").is_file()


def test_image_entry_point_failure_exits_non_zero_with_message(tmp_path: Path) -> None:
    spec = tmp_path / "job.json"
    spec.write_text(
        json.dumps(
            {
                "apiVersion": "finetune.dev/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": "broken"},
                "spec": {
                    "task": "classification",
                    "model": {"path": "missing-model"},
                    "dataset": {"train": {"path": "train.csv"}},
                    "output": {"path": str(tmp_path / "out")},
                },
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "finetune_trainer", "--spec", str(spec)],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    message = json.loads((tmp_path / "termination-log").read_text())
    assert message["phase"] == "Failed" and "missing-model" in message["message"]
    assert str(tmp_path / "missing-model") in message["message"]  # resolved against the spec


def test_termination_message_fits_4096_bytes() -> None:
    from finetune_trainer.__main__ import termination_message

    big = {
        "phase": "Failed",
        "metrics": {f"m{i}": 1.0 for i in range(500)},
        "artifacts": {},
        "message": "x" * 10000,
    }
    text = termination_message(big)
    assert len(text.encode()) <= 4096
    assert json.loads(text)["phase"] == "Failed"
