"""Fixtures for operator tests over HTTP against kmock's emulator (usage: operator_harness.py)."""

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
        # A real apiserver would have dropped these fields from what was written.
        assert c.emulator.pruned == [], f"fields lost to pruning: {c.emulator.pruned}"


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
