"""Reading FineTuneJobs, sweeps, Jobs, Pods, Events and pod logs from the cluster.

The data side of `finetune get / watch / describe / logs` (views.py renders it). Every
call goes through the operator's one Kubernetes client, `finetune_operator.kube`
(`load_configuration`, `connect`, and the client's `request`/`stream`), with KUBECONFIG or
the in-cluster config, and
every API failure becomes a `ClusterError` that says what is wrong in words: no cluster,
no CRDs, no permission (RBAC), no such name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from finetune_api.manifest import UserError
from finetune_api.models import GROUP, VERSION
from finetune_operator import kube
from finetune_operator.config import LABEL_JOB as JOB_LABEL
from finetune_operator.gang import INDEX_ANNOTATION as INDEX_LABEL  # also a pod label
from finetune_operator.sweep_space import LABEL_SWEEP as SWEEP_LABEL
from finetune_operator.sweep_space import LABEL_TRIAL as TRIAL_LABEL

FTJ, SWEEP = "finetunejobs", "hyperparametersweeps"
KINDS = {FTJ: "FineTuneJob", SWEEP: "HyperparameterSweep"}
SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

Obj = dict[str, Any]


class ClusterError(UserError):
    """A cluster call that failed for a reason the user can act on."""


class NoLogYet(ClusterError):
    """The pod exists but its trainer container has not started (the log endpoint's 400)."""


@dataclass
class Session:
    """Where the commands read: the API server and the namespace (None = all)."""

    client: kube.Kube
    host: str
    namespace: str | None


def _default_namespace(context: str | None) -> str:
    """The namespace of the kubeconfig context (or the pod's own), else "default"."""
    if context is None and not os.environ.get("KUBECONFIG") and os.path.exists(SA_NAMESPACE):
        with contextlib.suppress(OSError), open(SA_NAMESPACE) as f:
            return f.read().strip() or "default"
        return "default"
    from kubernetes_asyncio.config import kube_config

    with contextlib.suppress(Exception):
        contexts, current = kube_config.list_kube_config_contexts(_kubeconfig())
        chosen = next((c for c in contexts if c.get("name") == context), None) or current
        return str((chosen or {}).get("context", {}).get("namespace") or "default")
    return "default"


def _kubeconfig() -> str:
    first = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    return os.path.expanduser(first or "~/.kube/config")


async def connect(namespace: str | None, all_namespaces: bool, context: str | None) -> Session:
    """Load credentials: KUBECONFIG (or ~/.kube/config), else the in-cluster service account.

    The kubeconfig path is passed explicitly: kubernetes_asyncio reads $KUBECONFIG once,
    when it is imported."""
    if namespace and all_namespaces:
        raise ClusterError("-n/--namespace and -A/--all-namespaces exclude each other")
    in_cluster = os.path.exists(kube.SERVICE_ACCOUNT_TOKEN)
    use_file = context or os.environ.get("KUBECONFIG") or not in_cluster
    config = await kube.load_configuration(
        kubeconfig=_kubeconfig() if use_file else None, context=context
    )
    ns = None if all_namespaces else namespace or _default_namespace(context)
    return Session(await kube.connect(config), host=str(config.host), namespace=ns)


def _where(namespace: str | None) -> str:
    return f"namespace {namespace!r}" if namespace else "any namespace"


@contextlib.contextmanager
def _translated(session: Session, what: str) -> Iterator[None]:
    """KubeError -> ClusterError with the reason in words (404 is left to the caller)."""
    try:
        yield
    except kube.NotFound:
        raise
    except kube.KubeError as err:
        if err.status == 0:
            raise ClusterError(
                f"cannot reach the Kubernetes API server at {session.host} ({err.message}); "
                "is the cluster running and KUBECONFIG (or --context) pointing at it?"
            ) from None
        if err.status == 401:
            raise ClusterError(
                f"the API server at {session.host} refused the credentials (401 Unauthorized); "
                "log in again or check the kubeconfig user"
            ) from None
        if err.status == 403:
            raise ClusterError(
                f"not allowed to {what} in {_where(session.namespace)} (403 Forbidden: "
                f"{err.message}); ask for RBAC access (get, list and watch on finetune.dev "
                "resources)"
            ) from None
        raise ClusterError(f"cannot {what}: {err}") from None


async def _crds_installed(session: Session) -> bool:
    with _translated(session, "read the finetune.dev API group"):
        try:
            await session.client.request("GET", f"/apis/{GROUP}/{VERSION}")
        except kube.NotFound:
            return False
    return True


def _no_crds(session: Session) -> ClusterError:
    return ClusterError(
        f"the cluster at {session.host} does not serve {GROUP}/{VERSION}: the FineTuneJob "
        "and HyperparameterSweep CRDs are not installed (helm install the chart, or "
        "kubectl apply -f crds/)"
    )


async def list_objects(
    session: Session, group: str, version: str, plural: str, label: str | None = None
) -> list[Obj]:
    """A list call in the session's namespace; `label` "k=v" is also checked client-side."""
    query = [("labelSelector", label)] if label else []
    url = kube.path(group, version, plural, session.namespace)
    with _translated(session, f"list {plural}"):
        try:
            items = (await session.client.request("GET", url, query=query)).get("items") or []
        except kube.NotFound:
            if group == GROUP and not await _crds_installed(session):
                raise _no_crds(session) from None
            raise ClusterError(f"the API server does not serve {plural}") from None
    if label:
        key, _, value = label.partition("=")
        items = [i for i in items if labels(i).get(key) == value]
    return list(items)


async def list_resources(session: Session) -> tuple[list[Obj], list[Obj]]:
    """(FineTuneJobs, HyperparameterSweeps) in the session's namespace(s)."""
    jobs, sweeps = await asyncio.gather(
        list_objects(session, GROUP, VERSION, FTJ), list_objects(session, GROUP, VERSION, SWEEP)
    )
    return jobs, sweeps


async def find(session: Session, name: str) -> tuple[str, Obj]:
    """(plural, object) for NAME: a FineTuneJob, else a HyperparameterSweep."""
    if session.namespace is None:
        jobs, sweeps = await list_resources(session)
        found = [(FTJ, o) for o in jobs if meta(o).get("name") == name]
        found += [(SWEEP, o) for o in sweeps if meta(o).get("name") == name]
        if len(found) > 1:
            spaces = ", ".join(sorted({meta(o).get("namespace", "") for _, o in found}))
            raise ClusterError(f"{name!r} exists in several namespaces ({spaces}); use -n NS")
        if found:
            return found[0]
        raise ClusterError(f"no FineTuneJob or HyperparameterSweep named {name!r} in any namespace")
    for plural in (FTJ, SWEEP):
        with _translated(session, f"get {plural}"):
            try:
                url = kube.path(GROUP, VERSION, plural, session.namespace, name)
                return plural, await session.client.request("GET", url)
            except kube.NotFound:
                continue
    if not await _crds_installed(session):
        raise _no_crds(session)
    raise ClusterError(
        f"no FineTuneJob or HyperparameterSweep named {name!r} in {_where(session.namespace)} "
        "(finetune get lists them; -n NS or -A for other namespaces)"
    )


def meta(obj: Obj) -> dict[str, Any]:
    return dict(obj.get("metadata") or {})


def labels(obj: Obj) -> dict[str, str]:
    return dict(meta(obj).get("labels") or {})


def status(obj: Obj) -> dict[str, Any]:
    return dict(obj.get("status") or {})


def in_namespace(session: Session, obj: Obj) -> Session:
    """The session narrowed to the object's namespace (for reads about one object)."""
    return Session(session.client, session.host, meta(obj).get("namespace") or session.namespace)


# --------------------------------------------------------------------------- one job's world


@dataclass
class Details:
    """What `describe` shows about one FineTuneJob: its Job, Pods and Events."""

    job: Obj | None = None
    pods: list[Obj] = field(default_factory=list)
    events: list[Obj] = field(default_factory=list)


async def pods_of(session: Session, name: str) -> list[Obj]:
    """The trainer pods of FineTuneJob NAME (every attempt), oldest first."""
    pods = await list_objects(session, "", "v1", "pods", label=f"{JOB_LABEL}={name}")
    return sorted(pods, key=lambda p: str(meta(p).get("creationTimestamp") or ""))


async def details(session: Session, ftj: Obj) -> Details:
    """The Job, Pods and recent Events of a FineTuneJob (all best effort but the pods)."""
    name = meta(ftj)["name"]
    job_name = status(ftj).get("jobName")
    job = None
    if job_name:
        with _translated(session, "get jobs"), contextlib.suppress(kube.NotFound):
            job = await session.client.request(
                "GET", kube.path("batch", "v1", "jobs", session.namespace, job_name)
            )
    pods = await pods_of(session, name)
    involved = {name, job_name, *(meta(p).get("name") for p in pods)}
    events = [
        e
        for e in await list_objects(session, "", "v1", "events")
        if (e.get("involvedObject") or {}).get("name") in involved
    ]
    events.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    return Details(job=job, pods=pods, events=events)


async def trials_of(session: Session, sweep: Obj) -> list[Obj]:
    """The sweep's trial FineTuneJobs, by trial number."""
    trials = await list_objects(
        session, GROUP, VERSION, FTJ, label=f"{SWEEP_LABEL}={meta(sweep)['name']}"
    )
    return sorted(trials, key=trial_number)


def trial_number(obj: Obj) -> int:
    value = labels(obj).get(TRIAL_LABEL, "")
    return int(value) if value.isdigit() else 1 << 30


# --------------------------------------------------------------------------- watch


async def watch(
    session: Session,
    plural: str,
    *,
    name: str | None = None,
    label: str | None = None,
    group: str = GROUP,
    version: str = VERSION,
) -> AsyncIterator[tuple[str, Obj]]:
    """(event type, object) from the watch API (`?watch=true`), reconnecting when the server
    ends the stream; `name`/`label` narrow it (server-side and again here)."""
    query = [("watch", "true"), ("allowWatchBookmarks", "true")]
    if name:
        query.append(("fieldSelector", f"metadata.name={name}"))
    if label:
        query.append(("labelSelector", label))
    key, _, value = (label or "").partition("=")
    url = kube.path(group, version, plural, session.namespace)
    while True:
        with _translated(session, f"watch {plural}"):
            try:
                async for line in session.client.stream(url, query=query):
                    event = json.loads(line) if line.strip() else {}
                    kind, obj = str(event.get("type", "")), dict(event.get("object") or {})
                    if kind == "ERROR":
                        if obj.get("code") == 410:  # too old: start over from now
                            break
                        raise ClusterError(f"watch failed: {obj.get('message', obj)}")
                    if kind not in ("ADDED", "MODIFIED", "DELETED"):
                        continue  # BOOKMARK
                    if name and meta(obj).get("name") != name:
                        continue
                    if label and labels(obj).get(key) != value:
                        continue
                    yield kind, obj
            except kube.NotFound:
                if group == GROUP:
                    raise _no_crds(session) from None
                raise ClusterError(f"the API server does not serve {plural}") from None
        await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- logs


def pick_pod(pods: list[Obj], rank: int | None) -> Obj | None:
    """The newest pod of the given completion index (rank); rank None or 0 also takes pods of
    a plain (non-indexed) Job."""
    wanted = 0 if rank is None else rank

    def index(pod: Obj) -> int | None:
        raw = labels(pod).get(INDEX_LABEL) or (meta(pod).get("annotations") or {}).get(INDEX_LABEL)
        return int(raw) if raw is not None and str(raw).isdigit() else None

    chosen = [p for p in pods if index(p) == wanted or (index(p) is None and wanted == 0)]
    return chosen[-1] if chosen else None


async def log_lines(session: Session, pod: Obj, *, follow: bool) -> AsyncIterator[bytes]:
    """The trainer container's log through the pods/log subresource."""
    query = [("container", "trainer")] + ([("follow", "true")] if follow else [])
    url = kube.path("", "v1", "pods", meta(pod).get("namespace"), meta(pod)["name"], "log")
    with _translated(session, "read pods/log"):
        try:
            # kube-apiserver answers pods/log of a pod no node holds yet with 200 and an
            # empty body, not 400: ask for the log only once the pod is bound.
            now = await session.client.get(
                "", "v1", "pods", meta(pod)["name"], meta(pod).get("namespace")
            )
            if not (now.get("spec") or {}).get("nodeName"):
                raise NoLogYet(f"no log yet from pod {meta(pod)['name']}: not scheduled to a node")
            async for line in session.client.stream(url, query=query):
                yield line
        except kube.NotFound:
            raise ClusterError(f"pod {meta(pod)['name']} is gone (no log to read)") from None
        except kube.KubeError as err:
            if err.status == 400:  # container not started yet
                raise NoLogYet(f"no log yet from pod {meta(pod)['name']}: {err.message}") from None
            raise


async def wait_for_pod(session: Session, name: str, rank: int | None) -> Obj:
    """The first trainer pod of FineTuneJob NAME (of that rank) to appear, via the watch API."""
    async for kind, pod in watch(
        session, "pods", label=f"{JOB_LABEL}={name}", group="", version="v1"
    ):
        if kind != "DELETED" and pick_pod([pod], rank) is not None:
            return pod
    raise ClusterError(f"no trainer pod for {name}")  # pragma: no cover - watch never ends


async def close(session: Session) -> None:
    await session.client.close()
