"""Status of a multi-node run: an Indexed Job succeeds when every index has, and
status.workers counts the ready trainer pods (status.derive / status_patch)."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_api.models import FineTuneJobSpec, Phase
from finetune_operator.status import derive, status_patch

pytestmark = pytest.mark.unit


def spec(nodes: int) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "task": "classification",
            "model": {"path": "/models/m"},
            "dataset": {"train": {"path": "/d.csv"}},
            "resources": {"gpus": 4, "nodes": nodes},
            "volumes": [{"claimName": "models", "mountPath": "/models"}],
        }
    )


def job(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "x-train", "uid": "j"}, "spec": {}, "status": status}


def running_pod(index: int) -> dict[str, Any]:
    cs = {"name": "trainer", "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}
    return {
        "metadata": {
            "name": f"x-train-{index}",
            "creationTimestamp": f"2026-01-01T00:00:0{index}Z",
        },
        "status": {"phase": "Running", "containerStatuses": [cs]},
    }


def test_one_index_done_is_not_success() -> None:
    derived = derive(spec(2), job(active=1, ready=1, succeeded=1), [running_pod(1)])
    assert derived.phase is Phase.running
    assert derived.workers is not None
    assert (derived.workers.ready, derived.workers.total) == (1, 2)


def test_every_index_done_is_success() -> None:
    derived = derive(spec(2), job(succeeded=2, completionTime="2026-01-01T01:00:00Z"), [])
    assert derived.phase is Phase.succeeded
    assert derived.workers is not None and derived.workers.ready == 0


def test_workers_reach_the_status_patch_only_for_multi_node() -> None:
    derived = derive(spec(2), job(active=2, ready=2), [running_pod(0), running_pod(1)])
    patch = status_patch({}, derived, generation=1, job_name="x-train", now="2026-01-01T00:00:00Z")
    assert patch["workers"] == {"ready": 2, "total": 2}
    assert patch["phase"] == "Running"
    single = derive(spec(1), job(active=1, ready=1), [running_pod(0)])
    patch = status_patch({}, single, generation=1, job_name="x-train", now="2026-01-01T00:00:00Z")
    assert "workers" not in patch
