"""A table of real-looking Job/Pod statuses -> FineTuneJob phase, reason, message, conditions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from finetune_api.models import FineTuneJobSpec, Phase
from finetune_operator.status import (
    Derived,
    build_conditions,
    derive,
    invalid_spec,
    milestones,
    parse_termination_message,
    status_patch,
)

pytestmark = pytest.mark.unit

SPEC = FineTuneJobSpec.model_validate(
    {
        "task": "classification",
        "model": {"name": "bert-base-uncased"},
        "dataset": {"train": {"path": "/data/train.tsv"}},
        "resources": {"gpus": 1, "cpu": "4", "memory": "16Gi"},
        "activeDeadlineSeconds": 3600,
        "backoffLimit": 2,
    }
)
T0 = "2026-01-01T10:00:00Z"
T1 = "2026-01-01T10:05:00Z"


def job(status: dict[str, Any] | None = None, suspend: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"name": "demo-train", "uid": "job-uid"},
        "spec": {"suspend": suspend},
        "status": status or {},
    }


def pod(phase: str, state: dict[str, Any], **extra: Any) -> dict[str, Any]:
    cs = {"name": "trainer", "ready": phase == "Running", "restartCount": 0, "state": state}
    status = {"phase": phase, "containerStatuses": [cs], **extra}
    return {"metadata": {"name": "demo-train-abc12", "creationTimestamp": T0}, "status": status}


def failed_cond(reason: str, message: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "FailureTarget",
            "status": "True",
            "reason": reason,
            "message": message,
            "lastTransitionTime": T1,
        },
        {
            "type": "Failed",
            "status": "True",
            "reason": reason,
            "message": message,
            "lastTransitionTime": T1,
        },
    ]


REPORT_OK = json.dumps(
    {
        "phase": "Succeeded",
        "metrics": {"accuracy": 0.9, "evalLoss": 0.25},
        "artifacts": {"model": "/output/model"},
    }
)
REPORT_FAIL = json.dumps({"phase": "Failed", "message": "CUDA error: device-side assert triggered"})

TABLE: list[tuple[str, dict[str, Any] | None, list[dict[str, Any]], Phase, str, str]] = [
    # name, job, pods, phase, reason, a phrase the message must hold
    ("no job yet", None, [], Phase.pending, "Creating", "Creating"),
    ("job created, no pod", job({}), [], Phase.pending, "JobCreated", "scheduled"),
    (
        "pending: container creating",
        job({"active": 1, "ready": 0, "startTime": T0}),
        [pod("Pending", {"waiting": {"reason": "ContainerCreating"}})],
        Phase.pending,
        "Starting",
        "starting",
    ),
    (
        "pending: unschedulable",
        job({"active": 1, "startTime": T0}),
        [
            {
                "metadata": {"name": "p", "creationTimestamp": T0},
                "status": {
                    "phase": "Pending",
                    "conditions": [
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                        }
                    ],
                },
            }
        ],
        Phase.pending,
        "Unschedulable",
        "Insufficient nvidia.com/gpu",
    ),
    (
        "image pull backoff",
        job({"active": 1, "startTime": T0}),
        [
            pod(
                "Pending",
                {
                    "waiting": {
                        "reason": "ImagePullBackOff",
                        "message": 'Back-off pulling image "ghcr.io/x/trainer:nope"',
                    }
                },
            )
        ],
        Phase.pending,
        "ImagePullBackOff",
        "Cannot pull the trainer image",
    ),
    (
        "err image pull",
        job({"active": 1, "startTime": T0}),
        [pod("Pending", {"waiting": {"reason": "ErrImagePull", "message": "manifest unknown"}})],
        Phase.pending,
        "ErrImagePull",
        "manifest unknown",
    ),
    (
        "missing secret",
        job({"active": 1, "startTime": T0}),
        [
            pod(
                "Pending",
                {
                    "waiting": {
                        "reason": "CreateContainerConfigError",
                        "message": 'secret "hf" not found',
                    }
                },
            )
        ],
        Phase.pending,
        "CreateContainerConfigError",
        "spec.secrets",
    ),
    (
        "crash loop (unexpected waiting reason)",
        job({"active": 1, "startTime": T0}),
        [pod("Pending", {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s"}})],
        Phase.pending,
        "CrashLoopBackOff",
        "back-off 5m0s",
    ),
    (
        "running",
        job({"active": 1, "ready": 1, "startTime": T0}),
        [pod("Running", {"running": {"startedAt": T0}})],
        Phase.running,
        "Running",
        "running",
    ),
    (
        "running after one OOM retry",
        job({"active": 1, "ready": 1, "failed": 1, "startTime": T0}),
        [
            pod("Failed", {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}),
            {
                **pod("Running", {"running": {"startedAt": T1}}),
                "metadata": {"name": "b", "creationTimestamp": T1},
            },
        ],
        Phase.running,
        "Running",
        "Attempt 2 of 3",
    ),
    (
        "succeeded",
        job(
            {
                "succeeded": 1,
                "startTime": T0,
                "completionTime": T1,
                "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": T1}],
            }
        ),
        [
            pod(
                "Succeeded",
                {"terminated": {"exitCode": 0, "reason": "Completed", "message": REPORT_OK}},
            )
        ],
        Phase.succeeded,
        "Succeeded",
        "accuracy=0.9",
    ),
    (
        "oom killed, backoff exceeded",
        job(
            {
                "failed": 3,
                "startTime": T0,
                "conditions": failed_cond(
                    "BackoffLimitExceeded", "Job has reached the specified backoff limit"
                ),
            }
        ),
        [pod("Failed", {"terminated": {"exitCode": 137, "reason": "OOMKilled"}})],
        Phase.failed,
        "OOMKilled",
        "resources.memory",
    ),
    (
        "deadline exceeded",
        job(
            {
                "startTime": T0,
                "conditions": failed_cond(
                    "DeadlineExceeded", "Job was active longer than specified deadline"
                ),
            }
        ),
        [],
        Phase.failed,
        "DeadlineExceeded",
        "activeDeadlineSeconds (3600 s)",
    ),
    (
        "deadline exceeded while the image never pulled",
        job({"startTime": T0, "conditions": failed_cond("DeadlineExceeded", "")}),
        [pod("Pending", {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}})],
        Phase.failed,
        "DeadlineExceeded",
        "never started",
    ),
    (
        "backoff exceeded with trainer message",
        job({"failed": 3, "startTime": T0, "conditions": failed_cond("BackoffLimitExceeded", "")}),
        [pod("Failed", {"terminated": {"exitCode": 1, "reason": "Error", "message": REPORT_FAIL}})],
        Phase.failed,
        "BackoffLimitExceeded",
        "device-side assert",
    ),
    (
        "backoff exceeded, log tail only",
        job({"failed": 3, "startTime": T0, "conditions": failed_cond("BackoffLimitExceeded", "")}),
        [
            pod(
                "Failed",
                {
                    "terminated": {
                        "exitCode": 1,
                        "reason": "Error",
                        "message": "Traceback (most recent call last):\n  ...\nKeyError: 'sentence'",
                    }
                },
            )
        ],
        Phase.failed,
        "BackoffLimitExceeded",
        "KeyError: 'sentence'",
    ),
    (
        "pod failure policy",
        job(
            {
                "failed": 1,
                "startTime": T0,
                "conditions": failed_cond("PodFailurePolicy", "Container trainer exited with 2"),
            }
        ),
        [pod("Failed", {"terminated": {"exitCode": 2, "reason": "Error", "message": REPORT_FAIL}})],
        Phase.failed,
        "TrainerError",
        "device-side assert",
    ),
    (
        "a refused chat template names its reason",
        job(
            {
                "failed": 1,
                "startTime": T0,
                "conditions": failed_cond("PodFailurePolicy", "Container trainer exited with 2"),
            }
        ),
        [
            pod(
                "Failed",
                {
                    "terminated": {
                        "exitCode": 2,
                        "reason": "Error",
                        "message": json.dumps(
                            {
                                "phase": "Failed",
                                "reason": "ChatTemplate",
                                "message": "chat template of model m has no markers",
                            }
                        ),
                    }
                },
            )
        ],
        Phase.failed,
        "ChatTemplate",
        "has no markers",
    ),
    (
        "killed without a report",
        job({"failed": 3, "conditions": failed_cond("BackoffLimitExceeded", "")}),
        [pod("Failed", {"terminated": {"exitCode": 137, "reason": "Error"}})],
        Phase.failed,
        "BackoffLimitExceeded",
        "SIGKILL",
    ),
    (
        "evicted pod",
        job({"failed": 3, "conditions": failed_cond("BackoffLimitExceeded", "")}),
        [
            {
                "metadata": {"name": "p"},
                "status": {
                    "phase": "Failed",
                    "reason": "Evicted",
                    "message": "The node was low on resource: memory.",
                },
            }
        ],
        Phase.failed,
        "BackoffLimitExceeded",
        "Evicted",
    ),
]


@pytest.mark.parametrize(
    ("name", "job_obj", "pods", "phase", "reason", "phrase"), TABLE, ids=[r[0] for r in TABLE]
)
def test_derive_table(
    name: str,
    job_obj: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    phase: Phase,
    reason: str,
    phrase: str,
) -> None:
    d = derive(SPEC, job_obj, pods, default_image="ghcr.io/x/trainer:1")
    assert (d.phase, d.reason) == (phase, reason), d.message
    assert phrase in d.message
    assert len(d.message) <= 1024


SUCCEEDED = next((row[1], row[2]) for row in TABLE if row[0] == "succeeded")


def test_succeeded_carries_termination_report() -> None:
    d = derive(SPEC, *SUCCEEDED)
    assert d.metrics == {"accuracy": 0.9, "evalLoss": 0.25}
    assert d.artifacts == {"model": "/output/model"}
    assert (d.start_time, d.completion_time) == (T0, T1)


@pytest.mark.parametrize(
    ("spec_suspend", "queue", "phase", "reason"),
    [
        (True, None, Phase.suspended, "Suspended"),
        (False, "gpu", Phase.pending, "Queued"),
        (False, None, Phase.pending, "Resuming"),
    ],
)
def test_suspended_job(spec_suspend: bool, queue: str | None, phase: Phase, reason: str) -> None:
    spec = SPEC.model_copy(update={"suspend": spec_suspend})
    d = derive(
        spec,
        job({"conditions": [{"type": "Suspended", "status": "True"}]}, suspend=True),
        [],
        kueue_queue=queue,
    )
    assert (d.phase, d.reason) == (phase, reason)


def test_suspend_requested_before_the_job_reflects_it() -> None:
    spec = SPEC.model_copy(update={"suspend": True})
    assert derive(spec, None, []).phase is Phase.suspended
    assert derive(spec, job({"active": 1}), []).phase is Phase.suspended


def test_conditions_shape_and_transition_times() -> None:
    running = Derived(Phase.running, "Running", "The trainer is running.")
    first = [c.dump() for c in build_conditions([], running, 3, T0)]
    assert [c["type"] for c in first] == ["Ready", "Succeeded", "Failed", "Suspended"]
    for c in first:
        assert set(c) == {
            "type",
            "status",
            "reason",
            "message",
            "lastTransitionTime",
            "observedGeneration",
        }
        assert c["observedGeneration"] == 3 and c["lastTransitionTime"] == T0
    # Same statuses, later: times stay, reasons may change.
    again = build_conditions(first, Derived(Phase.pending, "Starting", "x"), 3, T1)
    assert all(c.last_transition_time == T0 for c in again)
    done = build_conditions(first, Derived(Phase.succeeded, "Succeeded", "ok"), 4, T1)
    by = {c.type: c.dump() for c in done}
    assert by["Ready"]["status"] == "True" and by["Ready"]["lastTransitionTime"] == T1
    assert by["Succeeded"]["lastTransitionTime"] == T1
    assert by["Failed"]["lastTransitionTime"] == T0  # never flipped


def test_status_patch_is_minimal_and_never_overwrites_trainer_metrics() -> None:
    d = derive(SPEC, *SUCCEEDED)
    first = status_patch({}, d, generation=1, job_name="demo-train", now=T1)
    assert first["phase"] == "Succeeded" and first["metrics"] == {"accuracy": 0.9, "evalLoss": 0.25}
    applied = {**first}
    assert status_patch(applied, d, generation=1, job_name="demo-train", now=T1) == {}
    live = {**first, "metrics": {"accuracy": 0.91}}
    patch = status_patch(live, d, generation=1, job_name="demo-train", now=T1)
    assert patch == {"metrics": {"evalLoss": 0.25}}


def test_milestones_only_on_transitions() -> None:
    running = Derived(Phase.running, "Running", "r")
    assert [m.reason for m in milestones({"phase": "Pending"}, running, {})] == ["Running"]
    assert milestones({"phase": "Running"}, running, {}) == []
    failed = Derived(Phase.failed, "OOMKilled", "oom")
    (m,) = milestones({"phase": "Running"}, failed, {})
    assert (m.type, m.reason) == ("Warning", "OOMKilled")
    ok = milestones(
        {"phase": "Running"}, Derived(Phase.succeeded, "Succeeded", ""), {"accuracy": 0.9}
    )
    assert "accuracy=0.9" in ok[0].message
    pull = Derived(Phase.pending, "ImagePullBackOff", "cannot pull")
    prev = {"phase": "Pending", "conditions": [{"type": "Ready", "reason": "Starting"}]}
    assert [m.reason for m in milestones(prev, pull, {})] == ["ImagePullBackOff"]
    prev = {"phase": "Pending", "conditions": [{"type": "Ready", "reason": "ImagePullBackOff"}]}
    assert milestones(prev, pull, {}) == []
    resumed = milestones({"phase": "Suspended"}, Derived(Phase.pending, "Starting", "s"), {})
    assert [m.reason for m in resumed] == ["Resumed"]


def test_condition_reasons_are_always_legal() -> None:
    from finetune_operator.status import safe_reason

    assert safe_reason("BackoffLimitExceeded") == "BackoffLimitExceeded"
    assert safe_reason("Pod Failure-Policy!") == "PodFailurePolicy"
    assert safe_reason("42") == "Unknown"
    weird = Derived(Phase.failed, "has spaces", "m")
    (ready, *_) = build_conditions([], weird, 1, T0)
    assert ready.reason == "hasspaces"


def test_invalid_spec_and_termination_parsing() -> None:
    d = invalid_spec("spec.hyperparameters.learningRate: Input should be greater than 0 (got -1)")
    assert d.phase is Phase.failed and d.reason == "InvalidSpec" and "learningRate" in d.message
    assert parse_termination_message(REPORT_OK) == json.loads(REPORT_OK)
    assert parse_termination_message("plain log line") is None
    assert parse_termination_message('["not", "a", "report"]') is None
    assert parse_termination_message(None) is None


def test_the_promoted_condition_and_inference_service_join_the_operators_status() -> None:
    from finetune_api.models import ServedModel

    d = derive(SPEC, *SUCCEEDED)
    d.promoted = (True, "InferenceServiceCreated", "accuracy 0.9 against minimum 0.8: gap +0.1")
    d.served = ServedModel(name="demo", storage_uri="pvc://runs/model")
    first = status_patch({}, d, generation=1, job_name="demo-train", now=T1)
    promoted = next(c for c in first["conditions"] if c["type"] == "Promoted")
    assert (promoted["status"], promoted["reason"]) == ("True", "InferenceServiceCreated")
    assert first["inferenceService"] == {"name": "demo", "storageUri": "pvc://runs/model"}
    assert first["phase"] == "Succeeded"
    # the URL arrives: only inferenceService and the condition's reason change; the
    # condition's lastTransitionTime stays (its status did not flip)
    d.promoted = (True, "Serving", "... serving at http://demo")
    d.served = ServedModel(name="demo", url="http://demo", storage_uri="pvc://runs/model")
    later = status_patch(first, d, generation=1, job_name="demo-train", now="2026-01-02T00:00:00Z")
    assert set(later) == {"conditions", "inferenceService"}
    again = next(c for c in later["conditions"] if c["type"] == "Promoted")
    assert again["lastTransitionTime"] == T1 and again["reason"] == "Serving"
    assert later["inferenceService"]["url"] == "http://demo"
    # no spec.promote (or not succeeded): no Promoted condition at all
    plain = status_patch({}, derive(SPEC, *SUCCEEDED), generation=1, job_name="j", now=T1)
    assert all(c["type"] != "Promoted" for c in plain["conditions"])
