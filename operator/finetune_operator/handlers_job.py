"""kopf handlers for FineTuneJob: thin glue between watch events, the pure core and kube.py.

Level-triggered: every event on a FineTuneJob, its Job or the Job's pods runs the
same `reconcile()` for that FineTuneJob, which reads the latest state from in-memory
indexes (kopf's for Jobs and pods, our own for FineTuneJobs; all rebuilt from the
cluster's list on every start, so nothing lives only in memory). A reconcile whose
inputs equal those the last one left behind (our own writes coming back) is skipped.
Otherwise it:

1. parses the spec with the typed models (a bad spec -> phase Failed, InvalidSpec);
2. ensures the Job (`jobs.build_job`), adopting an existing one we own (409);
3. applies spec.suspend to the Job;
4. derives phase/conditions/message (`status.derive`) and patches only what changed;
5. queues milestone Events and republishes the status to Prometheus.

All memory (caches, locks, retries, the Event queue, the kube client) is the
`ReconcileState` main.serve() creates at start-up and passes in as `memo.state`.
No finalizer: deletion is left to owner references (the operator also deletes the
Job, with background propagation, when it sees the FineTuneJob go).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

import kopf

from finetune_api.conditions import BUDGET_EXHAUSTED
from finetune_api.manifest import SpecError
from finetune_api.models import FineTuneJob, FineTuneJobSpec, Phase
from finetune_operator import kube, oom, promotion, usage
from finetune_operator.config import (
    ANNOTATION_DISRUPTED,
    ANNOTATION_PROMOTE,
    ANNOTATION_SPEC_HASH,
    KUEUE_QUEUE_LABEL,
    LABEL_JOB,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    PROMOTE_BEST,
)
from finetune_operator.gang import SERVICE_RESOURCE, build_service, disruption
from finetune_operator.jobs import (
    JOB_SUFFIX,
    build_job,
    desired_suspend,
    job_name,
    owner_ftj_name,
    spec_hash,
)
from finetune_operator.runtime import (
    FTJ_RESOURCE,
    JOB_RESOURCE,
    POD_RESOURCE,
    Key,
    now,
    owned_by,
    parse_object,
)
from finetune_operator.state import ReconcileState, from_memo
from finetune_operator.status import (
    OWNED_KEYS,
    Derived,
    derive,
    invalid_spec,
    milestones,
    status_patch,
)
from finetune_operator.sweep_space import LABEL_SWEEP

MANAGED = MappingProxyType({LABEL_MANAGED_BY: MANAGED_BY})
TERMINAL = (Phase.succeeded.value, Phase.failed.value)
EventSpec = tuple[str, str, str]  # (type, reason, message)


# --------------------------------------------------------------------------- indexes


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


Index = kopf.Index[Key, Any] | dict[Key, list[dict[str, Any]]]


class Indexes(NamedTuple):
    """What a reconcile reads: FineTuneJob bodies, Jobs by owner, pods by Job name."""

    ftjs: Index
    jobs_by_owner: Index
    pods_by_job: Index


def _indexes(state: ReconcileState, kwargs: dict[str, Any]) -> Indexes:
    """kopf passes each index to handlers as a kwarg named after its function."""
    return Indexes(state.jobs.bodies, kwargs["jobs_by_owner"], kwargs["pods_by_job"])


def _store(index: Index, key: Key) -> list[dict[str, Any]]:
    store = index.get(key)
    return list(store) if store is not None else []


# --------------------------------------------------------------------------- event handlers


@kopf.on.event(*FTJ_RESOURCE)
async def ftj_event(
    *, type: str, namespace: str | None, name: str, body: kopf.Body, memo: Any, **kwargs: Any
) -> None:
    state = from_memo(memo)
    key = (namespace or "", name)
    if type == "DELETED":
        await _forget(state, key, dict(body), kwargs["jobs_by_owner"])
        return
    # No deep copy: every watch event brings freshly parsed dicts, nothing here mutates them.
    state.jobs.bodies[key] = [dict(body)]
    await reconcile(state, key, _indexes(state, kwargs))


@kopf.on.event(*JOB_RESOURCE, labels=MANAGED)
async def job_event(*, namespace: str | None, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    state = from_memo(memo)
    owner = owner_ftj_name(dict(body))
    key = (namespace or "", owner or "")
    if owner and key in state.jobs.bodies:
        await reconcile(state, key, _indexes(state, kwargs))


@kopf.on.event(*POD_RESOURCE, when=_trainer_pod)
async def pod_event(
    *, namespace: str | None, body: kopf.Body, labels: kopf.Labels, memo: Any, **kwargs: Any
) -> None:
    state = from_memo(memo)
    # Our pods carry the owner's name; others of our Jobs are named `<owner>-train`.
    owner = labels.get(LABEL_JOB) or (pod_job_name(body.metadata) or "").removesuffix(JOB_SUFFIX)
    key = (namespace or "", owner or "")
    if owner and key in state.jobs.bodies:
        await reconcile(state, key, _indexes(state, kwargs))


async def _forget(state: ReconcileState, key: Key, body: dict[str, Any], jobs: Index) -> None:
    """The FineTuneJob is gone: drop its series and caches; delete its Job (GC would too)."""
    namespace, _ = key
    state.publisher.forget_job(*key)
    state.jobs.forget(key)
    state.job_requeue.forget(key)
    uid = str(body.get("metadata", {}).get("uid") or "")
    # Only Jobs owned by this incarnation (a new FineTuneJob of the same name may exist).
    names = {j["metadata"]["name"] for j in _store(jobs, key) if owned_by(j, uid)}
    for jname in names:
        try:
            await state.kube.delete(*JOB_RESOURCE, jname, namespace, propagation="Background")
        except kube.KubeError as err:  # GC removes it anyway through the owner reference
            state.job_requeue.log.info("could not delete Job %s/%s: %s", namespace, jname, err)


# --------------------------------------------------------------------------- reconcile


async def reconcile(state: ReconcileState, key: Key, indexes: Indexes) -> None:
    """Bring one FineTuneJob's Job and status in line with its spec and observed state;
    retried (runtime.Requeue) until it succeeds."""

    async def once() -> None:
        started = time.perf_counter()
        state.events.busy()
        try:
            await _reconcile_if_changed(state, key, indexes)
        finally:
            state.publisher.instruments.reconcile_seconds.labels(kind="FineTuneJob").observe(
                time.perf_counter() - started
            )

    await state.job_requeue.run(key, once)


async def _reconcile_if_changed(state: ReconcileState, key: Key, indexes: Indexes) -> None:
    ftjs = _store(indexes.ftjs, key)
    if not ftjs:
        return
    ftj, jobs = ftjs[0], _store(indexes.jobs_by_owner, key)
    pods = _store(indexes.pods_by_job, (key[0], _current_job_name(state, key, ftj)))
    memory = state.jobs
    if memory.settled.get(key) == _inputs(state, key, ftj, jobs, pods):
        return
    memory.settled.pop(key, None)
    look_again = await _reconcile(state, ftj, jobs, pods)  # TemporaryError: run again later
    memory.settled[key] = _inputs(state, key, ftj, jobs, pods)
    if look_again is not None:
        _look_again(state, key, indexes, look_again)


def _inputs(
    state: ReconcileState,
    key: Key,
    ftj: dict[str, Any],
    jobs: list[dict[str, Any]],
    pods: list[dict[str, Any]],
) -> tuple[Any, ...]:
    """Everything `_reconcile` reads, with this process's own writes laid over the indexes."""
    meta = ftj.get("metadata", {})
    uid = str(meta.get("uid") or "")
    jname = _current_job_name(state, key, ftj)
    job = next((j for j in jobs if owned_by(j, uid) and _named(j, jname)), None)
    if job is not None:
        state.jobs.created_jobs.pop(key, None)  # the index has caught up with our Job
    else:
        job = _cached_job(state, key, jname)
    return (
        uid,
        meta.get("generation"),
        meta.get("deletionTimestamp"),
        meta.get("labels"),
        (meta.get("annotations") or {}).get(ANNOTATION_PROMOTE),
        ftj.get("spec"),
        _latest_status(state, key, uid, dict(ftj.get("status") or {})),
        None if job is None else _job_view(job),
        pods,
    )


