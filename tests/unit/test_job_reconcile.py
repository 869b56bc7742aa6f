"""handlers_job._reconcile with kube.py replaced: API rejections and retries, no HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_operator import handlers_job, kube
from finetune_operator.config import OperatorConfig

pytestmark = pytest.mark.unit

FTJ: dict[str, Any] = {
    "apiVersion": "finetune.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "rej", "namespace": "ns", "uid": "u1", "generation": 1},
    "spec": {
        "task": "classification",
        "model": {"name": "bert-base-uncased"},
        "dataset": {"train": {"path": "/d/train.csv"}},
    },
}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    seen: dict[str, list[Any]] = {"status": [], "events": []}

    async def patch_status(*args: Any) -> dict[str, Any]:
        seen["status"].append(args[4])
        return {}

    async def create_event(involved: Any, reason: str, message: str, **kw: Any) -> None:
        seen["events"].append(reason)

    monkeypatch.setattr(kube, "patch_status", patch_status)
    monkeypatch.setattr(kube, "create_event", create_event)
    handlers_job.reset_state()
    return seen


@pytest.mark.parametrize(
    ("code", "phase", "requeue"),
    [(422, "Failed", None), (400, "Failed", None), (403, "Pending", 60.0)],
)
async def test_rejected_job_is_reported(
    monkeypatch: pytest.MonkeyPatch,
    calls: dict[str, list[Any]],
    code: int,
    phase: str,
    requeue: float | None,
) -> None:
    async def create(*args: Any) -> dict[str, Any]:
        raise kube.KubeError(code, "Invalid", 'Job.batch "rej-train" is invalid: metadata.labels')

    monkeypatch.setattr(kube, "create", create)
    again = await handlers_job._reconcile(FTJ, [], [], OperatorConfig())
    assert again == requeue
    (status,) = calls["status"]
    assert status["phase"] == phase
    assert "rejected the trainer Job rej-train" in status["message"]
    assert status["conditions"][0]["reason"] == "JobRejected"


async def test_transient_errors_propagate_for_retry(
    monkeypatch: pytest.MonkeyPatch, calls: dict[str, list[Any]]
) -> None:
    async def create(*args: Any) -> dict[str, Any]:
        raise kube.KubeError(503, "ServiceUnavailable", "etcd timeout")

    monkeypatch.setattr(kube, "create", create)
    with pytest.raises(kube.KubeError):
        await handlers_job._reconcile(FTJ, [], [], OperatorConfig())
    assert calls["status"] == []
