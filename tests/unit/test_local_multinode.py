"""Local multi-process runs: the torchrun command `finetune run` starts, and the local
sweep's clear refusal of multi-node trial templates."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from finetune_api.manifest import UserError
from finetune_api.models import FineTuneJob, HyperparameterSweep
from finetune_cli.launch import default_output, torchrun_command
from finetune_cli.sweep_local import run_sweep

pytestmark = pytest.mark.unit


def test_finetune_run_starts_the_trainer_entry_under_torchrun_standalone(tmp_path: Path) -> None:
    command = torchrun_command(3, tmp_path / "job.json", tmp_path, tmp_path / "out")
    assert command[:3] == [sys.executable, "-m", "finetune_trainer.torchrun"]
    assert "--standalone" in command and "--nproc-per-node=3" in command
    # The same entry point as a pod: python -m finetune_trainer --spec FILE.
    module = command.index("-m", 3)
    assert command[module + 1 : module + 4] == [
        "finetune_trainer",
        "--spec",
        str(tmp_path / "job.json"),
    ]
    assert command[-4:] == ["--spec-dir", str(tmp_path), "--output", str(tmp_path / "out")]


def test_default_output_matches_the_trainer() -> None:
    job = FineTuneJob.model_validate(
        {
            "metadata": {"name": "demo"},
            "spec": {
                "task": "classification",
                "model": {"path": "/m"},
                "dataset": {"train": {"path": "t.tsv"}},
            },
        }
    )
    assert default_output(job) == Path("runs") / "demo"


def test_local_sweep_refuses_multi_node_trials(tmp_path: Path) -> None:
    doc: dict[str, Any] = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "HyperparameterSweep",
        "metadata": {"name": "multi"},
        "spec": {
            "template": {
                "task": "classification",
                "model": {"path": "/m"},
                "dataset": {"train": {"path": "t.tsv"}},
                "resources": {"nodes": 2},
            },
            "searchSpace": {
                "hyperparameters.learningRate": {"type": "float", "low": 0.001, "high": 0.01}
            },
            "maxTrials": 2,
            "parallelism": 1,
        },
    }
    sweep = HyperparameterSweep.model_validate(doc)
    with pytest.raises(UserError, match=r"spec\.template\.resources\.nodes=1"):
        run_sweep(sweep, spec_dir=tmp_path, output=tmp_path / "out")