def _current_job_name(state: ReconcileState, key: Key, ftj: dict[str, Any]) -> str:
    """The current attempt's Job (an out-of-memory retry's, oom.py), from status.jobName."""
    uid = str(ftj.get("metadata", {}).get("uid") or "")
    status = _latest_status(state, key, uid, dict(ftj.get("status") or {}))
    return oom.current_job_name(key[1], status.get("jobName"))


def _named(job: dict[str, Any], name: str) -> bool:
    return bool(job.get("metadata", {}).get("name") == name)


def _cached_job(state: ReconcileState, key: Key, name: str) -> dict[str, Any] | None:
    job = state.jobs.created_jobs.get(key)
    return job if job is not None and _named(job, name) else None


def _job_view(job: dict[str, Any]) -> tuple[Any, ...]:
    meta = job.get("metadata", {})
    return (
        meta.get("uid"),
        meta.get("resourceVersion"),
        meta.get("annotations") or {},
        bool(job.get("spec", {}).get("suspend")),
        job.get("status") or {},
    )


def parse_job(ftj: dict[str, Any]) -> FineTuneJob:
    """The typed FineTuneJob from a raw object; raises SpecError naming the bad field."""
    return parse_object(ftj, FineTuneJob, FineTuneJobSpec)


@dataclass
class Observed:
    """One reconcile's view of a FineTuneJob: its identity, latest status, our Job."""

    ftj: dict[str, Any]
    status: dict[str, Any]
    job: dict[str, Any] | None
    events: list[EventSpec] = field(default_factory=list)

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.ftj["metadata"])

    @property
    def key(self) -> Key:
        return (self.meta["namespace"], self.meta["name"])

    @property
    def uid(self) -> str:
        return str(self.meta.get("uid") or "")

    @property
    def generation(self) -> int | None:
        return self.meta.get("generation")

    @property
    def new_generation(self) -> bool:
        return self.status.get("observedGeneration") != self.generation


