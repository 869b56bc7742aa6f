"""`finetune operator` as a real process against the real control plane: KUBECONFIG login
as the chart's ServiceAccount, /metrics, /healthz, SIGKILL + restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from operator_harness import (
    FTJ,
    JOB,
    NAMESPACE,
    SMALL_SPEC,
    STUB_IMAGE,
    Cluster,
    Kubelet,
    OperatorProcess,
    make_ftj,
    sample,
)

pytestmark = pytest.mark.operator


@pytest_asyncio.fixture()
async def process(cluster: Cluster) -> AsyncIterator[OperatorProcess]:
    proc = OperatorProcess(cluster)
    yield proc
    await proc.kill()


async def test_killed_and_restarted_process(
    cluster: Cluster, kubelet: Kubelet, process: OperatorProcess
) -> None:
    await process.start()
    await cluster.create(FTJ, make_ftj("proc", SMALL_SPEC))
    job = await cluster.wait_for_object(JOB, NAMESPACE, "proc-train")
    # The image comes from the process's environment (FINETUNE_TRAINER_IMAGE).
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == STUB_IMAGE
    await kubelet.run_pod(job)
    await cluster.wait_phase(NAMESPACE, "proc", "Running")

    # SIGKILL; the pod ends and the Job controller completes the Job while no operator runs.
    await process.kill()
    await kubelet.succeed(job, metrics={"accuracy": 0.8})
    assert cluster.status(FTJ, NAMESPACE, "proc")["phase"] == "Running"
    await process.start()

    status = await cluster.wait_phase(NAMESPACE, "proc", "Succeeded")
    assert status["metrics"] == {"accuracy": 0.8}
    # The restarted process adopted the Job: no second create (the apiserver's audit log).
    assert cluster.count_creates(JOB) == 1
    assert [j["metadata"]["name"] for j in cluster.objects(JOB, NAMESPACE)] == ["proc-train"]
    for _ in range(50):
        text = await process.metrics()
        labels = {"namespace": NAMESPACE, "name": "proc", "metric": "accuracy"}
        if sample(text, "finetune_job_metric", **labels) == 0.8:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("metrics not republished after the restart")
