"""Disruption is not failure, on the real control plane: a trainer pod evicted through the
Eviction API (pods/eviction, what a drain and the scheduler's preemption use) ends with the
apiserver's `DisruptionTarget` condition; the Job's podFailurePolicy ignores it, so the Job
controller creates a new pod without counting a failure (backoffLimit 0 here: one counted
failure would fail the Job), and the run finishes. The pod's grace period is
spec.checkpoint.gracePeriodSeconds."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from operator_harness import (
    FTJ,
    JOB,
    NAMESPACE,
    POD,
    SMALL_SPEC,
    Cluster,
    Kubelet,
    OperatorRunner,
    make_ftj,
)

pytestmark = pytest.mark.operator


def _condition(pod: dict[str, Any], ctype: str) -> dict[str, Any]:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return {}


async def test_an_evicted_trainer_pod_is_replaced_without_counting_a_failure(
    cluster: Cluster, operator: OperatorRunner, kubelet: Kubelet
) -> None:
    spec = copy.deepcopy(SMALL_SPEC)
    spec |= {"backoffLimit": 0, "checkpoint": {"gracePeriodSeconds": 45}}
    await cluster.create(FTJ, make_ftj("evicted", spec))
    job = await cluster.wait_for_object(JOB, NAMESPACE, "evicted-train")
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 45
    first = await kubelet.run_pod(job)
    name = first["metadata"]["name"]
    assert first["spec"]["terminationGracePeriodSeconds"] == 45

    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": NAMESPACE},
    }
    await cluster.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/eviction", eviction)
    kubelet.ordered.add(first["metadata"]["uid"])  # the evicted pod takes no more orders

    # The evicted pod's last status carries the apiserver's DisruptionTarget condition,
    # and the stub trainer's SIGTERM exit (143): a failure by exit code, ignored by policy.
    seen: dict[str, Any] = {}

    def disrupted() -> bool:
        pod = cluster.get_object(POD, NAMESPACE, name)
        if pod is not None and _condition(pod, "DisruptionTarget"):
            seen.update(pod)
        return bool(seen) or pod is None

    await cluster.wait_for(disrupted, 30, f"pod {name} DisruptionTarget")
    assert seen, "the evicted pod was deleted before its DisruptionTarget condition was seen"
    target = _condition(seen, "DisruptionTarget")
    assert target["status"] == "True" and target["reason"] == "EvictionByEvictionAPI"

    second = await kubelet.run_pod(job, timeout=60)  # a new pod, same Job
    assert second["metadata"]["name"] != name
    status = cluster.status(JOB, NAMESPACE, "evicted-train")
    assert not kubelet.job_condition(job, "Failed")
    assert (status.get("failed") or 0) == 0  # ignored: nothing counted against backoffLimit
    # The new pod's trainer resumes and says from which step (its status sink's PATCH, as
    # the real trainer sends it): the operator posts a Resumed Event naming it.
    progress = {"progress": {"step": 6, "totalSteps": 20}, "metrics": {"resumedFromStep": 6}}
    await cluster.patch(FTJ, NAMESPACE, "evicted", {"status": progress}, status=True)

    def resumed() -> list[str]:
        return [
            e["message"] for e in cluster.events(NAMESPACE, "evicted") if e["reason"] == "Resumed"
        ]

    await cluster.wait_for(resumed, 30, "a Resumed Event")
    assert resumed() == ["The trainer resumed from its checkpoint at step 6."]
    await kubelet.succeed(job, metrics={"accuracy": 0.9})
    await cluster.wait_phase(NAMESPACE, "evicted", "Succeeded")
    assert len(resumed()) == 1


async def test_a_spent_budget_suspends_and_a_raised_one_resumes_in_a_new_job(
    cluster: Cluster, operator: OperatorRunner, kubelet: Kubelet
) -> None:
    spec = copy.deepcopy(SMALL_SPEC) | {"budget": {"maxDurationSeconds": 60}}
    await cluster.create(FTJ, make_ftj("budget", spec))
    job = await cluster.wait_for_object(JOB, NAMESPACE, "budget-train")
    message = (
        "budget exhausted at step 7/20: maxDurationSeconds 60 (60.2 s of training); "
        "checkpoint-7 is saved in /output/checkpoints; raise spec.budget and run again to resume"
    )
    report = {
        "phase": "Suspended",
        "reason": "BudgetExhausted",
        "message": message,
        "step": 7,
        "metrics": {},
        "artifacts": {},
    }
    first = await kubelet.run_pod(job)
    await kubelet.terminate(job, exit_code=0, message=json.dumps(report))
    status = await cluster.wait_phase(NAMESPACE, "budget", "Suspended")
    suspended = cluster.condition(NAMESPACE, "budget", "Suspended")
    assert suspended["status"] == "True" and suspended["reason"] == "BudgetExhausted"
    assert "at step 7/20" in suspended["message"] and "at step 7/20" in status["message"]
    assert cluster.condition(NAMESPACE, "budget", "Failed")["status"] == "False"

    # Raising the budget resumes: a new Job (the trainer resumes from its checkpoint)
    await cluster.patch(FTJ, NAMESPACE, "budget", {"spec": {"budget": {"maxDurationSeconds": 600}}})

    def new_pod() -> dict[str, Any] | None:
        fresh = cluster.get_object(JOB, NAMESPACE, "budget-train")
        if fresh is None or fresh["metadata"]["uid"] == job["metadata"]["uid"]:
            return None
        return fresh

    second_job = await cluster.wait_for(new_pod, 60, "a new Job after the budget was raised")
    second = await kubelet.run_pod(second_job, timeout=60)
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    await cluster.wait_for(
        lambda: "BudgetRaised" in [e["reason"] for e in cluster.events(NAMESPACE, "budget")]
    )
    await kubelet.succeed(second_job, metrics={"accuracy": 0.9})
    await cluster.wait_phase(NAMESPACE, "budget", "Succeeded")
