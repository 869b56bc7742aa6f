"""kopf handlers for HyperparameterSweep: thin glue between watch events, the sweep core
(sweep_study.plan_sweep) and kube.py.

Level-triggered and stateless: every event on a sweep or on one of its trials
(child FineTuneJobs labelled `finetune.dev/sweep`) runs the same `reconcile()`,
which LISTs the sweep's children from the API server (strongly consistent, so a
trial created a moment ago is never missed and never duplicated), rebuilds the
study from them and then:

1. prunes running trials the pruner rejects (child spec.suspend + trial-state
   annotation; the FineTuneJob handler suspends the Job, so its pods stop);
2. creates new trials up to parallelism / maxTrials (deterministic names: a 409
   means a trial already exists and stops this round);
3. patches status (phase, Ready condition, counts, bestTrial) when it changed,
   and republishes the best value and the counts to Prometheus.

No finalizer: children carry an owner reference (garbage collection deletes
them); the handler also deletes them itself when it sees the sweep go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

import kopf

from finetune_api.manifest import SpecError, parse
from finetune_api.models import (
    GROUP,
    VERSION,
    HyperparameterSweep,
    HyperparameterSweepSpec,
    ObjectMeta,
    Phase,
)
from finetune_operator import kube, metrics
from finetune_operator.sweep_space import (
    ANNOTATION_STATE,
    LABEL_SWEEP,
    STATE_PRUNED,
    trial_manifest,
    trial_name,
)
from finetune_operator.sweep_study import (
    Plan,
    TrialRecord,
    counts,
    now_rfc3339,
    plan_sweep,
    record_from_child,
    sweep_status,
)

log = logging.getLogger("finetune_operator.sweeps")

SWEEP_RESOURCE = (GROUP, VERSION, "hyperparametersweeps")
FTJ_RESOURCE = (GROUP, VERSION, "finetunejobs")
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)

Key = tuple[str, str]
_locks: dict[tuple[int, str, str], asyncio.Lock] = {}
_retries: dict[Key, int] = {}
_tasks: set[asyncio.Task[None]] = set()


def reset_state() -> None:
    """Forget in-process caches (tests simulate a fresh operator process with this)."""
    _locks.clear()
    _retries.clear()


def _lock(key: Key) -> asyncio.Lock:
    loop_id = id(asyncio.get_running_loop())
    return _locks.setdefault((loop_id, *key), asyncio.Lock())


# --------------------------------------------------------------------------- handlers


@kopf.on.event(*SWEEP_RESOURCE)
async def sweep_event(
    *, type: str, namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> None:
    if type == "DELETED":
        await _forget(namespace or "", name, dict(body.metadata))
        return
    await reconcile(namespace or "", name)


@kopf.on.event(*FTJ_RESOURCE, labels={LABEL_SWEEP: kopf.PRESENT})
async def trial_event(*, namespace: str | None, labels: kopf.Labels, **_: Any) -> None:
    sweep = labels.get(LABEL_SWEEP)
    if sweep:
        await reconcile(namespace or "", sweep)


async def reconcile(namespace: str, name: str) -> None:
    """Bring one sweep's trials and status in line with its spec; retries on API errors."""
    key = (namespace, name)
    started = time.perf_counter()
    try:
        async with _lock(key):
            await _reconcile(namespace, name)
        _retries.pop(key, None)
    except kube.NotFound:
        pass  # the sweep went away meanwhile
    except Exception as err:
        attempt = _retries.get(key, 0)
        _retries[key] = attempt + 1
        delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
        log.warning("reconcile of sweep %s/%s failed (%s); retrying in %.0fs", *key, err, delay)
        _later(delay, namespace, name)
    finally:
        metrics.RECONCILE_SECONDS.labels(kind="HyperparameterSweep").observe(
            time.perf_counter() - started
        )


