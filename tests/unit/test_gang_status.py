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


class _Kube:
    """A kube client whose create answers with `error` (or records the object)."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.created: list[tuple[str, dict[str, Any]]] = []

    async def create(self, group: str, version: str, plural: str, body: Any, ns: str) -> Any:
        if self.error is not None:
            raise self.error
        self.created.append((plural, body))
        return body


def _gang() -> tuple[Any, dict[str, Any]]:
    from finetune_api.models import FineTuneJob
    from finetune_operator.config import OperatorConfig
    from finetune_operator.jobs import build_job

    ftj = FineTuneJob.model_validate(
        {"metadata": {"name": "g", "namespace": "team-a"}, "spec": spec(2).dump()}
    )
    return ftj, build_job(ftj, "uid-1", OperatorConfig())


@pytest.mark.parametrize(
    ("error", "reason"),
    [(None, None), ("conflict", None), (403, "ServiceRejected"), (404, "ServiceRejected")],
)
async def test_the_service_comes_first_and_a_refusal_holds_the_job_back(
    error: Any, reason: str | None
) -> None:
    """No Service, no rendezvous: the Job would only wait out its timeout, so a refused
    Service (RBAC, admission, no such API) keeps it from being created, with a status."""
    from types import SimpleNamespace

    from finetune_operator import kube
    from finetune_operator.handlers_job import _ensure_service

    raised = {
        None: None,
        "conflict": kube.Conflict(409, "AlreadyExists", "exists"),
        403: kube.KubeError(403, "Forbidden", "services is forbidden"),
        404: kube.NotFound(404, "NotFound", "the server could not find the resource"),
    }[error]
    client = _Kube(raised)
    ftj, manifest = _gang()
    blocked = await _ensure_service(SimpleNamespace(kube=client), ftj, manifest, "team-a")
    if reason is None:
        assert blocked is None
        if error is None:
            ((plural, body),) = client.created
            assert plural == "services" and body["spec"]["clusterIP"] == "None"
        return
    assert blocked is not None
    derived, retry = blocked
    assert derived.phase is Phase.pending and derived.reason == reason
    assert "headless Service g-train" in derived.message and retry == 60.0


async def test_a_transient_service_error_is_retried() -> None:
    from types import SimpleNamespace

    from finetune_operator import kube
    from finetune_operator.handlers_job import _ensure_service

    client = _Kube(kube.KubeError(503, "ServiceUnavailable", "etcd"))
    ftj, manifest = _gang()
    with pytest.raises(kube.KubeError):
        await _ensure_service(SimpleNamespace(kube=client), ftj, manifest, "team-a")


def test_disruption_names_the_first_pod_with_disruption_target() -> None:
    from finetune_operator.gang import disruption

    def pod(name: str, *conds: dict[str, str]) -> dict[str, Any]:
        return {"metadata": {"name": name}, "status": {"conditions": list(conds)}}

    ready = {"type": "Ready", "status": "True"}
    assert disruption([pod("a", ready), {"metadata": {"name": "b"}}]) is None
    gone = {"type": "DisruptionTarget", "status": "False", "reason": "EvictionByEvictionAPI"}
    assert disruption([pod("a", gone)]) is None
    evicted = dict(gone, status="True")
    assert disruption([pod("a", ready), pod("b", ready, evicted)]) == (
        "pod b was disrupted (EvictionByEvictionAPI)"
    )
    assert disruption([pod("c", {"type": "DisruptionTarget", "status": "True"})]) == (
        "pod c was disrupted (DisruptionTarget)"
    )
