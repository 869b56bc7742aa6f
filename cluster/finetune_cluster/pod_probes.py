"""Startup, liveness and readiness probes of a container (httpGet, tcpSocket, exec, grpc).

Readiness decides the pod's Ready condition, so a Deployment (the operator's own, from
the helm chart) rolls out only once its /healthz answers; a failing liveness probe
restarts the container, as the kubelet does. Every pod shares this machine's network,
so probes connect to 127.0.0.1 (the pod IP) unless the probe names a host.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp


def probe_port(port: int | str, container: Mapping[str, Any]) -> int:
    """A probe port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for item in container.get("ports") or []:
        if item.get("name") == port:
            return int(item["containerPort"])
    raise ValueError(f"probe port {port!r} names no container port")


async def probe_once(
    probe: Mapping[str, Any],
    container: Mapping[str, Any],
    env: Mapping[str, str],
    pid: int,
    exec_as: tuple[int, int],
) -> bool:
    """One probe attempt within its timeoutSeconds: True when it succeeds."""
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        return await asyncio.wait_for(_attempt(probe, container, env, pid, exec_as), timeout)
    except (TimeoutError, OSError, ValueError, aiohttp.ClientError):
        return False


async def _attempt(
    probe: Mapping[str, Any],
    container: Mapping[str, Any],
    env: Mapping[str, str],
    pid: int,
    exec_as: tuple[int, int],
) -> bool:
    if "httpGet" in probe:
        http = probe["httpGet"]
        scheme = str(http.get("scheme") or "HTTP").lower()
        host = http.get("host") or "127.0.0.1"
        port = probe_port(http["port"], container)
        path = http.get("path") or "/"
        headers = {h["name"]: h["value"] for h in http.get("httpHeaders") or []}
        headers.setdefault("User-Agent", "kube-probe/1.37")
        ctx: ssl.SSLContext | bool = False
        if scheme == "https":
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
            session.get(
                f"{scheme}://{host}:{port}{path}", headers=headers, allow_redirects=False
            ) as resp,
        ):
            return 200 <= resp.status < 400
    if "tcpSocket" in probe or "grpc" in probe:
        part = probe.get("tcpSocket") or probe.get("grpc") or {}
        port = probe_port(part["port"], container)
        _, writer = await asyncio.open_connection(part.get("host") or "127.0.0.1", port)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    if "exec" in probe:
        command = [str(c) for c in probe["exec"].get("command") or []]
        nsenter = shutil.which("nsenter")
        if nsenter and pid:  # inside the container's mount namespace and root, as its user
            uid, gid = exec_as
            command = [nsenter, "-t", str(pid), "-m", "-u", "-r", "-w"]
            command += ["-S", str(uid), "-G", str(gid), "--", *probe["exec"]["command"]]
        proc = await asyncio.create_subprocess_exec(
            *command,
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            return await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    raise ValueError("probe has no handler")


@dataclass
class ProbeSpec:
    """A probe's timing with the Kubernetes defaults."""

    initial_delay: float
    period: float
    success_threshold: int
    failure_threshold: int

    @classmethod
    def of(cls, probe: Mapping[str, Any]) -> ProbeSpec:
        return cls(
            initial_delay=float(probe.get("initialDelaySeconds") or 0),
            period=float(probe.get("periodSeconds") or 10),
            success_threshold=int(probe.get("successThreshold") or 1),
            failure_threshold=int(probe.get("failureThreshold") or 3),
        )


async def run_probe(
    probe: Mapping[str, Any],
    attempt: Callable[[], Awaitable[bool]],
    on_result: Callable[[bool], None],
    *,
    until_success: bool = False,
) -> None:
    """Probe forever (or, for a startup probe, until the first success), reporting each
    change of the thresholded result: True after successThreshold successes in a row,
    False after failureThreshold failures in a row."""
    spec = ProbeSpec.of(probe)
    await asyncio.sleep(spec.initial_delay)
    state: bool | None = None
    successes = failures = 0
    while True:
        ok = await attempt()
        successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
        if ok and successes >= spec.success_threshold and state is not True:
            state = True
            on_result(True)
        elif not ok and failures >= spec.failure_threshold and state is not False:
            state = False
            on_result(False)
            failures = 0
        if until_success and state is True:
            return
        await asyncio.sleep(spec.period)