async def _reconcile(
    state: ReconcileState,
    ftj: dict[str, Any],
    jobs: list[dict[str, Any]],
    pods: list[dict[str, Any]],
) -> float | None:
    """One reconcile: ensure the Job, apply suspend, write the status. Raises
    kopf.TemporaryError(delay=...) when it must run again although nothing changes;
    returns when to read an InferenceService again (spec.promote), None when not."""
    meta = ftj.get("metadata", {})
    if meta.get("deletionTimestamp"):
        return None
    key, uid = (meta["namespace"], meta["name"]), str(meta.get("uid") or "")
    status = _latest_status(state, key, uid, dict(ftj.get("status") or {}))
    attempt = oom.attempt_of(key[1], status.get("jobName"))  # out-of-memory retries so far
    jname = oom.retry_job_name(key[1], attempt)
    job = next((j for j in jobs if owned_by(j, uid) and _named(j, jname)), None)
    job = job or _cached_job(state, key, jname)
    seen = Observed(ftj, status, job if job is not None and owned_by(job, uid) else None)
    try:
        model = parse_job(ftj)
    except SpecError as err:
        await _write_status(state, seen, invalid_spec(str(err)), status.get("jobName"))
        return None
    _created_unanswered(state, seen, model)
    finished = status.get("phase") in TERMINAL and status.get("jobName")
    if seen.job is None and finished and not seen.new_generation:
        # The Job of a finished run is gone (TTL, manual cleanup): keep the result, no rerun.
        state.publisher.publish_job(
            *key, status.get("phase"), status.get("metrics"), status.get("progress")
        )
        return None
    blocked = await _ensure_job(state, seen, model, attempt) if seen.job is None else None
    if seen.job is not None:
        await _apply_suspend(state, seen, model)
        derived = _derive(state, seen.job, pods, model)
        # out of memory: the next retry's Job (half the batch, twice the accumulation)
        derived, attempt, jname = await _recover_from_oom(
            state, seen, model, derived, pods, attempt, jname
        )
        derived = await _resume_after_budget(state, seen, model, derived, attempt)
        derived = await _restart_disrupted_gang(state, seen, model, derived, pods, attempt)
        look_again = await _promote(state, seen, model, derived)
    else:
        assert blocked is not None  # no Job: _ensure_job said why
        derived, look_again = blocked[0], None
    _count_usage(state, seen, model, derived, jname, attempt)
    await _write_status(state, seen, derived, jname)
    if blocked is not None and blocked[1] is not None:
        raise kopf.TemporaryError(derived.reason, delay=blocked[1])
    return look_again


