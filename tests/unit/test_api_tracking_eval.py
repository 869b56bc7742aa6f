"""spec.tracking / spec.evaluation: validation, the trainer Job's env, the operator's note,
and lm-eval metrics as sweep objectives."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from finetune_api.models import FineTuneJob, FineTuneJobSpec, HyperparameterSweepSpec
from finetune_api.task_metrics import lm_eval_key
from finetune_operator.config import OperatorConfig
from finetune_operator.jobs import MLFLOW_TOKEN_ENV, build_job
from finetune_operator.status import derive

pytestmark = pytest.mark.unit

BASE: dict[str, Any] = {
    "task": "causal-lm",
    "model": {"path": "/models/tiny"},
    "dataset": {"train": {"path": "/data/train.jsonl"}},
}
TRACKING = {
    "mlflow": {
        "uri": "http://mlflow.mlops:5000",
        "experiment": "chat",
        "registerModel": "support-bot",
        "secretRef": {"name": "mlflow", "key": "token"},
    }
}
LM_EVAL = {"lmEval": {"tasks": ["tiny_colors"], "limit": 10, "includePath": "tasks"}}


def test_tracking_and_evaluation_round_trip() -> None:
    spec = FineTuneJobSpec.model_validate({**BASE, "tracking": TRACKING, "evaluation": LM_EVAL})
    assert spec.tracking and spec.tracking.mlflow
    assert spec.tracking.mlflow.register_model == "support-bot"
    assert spec.evaluation and spec.evaluation.lm_eval
    assert spec.evaluation.lm_eval.num_fewshot is None
    assert spec.dump()["tracking"] == TRACKING


@pytest.mark.parametrize(
    "bad",
    [
        {"tracking": {"mlflow": {"uri": "mlflow.mlops:5000"}}},  # no scheme
        {"evaluation": {"lmEval": {"tasks": []}}},
        {"evaluation": {"lmEval": {"tasks": ["has space"]}}},
        {"evaluation": {"lmEval": {"tasks": ["x"], "numFewshot": -1}}},
    ],
)
def test_bad_tracking_or_evaluation_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FineTuneJobSpec.model_validate({**BASE, **bad})


def test_secret_ref_reaches_the_trainer_as_a_reference_only() -> None:
    job = FineTuneJob.model_validate(
        {"metadata": {"name": "t", "namespace": "ml"}, "spec": {**BASE, "tracking": TRACKING}}
    )
    manifest = build_job(job, "uid-1", OperatorConfig())
    env = {e["name"]: e for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[MLFLOW_TOKEN_ENV] == {
        "name": MLFLOW_TOKEN_ENV,
        "valueFrom": {"secretKeyRef": {"name": "mlflow", "key": "token"}},
    }
    assert "token" not in json.loads(env["FINETUNE_JOB"]["value"])["spec"]["tracking"]["mlflow"]


def test_a_successful_runs_note_reaches_the_status_message() -> None:
    spec = FineTuneJobSpec.model_validate(BASE)
    note = "tracking: 12 metric points not logged to MLflow (ConnectionError: refused)"
    report = {
        "phase": "Succeeded",
        "metrics": {"perplexity": 3.0},
        "artifacts": {},
        "message": note,
    }
    terminated = {"exitCode": 0, "reason": "Completed", "message": json.dumps(report)}
    pod = {
        "metadata": {"name": "t-train-x", "creationTimestamp": "2026-01-01T10:00:00Z"},
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}],
        },
    }
    job = {
        "metadata": {"name": "t-train"},
        "spec": {},
        "status": {
            "succeeded": 1,
            "conditions": [
                {"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T10:05Z"}
            ],
        },
    }
    derived = derive(spec, job, [pod])
    assert derived.reason == "Succeeded"
    assert note in derived.message


def test_an_lm_eval_metric_is_a_sweep_objective_only_with_that_task() -> None:
    template = {**BASE, "evaluation": LM_EVAL}
    key = lm_eval_key("tiny_colors", "acc")
    assert key == "lmEval.tiny_colors.acc"
    sweep = HyperparameterSweepSpec.model_validate(
        {
            "template": template,
            "objective": {"metric": key},
            "searchSpace": {
                "hyperparameters.learningRate": {"type": "float", "low": 1e-5, "high": 1e-3}
            },
        }
    )
    assert sweep.objective.metric == key
    with pytest.raises(ValidationError, match=r"lmEval\.tiny_colors\.acc"):
        HyperparameterSweepSpec.model_validate(
            {
                "template": BASE,
                "objective": {"metric": key},
                "searchSpace": {
                    "hyperparameters.learningRate": {"type": "float", "low": 1e-5, "high": 1e-3}
                },
            }
        )
