"""kopf handlers for HyperparameterSweep: thin glue between watch events, the sweep core
(sweep_study.plan_sweep) and kube.py.

Level-triggered, with no memory of its own beyond a lock and retry counter per sweep
(in the ReconcileState main.serve() creates): every event on a sweep or on one of its
trials (child FineTuneJobs labelled `finetune.dev/sweep`) runs the same `reconcile()`,
which LISTs the sweep's children from the API server (strongly consistent, so a trial
created a moment ago is never missed and never duplicated), rebuilds the study from
them and then:

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

import logging
import time
from typing import Any

import kopf

from finetune_api.conditions import condition
from finetune_api.manifest import SpecError
from finetune_api.models import (
    HyperparameterSweep,
    HyperparameterSweepSpec,
    HyperparameterSweepStatus,
    Phase,
    ServedModel,
)
from finetune_operator import kube, promotion
from finetune_operator.config import ANNOTATION_PROMOTE, PROMOTE_BEST
from finetune_operator.runtime import (
    FTJ_RESOURCE,
    SWEEP_RESOURCE,
    Key,
    now,
    owned_by,
    parse_object,
)
from finetune_operator.state import ReconcileState, from_memo
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
    plan_sweep,
    record_from_child,
    status_patch,
    sweep_status,
)

log = logging.getLogger("finetune_operator.sweeps")
RECOUNT_S = 0.2  # a trial already existed: list the children again this soon


# --------------------------------------------------------------------------- handlers


@kopf.on.event(*SWEEP_RESOURCE)
async def sweep_event(
    *, type: str, namespace: str | None, name: str, body: kopf.Body, memo: Any, **_: Any
) -> None:
    state = from_memo(memo)
    if type == "DELETED":
        await _forget(state, (namespace or "", name), dict(body.metadata))
        return
    await reconcile(state, (namespace or "", name))


@kopf.on.event(*FTJ_RESOURCE, labels={LABEL_SWEEP: kopf.PRESENT})
async def trial_event(*, namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    sweep = labels.get(LABEL_SWEEP)
    if sweep:
        await reconcile(from_memo(memo), (namespace or "", sweep))


async def reconcile(state: ReconcileState, key: Key) -> None:
    """Bring one sweep's trials and status in line with its spec; retried on API errors."""

    async def once() -> None:
        started = time.perf_counter()
        try:
            await _reconcile(state, key)
        finally:
            state.publisher.instruments.reconcile_seconds.labels(
                kind="HyperparameterSweep"
            ).observe(time.perf_counter() - started)

    await state.sweep_requeue.run(key, once)


# --------------------------------------------------------------------------- reconcile


def parse_sweep(obj: dict[str, Any]) -> HyperparameterSweep:
    """The typed sweep from a raw object; raises SpecError naming the bad field."""
    return parse_object(obj, HyperparameterSweep, HyperparameterSweepSpec)


async def list_trials(
    client: kube.Kube, namespace: str, name: str, uid: str
) -> list[dict[str, Any]]:
    """The sweep's live children (owned by this incarnation of the sweep)."""
    children = await client.list_objects(
        *FTJ_RESOURCE, namespace, label_selector=f"{LABEL_SWEEP}={name}"
    )
    return [
        c
        for c in children
        if (not uid or owned_by(c, uid)) and not (c.get("metadata") or {}).get("deletionTimestamp")
    ]


async def _reconcile(state: ReconcileState, key: Key) -> None:
    namespace, name = key
    obj = await state.kube.get(*SWEEP_RESOURCE, name, namespace)
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return
    try:
        sweep = parse_sweep(obj)
    except SpecError as err:
        await _write_status(state, obj, _failed_plan("InvalidSpec", str(err)))
        return
    uid = str(meta.get("uid") or "")
    children = await list_trials(state.kube, namespace, name, uid)
    metric = sweep.spec.objective.metric
    at = now()  # prices running trials for spec.budget
    records = [r for c in children if (r := record_from_child(c, metric, at)) is not None]
    plan, manifests = _plan(sweep, uid, records, state.config.gpu_hour_price)
    for number in plan.prune:
        await _prune(state, obj, plan, number)
    if not await _create_trials(state, key, manifests):
        # Some trial already existed (an earlier reconcile or a previous operator process
        # created it): recount from the API server shortly instead of trusting this plan.
        raise kopf.TemporaryError("a trial already exists; recounting", delay=RECOUNT_S)
    best = await _promote_best(state, sweep, plan, children)
    await _write_status(state, obj, plan, sweep, best)