def _later(delay: float, namespace: str, name: str) -> None:
    loop = asyncio.get_running_loop()

    def spawn() -> None:
        task = loop.create_task(reconcile(namespace, name))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    loop.call_later(delay, spawn)


# --------------------------------------------------------------------------- reconcile


def parse_sweep(obj: dict[str, Any]) -> HyperparameterSweep:
    """The typed sweep from a raw object; raises SpecError naming the bad field."""
    meta = obj.get("metadata") or {}
    spec = parse(HyperparameterSweepSpec, obj.get("spec") or {}, "spec.")
    return HyperparameterSweep.model_construct(
        metadata=ObjectMeta(
            name=meta["name"], namespace=meta.get("namespace"), labels=meta.get("labels") or {}
        ),
        spec=spec,
    )


def _owned(child: dict[str, Any], uid: str) -> bool:
    refs = (child.get("metadata") or {}).get("ownerReferences") or []
    return not uid or any(r.get("uid") == uid for r in refs)


async def list_trials(namespace: str, name: str, uid: str) -> list[dict[str, Any]]:
    children = await kube.list_objects(
        *FTJ_RESOURCE, namespace, label_selector=f"{LABEL_SWEEP}={name}"
    )
    return [
        c
        for c in children
        if _owned(c, uid) and not (c.get("metadata") or {}).get("deletionTimestamp")
    ]


async def _reconcile(namespace: str, name: str) -> None:
    obj = await kube.get(*SWEEP_RESOURCE, name, namespace)
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return
    uid = str(meta.get("uid") or "")
    generation = meta.get("generation")
    previous = dict(obj.get("status") or {})
    try:
        sweep = parse_sweep(obj)
    except SpecError as err:
        await _write_status(obj, previous, _failed_plan("InvalidSpec", str(err)), generation)
        return
    metric = sweep.spec.objective.metric
    children = await list_trials(namespace, name, uid)
    records = [r for c in children if (r := record_from_child(c, metric)) is not None]
    try:
        plan = plan_sweep(sweep.spec, records, study_name=name, sweep_name=name)
        manifests = [
            (n, trial_manifest(sweep, n, params, owner_uid=uid)) for n, params in plan.create
        ]
    except SpecError as err:
        # e.g. searchSpace bounds outside what the template allows: no such child can exist.
        message = f"searchSpace gives an invalid trial: {err}"
        plan = _failed_plan("InvalidSearchSpace", message, records)
        manifests = []

    for n in plan.prune:
        await _prune(obj, namespace, trial_name(name, n), plan, n)
    created = 0
    for n, manifest in manifests:
        # The emulator (and only it) needs these; a real apiserver sets its own.
        manifest["metadata"].setdefault("uid", str(uuid.uuid4()))
        manifest["metadata"].setdefault("generation", 1)
        try:
            await kube.create(*FTJ_RESOURCE, manifest, namespace)
        except kube.Conflict:
            # Already there (an earlier reconcile or a previous operator process created
            # it): the next reconcile sees it; never create past it in this round.
            log.info("trial %s/%s already exists", namespace, manifest["metadata"]["name"])
            break
        created += 1
        log.info(
            "sweep %s/%s: created trial %d %s",
            namespace,
            name,
            n,
            manifest["metadata"]["annotations"],
        )
    if created < len(manifests):
        # Some trial already existed (an earlier reconcile or a previous operator process
        # created it): recount from the API server shortly instead of trusting this plan.
        _later(0.2, namespace, name)
        return
    await _write_status(obj, previous, plan, generation, sweep)


def _failed_plan(reason: str, message: str, records: list[TrialRecord] | None = None) -> Plan:
    return Plan(
        phase=Phase.failed,
        reason=reason,
        message=message,
        counts=counts(records or []),
        records=list(records or []),
    )


