"""handlers_job._reconcile with kube.py replaced: API rejections and retries, no HTTP."""

from __future__ import annotations

import asyncio
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


async def test_events_that_bring_nothing_new_are_skipped(
    monkeypatch: pytest.MonkeyPatch, calls: dict[str, list[Any]]
) -> None:
    """Our own status patch and the Job we created come back as watch events: neither
    makes an API call; a real change (the Job starts running) does."""
    api: list[str] = []

    async def create(group: str, version: str, plural: str, body: dict[str, Any], ns: str) -> Any:
        api.append("create")
        meta = {**body["metadata"], "uid": "job-1", "resourceVersion": "7"}
        return {**body, "metadata": meta}

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"unexpected API call {args}")

    runs: list[int] = []
    real = handlers_job._reconcile

    async def counted(*args: Any) -> Any:
        runs.append(1)
        return await real(*args)

    monkeypatch.setattr(handlers_job, "_reconcile", counted)
    monkeypatch.setattr(kube, "create", create)
    monkeypatch.setattr(kube, "get", refuse)
    monkeypatch.setattr(kube, "patch", refuse)
    key = ("ns", "rej")
    ftjs: dict[Any, list[dict[str, Any]]] = {key: [FTJ]}
    jobs: dict[Any, list[dict[str, Any]]] = {}
    pods: dict[Any, list[dict[str, Any]]] = {}
    indexes: Any = (ftjs, jobs, pods)
    config = OperatorConfig()

    await handlers_job.reconcile(key, indexes, config)
    await asyncio.sleep(2 * handlers_job.EVENT_QUIET_S)  # Events: posted once reconciles pause
    assert api == ["create"]
    assert [s["phase"] for s in calls["status"]] == ["Pending"]
    assert calls["events"] == ["JobCreated"]

    # The status patch comes back as MODIFIED; then the Job's ADDED event.
    ftjs[key] = [{**FTJ, "status": calls["status"][0]}]
    await handlers_job.reconcile(key, indexes, config)
    created = handlers_job._recent[key]
    jobs[key] = [created]
    await handlers_job.reconcile(key, indexes, config)
    await asyncio.sleep(2 * handlers_job.EVENT_QUIET_S)
    assert len(runs) == 1  # both skipped
    assert api == ["create"]
    assert len(calls["status"]) == 1
    assert calls["events"] == ["JobCreated"]

    # The Job starts: a new resourceVersion and status, so the reconcile runs and says so.
    running = {
        **created,
        "metadata": {**created["metadata"], "resourceVersion": "8"},
        "status": {"active": 1, "startTime": "2026-11-26T10:00:00Z"},
    }
    jobs[key] = [running]
    await handlers_job.reconcile(key, indexes, config)
    assert len(runs) == 2
    assert len(calls["status"]) == 2
    assert calls["status"][1]["startTime"] == "2026-11-26T10:00:00Z"
    assert calls["status"][1]["message"] == "The trainer pod is starting."


async def test_events_wait_for_a_pause_in_reconciles_but_not_forever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under a burst, Jobs and statuses go first: Events are posted once reconciles pause,
    and at the latest EVENT_MAX_DELAY_S after they were queued."""
    loop = asyncio.get_running_loop()
    posted: dict[str, float] = {}

    async def create_event(involved: Any, reason: str, message: str, **kw: Any) -> None:
        posted[reason] = loop.time()

    monkeypatch.setattr(kube, "create_event", create_event)
    monkeypatch.setattr(handlers_job, "EVENT_MAX_DELAY_S", 0.6)
    handlers_job.reset_state()

    async def busy(seconds: float) -> None:  # reconciles starting every 10 ms
        end = loop.time() + seconds
        while loop.time() < end:
            handlers_job._last_reconcile = loop.time()
            await asyncio.sleep(0.01)

    start = loop.time()
    handlers_job._post_event(FTJ, "Short", "m", "Normal")
    await busy(0.3)
    await asyncio.sleep(0.2)
    assert 0.3 <= posted["Short"] - start < 0.55  # after the pause, before the deadline

    start = loop.time()
    handlers_job._post_event(FTJ, "Long", "m", "Normal")
    await busy(1.0)
    assert 0.6 <= posted["Long"] - start < 0.95  # at the deadline, before the pause
