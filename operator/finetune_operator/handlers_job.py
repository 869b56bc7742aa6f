"""kopf handlers for FineTuneJob: thin glue between watch events, the pure core and kube.py.

Level-triggered: every event on a FineTuneJob, its Job or the Job's pods runs the
same `reconcile()` for that FineTuneJob, which reads the latest state from in-memory
indexes (kopf's for Jobs and pods, our own for FineTuneJobs; all rebuilt from the
cluster's list on every start, so nothing lives only in memory). A reconcile whose
inputs equal those the last one left behind (our own writes coming back) is skipped.
Otherwise it:

1. parses the spec with the typed models (a bad spec -> phase Failed, InvalidSpec);
2. creates the Job (`jobs.build_job`), adopting an existing one we own (409);
3. applies spec.suspend to the Job;
4. derives phase/conditions/message (`status.derive`) and patches only what changed;
5. queues milestone Events (posted once reconciles pause) and republishes the status
   to Prometheus.

No finalizer: deletion is left to owner references (the operator also deletes the
Job, with background propagation, when it sees the FineTuneJob go).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

import kopf

from finetune_api.manifest import SpecError, parse
from finetune_api.models import FineTuneJob, FineTuneJobSpec, ObjectMeta, Phase
from finetune_operator import kube, metrics
from finetune_operator.config import (
    ANNOTATION_SPEC_HASH,
    FTJ_RESOURCE,
    JOB_RESOURCE,
    KUEUE_QUEUE_LABEL,
    LABEL_JOB,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    POD_RESOURCE,
    OperatorConfig,
)
from finetune_operator.jobs import (
    JOB_SUFFIX,
    build_job,
    desired_suspend,
    job_name,
    owned_by,
    owner_ftj_name,
    spec_hash,
)
from finetune_operator.status import (
    Derived,
    derive,
    invalid_spec,
    milestones,
    now_iso,
    status_patch,
)

log = logging.getLogger("finetune_operator.jobs")
MANAGED = {LABEL_MANAGED_BY: MANAGED_BY}
# Status keys only the operator writes (the trainer owns progress/metrics/history/artifacts).
OWNED_KEYS = frozenset(
    {
        "phase",
        "conditions",
        "observedGeneration",
        "jobName",
        "startTime",
        "completionTime",
        "message",
    }
)
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)

Key = tuple[str, str]

# Serialise reconciles of one FineTuneJob within this process (events for the
# FineTuneJob, its Job and its pods arrive on different kopf workers).
_locks: dict[Key, asyncio.Lock] = {}
# Jobs created by this process that the Job index may not have seen yet (a cache
# only: after a restart the 409 -> adopt path covers the same case).
_recent: dict[Key, dict[str, Any]] = {}
# The status this process last wrote, per FineTuneJob (uid, status): the index lags
# behind our own patches until their watch events arrive, and a reconcile in that
# window must not re-derive transitions (duplicate Events) from the stale copy.
_written: dict[Key, tuple[str, dict[str, Any]]] = {}
_retries: dict[Key, int] = {}
# What the last reconcile left behind, per FineTuneJob, when it needed no follow-up: the
# watch events of our own writes (the status patch, the Job just created) bring nothing
# new, and a reconcile that would see exactly these inputs again is skipped.
_settled: dict[Key, tuple[Any, ...]] = {}
_tasks: set[asyncio.Task[None]] = set()  # delayed retries (kept referenced until done)


def _config(memo: Any) -> OperatorConfig:
    cfg = getattr(memo, "config", None) if memo is not None else None
    return cfg if isinstance(cfg, OperatorConfig) else OperatorConfig.from_env()


def _snapshot(body: Any) -> dict[str, Any]:
    """A plain-dict view of an event's body. No deep copy: every watch event brings freshly
    parsed dicts, and nothing here mutates them."""
    return dict(body)


# --------------------------------------------------------------------------- indexes


# The latest body of every FineTuneJob, shaped like a kopf index ({key: [body]}) and kept
# by `ftj_event` itself: kopf lists every FineTuneJob on start and hands each to that
# handler, so this is rebuilt like an index, at a fraction of an index's per-event cost.
# (A Job or pod event for a FineTuneJob not seen yet is skipped: its own event follows.)
_ftjs: dict[Key, list[dict[str, Any]]] = {}


# Index functions are async so kopf calls them in the event loop (sync handlers would go
# through a thread pool, one submit per watch event).
@kopf.index(*JOB_RESOURCE, labels=MANAGED)
async def jobs_by_owner(
    *, namespace: str | None, body: kopf.Body, **_: Any
) -> dict[Key, Any] | None:
    owner = owner_ftj_name(dict(body))
    if owner is None:
        return None
    return {
        (namespace or "", owner): {
            "metadata": dict(body.metadata),
            "spec": {"suspend": body.spec.get("suspend")},
            "status": dict(body.status),
        }
    }


JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")


def pod_job_name(meta: Any) -> str | None:
    """The name of the Job a pod belongs to: the Job controller's labels, the owner
    reference, or our own `finetune.dev/job` label on the pod template."""
    labels = meta.get("labels") or {}
    for key in JOB_NAME_LABELS:
        if labels.get(key):
            return str(labels[key])
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "Job" and ref.get("name"):
            return str(ref["name"])
    owner = labels.get(LABEL_JOB)
    return job_name(owner) if owner else None


def _trainer_pod(body: kopf.Body, **_: Any) -> bool:
    """Pods of our Jobs: our label, or a Job name of our shape (`<name>-train`)."""
    if body.metadata.labels.get(LABEL_JOB):
        return True
    jname = pod_job_name(body.metadata)
    return bool(jname and jname.endswith(JOB_SUFFIX))


@kopf.index(*POD_RESOURCE, when=_trainer_pod)
async def pods_by_job(*, namespace: str | None, body: kopf.Body, **_: Any) -> dict[Key, Any] | None:
    jname = pod_job_name(body.metadata)
    if not jname:
        return None
    return {
        (namespace or "", jname): {
            "metadata": {
                "name": body.metadata.name,
                "creationTimestamp": body.metadata.get("creationTimestamp"),
                "labels": dict(body.metadata.labels),
            },
            "status": dict(body.status),
        }
    }


# --------------------------------------------------------------------------- event handlers

Index = kopf.Index[Key, Any] | dict[Key, list[dict[str, Any]]]
Indexes = tuple[Index, Index, Index]


def _indexes(kwargs: dict[str, Any]) -> Indexes:
    """kopf passes each index to handlers as a kwarg named after its function."""
    return _ftjs, kwargs["jobs_by_owner"], kwargs["pods_by_job"]


@kopf.on.event(*FTJ_RESOURCE)
async def ftj_event(
    *, type: str, namespace: str | None, name: str, body: kopf.Body, memo: Any, **kwargs: Any
) -> None:
    indexes = _indexes(kwargs)
    key = (namespace or "", name)
    if type == "DELETED":
        _ftjs.pop(key, None)
        await _forget(*key, _snapshot(body), indexes[1])
        return
    _ftjs[key] = [_snapshot(body)]
    await reconcile(key, indexes, _config(memo))


@kopf.on.event(*JOB_RESOURCE, labels=MANAGED)
async def job_event(*, namespace: str | None, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    indexes = _indexes(kwargs)
    owner = owner_ftj_name(dict(body))
    key = (namespace or "", owner or "")
    if owner and key in indexes[0]:
        await reconcile(key, indexes, _config(memo))


@kopf.on.event(*POD_RESOURCE, when=_trainer_pod)
async def pod_event(
    *, namespace: str | None, body: kopf.Body, labels: kopf.Labels, memo: Any, **kwargs: Any
) -> None:
    indexes = _indexes(kwargs)
    ns = namespace or ""
    # Our pods carry the owner's name; others of our Jobs are named `<owner>-train`.
    owner = labels.get(LABEL_JOB) or (pod_job_name(body.metadata) or "").removesuffix(JOB_SUFFIX)
    key = (ns, owner or "")
    if owner and key in indexes[0]:
        await reconcile(key, indexes, _config(memo))


async def _forget(namespace: str, name: str, body: dict[str, Any], jobs: Index) -> None:
    """The FineTuneJob is gone: drop its series; delete its Job (GC would too)."""
    key = (namespace, name)
    metrics.forget_job(namespace, name)
    _recent.pop(key, None)
    _written.pop(key, None)
    _settled.pop(key, None)
    _locks.pop(key, None)
    _retries.pop(key, None)
    uid = body.get("metadata", {}).get("uid")
    # Only Jobs owned by this incarnation (a new FineTuneJob of the same name may exist).
    names = {j["metadata"]["name"] for j in _store(jobs, key) if uid and owned_by(j, uid)}
    for jname in names:
        try:
            await kube.delete(*JOB_RESOURCE, jname, namespace, propagation="Background")
        except kube.KubeError as err:  # GC removes it anyway through the owner reference
            log.info("could not delete Job %s/%s: %s", namespace, jname, err)


def _store(index: Index, key: Key) -> list[dict[str, Any]]:
    store = index.get(key)
    return list(store) if store is not None else []


# --------------------------------------------------------------------------- reconcile


async def reconcile(key: Key, indexes: Indexes, config: OperatorConfig) -> None:
    """Bring one FineTuneJob's Job and status in line with its spec and observed state."""
    global _last_reconcile
    started = time.perf_counter()
    _last_reconcile = asyncio.get_running_loop().time()
    lock = _locks.setdefault(key, asyncio.Lock())
    try:
        async with lock:
            ftjs = _store(indexes[0], key)
            if not ftjs:
                return
            ftj, jobs = ftjs[0], _store(indexes[1], key)
            pods = _store(indexes[2], (key[0], job_name(key[1])))
            if _settled.get(key) == _inputs(key, ftj, jobs, pods):
                return
            _settled.pop(key, None)
            again = await _reconcile(ftj, jobs, pods, config)
            if again is None:
                _settled[key] = _inputs(key, ftj, jobs, pods)
        _retries.pop(key, None)
        if again is not None:
            _later(again, key, indexes, config)
    except kube.NotFound:
        pass  # deleted meanwhile; the DELETED event cleans up
    except Exception as err:
        attempt = _retries.get(key, 0)
        _retries[key] = attempt + 1
        delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
        log.warning("reconcile of %s/%s failed (%s); retrying in %.0fs", *key, err, delay)
        _later(delay, key, indexes, config)
    finally:
        metrics.RECONCILE_SECONDS.labels(kind="FineTuneJob").observe(time.perf_counter() - started)