# --------------------------------------------------------------------------- promotion


def _promotes(seen: Observed, model: FineTuneJob) -> bool:
    """spec.promote acts on a run of its own, and on a sweep's trial only once the sweep
    marked it its best (ANNOTATION_PROMOTE)."""
    if model.spec.promote is None:
        return False
    meta = seen.meta
    if not (meta.get("labels") or {}).get(LABEL_SWEEP):
        return True
    return (meta.get("annotations") or {}).get(ANNOTATION_PROMOTE) == PROMOTE_BEST


async def _promote(
    state: ReconcileState, seen: Observed, model: FineTuneJob, derived: Derived
) -> float | None:
    """A succeeded run with spec.promote: the gate, the InferenceService, the Promoted
    condition and status.inferenceService (promotion.py). Returns when to look again
    (None: done), e.g. while KServe has not reported the InferenceService Ready."""
    config = model.spec.promote
    if config is None or derived.phase is not Phase.succeeded or not _promotes(seen, model):
        return None
    done = promotion.settled(seen.status)
    if done is None:
        metrics = {**derived.metrics, **(seen.status.get("metrics") or {})}
        artifacts = {**derived.artifacts, **(seen.status.get("artifacts") or {})}
        known = bool((seen.status.get("inferenceService") or {}).get("name"))
        trial = seen.meta["name"] if (seen.meta.get("labels") or {}).get(LABEL_SWEEP) else None
        done = await promotion.run(
            state.kube, model, seen.uid, config, metrics, artifacts, known=known, trial=trial
        )
    derived.promoted, derived.served = done.condition(), done.served
    if done.created and done.served is not None:
        message = f"Created InferenceService {done.served.name} ({done.served.storage_uri})."
        seen.events.append(("Normal", "Promoted", message))
    state.publisher.publish_promotion(*seen.key, done.promoted)
    if done.poll:
        return state.config.promote_poll_seconds
    return state.config.promote_recheck_seconds if done.recheck else None


def _look_again(state: ReconcileState, key: Key, indexes: Indexes, delay: float) -> None:
    """One pending re-read per FineTuneJob (a reconcile ignoring the settled inputs: what
    it waits for, the InferenceService's status, is not among them)."""
    if key in state.jobs.looking:
        return
    state.jobs.looking.add(key)

    async def again() -> None:
        state.jobs.looking.discard(key)
        state.jobs.settled.pop(key, None)
        await _reconcile_if_changed(state, key, indexes)

    state.job_requeue.later(delay, key, again)


def _created_unanswered(state: ReconcileState, seen: Observed, model: FineTuneJob) -> None:
    """Our Job POST landed but its reply was lost, and the Job came back by its watch event:
    its JobCreated Event is still due."""
    if seen.job is not None and state.jobs.create_sent.pop(seen.key, None) == seen.uid:
        image = model.spec.image or state.config.trainer_image
        message = f"Created Job {seen.job['metadata']['name']} (image {image})."
        seen.events.append(("Normal", "JobCreated", message))


def _derive(
    state: ReconcileState, job: dict[str, Any], pods: list[dict[str, Any]], model: FineTuneJob
) -> Derived:
    """status.derive over this Job's own pods (a re-created Job's pods may linger)."""
    uid = job.get("metadata", {}).get("uid")
    return derive(
        model.spec,
        job,
        [p for p in pods if _pod_of(p, uid)],
        kueue_queue=model.metadata.labels.get(KUEUE_QUEUE_LABEL),
        default_image=state.config.trainer_image,
    )