async def _promote_best(
    state: ReconcileState,
    sweep: HyperparameterSweep,
    plan: Plan,
    children: list[dict[str, Any]],
) -> dict[str, Any] | None:
    """spec.promote on a succeeded sweep: mark its best trial (and only it) for promotion
    (ANNOTATION_PROMOTE; the FineTuneJob handler then promotes it under the sweep's gate,
    which every trial's spec carries), and return that trial's status, whose Promoted
    condition and inferenceService the sweep's status mirrors. None: nothing to promote."""
    if sweep.spec.promote is None or plan.phase is not Phase.succeeded or plan.best is None:
        return None
    name = plan.best.name or trial_name(sweep.metadata.name, plan.best.number)
    child = next((c for c in children if c["metadata"]["name"] == name), None)
    if child is None:
        return None
    annotations = child["metadata"].get("annotations") or {}
    if annotations.get(ANNOTATION_PROMOTE) != PROMOTE_BEST:
        body = {"metadata": {"annotations": {ANNOTATION_PROMOTE: PROMOTE_BEST}}}
        await state.kube.patch(*FTJ_RESOURCE, name, body, sweep.metadata.namespace)
        log.info("sweep %s: promoting its best trial %s", sweep.metadata.name, name)
    return {"name": name, **(child.get("status") or {})}


def _mirror_promotion(
    status: HyperparameterSweepStatus,
    trial: dict[str, Any],
    previous: dict[str, Any],
    generation: int | None,
) -> None:
    """The best trial's Promoted condition and inferenceService, on the sweep."""
    cond = next(
        (c for c in trial.get("conditions") or [] if c.get("type") == promotion.CONDITION),
        None,
    )
    truth = cond is not None and cond.get("status") == "True"
    reason = str(cond.get("reason")) if cond else "PromotingBestTrial"
    message = f"trial {trial['name']}: " + (
        str(cond.get("message") or "") if cond else "its promotion has not been reported yet"
    )
    status.conditions.append(
        condition(
            promotion.CONDITION,
            truth,
            reason,
            message[:1024],
            generation=generation,
            now=now(),
            previous=previous.get("conditions") or [],
        )
    )
    served = trial.get("inferenceService")
    if served:
        status.inference_service = ServedModel.model_validate(served)


def _plan(
    sweep: HyperparameterSweep, uid: str, records: list[TrialRecord], price: float | None
) -> tuple[Plan, list[dict[str, Any]]]:
    """The study's plan and the manifests of the trials it creates."""
    name = sweep.metadata.name
    try:
        plan = plan_sweep(
            sweep.spec, records, study_name=name, sweep_name=name, price_per_gpu_hour=price
        )
        manifests = [trial_manifest(sweep, n, params, owner_uid=uid) for n, params in plan.create]
    except SpecError as err:
        # e.g. searchSpace bounds outside what the template allows: no such child can exist.
        message = f"searchSpace gives an invalid trial: {err}"
        return _failed_plan("InvalidSearchSpace", message, records), []
    return plan, manifests


async def _create_trials(state: ReconcileState, key: Key, manifests: list[dict[str, Any]]) -> bool:
    """Create the planned trials in order; False when one already existed (409)."""
    namespace, name = key
    for manifest in manifests:
        try:
            await state.kube.create(*FTJ_RESOURCE, manifest, namespace)
        except kube.Conflict:
            log.info("trial %s/%s already exists", namespace, manifest["metadata"]["name"])
            return False
        meta = manifest["metadata"]
        log.info(
            "sweep %s/%s: created trial %s %s", namespace, name, meta["name"], meta["annotations"]
        )
    return True