def _inputs(
    key: Key, ftj: dict[str, Any], jobs: list[dict[str, Any]], pods: list[dict[str, Any]]
) -> tuple[Any, ...]:
    """Everything `_reconcile` reads, with this process's own writes laid over the indexes."""
    meta = ftj.get("metadata", {})
    uid = str(meta.get("uid") or "")
    job = next((j for j in jobs if owned_by(j, uid)), None)
    if job is not None:
        _recent.pop(key, None)  # the index has caught up with the Job we created
    else:
        job = _recent.get(key)
    return (
        uid,
        meta.get("generation"),
        meta.get("deletionTimestamp"),
        meta.get("labels"),
        ftj.get("spec"),
        _latest_status(key, uid, dict(ftj.get("status") or {})),
        None if job is None else _job_view(job),
        pods,
    )


def _job_view(job: dict[str, Any]) -> tuple[Any, ...]:
    meta = job.get("metadata", {})
    return (
        meta.get("uid"),
        meta.get("resourceVersion"),
        meta.get("annotations") or {},
        bool(job.get("spec", {}).get("suspend")),
        job.get("status") or {},
    )


def _later(delay: float, key: Key, indexes: Indexes, config: OperatorConfig) -> None:
    loop = asyncio.get_running_loop()

    def spawn() -> None:
        task = loop.create_task(reconcile(key, indexes, config))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    loop.call_later(delay, spawn)