async def _ensure_job(
    state: ReconcileState, seen: Observed, model: FineTuneJob, attempt: int = 0
) -> tuple[Derived, float | None] | None:
    """Create the Job, or adopt ours on 409. Sets seen.job; else returns why there is no
    Job (a status to write) and when to look again (None: only on a new event)."""
    namespace, name = seen.key
    jname = oom.retry_job_name(name, attempt)
    manifest = _job_manifest(state, seen, model, attempt)
    created = ("Normal", "JobCreated", f"Created Job {jname} (image {_image(manifest)}).")
    no_service = await _ensure_service(state, model, manifest, namespace)  # multi-node
    if no_service is not None:
        return no_service
    try:
        state.jobs.create_sent[seen.key] = seen.uid
        seen.job = await state.kube.create(*JOB_RESOURCE, manifest, namespace)
        seen.events.append(created)
    except kube.Conflict:
        existing = await _conflicting_job(state, jname, namespace)
        if owned_by(existing, seen.uid):
            seen.job = existing  # adopt: created earlier, by us or a previous operator process
            if state.jobs.create_sent.get(seen.key) == seen.uid:
                seen.events.append(created)  # our earlier POST landed; its reply was lost
        elif owner_ftj_name(existing) == name:
            # Left by a deleted FineTuneJob of the same name; GC will take it, help it along.
            await state.kube.delete(*JOB_RESOURCE, jname, namespace, propagation="Foreground")
            message = f"Waiting for the old Job {jname} to be deleted."
            return Derived(Phase.pending, "ReplacingJob", message), 2.0
        else:
            message = (
                f"A Job named {jname} exists and is not owned by this FineTuneJob; "
                "delete it or rename the FineTuneJob."
            )
            return Derived(Phase.pending, "JobNameConflict", message), None
    except kube.KubeError as err:
        return _rejected(err, jname)
    state.jobs.create_sent.pop(seen.key, None)
    state.jobs.created_jobs[seen.key] = seen.job
    return None


async def _ensure_service(
    state: ReconcileState, model: FineTuneJob, manifest: dict[str, Any], namespace: str
) -> tuple[Derived, float | None] | None:
    """The headless Service of a multi-node Job (gang.build_service), created before the
    Job so pod 0's name resolves when torchrun starts; 409: an earlier reconcile made it
    (deterministic name, owned by the FineTuneJob like the Job). A refused Service
    (RBAC, admission, no such API) holds the Job back: its pods could never rendezvous."""
    service = build_service(manifest, model)
    if service is None:
        return None
    try:
        await state.kube.create(*SERVICE_RESOURCE, service, namespace)
    except kube.Conflict:
        return None
    except kube.KubeError as err:
        if err.status not in (400, 403, 404, 422):
            raise  # transient: retried with backoff
        message = (
            f"The API server rejected the headless Service {service['metadata']['name']} "
            f"that a multi-node Job needs ({err.status} {err.reason}): {err.message}"
        )
        return Derived(Phase.pending, "ServiceRejected", message), 60.0
    return None


async def _conflicting_job(state: ReconcileState, jname: str, namespace: str) -> dict[str, Any]:
    """The Job a 409 on its POST says exists. Gone by the time we look (deleted meanwhile,
    or a 409 that no Job stood behind): create it again shortly, rather than letting the
    NotFound read as "the FineTuneJob is gone"."""
    try:
        return await state.kube.get(*JOB_RESOURCE, jname, namespace)
    except kube.NotFound:
        raise kopf.TemporaryError(
            f"Job {jname}: 409 on create, then not found", delay=1.0
        ) from None


def _job_manifest(
    state: ReconcileState, seen: Observed, model: FineTuneJob, attempt: int
) -> dict[str, Any]:
    """build_job; an out-of-memory retry runs its halved batch under its own name (oom.py),
    with the FineTuneJob's spec hash (its spec did not change)."""
    if attempt == 0:
        return build_job(model, seen.uid, state.config)
    retry = model.model_copy(update={"spec": oom.retry_spec(model.spec, attempt)})
    name = oom.retry_job_name(model.metadata.name, attempt)
    manifest = build_job(retry, seen.uid, state.config, name_override=name)
    annotations = manifest["metadata"].setdefault("annotations", {})
    annotations[ANNOTATION_SPEC_HASH] = spec_hash(model.spec)
    return manifest


