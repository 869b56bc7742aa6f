"""The one Kubernetes-client module: generic async CRUD for any group/version/plural.

Built on kubernetes_asyncio's ApiClient (aiohttp underneath, so nothing waits
on a thread pool), used with plain dicts: callers build manifests as dicts and
get dicts back. kopf does the watching; this module does the writing.

    client = await kube.connect(await kube.load_configuration())  # in-cluster, else KUBECONFIG
    job = await client.create("batch", "v1", "jobs", manifest, namespace="ns")
    await client.patch_status("finetune.dev", "v1alpha1", "finetunejobs", "x", {...}, "ns")
    await client.close()

The client is a value the caller owns (the operator creates one at start-up and keeps it
in its ReconcileState); nothing here is module-level state.

Core-group resources use group "" (e.g. ("", "v1", "pods")).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import yaml
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from finetune_api.conditions import now_rfc3339
from finetune_api.manifest import UserError

USER_AGENT = "finetune-operator/0.1.0"
MERGE_PATCH = "application/merge-patch+json"
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class KubeError(Exception):
    """An API call that failed; `status` is the HTTP code (0 when no response came)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(KubeError):
    """404."""


class Conflict(KubeError):
    """409: already exists, or a resourceVersion conflict."""


async def load_configuration(
    *, kubeconfig: str | None = None, context: str | None = None
) -> k8s_client.Configuration:
    """Credentials: in-cluster service account, else KUBECONFIG / ~/.kube/config."""
    configuration = k8s_client.Configuration()
    # Its "Config not found" warning would precede our own error line, saying less.
    logging.getLogger("kubernetes_asyncio.config.kube_config").setLevel(logging.ERROR)
    try:
        if kubeconfig is None and os.path.exists(SERVICE_ACCOUNT_TOKEN):
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            await k8s_config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
    except Exception as err:  # the loader raises YAMLError, TypeError, binascii.Error, ...
        source = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        paths = [os.path.expanduser(p) for p in source.split(os.pathsep) if p]
        reason = (
            "does not exist"
            if not any(map(os.path.exists, paths))
            else f"could not be used ({_not_a_mapping(paths) or _config_problem(err)})"
        )
        raise UserError(
            f"no usable Kubernetes credentials: not running in a cluster, and the "
            f"kubeconfig {source} {reason}"
        ) from None
    return configuration


def _not_a_mapping(paths: list[str]) -> str | None:
    """'not a kubeconfig ...' when a file parses as YAML but is not a mapping."""
    for path in paths:
        try:
            with open(path) as f:
                doc = yaml.safe_load(f)
        except (OSError, yaml.YAMLError):
            continue
        if not isinstance(doc, dict):
            return f"{path} is not a kubeconfig: it holds {type(doc).__name__}, not a mapping"
    return None


def _config_problem(err: Exception) -> str:
    """A kubeconfig loader's error on one line: YAML problems with their line number."""
    mark = getattr(err, "problem_mark", None)
    if mark is not None:  # yaml.MarkedYAMLError
        problem = getattr(err, "problem", None) or "malformed"
        return f"not valid YAML: {problem} at line {mark.line + 1}, column {mark.column + 1}"
    text = " ".join(str(err).split()) or "no message"
    if isinstance(err, k8s_config.ConfigException | OSError):
        return text
    return f"malformed: {type(err).__name__}: {text}"