def parse_job(ftj: dict[str, Any]) -> FineTuneJob:
    """The typed FineTuneJob from a raw object; raises SpecError naming the bad field."""
    meta = ftj.get("metadata", {})
    spec = parse(FineTuneJobSpec, ftj.get("spec") or {}, "spec.")
    return FineTuneJob.model_construct(
        metadata=ObjectMeta(
            name=meta["name"], namespace=meta.get("namespace"), labels=meta.get("labels") or {}
        ),
        spec=spec,
    )


async def _reconcile(
    ftj: dict[str, Any],
    jobs: Iterable[dict[str, Any]],
    pods: Iterable[dict[str, Any]],
    config: OperatorConfig,
) -> float | None:
    """One reconcile; returns seconds after which to run again, or None."""
    meta = ftj.get("metadata", {})
    if meta.get("deletionTimestamp"):
        return None
    namespace, name, uid = meta["namespace"], meta["name"], str(meta.get("uid") or "")
    generation = meta.get("generation")
    key = (namespace, name)
    status = _latest_status(key, uid, dict(ftj.get("status") or {}))
    new_generation = status.get("observedGeneration") != generation
    jname = job_name(name)
    events: list[tuple[str, str, str]] = []
    requeue: float | None = None

    try:
        model = parse_job(ftj)
    except SpecError as err:
        bad = invalid_spec(str(err))
        await _write_status(ftj, status, bad, generation, status.get("jobName"), events)
        return None

    job = next((j for j in jobs if owned_by(j, uid)), None) or _recent.get(key)
    if job is not None and not owned_by(job, uid):
        job = None
    derived: Derived | None = None
    created = False

    finished = status.get("phase") in (Phase.succeeded.value, Phase.failed.value)
    if job is None and finished and status.get("jobName") and not new_generation:
        # The Job of a finished run is gone (TTL, manual cleanup): keep the result, do not rerun.
        metrics.publish_job(
            namespace, name, status.get("phase"), status.get("metrics"), status.get("progress")
        )
        return None

    if job is None:
        manifest = build_job(model, uid, config)
        try:
            job = await kube.create(*JOB_RESOURCE, manifest, namespace)
            _recent[key] = job
            created = True
            events.append(
                ("Normal", "JobCreated", f"Created Job {jname} (image {_image(manifest)}).")
            )
        except kube.Conflict:
            existing = await kube.get(*JOB_RESOURCE, jname, namespace)
            if owned_by(existing, uid):
                job = existing  # adopt: created earlier, by us or a previous run of the operator
                _recent[key] = job
            elif owner_ftj_name(existing) == name:
                # Left by a deleted FineTuneJob of the same name; GC will take it, help it along.
                await kube.delete(*JOB_RESOURCE, jname, namespace, propagation="Foreground")
                derived = Derived(
                    Phase.pending, "ReplacingJob", f"Waiting for the old Job {jname} to be deleted."
                )
                requeue = 2.0
            else:
                derived = Derived(
                    Phase.pending,
                    "JobNameConflict",
                    f"A Job named {jname} exists and is not owned by this FineTuneJob; "
                    "delete it or rename the FineTuneJob.",
                )
        except kube.KubeError as err:
            if err.status not in (400, 403, 422):
                raise  # transient (5xx, timeouts): retried with backoff
            # Rejected by the API server (admission, quota, RBAC, validation): say so in the
            # status and try again later (403s can be fixed by an admin without an edit).
            derived = Derived(
                Phase.failed if err.status in (400, 422) else Phase.pending,
                "JobRejected",
                f"The API server rejected the trainer Job {jname} ({err.status} {err.reason}): "
                f"{err.message}",
            )
            requeue = 60.0 if err.status == 403 else None
    else:
        _recent.pop(key, None)

    if job is not None:
        current = job.get("spec", {}).get("suspend")
        want = desired_suspend(model, current)
        terminal = status.get("phase") in (Phase.succeeded.value, Phase.failed.value)
        if bool(current) != want and not terminal:
            job = await kube.patch(*JOB_RESOURCE, jname, {"spec": {"suspend": want}}, namespace)
            _recent[key] = job
        annotations = job.get("metadata", {}).get("annotations") or {}
        if (new_generation and not created) and annotations.get(ANNOTATION_SPEC_HASH) not in (
            None,
            spec_hash(model.spec),
        ):
            events.append(
                (
                    "Warning",
                    "SpecChangeNotApplied",
                    f"The spec changed after Job {jname} was created; only spec.suspend is applied "
                    "to a running Job. Delete and re-create the FineTuneJob to run the new spec.",
                )
            )
        uid_label = job.get("metadata", {}).get("uid")
        mine = [p for p in pods if _pod_of(p, uid_label)]
        derived = derive(
            model.spec,
            job,
            mine,
            kueue_queue=model.metadata.labels.get(KUEUE_QUEUE_LABEL),
            default_image=config.trainer_image,
        )
    if derived is None:  # pragma: no cover - every branch above sets it
        return requeue
    await _write_status(ftj, status, derived, generation, jname, events)
    return requeue