def _failed_plan(reason: str, message: str, records: list[TrialRecord] | None = None) -> Plan:
    return Plan(
        phase=Phase.failed,
        reason=reason,
        message=message,
        counts=counts(records or []),
        records=list(records or []),
    )


async def _prune(state: ReconcileState, sweep_obj: dict[str, Any], plan: Plan, number: int) -> None:
    """Suspend the trial and mark it pruned; its Event is queued first (once), so a PATCH
    whose reply is lost still announces it."""
    meta = sweep_obj["metadata"]
    namespace, name, uid = meta.get("namespace") or "", meta["name"], str(meta.get("uid") or "")
    child = trial_name(name, number)
    rec = next((r for r in plan.records if r.number == number), None)
    last = (
        f" at evaluation {len(rec.intermediate)} (value {rec.intermediate[-1]:.4g})"
        if (rec and rec.intermediate)
        else ""
    )
    owner, done = state.sweeps.pruned.get((namespace, name), (uid, set()))
    done = done if owner == uid else set()
    if number not in done:
        state.events.post(sweep_obj, "TrialPruned", f"Pruned trial {child}{last}.", "Normal")
        state.sweeps.pruned[(namespace, name)] = (uid, done | {number})
    body = {
        "metadata": {"annotations": {ANNOTATION_STATE: STATE_PRUNED}},
        "spec": {"suspend": True},
    }
    try:
        await state.kube.patch(*FTJ_RESOURCE, child, body, namespace)
    except kube.NotFound:
        return
    log.info("sweep %s/%s: pruned %s%s", namespace, name, child, last)


async def _write_status(
    state: ReconcileState,
    obj: dict[str, Any],
    plan: Plan,
    sweep: HyperparameterSweep | None = None,
    best_trial: dict[str, Any] | None = None,
) -> None:
    """Patch what changed in the status (read fresh from the API server this reconcile),
    publish the gauges, and post an Event on a phase change."""
    meta = obj["metadata"]
    namespace, name = meta.get("namespace") or "", meta["name"]
    previous = dict(obj.get("status") or {})
    status = sweep_status(
        plan, sweep_name=name, generation=meta.get("generation"), previous=previous, now=now()
    )
    if best_trial is not None:
        _mirror_promotion(status, best_trial, previous, meta.get("generation"))
    if sweep is not None:
        best = plan.best.value if plan.best is not None else None
        state.publisher.publish_sweep(
            namespace, name, sweep.spec.objective.metric, best, plan.counts
        )
    # The phase-change Event is queued before the PATCH and once per (sweep, phase): after
    # a PATCH whose reply was lost, the retry reads the new phase and sees no change.
    announce = (str(meta.get("uid") or ""), plan.phase.value)
    if (
        previous.get("phase") != plan.phase.value
        and state.sweeps.announced.get((namespace, name)) != announce
    ):
        kind = "Warning" if plan.phase is Phase.failed else "Normal"
        state.events.post(obj, f"Sweep{plan.phase.value}", plan.message, kind)
        state.sweeps.announced[(namespace, name)] = announce
    for patch in status_patch(previous, status):
        await state.kube.patch_status(*SWEEP_RESOURCE, name, patch, namespace)


async def _forget(state: ReconcileState, key: Key, meta: dict[str, Any]) -> None:
    """The sweep is gone: drop its series and delete its trials (GC would too)."""
    namespace, name = key
    state.publisher.forget_sweep(namespace, name)
    state.sweep_requeue.forget(key)
    state.sweeps.forget(key)
    try:
        children = await list_trials(state.kube, namespace, name, str(meta.get("uid") or ""))
    except kube.KubeError as err:
        log.info("could not list trials of %s/%s: %s", namespace, name, err)
        return
    for child in children:
        cname = child["metadata"]["name"]
        try:
            await state.kube.delete(*FTJ_RESOURCE, cname, namespace, propagation="Background")
        except kube.KubeError as err:  # GC removes it anyway through the owner reference
            log.info("could not delete trial %s/%s: %s", namespace, cname, err)
