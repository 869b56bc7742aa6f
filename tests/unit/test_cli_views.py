"""Pure parts of the cluster views: durations, ETA, phases, pod choice, failure reasons."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from finetune_cli import cluster, views
from finetune_cli.cluster import Details

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def stamp(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def ftj(status: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "j", **meta}, "spec": {"task": "classification"}, "status": status}


def test_durations_read_like_kubectl() -> None:
    assert [views.duration(s) for s in (5, 119, 125, 3599, 7500, 200000)] == [
        "5s",
        "119s",
        "2m05s",
        "59m",
        "2h5m",
        "2d",
    ]


def test_eta_from_the_pace_so_far_and_only_while_running() -> None:
    running = {
        "phase": "Running",
        "startTime": stamp(100),
        "progress": {"step": 50, "totalSteps": 150},
    }
    assert views.job_eta(ftj(running), NOW) == "3m20s"  # 100 s per 50 steps, 100 to go
    assert views.job_eta(ftj({**running, "phase": "Succeeded"}), NOW) == ""
    assert views.job_eta(ftj({**running, "progress": {"step": 0, "totalSteps": 150}}), NOW) == ""


def test_key_metric_prefers_the_tasks_metric() -> None:
    job = ftj({"metrics": {"evalLoss": 0.4, "accuracy": 0.8, "trainLoss": 0.3}})
    assert views.key_metric(job) == ("accuracy", 0.8)
    job["spec"]["task"] = "causal-lm"
    job["status"]["metrics"] = {"evalLoss": 2.0, "perplexity": 7.4}
    assert views.key_metric(job) == ("perplexity", 7.4)
    assert views.key_metric(job, "evalLoss") == ("evalLoss", 2.0)


def test_a_pruned_trial_shows_as_pruned() -> None:
    trial = ftj({"phase": "Suspended"}, annotations={"finetune.dev/trial-state": "pruned"})
    assert views.phase_of(trial) == "Pruned"
    assert views.phase_of(ftj({})) == "Pending"


def test_pick_pod_by_rank_newest_first() -> None:
    def pod(name: str, index: str | None) -> dict[str, Any]:
        labels = {} if index is None else {cluster.INDEX_LABEL: index}
        return {"metadata": {"name": name, "labels": labels}}

    pods = [pod("a-0", "0"), pod("a-1", "1"), pod("b-0", "0")]  # oldest first
    assert cluster.pick_pod(pods, None)["metadata"]["name"] == "b-0"  # type: ignore[index]
    assert cluster.pick_pod(pods, 1)["metadata"]["name"] == "a-1"  # type: ignore[index]
    assert cluster.pick_pod(pods, 2) is None
    plain = [pod("p", None)]
    assert cluster.pick_pod(plain, 0) is plain[0] and cluster.pick_pod(plain, 1) is None


def test_explain_says_each_reason_once() -> None:
    job = ftj(
        {"phase": "Failed", "message": "The trainer ran out of memory (OOMKilled, limit 8Gi)."}
    )
    job["spec"]["resources"] = {"memory": "8Gi"}
    pull = {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}}
    pods = [
        {
            "status": {
                "containerStatuses": [
                    {"state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}
                ]
            }
        },
        {"status": {"containerStatuses": [{"image": "trainer:9", "state": pull}]}},
    ]
    deadline = {"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}
    details = Details(
        job={"spec": {"activeDeadlineSeconds": 60}, "status": {"conditions": [deadline]}},
        pods=pods,
    )
    reasons = views.explain(job, details)
    assert reasons[0].startswith("The trainer ran out of memory")
    assert "DeadlineExceeded: the Job ran longer than activeDeadlineSeconds (60 s)" in reasons[1]
    assert reasons[2] == "ImagePullBackOff: cannot pull image 'trainer:9': not found"
    assert len(reasons) == 3  # pods: the newest only


def test_describe_shows_the_tracking_link_and_the_lm_eval_table() -> None:
    from rich.console import Console

    status = {
        "phase": "Succeeded",
        "metrics": {
            "perplexity": 3.5,
            "lmEval.tiny_colors.acc": 0.75,
            "lmEval.tiny_colors.acc_stderr": 0.0903,
            "lmEval.gsm8k.exact_match.strict-match": 0.25,
        },
        "artifacts": {
            "trackingRun": "http://mlflow:5000/#/experiments/1/runs/abc",
            "modelVersion": "models:/bot/3",
        },
    }
    console = Console(width=200, record=True)
    for section in views.describe_job(ftj(status), Details(job=None, pods=[])):
        console.print(section)
    text = console.export_text()
    assert "http://mlflow:5000/#/experiments/1/runs/abc" in text
    assert "models:/bot/3" in text
    assert views.lm_eval_rows(status["metrics"]) == [
        ("gsm8k", "exact_match.strict-match", 0.25, None),
        ("tiny_colors", "acc", 0.75, 0.0903),
    ]
    row = next(line for line in text.splitlines() if "tiny_colors" in line)
    assert row.split() == ["tiny_colors", "acc", "0.7500", "0.0903"]
    metrics_row = next(line for line in text.splitlines() if line.startswith("Metrics"))
    assert "lmEval" not in metrics_row


def test_predict_summary_names_the_tracking_run_and_lm_eval(tmp_path: Any) -> None:
    import json

    from finetune_cli.app import run_summary

    (tmp_path / "metrics.json").write_text(
        json.dumps(
            {
                "phase": "Succeeded",
                "metrics": {"lmEval.tiny_colors.acc": 0.5, "perplexity": 2.0},
                "artifacts": {"trackingRun": "http://m/#/experiments/1/runs/r"},
            }
        )
    )
    assert run_summary(tmp_path) == [
        "finetune: MLflow run: http://m/#/experiments/1/runs/r",
        "finetune: lm-eval tiny_colors acc 0.5000",
    ]
    assert run_summary(tmp_path / "missing") == []


PROMOTED_STATUS: dict[str, Any] = {
    "phase": "Succeeded",
    "metrics": {"perplexity": 8.0, "base.perplexity": 10.0},
    "conditions": [
        {
            "type": "Promoted",
            "status": "True",
            "reason": "Serving",
            "message": "perplexity 8 against at most base 10 - 1: gap +1; serving at http://j.ml",
            "lastTransitionTime": "2026-12-02T00:00:00Z",
        }
    ],
    "inferenceService": {"name": "j", "url": "http://j.ml", "storageUri": "pvc://runs/model"},
}


def test_describe_shows_the_promotion_and_the_base_model() -> None:
    from rich.console import Console

    console = Console(width=200, record=True)
    for section in views.describe_job(ftj(PROMOTED_STATUS), Details(job=None, pods=[])):
        console.print(section)
    text = console.export_text()
    assert "promoted: yes (Serving): perplexity 8 against at most base 10 - 1: gap +1" in text
    assert "InferenceService j: http://j.ml" in text
    assert "base model perplexity 10 (this run 8)" in text
    metrics_row = next(line for line in text.splitlines() if line.startswith("Metrics"))
    assert "base." not in metrics_row
    pending = {**PROMOTED_STATUS, "inferenceService": {"name": "j", "trial": "hp-trial-1"}}
    assert (
        views.promotion_lines(pending)[1] == "InferenceService j (trial hp-trial-1): not Ready yet"
    )
    assert views.promotion_lines({"phase": "Succeeded"}) == []


def test_predict_summary_shows_the_base_model_and_the_promotion(tmp_path: Any) -> None:
    import json

    from finetune_cli.app import run_summary

    (tmp_path / "metrics.json").write_text(json.dumps(PROMOTED_STATUS))
    assert run_summary(tmp_path) == [
        "finetune: base model perplexity 10 (this run 8)",
        "finetune: promoted: yes (Serving): perplexity 8 against at most base 10 - 1: gap +1; "
        "serving at http://j.ml",
        "finetune: InferenceService j: http://j.ml",
    ]