def _latest_status(key: Key, uid: str, observed: dict[str, Any]) -> dict[str, Any]:
    """The observed status, with the keys this process wrote last laid over it."""
    cached = _written.get(key)
    if cached is None or cached[0] != uid:
        return observed
    mine = cached[1]
    status = {**observed, **{k: v for k, v in mine.items() if k in OWNED_KEYS}}
    for field in ("metrics", "artifacts"):
        if mine.get(field) or observed.get(field):
            status[field] = {**(mine.get(field) or {}), **(observed.get(field) or {})}
    return status


def _pod_of(pod: dict[str, Any], job_uid: str | None) -> bool:
    labels = pod.get("metadata", {}).get("labels") or {}
    pod_uid = labels.get("batch.kubernetes.io/controller-uid") or labels.get("controller-uid")
    return not job_uid or not pod_uid or pod_uid == job_uid


def _image(job: dict[str, Any]) -> str:
    containers = job.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or [{}]
    return str(containers[0].get("image", "?"))


async def _write_status(
    ftj: dict[str, Any],
    status: dict[str, Any],
    derived: Derived,
    generation: int | None,
    jname: str | None,
    events: list[tuple[str, str, str]],
) -> None:
    meta = ftj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    patch = status_patch(status, derived, generation=generation, job_name=jname, now=now_iso())
    merged = {**status, **patch}
    for field in ("metrics", "artifacts"):
        if patch.get(field):
            merged[field] = {**(status.get(field) or {}), **patch[field]}
    _written[(namespace, name)] = (str(meta.get("uid") or ""), merged)
    if patch:
        await kube.patch_status(*FTJ_RESOURCE, name, patch, namespace)
    for m in milestones(status, derived, merged.get("metrics") or {}):
        events.append((m.type, m.reason, m.message))
    involved = {"apiVersion": ftj.get("apiVersion"), "kind": ftj.get("kind"), "metadata": meta}
    for etype, reason, message in events:
        _post_event(involved, reason, message, etype)
    metrics.publish_job(
        namespace, name, merged.get("phase"), merged.get("metrics"), merged.get("progress")
    )


