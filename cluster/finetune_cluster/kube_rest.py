"""A small asyncio REST client for the Kubernetes API (aiohttp), from a kubeconfig.

The node agent needs a handful of verbs (get, create, merge-patch, delete, watch) and
must keep working across long watches; a thin client over aiohttp keeps the wire format
(plain JSON dicts, exactly what the API serves) visible and avoids a generated client.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yaml

MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """A non-2xx answer of the API server (status code, reason and the Status body)."""

    def __init__(self, status: int, body: Any, method: str = "", path: str = "") -> None:
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else str(body)[:300]
        super().__init__(f"{method} {path}: {status} {message}")

    @property
    def reason(self) -> str:
        return str(self.body.get("reason", "")) if isinstance(self.body, dict) else ""


@dataclass
class KubeConfig:
    """The parts of a kubeconfig context the agent uses."""

    server: str
    ca_file: str | None = None
    insecure: bool = False
    token: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.server).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.server)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def ssl_context(self) -> ssl.SSLContext | bool:
        """TLS settings for aiohttp (False: plain HTTP or an unverified server)."""
        if not self.server.startswith("https"):
            return False
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def _materialize(value: dict[str, Any], key: str, base: Path, scratch: Path) -> str | None:
    """A kubeconfig file reference (relative to the kubeconfig) or its inline -data form."""
    if value.get(f"{key}-data"):
        scratch.mkdir(parents=True, exist_ok=True)
        path = scratch / f"kubeconfig-{key}.pem"
        path.write_bytes(base64.b64decode(value[f"{key}-data"]))
        path.chmod(0o600)
        return str(path)
    if value.get(key):
        return str((base / value[key]).resolve())
    return None


def load_kubeconfig(path: Path, scratch: Path, context: str | None = None) -> KubeConfig:
    """Parse the current (or named) context of a kubeconfig; inline data goes to scratch."""
    doc = yaml.safe_load(path.read_text()) or {}
    name = context or doc.get("current-context")
    contexts = {c["name"]: c.get("context") or {} for c in doc.get("contexts") or []}
    ctx = contexts.get(name) if name else next(iter(contexts.values()), None)
    if ctx is None:
        raise ValueError(f"{path}: no context {name!r}")
    clusters = {c["name"]: c.get("cluster") or {} for c in doc.get("clusters") or []}
    users = {u["name"]: u.get("user") or {} for u in doc.get("users") or []}
    cluster = clusters[ctx["cluster"]]
    user = users.get(ctx.get("user", ""), {})
    base = path.parent
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = (base / user["tokenFile"]).read_text().strip()
    return KubeConfig(
        server=str(cluster["server"]).rstrip("/"),
        ca_file=_materialize(cluster, "certificate-authority", base, scratch),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        token=token,
        cert_file=_materialize(user, "client-certificate", base, scratch),
        key_file=_materialize(user, "client-key", base, scratch),
    )


class Api:
    """JSON verbs against one API server; one aiohttp session shared by all tasks."""

    def __init__(self, config: KubeConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        headers = {"Accept": "application/json", "User-Agent": "finetune-node-agent/v1.37.2"}
        if self.config.token:
            headers["Authorization"] = f"Bearer {self.config.token}"
        connector = aiohttp.TCPConnector(ssl=self.config.ssl_context(), limit=64)
        self._session = aiohttp.ClientSession(
            base_url=self.config.server, headers=headers, connector=connector
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Api used outside `async with`")
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Any:
        """One call; the decoded JSON answer, or ApiError."""
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        async with self.session.request(
            method,
            path,
            params=dict(params or {}),
            data=data,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            raw = await resp.read()
            try:
                decoded: Any = json.loads(raw) if raw else {}
            except ValueError:
                decoded = raw.decode(errors="replace")
            if resp.status >= 400:
                raise ApiError(resp.status, decoded, method, path)
            return decoded

    async def get(self, path: str, **params: str) -> Any:
        return await self.request("GET", path, params=params)

    async def get_or_none(self, path: str) -> Any:
        """The object, or None where it does not exist."""
        try:
            return await self.get(path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def create(self, path: str, body: Any) -> Any:
        return await self.request("POST", path, body=body)

    async def merge_patch(self, path: str, body: Any) -> Any:
        return await self.request("PATCH", path, body=body, content_type=MERGE_PATCH)

    async def delete(self, path: str, body: Any = None) -> Any:
        return await self.request("DELETE", path, body=body)

    async def watch(
        self, path: str, resource_version: str, **params: str
    ) -> AsyncIterator[dict[str, Any]]:
        """The events of one watch request (ends when the server closes it)."""
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "290",
            **params,
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=330)
        async with self.session.get(path, params=query, timeout=timeout) as resp:
            if resp.status >= 400:
                raw = await resp.read()
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                raise ApiError(resp.status, body, "WATCH", path)
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
            if buffer.strip():
                yield json.loads(buffer)


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds` or until stop is set; True if stopping."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