async def _recover_from_oom(
    state: ReconcileState,
    seen: Observed,
    model: FineTuneJob,
    derived: Derived,
    pods: list[dict[str, Any]],
    attempt: int,
    jname: str,
) -> tuple[Derived, int, str]:
    """When this Job's pods ran out of memory, replace it by the next retry's (oom.plan);
    set the OOMRecovery condition while a retry Job runs. Returns (derived, attempt, Job)."""
    assert seen.job is not None
    uid = seen.job.get("metadata", {}).get("uid")
    job_pods = [p for p in pods if _pod_of(p, uid)]
    retry = oom.plan(model.spec, seen.key[1], attempt, job_pods, state.config.oom_max_retries)
    if retry is not None and derived.phase is not Phase.succeeded:
        derived = await _retry_after_oom(state, seen, model, retry)
        attempt, jname = retry.attempt, retry.job_name
    derived.oom_retry = oom.condition(model.spec, attempt, state.config.oom_max_retries)
    if derived.oom_retry is not None and derived.reason != "OOMRetry":
        derived.message = f"{derived.message} {derived.oom_retry[1]}"  # the run's history
    return derived, attempt, jname


async def _note_disruption(
    state: ReconcileState, seen: Observed, pods: list[dict[str, Any]]
) -> str | None:
    """What disrupted a trainer pod of this Job (eviction, drain, preemption), if any:
    persisted on the Job as annotation finetune.dev/disrupted when first seen (the evicted
    pod is deleted soon after, and an operator restart must not forget it), also kept in
    memory for a Job object read before that PATCH."""
    assert seen.job is not None
    meta = seen.job.get("metadata", {})
    uid = str(meta.get("uid"))
    noted = (meta.get("annotations") or {}).get(ANNOTATION_DISRUPTED)
    remembered = state.jobs.disrupted.get(seen.key)
    if noted is None and remembered is not None and remembered[0] == uid:
        noted = remembered[1]
    if noted is None:
        noted = disruption([p for p in pods if _pod_of(p, uid)])
        if noted is None:
            return None
        state.jobs.disrupted[seen.key] = (uid, noted)
    if (meta.get("annotations") or {}).get(ANNOTATION_DISRUPTED) is None:
        # The uid makes it a precondition: a Job of the same name but another uid would be
        # a newer gang, not ours to mark.
        body = {"metadata": {"uid": uid, "annotations": {ANNOTATION_DISRUPTED: noted[:1024]}}}
        try:
            seen.job = await state.kube.patch(*JOB_RESOURCE, meta["name"], body, seen.key[0])
        except kube.KubeError as err:
            if err.status not in (404, 409, 422):
                raise
            return noted  # that Job is gone or replaced (uid differs); memory still has it
        state.jobs.created_jobs[seen.key] = seen.job
    return noted


async def _restart_disrupted_gang(
    state: ReconcileState,
    seen: Observed,
    model: FineTuneJob,
    derived: Derived,
    pods: list[dict[str, Any]],
    attempt: int,
) -> Derived:
    """Multi-node: the disrupted pod is replaced by the Job (podFailurePolicy Ignore), but
    its peers lose their collectives and fail the Job; a gang failed after a disruption is
    re-created as a whole (a new Job, every pod) and resumes from its checkpoint."""
    if model.spec.resources.nodes <= 1 or seen.job is None:
        return derived
    noted = await _note_disruption(state, seen, pods)
    if derived.phase is not Phase.failed or noted is None:
        return derived
    namespace, old = seen.key[0], seen.job["metadata"]["name"]
    await state.kube.delete(*JOB_RESOURCE, old, namespace, propagation="Background")
    state.jobs.disrupted.pop(seen.key, None)
    message = (
        f"{noted} and the gang failed after it; restarting all "
        f"{model.spec.resources.nodes} pods in a new Job (they resume from the newest "
        "checkpoint)."
    )
    seen.events.append(("Warning", "GangRestart", message))
    seen.job = None
    blocked = await _ensure_job(state, seen, model, attempt)
    return blocked[0] if blocked is not None else Derived(Phase.pending, "GangRestart", message)