# Events are informational and best effort: they go through a small background queue so a
# burst of new FineTuneJobs gets its Jobs and statuses first (posters wait until no
# reconcile has started for EVENT_QUIET_S, at most EVENT_MAX_DELAY_S) and the API server a
# bounded number of concurrent Event POSTs. Events still queued when the process dies are lost.
EVENT_POSTERS = 4
EVENT_QUIET_S = 0.05
EVENT_MAX_DELAY_S = 2.0
_last_reconcile = 0.0  # loop time of the latest reconcile start
EventItem = tuple[dict[str, Any], str, str, str]
_event_queues: dict[int, tuple[asyncio.Queue[EventItem], set[asyncio.Task[None]]]] = {}


def _post_event(involved: dict[str, Any], reason: str, message: str, etype: str) -> None:
    loop = asyncio.get_running_loop()
    queue, posters = _event_queues.setdefault(id(loop), (asyncio.Queue(), set()))
    queue.put_nowait((involved, reason, message, etype))
    if len(posters) < EVENT_POSTERS:
        task = loop.create_task(_drain_events(queue))
        posters.add(task)
        task.add_done_callback(posters.discard)


async def _drain_events(queue: asyncio.Queue[EventItem]) -> None:
    """Post queued Events until the queue is empty, then exit (no idle task lingers)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVENT_MAX_DELAY_S
    while (wait := min(_last_reconcile + EVENT_QUIET_S, deadline) - loop.time()) > 0:
        await asyncio.sleep(wait)
    while not queue.empty():
        involved, reason, message, etype = queue.get_nowait()
        await kube.create_event(involved, reason, message, type=etype)  # never raises


def reset_state() -> None:
    """Forget the in-process caches (locks, recently created Jobs, retry counters).

    They are only caches: the operator rebuilds everything from the cluster on start.
    Tests call this to make an in-process restart behave like a fresh process.
    """
    _ftjs.clear()
    _locks.clear()
    _recent.clear()
    _written.clear()
    _settled.clear()
    _retries.clear()
    for task in list(_tasks):
        if not task.done():
            with contextlib.suppress(RuntimeError):  # its loop may be closed already
                task.cancel()
    _tasks.clear()
    _event_queues.clear()
