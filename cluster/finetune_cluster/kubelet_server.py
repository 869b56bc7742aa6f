"""The kubelet's HTTPS endpoint, as far as `kubectl logs` needs it.

kube-apiserver serves `pods/log` by calling the node's kubelet at
`https://<InternalIP>:<daemonEndpoints.kubeletEndpoint.Port>/containerLogs/{ns}/{pod}/
{container}?follow=..&tailLines=..&limitBytes=..&previous=..`; without
--kubelet-certificate-authority it does not verify the certificate, so a self-signed
one serves. One listener per node (each has its own port), one handler for all.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

from aiohttp import ClientConnectionResetError, web

from .pod_runtime import tail_data
from .pod_worker import LogState

FOLLOW_POLL_SECONDS = 0.1

LogLookup = Callable[[str, str, str], tuple[Path | None, LogState | None]]


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A serving certificate for 127.0.0.1/localhost (openssl, else cryptography)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "kubelet.crt", folder / "kubelet.key"
    if cert.exists() and key.exists():
        return cert, key
    if shutil.which("openssl"):
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                "-keyout", str(key), "-out", str(cert), "-days", "3650",
                "-subj", "/CN=finetune-node-agent",
                "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    else:  # pragma: no cover - machines without openssl
        _cryptography_cert(cert, key)
    key.chmod(0o600)
    return cert, key


def _cryptography_cert(cert: Path, key: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    pkey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "finetune-node-agent")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    )
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pkey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(san, critical=False)
        .sign(pkey, hashes.SHA256())
    )
    cert.write_bytes(built.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        pkey.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


def _int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    number = int(value)
    if number < 0:
        raise ValueError("negative")
    return number


def make_app(lookup: LogLookup) -> web.Application:
    """The endpoint's routes: /healthz and /containerLogs."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def container_logs(request: web.Request) -> web.StreamResponse:
        ns = request.match_info["ns"]
        pod = request.match_info["pod"]
        container = request.match_info["container"]
        query = request.query
        try:
            tail = _int(query.get("tailLines"))
            limit = _int(query.get("limitBytes"))
        except ValueError:
            return web.Response(status=400, text="bad tailLines or limitBytes")
        follow = query.get("follow") in ("true", "1")
        previous = query.get("previous") in ("true", "1")
        path, state = lookup(ns, pod, container)
        if path is None:
            return web.Response(
                status=400,
                text=f'container "{container}" in pod "{pod}" is waiting to start',
            )
        if previous:
            path = path.with_name(path.name + ".1")
            state = None
            if not path.exists():
                return web.Response(
                    status=400,
                    text=f'previous terminated container "{container}" in pod "{pod}" not found',
                )
        try:
            data = path.read_bytes()
        except OSError:
            data = b""
        head = tail_data(data, tail, None)  # limitBytes: the first bytes of the selection
        if limit is not None:
            head = head[:limit]
        if not follow or state is None or not state.running:
            return web.Response(body=head, content_type="text/plain")
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        try:
            sent = len(head)
            await resp.write(head)
            offset = len(data)
            with open(path, "rb") as fh:
                fh.seek(offset)
                while limit is None or sent < limit:
                    chunk = fh.read(65536)
                    if chunk:
                        if limit is not None:
                            chunk = chunk[: limit - sent]
                        await resp.write(chunk)
                        sent += len(chunk)
                        continue
                    if not state.running:
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(state.finished.wait(), FOLLOW_POLL_SECONDS)
            await resp.write_eof()
        except (ConnectionResetError, ClientConnectionResetError):
            pass  # the client (kubectl logs -f, via the apiserver) went away
        return resp

    async def not_supported(request: web.Request) -> web.Response:
        return web.Response(status=501, text=f"{request.path}: not supported by the node agent")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/containerLogs/{ns}/{pod}/{container}", container_logs)
    app.router.add_route("*", "/{tail:.*}", not_supported)
    return app


async def serve(
    lookup: LogLookup, ports: list[int], cert_dir: Path, host: str = "127.0.0.1"
) -> web.AppRunner:
    """Start the endpoint on every port (one per node); the caller cleans up the runner."""
    cert, key = self_signed_cert(cert_dir)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    runner = web.AppRunner(make_app(lookup), access_log=None)
    await runner.setup()
    for port in ports:
        await web.TCPSite(runner, host, port, ssl_context=ctx).start()
    return runner
