"""spec.tracking.mlflow against a real `mlflow server` (SQLite) and spec.evaluation.lmEval
with the bundled task (examples/lm-eval-tasks), on the tiny GPT-2."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import QA, MakeJob, write_rows

from finetune_trainer.run import run
from finetune_trainer.tracking import spec_params
from support.mlflow_server import MlflowServer, free_port, mlflow_server

pytestmark = [pytest.mark.trainer, pytest.mark.slow]

TASKS = Path(__file__).resolve().parents[2] / "examples" / "lm-eval-tasks"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as s:
        yield s


def _qa_job(make_job: MakeJob, gpt2_dir: Path, tmp_path: Path, **spec: object):  # type: ignore[no-untyped-def]
    text = [{"text": f"{q} {a}"} for q, a in QA]
    train = write_rows(tmp_path / "train.jsonl", text * 8)
    dev = write_rows(tmp_path / "dev.jsonl", text)
    return make_job(
        task="causal-lm",
        model_path=gpt2_dir,
        train=train,
        eval=dev,
        name="tracked",
        hyperparameters={"epochs": 2, "evalSteps": 4, "loggingSteps": 2},
        **spec,
    )


def test_tracked_run_matches_metrics_json_and_lm_eval_matches_by_hand(
    server: MlflowServer, gpt2_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    job = _qa_job(
        make_job,
        gpt2_dir,
        tmp_path,
        tracking={"mlflow": {"uri": server.url, "experiment": "tests", "registerModel": "tiny-qa"}},
        evaluation={"lmEval": {"tasks": ["tiny_colors"], "includePath": str(TASKS)}},
    )
    out = tmp_path / "out"
    run(job, spec_dir=tmp_path, output_dir=out)
    record = json.loads((out / "metrics.json").read_text())
    url = record["artifacts"]["trackingRun"]
    run_id = url.rsplit("/", 1)[-1]
    logged = server.run(run_id)
    assert logged["info"]["status"] == "FINISHED"

    # params: the resolved spec, every field
    params = {p["key"]: p["value"] for p in logged["data"]["params"]}
    assert params == spec_params(job.spec)
    assert params["hyperparameters.batchSize"] == "8"

    # metrics: the final values (latest) and every evaluation point at its step
    latest = {m["key"]: m["value"] for m in logged["data"]["metrics"]}
    for key, value in record["metrics"].items():
        assert latest[key] == pytest.approx(value, rel=1e-9), key
    assert record["history"], "evaluations were made"
    for entry in record["history"]:
        for key, value in entry.items():
            if key in ("epoch", "step"):
                continue
            points = {p["step"]: p["value"] for p in server.metric_history(run_id, key)}
            assert points.get(entry["step"]) == pytest.approx(value, rel=1e-9), (key, entry)
    # every training-loss point of the Trainer's log, at its step
    losses = [h for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    logged_losses = [(p["step"], p["value"]) for p in server.metric_history(run_id, "trainLoss")]
    assert len(losses) >= 3
    for h in losses:  # (the run's final, averaged trainLoss joins the last step too)
        at_step = [v for step, v in logged_losses if step == h["step"]]
        assert any(v == pytest.approx(h["loss"], rel=1e-6) for v in at_step), (h, at_step)

    # artifacts: metrics.json (its final form), the loss curve, lm-eval's results, the model
    files = server.artifacts(run_id)
    assert {"metrics.json", "loss.png", "lm_eval.json", "model"} <= set(files)
    assert record["artifacts"]["modelVersion"] == "models:/tiny-qa/1"

    # lm-eval: status keys, and the same accuracy as lm-eval by hand on the saved model
    acc = record["metrics"]["lmEval.tiny_colors.acc"]
    assert 0.0 <= acc <= 1.0
    assert "lmEval.tiny_colors.acc_norm" in record["metrics"]
    assert latest["lmEval.tiny_colors.acc"] == pytest.approx(acc)
    by_hand = _lm_eval_by_hand(out / "model", tmp_path)
    assert by_hand["results"]["tiny_colors"]["acc,none"] == pytest.approx(acc, abs=1e-12)
    assert by_hand["results"]["tiny_colors"]["acc_norm,none"] == pytest.approx(
        record["metrics"]["lmEval.tiny_colors.acc_norm"], abs=1e-12
    )


def _lm_eval_by_hand(
    model_dir: Path, tmp_path: Path, model_args: str | None = None, limit: int | None = None
) -> dict:  # type: ignore[type-arg]
    """lm-eval's own CLI on the saved model folder, as a user would run it."""
    import os
    import subprocess
    import sys

    out = tmp_path / "by-hand"
    subprocess.run(
        [
            sys.executable, "-m", "lm_eval", "run",
            "--model", "hf",
            "--model_args", f"{model_args or f'pretrained={model_dir}'},dtype=float32",
            "--tasks", "tiny_colors",
            "--include_path", str(TASKS),
            "--device", "cpu",
            "--batch_size", "8",
            "--output_path", str(out),
            *(["--limit", str(limit)] if limit else []),
        ],
        check=True,
        cwd=TASKS,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
    )  # fmt: skip
    found = sorted(out.rglob("results_*.json"))
    assert found, list(out.rglob("*"))
    return dict(json.loads(found[-1].read_text()))


