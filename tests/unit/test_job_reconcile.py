"""handlers_job._reconcile with the kube client replaced: API rejections, retries, skipped
reconciles and the Event queue, no HTTP."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest

from finetune_operator import events, handlers_job, kube
from finetune_operator.config import OperatorConfig
from finetune_operator.handlers_job import Indexes
from finetune_operator.state import ReconcileState

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


class FakeKube:
    """Records status patches and Events; every other call fails unless a test sets it."""

    def __init__(self) -> None:
        self.calls: dict[str, list[Any]] = {"status": [], "events": []}

    async def patch_status(self, *args: Any) -> dict[str, Any]:
        self.calls["status"].append(args[4])
        return {}

    async def create_event(self, event: dict[str, Any]) -> dict[str, Any]:
        self.calls["events"].append(event["reason"])
        return event

    async def create(self, *args: Any) -> Any:
        raise AssertionError(f"unexpected create {args}")

    async def get(self, *args: Any) -> Any:
        raise AssertionError(f"unexpected get {args}")

    async def patch(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"unexpected patch {args}")


@pytest.fixture
def fake() -> FakeKube:
    return FakeKube()


@pytest.fixture
def state(fake: FakeKube) -> ReconcileState:
    return ReconcileState.create(OperatorConfig(), fake)  # type: ignore[arg-type]


@pytest.fixture
def calls(fake: FakeKube) -> dict[str, list[Any]]:
    return fake.calls


@pytest.mark.parametrize(
    ("code", "phase", "requeue"),
    [(422, "Failed", None), (400, "Failed", None), (403, "Pending", 60.0)],
)
async def test_rejected_job_is_reported(
    monkeypatch: pytest.MonkeyPatch,
    state: ReconcileState,
    fake: FakeKube,
    calls: dict[str, list[Any]],
    code: int,
    phase: str,
    requeue: float | None,
) -> None:
    async def create(*args: Any) -> dict[str, Any]:
        raise kube.KubeError(code, "Invalid", 'Job.batch "rej-train" is invalid: metadata.labels')

    monkeypatch.setattr(fake, "create", create)
    if requeue is None:
        await handlers_job._reconcile(state, FTJ, [], [])
    else:  # looked at again later although nothing changes
        with pytest.raises(kopf.TemporaryError) as again:
            await handlers_job._reconcile(state, FTJ, [], [])
        assert again.value.delay == requeue
    (status,) = calls["status"]
    assert status["phase"] == phase
    assert "rejected the trainer Job rej-train" in status["message"]
    assert status["conditions"][0]["reason"] == "JobRejected"


@pytest.mark.parametrize("code", [0, 429, 500, 503])
async def test_transient_errors_propagate_for_retry(
    monkeypatch: pytest.MonkeyPatch,
    state: ReconcileState,
    fake: FakeKube,
    calls: dict[str, list[Any]],
    code: int,
) -> None:
    async def create(*args: Any) -> dict[str, Any]:
        raise kube.KubeError(code, "ServiceUnavailable", "etcd timeout")

    monkeypatch.setattr(fake, "create", create)
    with pytest.raises(kube.KubeError):
        await handlers_job._reconcile(state, FTJ, [], [])
    assert calls["status"] == []


async def test_a_failed_status_write_is_not_remembered(
    monkeypatch: pytest.MonkeyPatch, state: ReconcileState, fake: FakeKube
) -> None:
    """Issue 10: a status PATCH that fails must not count as written, or the retry
    would lay the unsent status over the cluster's and patch nothing."""
    sent: list[dict[str, Any]] = []

    async def create(group: str, version: str, plural: str, body: dict[str, Any], ns: str) -> Any:
        return {**body, "metadata": {**body["metadata"], "uid": "job-1"}}

    async def flaky_patch_status(*args: Any) -> dict[str, Any]:
        sent.append(args[4])
        if len(sent) == 1:
            raise kube.KubeError(429, "TooManyRequests", "slow down")
        return {}

    monkeypatch.setattr(fake, "create", create)
    monkeypatch.setattr(fake, "patch_status", flaky_patch_status)
    with pytest.raises(kube.KubeError):
        await handlers_job._reconcile(state, FTJ, [], [])
    assert ("ns", "rej") not in state.jobs.written
    await handlers_job._reconcile(state, FTJ, [], [])  # the retry
    assert len(sent) == 2
    assert sent[1] == sent[0]  # the whole status again, not an empty patch
    assert sent[1]["phase"] == "Pending" and sent[1]["jobName"] == "rej-train"
    assert state.jobs.written[("ns", "rej")][1]["observedGeneration"] == 1