async def _prune(
    sweep_obj: dict[str, Any], namespace: str, child: str, plan: Plan, number: int
) -> None:
    body = {
        "metadata": {"annotations": {ANNOTATION_STATE: STATE_PRUNED}},
        "spec": {"suspend": True},
    }
    try:
        await kube.patch(*FTJ_RESOURCE, child, body, namespace)
    except kube.NotFound:
        return
    rec = next((r for r in plan.records if r.number == number), None)
    last = (
        f" at evaluation {len(rec.intermediate)} (value {rec.intermediate[-1]:.4g})"
        if (rec and rec.intermediate)
        else ""
    )
    log.info("sweep %s/%s: pruned %s%s", namespace, sweep_obj["metadata"]["name"], child, last)
    await kube.create_event(sweep_obj, "TrialPruned", f"Pruned trial {child}{last}.")


async def _write_status(
    obj: dict[str, Any],
    previous: dict[str, Any],
    plan: Plan,
    generation: int | None,
    sweep: HyperparameterSweep | None = None,
) -> None:
    meta = obj["metadata"]
    namespace, name = meta.get("namespace") or "", meta["name"]
    status = sweep_status(
        plan, sweep_name=name, generation=generation, previous=previous, now=now_rfc3339()
    ).dump()
    if sweep is not None:
        publish(namespace, name, sweep.spec.objective.metric, plan)
    if not status.get("bestTrial") and previous.get("bestTrial"):
        status["bestTrial"] = None
    changed = {k: v for k, v in status.items() if previous.get(k) != v}
    if not changed:
        return
    if "bestTrial" in changed and previous.get("bestTrial") and status.get("bestTrial"):
        # A merge patch would keep params of the previous best that the new one lacks.
        await kube.patch_status(*SWEEP_RESOURCE, name, {"bestTrial": None}, namespace)
    await kube.patch_status(*SWEEP_RESOURCE, name, changed, namespace)
    if previous.get("phase") != status.get("phase"):
        kind = "Warning" if plan.phase is Phase.failed else "Normal"
        await kube.create_event(obj, f"Sweep{plan.phase.value}", plan.message, type=kind)


# --------------------------------------------------------------------------- metrics

_PUBLISHED: dict[Key, str] = {}


def publish(namespace: str, name: str, metric: str, plan: Plan) -> None:
    """finetune_sweep_best_value and finetune_sweep_trials{state} for one sweep."""
    old = _PUBLISHED.get((namespace, name))
    if old is not None and old != metric:
        with contextlib.suppress(KeyError):
            metrics.SWEEP_BEST.remove(namespace, name, old)
    _PUBLISHED[(namespace, name)] = metric
    if plan.best is not None and plan.best.value is not None:
        metrics.SWEEP_BEST.labels(namespace, name, metric).set(plan.best.value)
    c = plan.counts
    for state in metrics.SWEEP_STATES:
        metrics.SWEEP_TRIALS.labels(namespace, name, state).set(float(getattr(c, state)))


def forget_metrics(namespace: str, name: str) -> None:
    metric = _PUBLISHED.pop((namespace, name), None)
    if metric is not None:
        with contextlib.suppress(KeyError):
            metrics.SWEEP_BEST.remove(namespace, name, metric)
    for state in metrics.SWEEP_STATES:
        with contextlib.suppress(KeyError):
            metrics.SWEEP_TRIALS.remove(namespace, name, state)


async def _forget(namespace: str, name: str, meta: dict[str, Any]) -> None:
    """The sweep is gone: drop its series and delete its trials (GC would too)."""
    forget_metrics(namespace, name)
    uid = str(meta.get("uid") or "")
    try:
        children = await list_trials(namespace, name, uid)
    except kube.KubeError as err:
        log.info("could not list trials of %s/%s: %s", namespace, name, err)
        return
    for child in children:
        cname = child["metadata"]["name"]
        try:
            await kube.delete(*FTJ_RESOURCE, cname, namespace, propagation="Background")
        except kube.KubeError as err:  # GC removes it anyway through the owner reference
            log.info("could not delete trial %s/%s: %s", namespace, cname, err)
