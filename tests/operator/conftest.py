"""Fixtures for operator tests against the session's real control plane (operator_harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from operator_harness import FTJ, SWEEP, Cluster, Kubelet, OperatorRunner

from support.plane import TEST_NAMESPACES, Plane

# What a test leaves in its namespaces, deleted after it (children by the garbage collector).
CLEANUP = ("finetunejobs.finetune.dev", "hyperparametersweeps.finetune.dev", "jobs", "pods")
CLEANUP_TOO = ("services", "events", "secrets", "configmaps", "persistentvolumeclaims")


@pytest_asyncio.fixture()
async def cluster(control_plane: Plane) -> AsyncIterator[Cluster]:
    async with aiohttp.ClientSession() as session, control_plane.async_client() as http:
        with control_plane.client() as sync:
            c = Cluster(control_plane, http, sync, session, control_plane.audit_offset())
            yield c
            for ns in TEST_NAMESPACES:
                clean(c, ns)


def clean(c: Cluster, namespace: str) -> None:
    """Delete the test's objects and wait until no pod of it runs."""
    kinds = ",".join(CLEANUP)
    c.plane.kubectl("delete", kinds, "--all", "-n", namespace, "--wait=false", check=False)
    c.plane.kubectl(
        "delete", ",".join(CLEANUP_TOO), "-n", namespace, "--wait=false",
        "--field-selector=metadata.name!=kube-root-ca.crt", check=False,
    )  # fmt: skip
    c.plane.kubectl(
        "wait", "--for=delete", "pods,jobs", "--all", "-n", namespace, "--timeout=60s", check=False
    )
    for res in (FTJ, SWEEP):
        assert not c.objects(res, namespace), f"{res[2]} left in {namespace}"


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
