"""Helpers for operator tests against the session's real control plane (tests/support/plane.py).

Import them as `from operator_harness import ...`; the fixtures live in conftest.py.

    async def test_x(cluster, operator, kubelet):
        ftj = await cluster.create(FTJ, make_ftj("demo", spec))
        job = await cluster.wait_for_object(JOB, "team-a", "demo-train")
        await kubelet.run_pod(job)                    # the Job controller's pod is Running
        await kubelet.succeed(job, metrics={"accuracy": 0.9})
        await cluster.wait_phase("team-a", "demo", "Succeeded")

Fixtures:
- `cluster`   the real kube-apiserver (etcd, controller manager with the Job controller and
              the garbage collector, scheduler, node agent), reached as admin over HTTPS:
              writes (`create`, `patch`, `delete`) and reads (`get_object`, `objects`,
              `status`, `events`) are API calls. `cluster.kubeconfig` is the admin's,
              `cluster.operator_kubeconfig` the chart's operator ServiceAccount's.
              `cluster.audit()` lists the API server's audit events of this test.
              The test's objects in team-a/team-b are deleted after it.
- `operator`  an `OperatorRunner`: the real operator (kopf + /metrics + /healthz) in-process
              on free ports, authenticated as the chart's ServiceAccount, so RBAC is the real
              authorizer. `await operator.restart()`, `await operator.stop()`, `await operator.metrics()`.
- `kubelet`   a `Kubelet` that gives orders to the stand-in trainer (support/stub_trainer.py)
              running in the Job controller's pods: exit with a code and a termination message,
              or allocate memory until the node agent OOM-kills it. Trainer pods use the stub
              image `STUB_IMAGE` (the operator fixture's default trainer image); the real trainer
              is image `TRAINER_IMAGE` (test_operator_e2e_trainer.py).
- `make_ftj(name, spec, namespace=..., labels=...)` a FineTuneJob body to create.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from finetune_operator import kube
from support.plane import STUB_IMAGE, TRAINER_IMAGE, Plane

__all__ = ["STUB_IMAGE", "TRAINER_IMAGE"]

FTJ = ("finetune.dev", "v1alpha1", "finetunejobs")
SWEEP = ("finetune.dev", "v1alpha1", "hyperparametersweeps")
JOB = ("batch", "v1", "jobs")
POD = ("", "v1", "pods")
SERVICE = ("", "v1", "services")
EVENT = ("", "v1", "events")
CRD = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")
NAMESPACE = "team-a"

Resource = tuple[str, str, str]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def api_path(res: Resource, namespace: str | None = None, name: str | None = None) -> str:
    return kube.path(*res, namespace=namespace, name=name)


def make_ftj(
    name: str,
    spec: dict[str, Any],
    *,
    namespace: str = NAMESPACE,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A FineTuneJob body; the apiserver assigns uid, resourceVersion and generation."""
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": spec,
    }


# Small enough for the stub's pods to fit on a node agent node; the stub never loads it.
SMALL_SPEC: dict[str, Any] = {
    "task": "classification",
    "model": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
    "dataset": {"train": {"path": "/data/train.tsv"}},
    "resources": {"gpus": 1, "cpu": "2", "memory": "8Gi"},
}