async def test_events_that_bring_nothing_new_are_skipped(
    monkeypatch: pytest.MonkeyPatch,
    state: ReconcileState,
    fake: FakeKube,
    calls: dict[str, list[Any]],
) -> None:
    """Our own status patch and the Job we created come back as watch events: neither
    makes an API call; a real change (the Job starts running) does."""
    api: list[str] = []

    async def create(group: str, version: str, plural: str, body: dict[str, Any], ns: str) -> Any:
        api.append("create")
        meta = {**body["metadata"], "uid": "job-1", "resourceVersion": "7"}
        return {**body, "metadata": meta}

    runs: list[int] = []
    real = handlers_job._reconcile

    async def counted(*args: Any) -> Any:
        runs.append(1)
        return await real(*args)

    monkeypatch.setattr(handlers_job, "_reconcile", counted)
    monkeypatch.setattr(fake, "create", create)
    key = ("ns", "rej")
    ftjs: dict[Any, list[dict[str, Any]]] = {key: [FTJ]}
    jobs: dict[Any, list[dict[str, Any]]] = {}
    pods: dict[Any, list[dict[str, Any]]] = {}
    indexes = Indexes(ftjs, jobs, pods)

    await handlers_job.reconcile(state, key, indexes)
    await asyncio.sleep(2 * events.QUIET_S)  # Events: posted once reconciles pause
    assert api == ["create"]
    assert [s["phase"] for s in calls["status"]] == ["Pending"]
    assert calls["events"] == ["JobCreated"]

    # The status patch comes back as MODIFIED; then the Job's ADDED event.
    ftjs[key] = [{**FTJ, "status": calls["status"][0]}]
    await handlers_job.reconcile(state, key, indexes)
    created = state.jobs.created_jobs[key]
    jobs[key] = [created]
    await handlers_job.reconcile(state, key, indexes)
    await asyncio.sleep(2 * events.QUIET_S)
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
    await handlers_job.reconcile(state, key, indexes)
    assert len(runs) == 2
    assert len(calls["status"]) == 2
    assert calls["status"][1]["startTime"] == "2026-11-26T10:00:00Z"
    assert calls["status"][1]["message"] == "The trainer pod is starting."


async def test_events_wait_for_a_pause_in_reconciles_but_not_forever() -> None:
    """Under a burst, Jobs and statuses go first: Events are posted once reconciles pause,
    and at the latest EVENT_MAX_DELAY_S after they were queued."""
    loop = asyncio.get_running_loop()
    posted: dict[str, float] = {}

    class Recorder:
        async def create_event(self, event: dict[str, Any]) -> None:
            posted[event["reason"]] = loop.time()

    poster = events.EventPoster(Recorder(), max_delay_s=0.6)  # type: ignore[arg-type]

    async def busy(seconds: float) -> None:  # reconciles starting every 10 ms
        end = loop.time() + seconds
        while loop.time() < end:
            poster.busy()
            await asyncio.sleep(0.01)

    start = loop.time()
    poster.post(FTJ, "Short", "m", "Normal")
    await busy(0.3)
    await asyncio.sleep(0.2)
    assert 0.3 <= posted["Short"] - start < 0.55  # after the pause, before the deadline

    start = loop.time()
    poster.post(FTJ, "Long", "m", "Normal")
    await busy(1.0)
    assert 0.6 <= posted["Long"] - start < 0.95  # at the deadline, before the pause


async def test_a_409_without_a_job_behind_it_is_retried(
    monkeypatch: pytest.MonkeyPatch, state: ReconcileState, fake: FakeKube
) -> None:
    """A 409 on the Job's POST, then no such Job: create it again shortly. (A bare
    NotFound would read as "the FineTuneJob is gone" and the retry would be dropped.)"""

    async def conflict(*args: Any) -> Any:
        raise kube.Conflict(409, "Conflict", "injected")

    async def missing(*args: Any) -> Any:
        raise kube.NotFound(404, "NotFound", 'jobs.batch "rej-train" not found')

    monkeypatch.setattr(fake, "create", conflict)
    monkeypatch.setattr(fake, "get", missing)
    with pytest.raises(kopf.TemporaryError) as again:
        await handlers_job._reconcile(state, FTJ, [], [])
    assert again.value.delay == 1.0
