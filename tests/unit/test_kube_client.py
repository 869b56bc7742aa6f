"""kube.py over real HTTP: auth header, query, JSON bodies and error mapping."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio import client as k8s_client

from finetune_operator import kube

pytestmark = pytest.mark.unit


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "status": "Failure", "reason": reason, "message": message}
    return web.json_response(body, status=code)


@pytest.fixture
async def server() -> AsyncIterator[tuple[kube.Kube, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.text()
        seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "auth": request.headers.get("Authorization"),
                "type": request.headers.get("Content-Type"),
                "body": json.loads(body) if body else None,
            }
        )
        name = request.path.rsplit("/", 1)[-1]
        if request.method == "POST":
            name = seen[-1]["body"]["metadata"]["name"]
        if name == "missing":
            return _status(404, "NotFound", 'jobs.batch "missing" not found')
        if name == "taken":
            return _status(409, "AlreadyExists", 'jobs.batch "x" already exists')
        if name == "broken":
            return web.Response(status=500, text="upstream exploded")
        return web.json_response({"metadata": {"name": name}, "echo": seen[-1]["body"]})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    await web.TCPSite(runner, "127.0.0.1", port).start()
    cfg = k8s_client.Configuration(host=f"http://127.0.0.1:{port}")
    cfg.api_key = {"BearerToken": "sekret"}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    client = await kube.connect(cfg)
    try:
        yield client, seen
    finally:
        await client.close()
        await runner.cleanup()


Server = tuple[kube.Kube, list[dict[str, Any]]]


async def test_requests_carry_token_query_and_json(server: Server) -> None:
    client, seen = server
    got = await client.patch("batch", "v1", "jobs", "j1", {"spec": {"suspend": True}}, "ns")
    assert got["echo"] == {"spec": {"suspend": True}}
    await client.delete("batch", "v1", "jobs", "j2", "ns", propagation="Foreground")
    patch, delete = seen
    assert patch["method"] == "PATCH"
    assert patch["path"] == "/apis/batch/v1/namespaces/ns/jobs/j1"
    assert patch["auth"] == "Bearer sekret"
    assert patch["type"] == kube.MERGE_PATCH
    assert delete["query"] == {"propagationPolicy": "Foreground"}
    assert delete["body"]["propagationPolicy"] == "Foreground"


async def test_errors_map_to_typed_exceptions(server: Server) -> None:
    client, _ = server
    with pytest.raises(kube.NotFound):
        await client.get("batch", "v1", "jobs", "missing", "ns")
    assert await client.delete("batch", "v1", "jobs", "missing", "ns") is None
    with pytest.raises(kube.Conflict) as conflict:
        await client.create("batch", "v1", "jobs", {"metadata": {"name": "taken"}}, "ns")
    assert conflict.value.reason == "AlreadyExists"
    with pytest.raises(kube.KubeError) as broken:
        await client.get("batch", "v1", "jobs", "broken", "ns")
    assert broken.value.status == 500
    assert "upstream exploded" in broken.value.message


async def test_no_response_is_a_kube_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens here
    client = await kube.connect(k8s_client.Configuration(host=f"http://127.0.0.1:{port}"))
    try:
        with pytest.raises(kube.KubeError) as err:
            await client.get("", "v1", "pods", "p", "ns")
        assert err.value.status == 0
    finally:
        await client.close()