async def connect(configuration: k8s_client.Configuration) -> Kube:
    """A client with its HTTP session open (loading TLS trust roots takes ~50 ms, so this
    happens at start-up, not on the first request of a burst). Call inside the event loop
    that will use it; `await client.close()` on shutdown."""
    # At most 32 connections: a burst otherwise opened ~70, each with its TLS and 2 MB read
    # buffers; capped, peak RSS at N = 400 fell 19 MB with no change in wall time
    # (benchmarks/operator_scale.py against the real apiserver).
    configuration.connection_pool_maxsize = min(configuration.connection_pool_maxsize or 32, 32)
    api = k8s_client.ApiClient(configuration=configuration)
    api.user_agent = USER_AGENT
    # kubernetes_asyncio opens its session with trust_env=True, which makes aiohttp read
    # ~/.netrc and the proxy environment in a thread pool on *every* request. Keep its
    # connector (TLS settings) in a session without that; a kubeconfig proxy-url is still
    # passed per request by the REST client.
    rest = api.rest_client
    old = rest.pool_manager
    connector = old.connector
    old.detach()
    await old.close()
    rest.pool_manager = aiohttp.ClientSession(
        connector=connector, trust_env=False, read_bufsize=2**21
    )
    return Kube(api)


def path(
    group: str,
    version: str,
    plural: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The REST path: /api/v1/... for the core group, /apis/{group}/{version}/... otherwise."""
    parts = ["/api", version] if not group else ["/apis", group, version]
    if namespace:
        parts += ["namespaces", namespace]
    parts.append(plural)
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


class Kube:
    """One API client: an ApiClient whose aiohttp session belongs to the loop that opened it."""

    def __init__(self, api: k8s_client.ApiClient) -> None:
        self.api = api

    async def close(self) -> None:
        """Close the HTTP session (call on shutdown)."""
        await self.api.close()

    async def _headers(self, accept: str) -> dict[str, str]:
        headers = {"Accept": accept}
        headers.update(self.api.default_headers)
        auth = (await self.api.configuration.auth_settings()).get("BearerToken")
        if auth:
            headers[auth["key"]] = auth["value"]
        return headers

    def _url(self, url_path: str, query: list[tuple[str, str]] | None) -> str:
        url = f"{self.api.configuration.host}{url_path}"
        return url + "?" + urlencode(query) if query else url

    def _extra(self) -> dict[str, Any]:
        rest, extra = self.api.rest_client, dict[str, Any]()
        if rest.proxy:
            extra["proxy"], extra["proxy_headers"] = rest.proxy, rest.proxy_headers
        if rest.server_hostname:
            extra["server_hostname"] = rest.server_hostname
        return extra

    async def request(
        self,
        method: str,
        url_path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        timeout: float | None = 30,
    ) -> dict[str, Any]:
        """One API call; returns the decoded JSON object, raises KubeError/NotFound/Conflict.

        Sent straight through the ApiClient's aiohttp session with the configuration's host,
        TLS, proxy and bearer token (refreshed by its hook): kubernetes_asyncio's generic
        call_api re-walks every request body and header dict first, which cost a quarter of
        the operator's CPU when a burst of FineTuneJobs arrives.
        """
        headers = await self._headers("application/json")
        headers["Content-Type"] = content_type
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        try:
            async with self.api.rest_client.pool_manager.request(
                method,
                self._url(url_path, query),
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout),
                **self._extra(),
            ) as response:
                payload = await response.read()
                status, reason = response.status, response.reason or ""
        except (aiohttp.ClientError, TimeoutError) as err:
            raise KubeError(0, type(err).__name__, str(err) or "no response") from None
        if status >= 400:
            raise _error(status, reason, payload.decode("utf-8", "replace"))
        decoded = json.loads(payload) if payload else {}
        return decoded if isinstance(decoded, dict) else {}

    async def stream(
        self, url_path: str, *, query: list[tuple[str, str]] | None = None
    ) -> AsyncIterator[bytes]:
        """GET a streaming endpoint (a `?watch=true` list, a followed pod log): yields the body
        line by line as it arrives, until the server ends it. Raises KubeError like `request`."""
        headers = await self._headers("*/*")
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
        session = self.api.rest_client.pool_manager
        try:
            async with session.get(
                self._url(url_path, query), headers=headers, timeout=timeout, **self._extra()
            ) as resp:
                if resp.status >= 400:
                    payload = await resp.read()
                    raise _error(resp.status, resp.reason or "", payload.decode("utf-8", "replace"))
                async for line in resp.content:
                    yield line
        except (aiohttp.ClientError, TimeoutError) as err:
            raise KubeError(0, type(err).__name__, str(err) or "no response") from None

    async def get(
        self, group: str, version: str, plural: str, name: str, namespace: str | None = None
    ) -> dict[str, Any]:
        return await self.request("GET", path(group, version, plural, namespace, name))

    async def list_objects(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
    ) -> list[dict[str, Any]]:
        """Items of a list call (namespace None = all namespaces)."""
        query = [("labelSelector", label_selector)] if label_selector else []
        data = await self.request("GET", path(group, version, plural, namespace), query=query)
        return list(data.get("items") or [])

    async def create(
        self,
        group: str,
        version: str,
        plural: str,
        body: dict[str, Any],
        namespace: str | None = None,
    ) -> dict[str, Any]:
        """POST; raises Conflict when an object of that name exists."""
        ns = namespace or body.get("metadata", {}).get("namespace")
        return await self.request("POST", path(group, version, plural, ns), body=body)

    async def patch(
        self,
        group: str,
        version: str,
        plural: str,
        name: str,
        body: Any,
        namespace: str | None = None,
        *,
        subresource: str | None = None,
        content_type: str = MERGE_PATCH,
    ) -> dict[str, Any]:
        """PATCH (merge patch by default; None values delete keys)."""
        return await self.request(
            "PATCH",
            path(group, version, plural, namespace, name, subresource),
            body=body,
            content_type=content_type,
        )

    async def patch_status(
        self,
        group: str,
        version: str,
        plural: str,
        name: str,
        status: dict[str, Any],
        namespace: str | None = None,
    ) -> dict[str, Any]:
        """Merge-patch the status subresource with {"status": status}."""
        return await self.patch(
            group, version, plural, name, {"status": status}, namespace, subresource="status"
        )

    async def delete(
        self,
        group: str,
        version: str,
        plural: str,
        name: str,
        namespace: str | None = None,
        *,
        propagation: str = "Background",
    ) -> dict[str, Any] | None:
        """DELETE with a propagation policy (Foreground/Background/Orphan); None if already gone.

        Note: a batch/v1 Job deleted through the API without a policy orphans its pods;
        the default here (Background) deletes them too.
        """
        try:
            return await self.request(
                "DELETE",
                path(group, version, plural, namespace, name),
                query=[("propagationPolicy", propagation)],
                body={
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "propagationPolicy": propagation,
                },
            )
        except NotFound:
            return None

    async def create_event(self, event: dict[str, Any]) -> dict[str, Any]:
        """POST a core/v1 Event built by `event_body`; raises KubeError like any write
        (a Conflict on a retry means the first attempt landed)."""
        return await self.create("", "v1", "events", event, event["metadata"]["namespace"])


def event_body(
    involved: dict[str, Any],
    reason: str,
    message: str,
    *,
    type: str = "Normal",
    component: str = "finetune-operator",
) -> dict[str, Any]:
    """A core/v1 Event about `involved` (a full object or apiVersion/kind/metadata), with a
    unique name so a retried POST is answered 409 instead of posting it twice."""
    meta = involved.get("metadata", {})
    namespace = meta.get("namespace") or "default"
    now = now_rfc3339()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta.get('name')}.{time.time_ns():x}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": meta.get("name"),
            "namespace": namespace,
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "reason": reason,
        "message": message[:1024],
        "type": type,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": os.environ.get("HOSTNAME", component),
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


def _error(status: int, reason: str, message: str) -> KubeError:
    try:
        payload = json.loads(message) if message else {}
        if isinstance(payload, dict):
            reason = str(payload.get("reason") or reason)
            message = str(payload.get("message") or message)
    except (TypeError, ValueError):
        pass
    cls = NotFound if status == 404 else Conflict if status == 409 else KubeError
    return cls(status, reason, message[:500])
