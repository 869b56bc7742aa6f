"""A fault-injecting HTTP proxy to put in front of the real kube-apiserver.

The apiserver has no switch for "this write fails", so the proxy decides before the
server sees the request: a chosen share of the writes (POST, PUT, PATCH, DELETE) is
answered with an apiserver-shaped error (500, 429, 409) and never reaches the server, or
is forwarded and stored but its reply is lost (the connection is cut). Reads and watch
streams pass through untouched. The client's own credentials (its bearer token) are
passed on, so the server authenticates and authorizes every forwarded call as the client.

The proxy serves plain HTTP on 127.0.0.1 and forwards to the apiserver over HTTPS,
verifying it with the plane's CA:

    async with FaultProxy(plane.server, ca_file=plane.cp.ca_file, rate=0.2, seed=7) as proxy:
        write_kubeconfig(tmp / "faulty.json", proxy.url, ca, token, user)   # the operator's
        ...
        proxy.injected   # Counter: {"500": 4, "429": 3, "409": 2, "lost": 3}
"""

from __future__ import annotations

import random
import socket
import ssl
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FAULTS = ("500", "429", "409", "lost")
HOP_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})
STATUS_REASONS = {500: "InternalError", 429: "TooManyRequests", 409: "Conflict"}


def status_body(code: int, message: str) -> dict[str, Any]:
    """A metav1.Status like the apiserver's error replies."""
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "reason": STATUS_REASONS.get(code, "InternalError"),
        "message": message,
        "code": code,
    }


class FaultProxy:
    """Forwards to `upstream`, failing a seeded `rate` of the writes with each fault kind
    in turn."""

    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.1,
        seed: int = 0,
        faults: tuple[str, ...] = FAULTS,
        paths: tuple[str, ...] = ("",),
        ca_file: Path | str | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.ca_file = ca_file
        self.rate = rate
        self.faults = faults
        self.paths = paths  # only writes to paths starting with one of these
        self.active = True
        self.injected: Counter[str] = Counter()
        self.writes = 0
        self._rng = random.Random(seed)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def __aenter__(self) -> FaultProxy:
        tls: ssl.SSLContext | bool = True
        if self.ca_file is not None:
            tls = ssl.create_default_context(cafile=str(self.ca_file))
        self._session = aiohttp.ClientSession(
            auto_decompress=False, connector=aiohttp.TCPConnector(ssl=tls)
        )
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _fault(self, request: web.Request) -> str | None:
        if request.method not in WRITES or not self.active:
            return None
        if not any(request.path.startswith(p) for p in self.paths):
            return None
        self.writes += 1
        if self._rng.random() >= self.rate:
            return None
        fault = self.faults[sum(self.injected.values()) % len(self.faults)]  # each in turn
        self.injected[fault] += 1
        return fault

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        fault = self._fault(request)
        if fault is not None and fault != "lost":
            code = int(fault)
            message = f"injected {code} before the write reached the server"
            return web.json_response(status_body(code, message), status=code)
        response = await self._forward(request)
        if fault == "lost":
            # Stored upstream; the client never hears back (the connection is cut).
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("injected: reply lost")
        return response

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        body = await request.read()
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            data=body or None,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None),
        ) as upstream:
            out_headers = {
                k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS
            }
            if request.method in WRITES:  # a small JSON reply: read it whole
                return web.Response(
                    status=upstream.status, body=await upstream.read(), headers=out_headers
                )
            response = web.StreamResponse(status=upstream.status, headers=out_headers)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
