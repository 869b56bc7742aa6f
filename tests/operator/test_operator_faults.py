"""API errors ahead of the write (issue 10): 500, 429 and 409 answers and lost replies on
the operator's writes never leave a stale or missing status, a second Job or a lost Event.

The operator talks to the emulator through `support.faults.FaultProxy`, which fails a
seeded share of its writes before the emulator sees them (or stores them and cuts the
reply); the test kubelet writes straight to the emulator.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from operator_harness import (
    FTJ,
    JOB,
    NAMESPACE,
    SMALL_SPEC,
    SWEEP,
    Cluster,
    Kubelet,
    OperatorRunner,
    make_ftj,
    write_kubeconfig,
)

from support.faults import FAULTS, FaultProxy

pytestmark = [pytest.mark.operator, pytest.mark.slow]

JOBS = 10
TRIALS = 3


def make_sweep(name: str) -> dict[str, Any]:
    """A small sweep; metadata shaped like the harness's FineTuneJobs."""
    meta = make_ftj(name, SMALL_SPEC)["metadata"]
    meta.pop("labels", None)
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "HyperparameterSweep",
        "metadata": meta,
        "spec": {
            "template": SMALL_SPEC,
            "searchSpace": {
                "hyperparameters.learningRate": {"type": "float", "low": 1e-5, "high": 1e-3}
            },
            "sampler": {"type": "random", "seed": 0},
            "maxTrials": TRIALS,
            "parallelism": TRIALS,
        },
    }


def current(cluster: Cluster, name: str, phase: str) -> bool:
    """The status says what the cluster holds: phase, jobName, observedGeneration."""
    obj = cluster.get_object(FTJ, NAMESPACE, name) or {}
    status = obj.get("status") or {}
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return (
        status.get("phase") == phase
        and status.get("jobName") == f"{name}-train"
        and status.get("observedGeneration") == obj["metadata"].get("generation")
        and len(ready) == 1
        and ready[0].get("status") == ("True" if phase == "Succeeded" else "False")
    )


def jobs_of(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return [
        j
        for j in cluster.objects(JOB, NAMESPACE)
        if (j["metadata"].get("labels") or {}).get("finetune.dev/job") == name
    ]


async def test_api_errors_never_leave_a_stale_status(
    cluster: Cluster, kubelet: Kubelet, tmp_path: Path
) -> None:
    async with FaultProxy(cluster.url, rate=0.2, seed=11) as proxy:
        faulty = dataclasses.replace(
            cluster, kubeconfig=write_kubeconfig(tmp_path / "faulty.json", proxy.url)
        )
        operator = OperatorRunner(faulty)
        await operator.start()
        try:
            await _drive(cluster, kubelet)
        finally:
            await operator.stop()
    # Each kind of fault was met more than once, so every path above was exercised.
    assert all(proxy.injected[f] >= 2 for f in FAULTS), proxy.injected


async def _drive(cluster: Cluster, kubelet: Kubelet) -> None:
    names = [f"burst-{i}" for i in range(JOBS)]
    for name in names:
        await cluster.create(FTJ, make_ftj(name, SMALL_SPEC))
    await cluster.create(SWEEP, make_sweep("flaky"))
    trials = [f"flaky-trial-{n}" for n in range(TRIALS)]
    want = {}
    # Play the node: every Job runs; the trials and every other FineTuneJob succeed.
    for i, name in enumerate(names + trials):
        job = await cluster.wait_for_object(JOB, NAMESPACE, f"{name}-train", timeout=90)
        await kubelet.run_pod(job)
        if name in trials or i % 2 == 0:
            await kubelet.succeed(job, metrics={"accuracy": 0.5 + i / 100})
            want[name] = "Succeeded"
        else:
            want[name] = "Running"

    stale = lambda: sorted(n for n, p in want.items() if not current(cluster, n, p))  # noqa: E731
    try:  # retries back off up to 30 s after repeated failures of one object
        await cluster.wait_for(lambda: not stale(), 120, "every FineTuneJob status current")
    except AssertionError:
        raise AssertionError(
            f"stale: {[cluster.status(FTJ, NAMESPACE, n) for n in stale()]}"
        ) from None
    sweep = lambda: cluster.status(SWEEP, NAMESPACE, "flaky")  # noqa: E731
    await cluster.wait_for(
        lambda: (
            sweep().get("phase") == "Succeeded"
            and (sweep().get("trials") or {}).get("succeeded") == TRIALS
        ),
        90,
        "the sweep Succeeded with every trial counted",
    )
    assert sweep()["bestTrial"]["name"] in trials
    assert sweep()["observedGeneration"] == 1
    for name in want:
        assert len(jobs_of(cluster, name)) == 1, name
    assert len(cluster.objects(JOB, NAMESPACE)) == JOBS + TRIALS
    assert len([o for o in cluster.objects(FTJ, NAMESPACE) if o["metadata"]["name"] in trials]) == 3
    # Events reach the cluster once each, despite lost replies and retries.
    try:
        await cluster.wait_for(lambda: _milestones(cluster, want) == want, 90, "milestone Events")
    except AssertionError:
        seen = {n: [e["reason"] for e in cluster.events(NAMESPACE, n)] for n in want}
        raise AssertionError(f"Events per FineTuneJob: {seen}") from None
    sweep_events = lambda: [e["reason"] for e in cluster.events(NAMESPACE, "flaky")]  # noqa: E731
    await cluster.wait_for(lambda: "SweepSucceeded" in sweep_events(), 90, "the sweep's Event")
    assert sweep_events().count("SweepSucceeded") == 1


def _milestones(cluster: Cluster, want: dict[str, str]) -> dict[str, str]:
    """name -> the phase its Events announce, when it announced JobCreated and its
    current phase exactly once."""
    out = {}
    for name, phase in want.items():
        reasons = [e["reason"] for e in cluster.events(NAMESPACE, name)]
        if reasons.count("JobCreated") == 1 and reasons.count(phase) == 1:
            out[name] = phase
    return out