def test_tracking_server_down_costs_a_bounded_wait_and_says_what_was_lost(
    gpt2_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    job = _qa_job(make_job, gpt2_dir, tmp_path, tracking={"mlflow": {"uri": dead}})
    out = tmp_path / "out"
    started = time.monotonic()
    metrics = run(job, spec_dir=tmp_path, output_dir=out)
    elapsed = time.monotonic() - started
    record = json.loads((out / "metrics.json").read_text())
    assert record["phase"] == "Succeeded"
    assert "perplexity" in metrics
    assert "trackingRun" not in record["artifacts"]
    assert re.search(
        r"^tracking: \d+ metric points, the run's files not logged to MLflow \(", record["message"]
    ), record["message"]
    assert "ConnectionError" in record["message"] or "onnection" in record["message"]
    assert elapsed < 120, elapsed  # no retry storm


def test_lm_eval_on_a_lora_run_is_base_plus_adapter(
    gpt2_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    """A LoRA run is evaluated as base plus adapter: the same number as lm-eval by hand
    with `peft=<adapter>` on the base model."""
    job = _qa_job(
        make_job,
        gpt2_dir,
        tmp_path,
        lora={"rank": 4, "alpha": 8, "targetModules": ["c_attn"], "dropout": 0.0},
        evaluation={"lmEval": {"tasks": ["tiny_colors"], "includePath": str(TASKS), "limit": 12}},
    )
    out = tmp_path / "out"
    run(job, spec_dir=tmp_path, output_dir=out)
    record = json.loads((out / "metrics.json").read_text())
    acc = record["metrics"]["lmEval.tiny_colors.acc"]
    by_hand = _lm_eval_by_hand(
        out / "adapter",
        tmp_path,
        model_args=f"pretrained={gpt2_dir},peft={out / 'adapter'}",
        limit=12,
    )
    assert by_hand["results"]["tiny_colors"]["acc,none"] == pytest.approx(acc, abs=1e-12)
    assert json.loads((out / "lm_eval.json").read_text())["results"]["tiny_colors"]


def test_sweep_trials_are_child_runs_of_one_parent(
    server: MlflowServer, bert_dir: Path, tmp_path: Path
) -> None:
    import yaml
    from conftest import sentiment_rows
    from typer.testing import CliRunner

    from finetune_cli.app import app

    write_rows(tmp_path / "train.csv", sentiment_rows(32, seed=1))
    write_rows(tmp_path / "dev.csv", sentiment_rows(16, seed=2))
    template = {
        "task": "classification",
        "model": {"path": str(bert_dir)},
        "dataset": {"train": {"path": "train.csv"}, "eval": {"path": "dev.csv"}},
        "hyperparameters": {"epochs": 1, "batchSize": 8, "maxLength": 16, "loggingSteps": 2},
        "tracking": {"mlflow": {"uri": server.url, "experiment": "sweeps"}},
    }
    doc = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "HyperparameterSweep",
        "metadata": {"name": "tracked-sweep"},
        "spec": {
            "template": template,
            "objective": {"metric": "accuracy"},
            "searchSpace": {
                "hyperparameters.learningRate": {"type": "float", "low": 1e-4, "high": 1e-2}
            },
            "pruner": {"type": "none"},
            "maxTrials": 2,
            "parallelism": 1,
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(app, ["sweep", str(path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    experiment = server.get("experiments/get-by-name", experiment_name="sweeps")["experiment"]
    runs = server.runs(experiment["experiment_id"])
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parents = [r for r, t in zip(runs, tags, strict=True) if "finetune.dev/sweep-parent" in t]
    assert len(parents) == 1
    parent_id = parents[0]["info"]["run_id"]
    children = sorted(t["mlflow.runName"] for t in tags if t.get("mlflow.parentRunId") == parent_id)
    assert children == ["tracked-sweep-trial-0", "tracked-sweep-trial-1"]


def test_beats_base_reports_the_base_model_on_the_same_eval_set_and_tasks(
    gpt2_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    """spec.promote.when.beatsBase: the base model's eval loss, perplexity and lm-eval
    accuracy go beside the run's as base.<metric>; for LoRA the base is the model before
    its (zero-initialised) adapter trained, i.e. the pretrained weights: lm-eval by hand
    on the base model folder gives the same accuracy, and its perplexity is the run's
    perplexityBefore."""
    tasks = {"tasks": ["tiny_colors"], "includePath": str(TASKS), "limit": 12}
    job = _qa_job(
        make_job,
        gpt2_dir,
        tmp_path,
        lora={"rank": 4, "alpha": 8, "targetModules": ["c_attn"], "dropout": 0.0},
        evaluation={"lmEval": tasks},
        promote={"when": {"metric": "perplexity", "beatsBase": {"by": 0.5}}},
    )
    out = tmp_path / "out"
    run(job, spec_dir=tmp_path, output_dir=out)
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["base.perplexity"] == pytest.approx(metrics["perplexityBefore"], rel=1e-6)
    assert metrics["base.perplexity"] != pytest.approx(metrics["perplexity"], rel=1e-3)
    assert metrics["base.evalLoss"] > metrics["evalLoss"]  # training did something
    base_acc = metrics["base.lmEval.tiny_colors.acc"]
    by_hand = _lm_eval_by_hand(gpt2_dir, tmp_path, limit=12)
    assert by_hand["results"]["tiny_colors"]["acc,none"] == pytest.approx(base_acc, abs=1e-12)
    assert "lmEval.tiny_colors.acc" in metrics  # the run's own, beside it
    assert json.loads((out / "base" / "lm_eval.json").read_text())["results"]["tiny_colors"]