async def _resume_after_budget(
    state: ReconcileState, seen: Observed, model: FineTuneJob, derived: Derived, attempt: int
) -> Derived:
    """Suspended at spec.budget (the trainer saved a checkpoint and stopped): once the spec
    changed (a raised budget) and is not suspended, a new Job resumes from the checkpoint
    (the trainer's fingerprint ignores spec.budget)."""
    if derived.reason != BUDGET_EXHAUSTED or seen.job is None or model.spec.suspend:
        return derived
    annotations = seen.job.get("metadata", {}).get("annotations") or {}
    if annotations.get(ANNOTATION_SPEC_HASH) in (None, spec_hash(model.spec)):
        return derived  # the same budget: it stays spent
    namespace, old = seen.key[0], seen.job["metadata"]["name"]
    await state.kube.delete(*JOB_RESOURCE, old, namespace, propagation="Background")
    message = f"spec.budget changed; resuming in a new Job after: {derived.message}"
    seen.events.append(("Normal", "BudgetRaised", message[:1024]))
    seen.job = None
    blocked = await _ensure_job(state, seen, model, attempt)
    return blocked[0] if blocked is not None else Derived(Phase.pending, "Resuming", message)


async def _retry_after_oom(
    state: ReconcileState, seen: Observed, model: FineTuneJob, retry: oom.Retry
) -> Derived:
    """Replace the Job that ran out of memory by the retry's (half the batch, twice the
    accumulation); its status says so, and a Warning Event."""
    assert seen.job is not None
    namespace, old = seen.key[0], seen.job["metadata"]["name"]
    await state.kube.delete(*JOB_RESOURCE, old, namespace, propagation="Background")
    message = oom.retry_message(retry, model.spec, state.config.oom_max_retries)
    seen.events.append(("Warning", "OOMRetry", message))
    seen.job = None
    blocked = await _ensure_job(state, seen, model, retry.attempt)
    return blocked[0] if blocked is not None else Derived(Phase.pending, "OOMRetry", message)


def _count_usage(
    state: ReconcileState,
    seen: Observed,
    model: FineTuneJob,
    derived: Derived,
    jname: str,
    attempt: int,
) -> None:
    """GPU-seconds (and cost) of the current Job into Prometheus; a finished run's cost
    into status.metrics (usage.py)."""
    config = state.config
    seconds = usage.gpu_seconds(model.spec, seen.job, now())
    state.publisher.publish_usage(
        *seen.key,
        jname,
        seconds,
        price=config.gpu_hour_price,
        currency=config.cost_currency,
        oom_retries=attempt,
    )
    total = sum(state.publisher.gpu_counted.get(seen.key, {}).values())
    cost = usage.cost(total, config.gpu_hour_price)
    if cost is not None and derived.phase.value in TERMINAL:
        derived.metrics.setdefault("cost", cost)


def _rejected(err: kube.KubeError, jname: str) -> tuple[Derived, float | None]:
    """The API server refused the Job (admission, quota, RBAC, validation): say so in the
    status; a 403 is looked at again later (an admin can fix it without an edit).
    Transient errors (5xx, 429, no reply) are raised and retried with backoff."""
    if err.status not in (400, 403, 422):
        raise err
    message = (
        f"The API server rejected the trainer Job {jname} ({err.status} {err.reason}): "
        f"{err.message}"
    )
    phase = Phase.failed if err.status in (400, 422) else Phase.pending
    return Derived(phase, "JobRejected", message), 60.0 if err.status == 403 else None


async def _apply_suspend(state: ReconcileState, seen: Observed, model: FineTuneJob) -> None:
    """Set the Job's spec.suspend as the FineTuneJob wants it; warn once about other
    spec changes, which a running Job cannot take."""
    assert seen.job is not None
    jname = seen.job["metadata"]["name"]
    current = seen.job.get("spec", {}).get("suspend")
    want = desired_suspend(model, current)
    if bool(current) != want and seen.status.get("phase") not in TERMINAL:
        patch = {"spec": {"suspend": want}}
        seen.job = await state.kube.patch(*JOB_RESOURCE, jname, patch, seen.key[0])
        state.jobs.created_jobs[seen.key] = seen.job
    created = any(e[1] == "JobCreated" for e in seen.events)
    annotations = seen.job.get("metadata", {}).get("annotations") or {}
    changed = annotations.get(ANNOTATION_SPEC_HASH) not in (None, spec_hash(model.spec))
    if seen.new_generation and not created and changed:
        seen.events.append(
            (
                "Warning",
                "SpecChangeNotApplied",
                f"The spec changed after Job {jname} was created; only spec.suspend is "
                "applied to a running Job. Delete and re-create the FineTuneJob to run "
                "the new spec.",
            )
        )