class ApiError(AssertionError):
    """A refused API call: its HTTP status and the apiserver's Status body."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {path} -> {status}: {body}")
        self.status = status
        self.body = body


# --------------------------------------------------------------------------- cluster


@dataclass
class Cluster:
    """The real API server as admin, plus waiting helpers."""

    plane: Plane
    http: httpx.AsyncClient
    sync: httpx.Client
    session: aiohttp.ClientSession
    audit_start: int = 0

    @property
    def url(self) -> str:
        return self.plane.server

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    @property
    def operator_kubeconfig(self) -> Path:
        return self.plane.operator_kubeconfig

    async def request(self, method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        headers = {"Content-Type": kw.pop("content_type", "application/json")}
        resp = await self.http.request(method, path, json=body, headers=headers, **kw)
        data = resp.json() if resp.content else {}
        if resp.status_code >= 400:
            raise ApiError(method, path, resp.status_code, data)
        return dict(data) if isinstance(data, dict) else {}

    async def create(self, res: Resource, body: dict[str, Any]) -> dict[str, Any]:
        ns = body.get("metadata", {}).get("namespace")
        return await self.request("POST", api_path(res, ns), body)

    async def patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        body: dict[str, Any],
        *,
        status: bool = False,
    ) -> dict[str, Any]:
        path = api_path(res, namespace, name) + ("/status" if status else "")
        return await self.request("PATCH", path, body, content_type="application/merge-patch+json")

    async def delete(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        return await self.request("DELETE", api_path(res, namespace, name))

    def audit(self) -> list[dict[str, Any]]:
        """The apiserver's audit events (verb, objectRef, user, responseStatus) of this test."""
        return self.plane.audit(self.audit_start)

    def count_creates(self, res: Resource, user: str | None = None) -> int:
        """Successful creates of res during this test (by `user`, default the operator)."""
        group, _, plural = res
        who = user or self.plane.operator_user
        return sum(
            1
            for e in self.audit()
            if e.get("verb") == "create"
            and e.get("user", {}).get("username") == who
            and (e.get("objectRef") or {}).get("resource") == plural
            and (e.get("objectRef") or {}).get("apiGroup", "") == group
            and not (e.get("objectRef") or {}).get("subresource")
            and e.get("responseStatus", {}).get("code") == 201
        )

    def get_object(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object (a GET), or None; an object being deleted still counts."""
        resp = self.sync.get(api_path(res, namespace, name))
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        return dict(resp.json())

    def objects(
        self, res: Resource, namespace: str | None = None, selector: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"labelSelector": selector} if selector else None
        resp = self.sync.get(api_path(res, namespace), params=params)
        resp.raise_for_status()
        return [dict(o) for o in resp.json().get("items") or []]

    def status(self, res: Resource, namespace: str, name: str) -> dict[str, Any]:
        obj = self.get_object(res, namespace, name) or {}
        return dict(obj.get("status") or {})

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.objects(EVENT, namespace)
            if e.get("involvedObject", {}).get("name") == name
        ]

    def condition(self, namespace: str, name: str, ctype: str) -> dict[str, Any]:
        for c in self.status(FTJ, namespace, name).get("conditions") or []:
            if c.get("type") == ctype:
                return dict(c)
        return {}

    async def wait_for(
        self,
        predicate: Callable[[], Any],
        timeout: float = 30.0,
        message: str | Callable[[], str] = "",
    ) -> Any:
        """Poll predicate until truthy; `message` (or a callable, evaluated at the timeout)
        says what was awaited."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                said = message() if callable(message) else message
                raise AssertionError(f"timed out after {timeout}s waiting for {said or predicate}")
            await asyncio.sleep(0.1)

    async def wait_for_object(
        self, res: Resource, namespace: str, name: str, timeout: float = 30.0
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.wait_for(
            lambda: self.get_object(res, namespace, name), timeout, f"{res[2]} {namespace}/{name}"
        )
        return result

    async def wait_gone(
        self, res: Resource, namespace: str, name: str, timeout: float = 30.0
    ) -> None:
        await self.wait_for(
            lambda: self.get_object(res, namespace, name) is None,
            timeout,
            f"{res[2]} {namespace}/{name} to be deleted",
        )

    async def wait_phase(
        self, namespace: str, name: str, phase: str, timeout: float = 30.0
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.wait_for(
            lambda: (s := self.status(FTJ, namespace, name)).get("phase") == phase and s,
            timeout,
            lambda: (
                f"FineTuneJob {namespace}/{name} phase {phase} "
                f"(now {self.status(FTJ, namespace, name).get('phase')})"
            ),
        )
        return result

    def pods(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        """The Job controller's pods of a Job, oldest first."""
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        pods = self.objects(POD, ns, f"batch.kubernetes.io/job-name={name}")
        return sorted(
            pods, key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"])
        )

    def pod_log(self, pod: dict[str, Any], container: str = "trainer") -> str:
        """The container's log through the real pods/log path (apiserver -> node agent)."""
        meta = pod["metadata"]
        resp = self.sync.get(
            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/log",
            params={"container": container},
        )
        resp.raise_for_status()
        return resp.text


def _without_rules(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_rules(v) for k, v in node.items() if k != "x-kubernetes-validations"}
    if isinstance(node, list):
        return [_without_rules(v) for v in node]
    return node


async def create_under_laxer_crd(
    cluster: Cluster, res: tuple[str, str, str], body: dict[str, Any], timeout: float = 30
) -> dict[str, Any]:
    """Store `body`, which today's CRD refuses, as an older CRD without its CEL rules
    would have: the CRD is replaced by one without x-kubernetes-validations, the object
    created, and the CRD put back (checked with a dry-run create that is refused again)."""
    crd_name = f"{res[2]}.{res[0]}"
    crd_path = api_path(CRD, None, crd_name)
    original = cluster.get_object(CRD, None, crd_name)
    assert original is not None, crd_name
    lax = copy.deepcopy(original)
    lax["spec"]["versions"] = _without_rules(lax["spec"]["versions"])
    await cluster.request("PUT", crd_path, lax)
    try:
        deadline = time.monotonic() + timeout
        while True:  # the apiserver serves the new schema a moment after the update
            try:
                return await cluster.create(res, body)
            except ApiError as err:
                if err.status != 422 or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(0.2)
    finally:
        current = cluster.get_object(CRD, None, crd_name) or original
        current["spec"] = original["spec"]
        await cluster.request("PUT", crd_path, current)
        probe = copy.deepcopy(body)
        probe["metadata"] = {**body["metadata"], "name": body["metadata"]["name"] + "-probe"}
        deadline = time.monotonic() + timeout
        while True:  # the CEL rules are in force again
            try:
                await cluster.request(
                    "POST", api_path(res, probe["metadata"]["namespace"]), probe,
                    params={"dryRun": "All"},
                )  # fmt: skip
            except ApiError as err:
                if err.status == 422:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"CRD {crd_name}: its CEL rules did not come back")
            await asyncio.sleep(0.2)


# --------------------------------------------------------------------------- operator


@dataclass
class OperatorRunner:
    """The real operator (kopf + /metrics + /healthz) in a thread with its own event loop,
    authenticated as the chart's operator ServiceAccount.

    A thread, not a task: when kopf stops it cancels every task of its loop that it did
    not see at startup, which would include the test's own connection handlers.
    `stop()` + `start()` behaves like a process restart: the operator's in-memory caches
    and Prometheus series are dropped first.
    """

    cluster: Cluster
    namespaces: list[str] = field(default_factory=lambda: [NAMESPACE])
    config: Any = None
    metrics_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    thread: threading.Thread | None = None
    stop_flag: threading.Event | None = None
    error: BaseException | None = None

    async def start(self) -> None:
        from finetune_operator import main
        from finetune_operator.config import OperatorConfig

        stop, ready = threading.Event(), threading.Event()
        self.stop_flag, self.error = stop, None
        config = self.config or OperatorConfig(trainer_image=STUB_IMAGE)

        def run() -> None:
            try:
                asyncio.run(
                    main.serve(
                        namespaces=self.namespaces,
                        metrics_port=self.metrics_port,
                        health_port=self.health_port,
                        kubeconfig=str(self.cluster.operator_kubeconfig),
                        host="127.0.0.1",
                        stop_flag=stop,
                        ready_flag=ready,
                        config=config,
                    )
                )
            except BaseException as err:  # surfaced by start()/stop()
                self.error = err
            finally:
                ready.set()

        self.thread = threading.Thread(target=run, name="finetune-operator", daemon=True)
        self.thread.start()
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(None, ready.wait, 30)
        if self.error is not None:
            raise AssertionError(f"operator failed to start: {self.error!r}") from self.error
        if not ok:
            raise AssertionError("operator did not become ready in 30 s")

    async def stop(self) -> None:
        if self.thread is None or self.stop_flag is None:
            return
        self.stop_flag.set()
        await asyncio.get_running_loop().run_in_executor(None, self.thread.join, 20)
        alive = self.thread.is_alive()
        self.thread = None
        if alive:
            raise AssertionError("operator did not stop within 20 s")

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def get(self, port: int, path: str) -> tuple[int, str]:
        # No keep-alive: an idle connection to the operator's HTTP servers would be a task
        # that kopf waits 5 s for when the operator stops.
        headers = {"Connection": "close"}
        async with self.cluster.session.get(
            f"http://127.0.0.1:{port}{path}", headers=headers
        ) as resp:
            return resp.status, await resp.text()

    async def metrics(self) -> str:
        status, text = await self.get(self.metrics_port, "/metrics")
        assert status == 200
        return text


@dataclass
class OperatorProcess:
    """`finetune operator` as a real subprocess (KUBECONFIG: the operator ServiceAccount's);
    kill() is SIGKILL."""

    cluster: Cluster
    namespaces: list[str] = field(default_factory=lambda: [NAMESPACE])
    env: dict[str, str] = field(default_factory=dict)
    metrics_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None
    log: Path | None = None

    async def start(self, timeout: float = 60) -> None:
        args = ["operator", "--metrics-port", str(self.metrics_port)]
        args += ["--health-port", str(self.health_port), "--log-level", "info"]
        args += [a for ns in self.namespaces for a in ("--namespace", ns)] or ["--all-namespaces"]
        env = dict(os.environ, KUBECONFIG=str(self.cluster.operator_kubeconfig), **self.env)
        env.setdefault("FINETUNE_TRAINER_IMAGE", STUB_IMAGE)
        self.log = self.cluster.plane.cp.dir.parent / f"operator-{self.metrics_port}.log"
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "from finetune_cli.app import main; main()",
                *args,
                env=env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise AssertionError(
                    f"operator exited {self.proc.returncode}: {self.log.read_text()[-3000:]}"
                )
            with contextlib.suppress(aiohttp.ClientError):
                async with self.cluster.session.get(
                    f"http://127.0.0.1:{self.health_port}/healthz"
                ) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.2)
        raise AssertionError(f"operator not healthy in {timeout}s: {self.log.read_text()[-3000:]}")

    async def kill(self) -> None:
        """SIGKILL: no graceful shutdown, like an OOM-killed or evicted pod."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.proc = None

    async def metrics(self) -> str:
        async with self.cluster.session.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as r:
            assert r.status == 200
            return await r.text()


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Prometheus text -> {(name, labels): value}, via prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def sample(text: str, metric_name: str, /, **labels: str) -> float | None:
    """One sample's value from Prometheus text, e.g. sample(t, "finetune_job_phase", name="x", ...)."""
    return parse_metrics(text).get((metric_name, frozenset(labels.items())))


# --------------------------------------------------------------------------- kubelet


def report_message(phase: str, metrics: dict[str, float] | None = None, **extra: Any) -> str:
    """A trainer's termination message (the JSON report the operator reads)."""
    return json.dumps({"phase": phase, "metrics": metrics or {}, **extra})


@dataclass
class Kubelet:
    """Orders for the stub trainer in the Job controller's pods (support/stub_trainer.py).

    The pods are real: the Job controller creates them, the scheduler binds them and the
    node agent runs them; Job and Pod status are theirs. Each order names one pod.
    """

    cluster: Cluster
    ordered: set[str] = field(default_factory=set)

    def order(self, pod: dict[str, Any], order: dict[str, Any]) -> None:
        """Tell the stub trainer in `pod` what to do (stub_trainer.py's orders)."""
        meta = pod["metadata"]
        folder = self.cluster.plane.stub_dir / meta["namespace"]
        folder.mkdir(parents=True, exist_ok=True)
        # The stub knows its pod by $HOSTNAME: spec.hostname where set (an Indexed Job's
        # `<job>-<index>`), else the pod name, cut as the node agent cuts it.
        host = str(pod["spec"].get("hostname") or meta["name"])[:63].rstrip("-.")
        tmp = folder / f".{host}.tmp"
        tmp.write_text(json.dumps(order))
        tmp.chmod(0o644)
        tmp.rename(folder / f"{host}.json")
        self.ordered.add(meta["uid"])

    def _running(self, pod: dict[str, Any]) -> bool:
        for cs in pod.get("status", {}).get("containerStatuses") or []:
            if "running" in (cs.get("state") or {}):
                return True
        return False

    async def pod(self, job: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        """The Job's newest pod that has no order yet, once its container runs."""

        def ready() -> dict[str, Any] | None:
            for pod in reversed(self.cluster.pods(job)):
                if pod["metadata"]["uid"] not in self.ordered and self._running(pod):
                    return pod
            return None

        def said() -> str:
            ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
            now = self.cluster.get_object(JOB, ns, name) or {}
            pods = [
                (p["metadata"]["name"], p["spec"].get("nodeName"), p.get("status", {}).get("phase"),
                 [cs.get("state") for cs in p.get("status", {}).get("containerStatuses") or []],
                 p["metadata"]["uid"] in self.ordered)
                for p in self.cluster.pods(job)
            ]  # fmt: skip
            events = [
                (e.get("involvedObject", {}).get("name"), e.get("reason"), e.get("message"))
                for e in self.cluster.objects(EVENT, ns)
                if str(e.get("involvedObject", {}).get("name", "")).startswith(name)
            ]
            return (
                f"a running pod of Job {name}; suspend {now.get('spec', {}).get('suspend')}, "
                f"status {now.get('status')}; pods {pods}; events {events[-8:]}"
            )

        result: dict[str, Any] = await self.cluster.wait_for(ready, timeout, said)
        return result

    async def run_pod(self, job: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        """Wait for the Job's pod to run and the Job controller to count it active."""
        pod = await self.pod(job, timeout)
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        await self.cluster.wait_for(
            lambda: (self.cluster.status(JOB, ns, name).get("active") or 0) >= 1,
            timeout,
            f"Job {name} active",
        )
        return pod

    async def terminate(
        self,
        job: dict[str, Any],
        *,
        exit_code: int,
        message: str = "",
        log: list[str] | None = None,
    ) -> dict[str, Any]:
        """The pod's trainer exits with exit_code (and termination message); returns the
        pod as the node agent reported it."""
        pod = await self.pod(job)
        self.order(pod, {"exit": exit_code, "message": message, "log": log or []})
        return await self.wait_terminated(pod)

    async def oom_kill(self, job: dict[str, Any]) -> dict[str, Any]:
        """The pod's trainer allocates until the node agent kills it at its memory limit."""
        pod = await self.pod(job)
        self.order(pod, {"oom": True})
        return await self.wait_terminated(pod, timeout=60)

    async def wait_terminated(self, pod: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        meta = pod["metadata"]

        def done() -> dict[str, Any] | None:
            now = self.cluster.get_object(POD, meta["namespace"], meta["name"])
            if now is None:
                return {"metadata": meta, "status": {}}
            for cs in now.get("status", {}).get("containerStatuses") or []:
                if "terminated" in (cs.get("state") or {}):
                    return now
            return None

        result: dict[str, Any] = await self.cluster.wait_for(
            done, timeout, f"pod {meta['name']} to end"
        )
        return result

    async def succeed(
        self, job: dict[str, Any], metrics: dict[str, float] | None = None, timeout: float = 30
    ) -> None:
        """The trainer reports success; waits for the Job controller's Complete."""
        report = {
            "phase": "Succeeded",
            "metrics": metrics or {},
            "artifacts": {"model": "/output/model"},
        }
        await self.terminate(job, exit_code=0, message=json.dumps(report))
        await self.wait_job_condition(job, "Complete", timeout)

    async def fail(
        self, job: dict[str, Any], *, exit_code: int = 1, message: str = "", timeout: float = 60
    ) -> None:
        """Every pod of the Job fails with exit_code until the Job controller fails the Job
        (backoffLimit; give such tests `backoffLimit: 0` to keep them fast)."""
        ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
        deadline = time.monotonic() + timeout
        while not self.job_condition(job, "Failed"):
            if time.monotonic() > deadline:
                raise AssertionError(f"Job {name} did not fail in {timeout}s")
            with contextlib.suppress(AssertionError):
                pod = await self.pod(job, timeout=2)
                self.order(pod, {"exit": exit_code, "message": message})
            await asyncio.sleep(0.1)
        del ns

    def job_condition(self, job: dict[str, Any], ctype: str) -> dict[str, Any]:
        status = self.cluster.status(JOB, job["metadata"]["namespace"], job["metadata"]["name"])
        for c in status.get("conditions") or []:
            if c.get("type") == ctype and c.get("status") == "True":
                return dict(c)
        return {}

    async def wait_job_condition(
        self, job: dict[str, Any], ctype: str, timeout: float = 30
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.cluster.wait_for(
            lambda: self.job_condition(job, ctype),
            timeout,
            lambda: (
                f"Job {job['metadata']['name']} {ctype}; Job status "
                f"{self.cluster.status(JOB, job['metadata']['namespace'], job['metadata']['name'])};"
                f" pods {[(p['metadata']['name'], p.get('status')) for p in self.cluster.pods(job)]}"
            ),
        )
        return result
