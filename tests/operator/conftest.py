"""Reusable fixtures for operator tests over HTTP against kmock's KubernetesEmulator.

    async def test_x(cluster, operator, kubelet):
        ftj = await cluster.create(FTJ, make_ftj("demo", spec))
        job = await cluster.wait_for_object(JOB, "team-a", "demo-train")
        await kubelet.run_pod(job)                       # pod Running, Job active
        await kubelet.succeed(job, metrics={"accuracy": 0.9})
        await cluster.wait_for(lambda: cluster.status(FTJ, "team-a", "demo").get("phase") == "Succeeded")

Fixtures:
- `cluster`   a started emulator with every resource the operator needs declared, a kubeconfig
              pointing at it (`cluster.kubeconfig`), HTTP helpers for writes (writes must go over
              HTTP so watchers see them) and in-memory reads (`cluster.get_object`, `cluster.objects`).
- `operator`  an `OperatorRunner` already started in-process (kopf + /metrics + /healthz) on free
              ports; `await operator.restart()`, `await operator.stop()`, `await operator.metrics()`.
              Use `operator_factory` for custom settings (namespaces, config).
- `kubelet`   a `Kubelet` that plays kubelet + job controller: creates Pods for a Job and flips
              Job/Pod statuses (running, succeeded, OOMKilled, image pull backoff, ...).
              `await kubelet.run_process(job, env=..., cwd=...)` runs the Job's container command
              as a local process, like a node would, and reports the result into Job/Pod status.
- `make_ftj(name, spec, namespace=..., labels=...)` a FineTuneJob body with uid/generation set
  (the emulator keeps none of its own).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from operator_harness import Cluster, Kubelet, OperatorRunner, start_cluster


@pytest_asyncio.fixture()
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with start_cluster(tmp_path) as c:
        yield c


@pytest_asyncio.fixture()
async def operator_factory(
    cluster: Cluster,
) -> AsyncIterator[Callable[..., Awaitable[OperatorRunner]]]:
    runners: list[OperatorRunner] = []

    async def factory(**kwargs: Any) -> OperatorRunner:
        runner = OperatorRunner(cluster, **kwargs)
        await runner.start()
        runners.append(runner)
        return runner

    yield factory
    for runner in runners:
        await runner.stop()


@pytest_asyncio.fixture()
async def operator(operator_factory: Callable[..., Awaitable[OperatorRunner]]) -> OperatorRunner:
    return await operator_factory()


@pytest.fixture()
def kubelet(cluster: Cluster) -> Kubelet:
    return Kubelet(cluster)