def _announce_resume(
    state: ReconcileState, seen: Observed, involved: dict[str, Any], jname: str
) -> None:
    """The trainer resumed from a checkpoint (status.metrics.resumedFromStep): one Normal
    Event `Resumed` naming the step, per Job and step."""
    step = (seen.status.get("metrics") or {}).get("resumedFromStep")
    if not isinstance(step, int | float) or step <= 0:
        return
    posted = state.jobs.posted.setdefault(seen.key, set())
    mark = (seen.uid, jname, -1, f"Resumed:{int(step)}")
    if mark not in posted:
        posted.add(mark)
        message = f"The trainer resumed from its checkpoint at step {int(step)}."
        state.events.post(involved, "Resumed", message, "Normal")


def _latest_status(
    state: ReconcileState, key: Key, uid: str, observed: dict[str, Any]
) -> dict[str, Any]:
    """The observed status, with the keys this process is known to have written laid over it."""
    cached = state.jobs.written.get(key)
    if cached is None or cached[0] != uid:
        return observed
    mine = cached[1]
    status = {**observed, **{k: v for k, v in mine.items() if k in OWNED_KEYS}}
    for name in ("metrics", "artifacts"):
        if mine.get(name) or observed.get(name):
            status[name] = {**(mine.get(name) or {}), **(observed.get(name) or {})}
    return status


def _pod_of(pod: dict[str, Any], job_uid: str | None) -> bool:
    labels = pod.get("metadata", {}).get("labels") or {}
    pod_uid = labels.get("batch.kubernetes.io/controller-uid") or labels.get("controller-uid")
    return not job_uid or not pod_uid or pod_uid == job_uid


def _image(job: dict[str, Any]) -> str:
    containers = job.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or [{}]
    return str(containers[0].get("image", "?"))


async def _write_status(
    state: ReconcileState, seen: Observed, derived: Derived, jname: str | None
) -> None:
    """Queue the Events of what this reconcile did and of the phase change, patch the
    status (only what changed), remember it as written once the PATCH succeeded, and
    publish the gauges."""
    namespace, name = seen.key
    meta, status = seen.meta, seen.status
    involved = {"apiVersion": seen.ftj.get("apiVersion"), "kind": seen.ftj.get("kind")}
    involved["metadata"] = meta
    for etype, reason, message in seen.events:
        state.events.post(involved, reason, message, etype)
    patch = status_patch(status, derived, generation=seen.generation, job_name=jname, now=now())
    merged = {**status, **patch}
    for name_ in ("metrics", "artifacts"):
        if patch.get(name_):
            merged[name_] = {**(status.get(name_) or {}), **patch[name_]}
    # Milestones are queued before the PATCH and once per transition: after a PATCH whose
    # reply was lost, the retry may already see the new status (no transition left to
    # announce) or still the old one (the same transition again).
    transition = (seen.uid, str(status.get("phase")), derived.phase.value, derived.reason)
    if state.jobs.announced.get(seen.key) != transition:
        # Once per attempt (this Job, its failed pods so far): an observation that briefly
        # goes back (a watch relisting after an apiserver restart) must not repeat one.
        job_status = (seen.job or {}).get("status") or {}
        attempt = (seen.uid, str(jname), int(job_status.get("failed") or 0))
        posted = state.jobs.posted.setdefault(seen.key, set())
        for m in milestones(status, derived, merged.get("metrics") or {}):
            if (*attempt, m.reason) not in posted:
                posted.add((*attempt, m.reason))
                state.events.post(involved, m.reason, m.message, m.type)
        state.jobs.announced[seen.key] = transition
    _announce_resume(state, seen, involved, str(jname))
    # Our own PATCH rather than kopf's `patch` kwarg: most reconciles run on a Job's or a
    # pod's event, where kopf's patch would target that object, and the write must be
    # known to have landed before it is remembered.
    if patch:
        await state.kube.patch_status(*FTJ_RESOURCE, name, patch, namespace)
    state.jobs.written[seen.key] = (seen.uid, merged)  # the cluster holds it now
    state.publisher.publish_job(
        namespace, name, merged.get("phase"), merged.get("metrics"), merged.get("progress")
    )
