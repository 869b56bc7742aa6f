"""kmock's KubernetesEmulator with kube-apiserver's write semantics for our CRDs.

Stock kmock stores whatever it is sent. `ApiServerEmulator` admits every create,
update (PUT), patch (merge and JSON patch) and `/status` write of a FineTuneJob or
HyperparameterSweep the way kube-apiserver does BEFORE the object is stored, and
only then lets kmock serve the stored object (its reactions, watch streams and
request log work as before):

- the schema work is `crdcheck.admit` against the committed crds/*.yaml: nulls and
  unknown fields pruned (each pruned field is recorded in `emulator.pruned`; with
  `?fieldValidation=Strict` it is a 400, as with kubectl), defaults applied, OpenAPI
  and CEL checked, ratcheting on updates (a failure in an unchanged value does not
  refuse the write, as since Kubernetes 1.30); a failure is a 422 Status (reason
  Invalid, details.causes[]);
- status subresource: create and main-resource writes keep the stored `status`, a
  `/status` write changes only `status`; `metadata.generation` starts at 1 and grows
  when anything but metadata and status changes; uid, creationTimestamp and
  resourceVersion are the server's (a create that carries a resourceVersion is refused);
- resourceVersion: one counter for the emulator, bumped by every stored change; a
  write whose body names a stale resourceVersion gets 409 Conflict; a write that
  changes nothing stores nothing and sends no watch event;
- a strategic-merge or apply patch is 415, as for any custom resource.

Other kinds (Jobs, Pods, Events) keep kmock's lax behaviour. docs/operator.md lists
what this mimics and what it cannot.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp.web
import jsonpatch
import kmock
from kmock._internal import apps, k8s, references, rendering

from support import crdcheck

GROUP = "finetune.dev"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
SYSTEM_FIELDS = ("uid", "creationTimestamp", "generation", "resourceVersion", "namespace", "name")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: null deletes, objects merge, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _status(code: int, reason: str, message: str, details: dict[str, Any]) -> k8s.KubernetesError:
    return k8s.KubernetesError(status=code, reason=reason, message=message, details=details)


class ApiServerEmulator(kmock.KubernetesEmulator):
    """The emulator the operator tests run against (see the module docstring)."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        crds = crdcheck.load_crds()
        self.schemas: dict[str, tuple[str, dict[str, Any]]] = {
            _plural(kind): (kind, schema) for kind, schema in crds.items()
        }
        self.pruned: list[tuple[str, str]] = []  # (request "METHOD path", pruned field)
        self.revision = 0

    async def store_unchecked(self, res: tuple[str, str, str], obj: dict[str, Any]) -> None:
        """Store an object with no admission at all, as if written under an older, laxer
        CRD (the operator must still cope with it); watchers see it ADDED."""
        resource = references.resource(group=res[0], version=res[1], plural=res[2])
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("generation", 1)
        meta.setdefault("creationTimestamp", _now())
        async with self._lock:
            await self._store((resource, meta.get("namespace"), meta["name"]), None, obj)

    def _stored(self, key: Any) -> Any:
        """The stored Object at key, or None (kmock's ObjectsArray has no .get)."""
        if key not in self._objects:
            return None
        return self._objects[key]

    # ------------------------------------------------------------------ routing

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        owned = res is not None and res.group == GROUP and res.plural in self.schemas
        method = request.method.value
        if not owned or method not in ("POST", "PUT", "PATCH"):
            return await super()._handle(request)
        assert res is not None and res.plural is not None
        kind, schema = self.schemas[res.plural]
        async with self._lock:
            stored = await self._write(request, kind, schema)
        if method == "PUT":  # kmock has no PUT action: answer with what was stored
            return aiohttp.web.json_response(stored)
        # kmock's own reactions and fallbacks serve the stored object (no second write).
        return await apps.RawHandler._handle(self, request)

    async def _write(
        self, request: rendering.Request, kind: str, schema: dict[str, Any]
    ) -> dict[str, Any]:
        ctype = str(request.headers.get("Content-Type", "application/json")).split(";")[0]
        what = f"{request.method.value} {request.url.path}"
        if request.method.value == "POST":
            key, old, new = self._create(request, kind)
        else:
            key = (request.resource, request.namespace, request.name)
            current = self._stored(key)
            if current is None or current.deleted:
                raise _not_found(request, kind)
            old = copy.deepcopy(current.raw)
            new = self._changed(request, kind, old, ctype)
        result = crdcheck.admit(schema, new, old)
        if result.pruned and request.params.get("fieldValidation") == "Strict":
            message = "; ".join(f'unknown field "{p}"' for p in result.pruned)
            raise _status(400, "BadRequest", f"strict decoding error: {message}", {})
        if result.causes:
            raise _invalid(kind, new, result.causes)
        self.pruned += [(what, p) for p in result.pruned]
        return await self._store(key, old, result.obj)

    # ------------------------------------------------------------------ verbs

    def _create(
        self, request: rendering.Request, kind: str
    ) -> tuple[Any, dict[str, Any] | None, dict[str, Any]]:
        body = request.data
        if not isinstance(body, dict):
            raise _status(400, "BadRequest", "the body of the request is not a JSON object", {})
        meta = dict(body.get("metadata") or {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        if not meta.get("name"):
            raise _invalid(
                kind,
                body,
                [crdcheck.Cause("metadata.name", "Required value", "FieldValueRequired")],
            )
        if meta.get("resourceVersion"):  # what etcd3's store answers
            raise _status(
                500,
                "InternalError",
                "resourceVersion should not be set on objects to be created",
                {},
            )
        meta["namespace"] = request.namespace or meta.get("namespace")
        key = (request.resource, meta["namespace"], meta["name"])
        existing = self._stored(key)
        if existing is not None and not existing.deleted:
            raise _status(
                409,
                "AlreadyExists",
                f'{_qualified(kind)} "{meta["name"]}" already exists',
                {"name": meta["name"], "group": GROUP, "kind": _plural(kind)},
            )
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        new = {k: v for k, v in body.items() if k != "status"}  # status is the subresource's
        return key, None, {**new, "metadata": meta}

    def _changed(
        self, request: rendering.Request, kind: str, old: dict[str, Any], ctype: str
    ) -> dict[str, Any]:
        """The object a PUT or PATCH asks for, status-subresource rules applied."""
        body = request.data
        if request.method.value == "PUT":
            if not isinstance(body, dict):
                raise _status(400, "BadRequest", "the body of the request is not a JSON object", {})
            wanted = copy.deepcopy(body)
        elif ctype == MERGE_PATCH or ctype == "application/json":
            wanted = merge_patch(old, body)
        elif ctype == JSON_PATCH:
            try:
                wanted = jsonpatch.apply_patch(old, body if isinstance(body, list) else [])
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
                raise _status(
                    422,
                    "Invalid",
                    f"the server rejected our request due to an error in our request: {err}",
                    {},
                ) from None
        else:
            raise _status(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {JSON_PATCH}, {MERGE_PATCH}, application/apply-patch+yaml",
                {},
            )
        # The precondition is the resourceVersion the request leaves in the object: a PUT's
        # body, a merge patch that names one, a JSON patch that replaces it.
        sent = str((wanted.get("metadata") or {}).get("resourceVersion") or "")
        if sent and sent != str(old["metadata"].get("resourceVersion")):
            raise _conflict(kind, old["metadata"]["name"])
        if request.subresource == "status":
            return (
                {**old, "status": wanted.get("status")}
                if "status" in wanted
                else {k: v for k, v in old.items() if k != "status"}
            )
        new = {k: v for k, v in wanted.items() if k != "status"}
        if "status" in old:
            new["status"] = old["status"]
        meta = dict(new.get("metadata") or {})
        meta.update({k: old["metadata"][k] for k in SYSTEM_FIELDS if k in old["metadata"]})
        new["metadata"] = meta
        return new

    async def _store(
        self, key: Any, old: dict[str, Any] | None, new: dict[str, Any]
    ) -> dict[str, Any]:
        """Store a changed object with a new resourceVersion (and generation) and announce it."""
        meta = new["metadata"]
        if old is not None:
            unchanged = {**old, "metadata": {**old["metadata"], "resourceVersion": None}}
            if {**new, "metadata": {**meta, "resourceVersion": None}} == unchanged:
                return old  # a no-op write is not stored: same resourceVersion, no event
            if _content(new) != _content(old):
                meta["generation"] = int(old["metadata"].get("generation") or 0) + 1
        self.revision += 1
        meta["resourceVersion"] = str(self.revision)
        if key in self._objects:  # a new full version in the object's history
            self._objects[key].create(new)
        else:
            self._objects[key] = new
        resource = key[0]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._objects[key].delete()
            await self._buses[resource].put({"type": "DELETED", "object": new})
        else:
            event = "ADDED" if old is None else "MODIFIED"
            await self._buses[resource].put({"type": event, "object": new})
        return new


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    """What metadata.generation tracks: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _plural(kind: str) -> str:
    return {"FineTuneJob": "finetunejobs", "HyperparameterSweep": "hyperparametersweeps"}[kind]


def _qualified(kind: str) -> str:
    return f"{_plural(kind)}.{GROUP}"


def _not_found(request: rendering.Request, kind: str) -> k8s.KubernetesError:
    return _status(
        404,
        "NotFound",
        f'{_qualified(kind)} "{request.name}" not found',
        {"name": request.name, "group": GROUP, "kind": _plural(kind)},
    )


def _conflict(kind: str, name: str) -> k8s.KubernetesError:
    return _status(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(kind)} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        {"name": name, "group": GROUP, "kind": _plural(kind)},
    )


def _invalid(kind: str, obj: dict[str, Any], causes: list[crdcheck.Cause]) -> k8s.KubernetesError:
    """422 Invalid, worded like the apiserver's StatusError for a rejected custom resource."""
    name = str((obj.get("metadata") or {}).get("name") or "")
    errors = [f"{c.field}: {c.message}" for c in causes]
    listed = errors[0] if len(errors) == 1 else f"[{', '.join(errors)}]"
    return _status(
        422,
        "Invalid",
        f'{kind}.{GROUP} "{name}" is invalid: {listed}',
        {"name": name, "group": GROUP, "kind": kind, "causes": [c.as_dict() for c in causes]},
    )


class BackgroundApiServer:
    """An `ApiServerEmulator` on 127.0.0.1 in a thread of its own, for synchronous code
    (the trainer's Kubernetes sink) to write to:

        with BackgroundApiServer() as api:
            api.request("POST", api.path("team-a"), manifest)
            ...  # code under test PATCHes api.url
            assert api.emulator.pruned == [] and api.failures() == []
    """

    def __init__(self) -> None:
        self.emulator = ApiServerEmulator()
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="apiserver", daemon=True)

    def __enter__(self) -> BackgroundApiServer:
        self._thread.start()
        if not self._ready.wait(30) or not self.url:
            raise RuntimeError("the emulator did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._ready.set()
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with self.emulator, kmock.Server(self.emulator) as server:
            for plural, info in _CRD_RESOURCES.values():
                self.emulator.resources[f"{GROUP}/v1alpha1/{plural}"] = info
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def path(self, namespace: str, name: str = "", plural: str = "finetunejobs") -> str:
        tail = f"/{name}" if name else ""
        return f"/apis/{GROUP}/v1alpha1/namespaces/{namespace}/{plural}{tail}"

    def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """One synchronous call; raises urllib's HTTPError on a 4xx/5xx."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return dict(json.loads(resp.read() or b"{}"))

    def store_unchecked(self, res: tuple[str, str, str], obj: dict[str, Any]) -> None:
        """`ApiServerEmulator.store_unchecked` from this (synchronous) thread."""
        coro = self.emulator.store_unchecked(res, obj)
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def failures(self) -> list[Exception]:
        """Every request the emulator refused or failed on so far (422s, 409s, ...)."""
        return list(self.emulator.errors)


_CRD_RESOURCES = {
    kind: (
        _plural(kind),
        kmock.ResourceInfo(
            kind=kind,
            singular=kind.lower(),
            namespaced=True,
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            subresources={"status"},
        ),
    )
    for kind in ("FineTuneJob", "HyperparameterSweep")
}
