"""`finetune sweep FILE.yaml` end to end on a tiny random-weight BERT (seconds, CPU)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import sentiment_rows, write_rows
from typer.testing import CliRunner

from finetune_cli.app import app

pytestmark = pytest.mark.trainer


def write_sweep(tmp_path: Path, model: Path, **spec: object) -> Path:
    write_rows(tmp_path / "data" / "train.csv", sentiment_rows(48, seed=1))
    write_rows(tmp_path / "data" / "dev.csv", sentiment_rows(24, seed=2))
    doc = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "HyperparameterSweep",
        "metadata": {"name": "tiny-sweep"},
        "spec": {
            "template": {
                "task": "classification",
                "model": {"path": str(model)},
                # relative paths resolve against the YAML file's folder
                "dataset": {"train": {"path": "data/train.csv"}, "eval": {"path": "data/dev.csv"}},
                "hyperparameters": {
                    "epochs": 1,
                    "batchSize": 8,
                    "maxLength": 16,
                    "evalSteps": 2,
                    "loggingSteps": 2,
                },
            },
            "objective": {"metric": "accuracy", "direction": "maximize"},
            "searchSpace": {
                "hyperparameters.learningRate": {
                    "type": "float",
                    "low": 1.0e-4,
                    "high": 5.0e-2,
                    "log": True,
                },
                "hyperparameters.batchSize": {"type": "categorical", "choices": [8, 16]},
            },
            "sampler": {"type": "tpe", "seed": 0},
            "pruner": {"type": "median"},
            "maxTrials": 4,
            "parallelism": 1,
            **spec,
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_finetune_sweep_cli_on_a_tiny_model(tmp_path: Path, bert_dir: Path) -> None:
    path = write_sweep(tmp_path, bert_dir)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sweep", str(path), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "trial  state" in result.output and "finetune sweep: Succeeded" in result.output
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["name"] for r in rows] == [f"tiny-sweep-trial-{n}" for n in range(4)]
    assert {r["state"] for r in rows} <= {"Succeeded", "Pruned"}
    for r in rows:
        assert json.loads(r["intermediate"]), r  # the objective was reported at evaluations
        assert int(r["steps"]) > 0
    best = json.loads((out / "best_params.json").read_text())
    assert best["trial"].startswith("tiny-sweep-trial-")
    assert set(best["params"]) == {"hyperparameters.learningRate", "hyperparameters.batchSize"}
    succeeded = [r for r in rows if r["state"] == "Succeeded"]
    assert best["value"] == max(float(r["value"]) for r in succeeded)
    assert (out / "optimization_history.png").stat().st_size > 1000
    # each trial ran the real trainer into its own folder
    first = out / "trials" / "tiny-sweep-trial-0" / "metrics.json"
    assert first.exists()


def test_bad_search_space_is_a_clear_cli_error(tmp_path: Path, bert_dir: Path) -> None:
    path = write_sweep(tmp_path, bert_dir, sampler={"type": "grid"})
    result = CliRunner().invoke(app, ["sweep", str(path), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "continuous float" in result.output


def test_sweep_stops_at_a_data_error_every_trial_would_hit(tmp_path: Path, bert_dir: Path) -> None:
    path = write_sweep(tmp_path, bert_dir, maxFailedTrials=3)
    (tmp_path / "data" / "train.csv").write_bytes(b"")  # same for every trial
    out = tmp_path / "out"
    command = [sys.executable, "-c", "from finetune_cli.app import main; main()"]
    command += ["sweep", str(path), "--output", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["Failed"]  # not retried maxFailedTrials + 1 times
    assert "the file has no rows (it is empty)" in rows[0]["message"]
    assert "every trial would hit" in proc.stderr
    # a real process: none of torchao's or torch's import-time logs reach the user
    for noise in ("_C_mxfp8", "_C_cutlass", "_pytree", "LOAD REPORT", "Traceback"):
        assert noise not in proc.stdout + proc.stderr, noise


def test_sweep_shows_progress_inside_a_trial(
    tmp_path: Path, bert_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from rich.console import Console

    from finetune_api.manifest import load_manifest
    from finetune_api.models import HyperparameterSweep
    from finetune_cli.sweep_local import run_sweep

    path = write_sweep(tmp_path, bert_dir, maxTrials=1)
    sweep = load_manifest(path, HyperparameterSweep)
    run_sweep(sweep, spec_dir=tmp_path, output=tmp_path / "out", console=Console(quiet=True))
    lines = capfd.readouterr().out.splitlines()
    assert any("tiny-sweep-trial-0: start step 0/" in line for line in lines), lines
    evaluations = [line for line in lines if "tiny-sweep-trial-0: evaluation step" in line]
    assert evaluations and all("accuracy=" in line for line in evaluations)
