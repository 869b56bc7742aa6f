"""The real operator (kopf, in-process) against kmock's emulator over HTTP."""

from __future__ import annotations

import pytest

from operator_harness import FTJ, JOB, NAMESPACE, SMALL_SPEC, Cluster, Kubelet, OperatorRunner, make_ftj, sample

pytestmark = pytest.mark.operator


async def test_create_job(cluster: Cluster, operator: OperatorRunner) -> None:
    await cluster.create(FTJ, make_ftj("demo", SMALL_SPEC, labels={"kueue.x-k8s.io/queue-name": "gpu"}))
    job = await cluster.wait_for_object(JOB, NAMESPACE, "demo-train")
    print(job)
    status = await cluster.wait_phase(NAMESPACE, "demo", "Pending")
    print(status)
