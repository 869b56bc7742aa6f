"""Helpers for operator tests over HTTP against kmock's KubernetesEmulator.

Import them as `from operator_harness import ...`; the fixtures live in conftest.py.

    async def test_x(cluster, operator, kubelet):
        ftj = await cluster.create(FTJ, make_ftj("demo", spec))
        job = await cluster.wait_for_object(JOB, "team-a", "demo-train")
        await kubelet.run_pod(job)                       # pod Running, Job active
        await kubelet.succeed(job, metrics={"accuracy": 0.9})
        await cluster.wait_for(lambda: cluster.status(FTJ, "team-a", "demo").get("phase") == "Succeeded")

Fixtures:
- `cluster`   a started emulator with every resource the operator needs declared, a kubeconfig
              pointing at it (`cluster.kubeconfig`), HTTP helpers for writes (writes must go over
              HTTP so watchers see them) and in-memory reads (`cluster.get_object`, `cluster.objects`).
- `operator`  an `OperatorRunner` already started in-process (kopf + /metrics + /healthz) on free
              ports; `await operator.restart()`, `await operator.stop()`, `await operator.metrics()`.
              Use `operator_factory` for custom settings (namespaces, config).
- `kubelet`   a `Kubelet` that plays kubelet + job controller: creates Pods for a Job and flips
              Job/Pod statuses (running, succeeded, OOMKilled, image pull backoff, ...).
              `await kubelet.run_process(job, env=..., cwd=...)` runs the Job's container command
              as a local process, like a node would, and reports the result into Job/Pod status.
- `make_ftj(name, spec, namespace=..., labels=...)` a FineTuneJob body to create.

The emulator is `support.apiserver.ApiServerEmulator`: kmock's emulator with kube-apiserver's
write semantics for FineTuneJobs and sweeps (schema, CEL, pruning, defaults, status
subresource, generation, resourceVersion conflicts). `cluster.emulator.pruned` lists every
field a write lost to pruning; the `cluster` fixture fails a test that leaves any.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import kmock

from finetune_operator import kube
from support.apiserver import ApiServerEmulator

FTJ = ("finetune.dev", "v1alpha1", "finetunejobs")
SWEEP = ("finetune.dev", "v1alpha1", "hyperparametersweeps")
JOB = ("batch", "v1", "jobs")
POD = ("", "v1", "pods")
EVENT = ("", "v1", "events")
NAMESPACE = "team-a"

Resource = tuple[str, str, str]

RESOURCES: dict[str, kmock.ResourceInfo] = {
    "finetune.dev/v1alpha1/finetunejobs": kmock.ResourceInfo(
        kind="FineTuneJob",
        singular="finetunejob",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        shortnames={"ftj"},
        categories={"finetune"},
        subresources={"status"},
    ),
    "finetune.dev/v1alpha1/hyperparametersweeps": kmock.ResourceInfo(
        kind="HyperparameterSweep",
        singular="hyperparametersweep",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        shortnames={"hps", "sweep"},
        categories={"finetune"},
        subresources={"status"},
    ),
    "batch/v1/jobs": kmock.ResourceInfo(
        kind="Job",
        singular="job",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        subresources={"status"},
    ),
    "v1/pods": kmock.ResourceInfo(
        kind="Pod",
        singular="pod",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        subresources={"status", "log"},
    ),
    "v1/services": kmock.ResourceInfo(  # multi-node runs: the headless Service
        kind="Service",
        singular="service",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    ),
    "v1/events": kmock.ResourceInfo(
        kind="Event",
        singular="event",
        namespaced=True,
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
    ),
    "v1/namespaces": kmock.ResourceInfo(
        kind="Namespace",
        singular="namespace",
        namespaced=False,
        verbs={"get", "list", "watch"},
    ),
    "apiextensions.k8s.io/v1/customresourcedefinitions": kmock.ResourceInfo(
        kind="CustomResourceDefinition",
        singular="customresourcedefinition",
        namespaced=False,
        verbs={"get", "list", "watch"},
    ),
}


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
    """A FineTuneJob body; the emulator assigns uid, resourceVersion and generation itself."""
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels or {},
        },
        "spec": spec,
    }


SMALL_SPEC: dict[str, Any] = {
    "task": "classification",
    "model": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
    "dataset": {"train": {"path": "/data/train.tsv"}},
    "resources": {"gpus": 1, "cpu": "2", "memory": "8Gi"},
}


# --------------------------------------------------------------------------- cluster


@dataclass
class Cluster:
    """The emulator plus helpers. Writes go over HTTP so watch streams see them."""

    emulator: kmock.KubernetesEmulator
    url: str
    kubeconfig: Path
    session: aiohttp.ClientSession

    async def request(self, method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        headers = {"Content-Type": kw.pop("content_type", "application/json")}
        async with self.session.request(
            method, self.url + path, json=body, headers=headers, **kw
        ) as resp:
            data = await resp.json(content_type=None)
            if resp.status >= 400:
                raise AssertionError(f"{method} {path} -> {resp.status}: {data}")
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

    def requests(self) -> list[Any]:
        """Every request the emulator served (kmock Request: .method, .resource, .data, ...)."""
        return list(self.emulator)

    def count_creates(self, res: Resource) -> int:
        return sum(
            1
            for r in self.requests()
            if r.method.value == "POST"
            and r.resource is not None
            and (r.resource.group, r.resource.version, r.resource.plural) == res
        )

    def get_object(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object, read from the emulator's memory (no HTTP), or None."""
        for (r, ns, n), obj in self.emulator.objects.items():
            if (r.group, r.version, r.plural) == res and ns == namespace and n == name:
                return None if obj.deleted else dict(obj.raw)
        return None

    def objects(self, res: Resource, namespace: str | None = None) -> list[dict[str, Any]]:
        out = []
        for (r, ns, _), obj in self.emulator.objects.items():
            matches = (r.group, r.version, r.plural) == res
            if matches and (namespace is None or ns == namespace) and not obj.deleted:
                out.append(dict(obj.raw))
        return out

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
        self, predicate: Callable[[], Any], timeout: float = 20.0, message: str = ""
    ) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {message or predicate}"
                )
            await asyncio.sleep(0.05)

    async def wait_for_object(
        self, res: Resource, namespace: str, name: str, timeout: float = 20.0
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.wait_for(
            lambda: self.get_object(res, namespace, name), timeout, f"{res[2]} {namespace}/{name}"
        )
        return result

    async def wait_phase(
        self, namespace: str, name: str, phase: str, timeout: float = 20.0
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.wait_for(
            lambda: (s := self.status(FTJ, namespace, name)).get("phase") == phase and s,
            timeout,
            f"FineTuneJob {namespace}/{name} phase {phase} "
            f"(now {self.status(FTJ, namespace, name).get('phase')})",
        )
        return result


def write_kubeconfig(path: Path, url: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": url}}],
        "users": [{"name": "kmock", "user": {"token": "kmock"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
        "current-context": "kmock",
    }
    path.write_text(json.dumps(config))
    return path


@contextlib.asynccontextmanager
async def start_cluster(tmp: Path) -> AsyncIterator[Cluster]:
    """An emulator on 127.0.0.1 with the operator's resources declared."""
    async with ApiServerEmulator() as emulator, kmock.Server(emulator) as server:
        for key, info in RESOURCES.items():
            emulator.resources[key] = info
        url = str(server.url).rstrip("/")
        kubeconfig = write_kubeconfig(tmp / "kubeconfig.json", url)
        async with aiohttp.ClientSession() as session:
            # NB: the emulator cannot create cluster-scoped core objects over HTTP
            # (it parses /api/v1/namespaces as a namespaced path); none are needed.
            yield Cluster(emulator, url, kubeconfig, session)


# --------------------------------------------------------------------------- operator


@dataclass
class OperatorRunner:
    """The real operator (kopf + /metrics + /healthz) in a thread with its own event loop.

    A thread, not a task: when kopf stops it cancels every task of its loop that it did
    not see at startup, which would include the emulator's connection handlers.
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
        config = self.config or OperatorConfig(trainer_image="finetune-trainer:test")

        def run() -> None:
            try:
                asyncio.run(
                    main.serve(
                        namespaces=self.namespaces,
                        metrics_port=self.metrics_port,
                        health_port=self.health_port,
                        kubeconfig=str(self.cluster.kubeconfig),
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
    """`finetune operator` as a real subprocess (KUBECONFIG -> the emulator); kill() is SIGKILL."""

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
        env = dict(os.environ, KUBECONFIG=str(self.cluster.kubeconfig), **self.env)
        env.setdefault("FINETUNE_TRAINER_IMAGE", "finetune-trainer:test")
        self.log = self.cluster.kubeconfig.parent / f"operator-{self.metrics_port}.log"
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


def local_empty_dirs(job: dict[str, Any], root: Path) -> dict[str, Path]:
    """The kubelet's part for a local run: each emptyDir mount (but /dev/shm) of the Job's
    container becomes a fresh folder under root. Returns {mountPath: folder}."""
    pod = job["spec"]["template"]["spec"]
    empty = {v["name"] for v in pod.get("volumes") or [] if "emptyDir" in v}
    mounts: dict[str, Path] = {}
    for mount in pod["containers"][0].get("volumeMounts") or []:
        if mount["name"] in empty and mount["mountPath"] != "/dev/shm":
            mounts[mount["mountPath"]] = root / mount["name"]
            mounts[mount["mountPath"]].mkdir(parents=True, exist_ok=True)
    return mounts


def in_local_mount(value: str, mounts: dict[str, Path]) -> str:
    """An env value that is a path inside a mount, moved to the mount's local folder."""
    for path, folder in mounts.items():
        if value == path or value.startswith(path.rstrip("/") + "/"):
            return str(folder / value[len(path) :].lstrip("/"))
    return value


@dataclass
class Kubelet:
    """Plays the node and the Job controller: Pods for a Job, Job/Pod status flips."""

    cluster: Cluster
    pods: dict[str, int] = field(default_factory=dict)

    def _pod_name(self, job: dict[str, Any]) -> str:
        return f"{job['metadata']['name']}-{self.pods.get(job['metadata']['name'], 0)}"

    async def create_pod(self, job: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """A new Pod of the Job (labels from its template) with the given status."""
        jname = job["metadata"]["name"]
        n = self.pods.get(jname, 0) + 1
        self.pods[jname] = n
        labels = dict(job["spec"]["template"]["metadata"].get("labels") or {})
        labels["batch.kubernetes.io/job-name"] = jname
        if job["metadata"].get("uid"):
            labels["batch.kubernetes.io/controller-uid"] = job["metadata"]["uid"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{jname}-{n}",
                "namespace": job["metadata"]["namespace"],
                "uid": str(uuid.uuid4()),
                "labels": labels,
                "creationTimestamp": f"{now_iso()[:-1]}.{n:03d}Z",
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": jname,
                        "uid": job["metadata"].get("uid"),
                    }
                ],
            },
            "spec": job["spec"]["template"]["spec"],
            "status": status,
        }
        return await self.cluster.create(POD, pod)

    async def pod_status(self, job: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the status of the Job's latest pod."""
        jname = job["metadata"]["name"]
        name = f"{jname}-{self.pods[jname]}"
        return await self.cluster.patch(
            POD, job["metadata"]["namespace"], name, {"status": status}, status=True
        )

    async def job_status(self, job: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        return await self.cluster.patch(
            JOB,
            job["metadata"]["namespace"],
            job["metadata"]["name"],
            {"status": status},
            status=True,
        )

    # ------------------------------------------------------------ scenarios

    async def pending_pod(self, job: dict[str, Any], waiting: dict[str, Any] | None = None) -> None:
        cs = {"name": "trainer", "ready": False, "restartCount": 0, "image": _image(job)}
        cs["state"] = {"waiting": waiting or {"reason": "ContainerCreating"}}
        await self.create_pod(job, {"phase": "Pending", "containerStatuses": [cs]})
        await self.job_status(job, {"active": 1, "ready": 0, "startTime": now_iso()})

    async def run_pod(self, job: dict[str, Any]) -> None:
        cs = {
            "name": "trainer",
            "ready": True,
            "restartCount": 0,
            "image": _image(job),
            "state": {"running": {"startedAt": now_iso()}},
        }
        await self.create_pod(job, {"phase": "Running", "containerStatuses": [cs]})
        await self.job_status(job, {"active": 1, "ready": 1, "startTime": now_iso()})

    async def terminate(
        self, job: dict[str, Any], *, exit_code: int, reason: str, message: str = ""
    ) -> None:
        """The latest pod's trainer container ends (pod Succeeded/Failed)."""
        term = {"exitCode": exit_code, "reason": reason, "finishedAt": now_iso()}
        if message:
            term["message"] = message
        cs = {"name": "trainer", "ready": False, "restartCount": 0, "state": {"terminated": term}}
        phase = "Succeeded" if exit_code == 0 else "Failed"
        await self.pod_status(job, {"phase": phase, "containerStatuses": [cs]})

    async def succeed(self, job: dict[str, Any], metrics: dict[str, float] | None = None) -> None:
        report = {
            "phase": "Succeeded",
            "metrics": metrics or {},
            "artifacts": {"model": "/output/model"},
        }
        await self.terminate(job, exit_code=0, reason="Completed", message=json.dumps(report))
        t = now_iso()
        await self.job_status(
            job,
            {
                "active": 0,
                "ready": 0,
                "succeeded": 1,
                "completionTime": t,
                "conditions": [
                    {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": t},
                    {"type": "Complete", "status": "True", "lastTransitionTime": t},
                ],
            },
        )

    async def fail_job(
        self, job: dict[str, Any], reason: str, message: str = "", failed: int = 1
    ) -> None:
        t = now_iso()
        await self.job_status(
            job,
            {
                "active": 0,
                "ready": 0,
                "failed": failed,
                "conditions": [
                    {
                        "type": "FailureTarget",
                        "status": "True",
                        "reason": reason,
                        "lastTransitionTime": t,
                    },
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": reason,
                        "message": message,
                        "lastTransitionTime": t,
                    },
                ],
            },
        )

    async def oom(self, job: dict[str, Any], attempts: int = 1) -> None:
        """Every attempt is OOMKilled; the Job gives up with BackoffLimitExceeded."""
        await self.terminate(job, exit_code=137, reason="OOMKilled")
        await self.fail_job(
            job, "BackoffLimitExceeded", "Job has reached the specified backoff limit", attempts
        )

    # ------------------------------------------------------------ a node running the command

    async def run_process(
        self,
        job: dict[str, Any],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 240,
        python: str = sys.executable,
    ) -> tuple[int, str]:
        """Run the Job's container command locally with its env, report into Pod/Job status.

        `python` in the command is replaced by this interpreter; valueFrom env (secrets) is
        skipped; the termination message goes to a temporary file and into the pod's
        terminated state, as the kubelet does. Returns (exit code, combined output).
        """
        container = job["spec"]["template"]["spec"]["containers"][0]
        command = [python if c == "python" else c for c in container["command"]] + list(
            container.get("args") or []
        )
        term_log = (cwd or Path.cwd()) / f"termination-{job['metadata']['name']}.log"
        proc_env = dict(os.environ)
        mounts = local_empty_dirs(job, (cwd or Path.cwd()) / f"volumes-{job['metadata']['name']}")
        for item in container.get("env") or []:
            if "value" in item:
                proc_env[item["name"]] = in_local_mount(item["value"], mounts)
        proc_env["FINETUNE_TERMINATION_LOG"] = str(term_log)
        proc_env["FINETUNE_KUBE_API_URL"] = self.cluster.url
        proc_env.update(env or {})
        await self.run_pod(job)
        proc = await asyncio.create_subprocess_exec(
            *command,
            cwd=str(cwd) if cwd else None,
            env=proc_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            out, _ = await proc.communicate()
        code = proc.returncode if proc.returncode is not None else -9
        output = out.decode(errors="replace")
        message = term_log.read_text()[:4096] if term_log.exists() else ""
        if not message and code != 0:
            message = "\n".join(output.splitlines()[-20:])[-4096:]  # FallbackToLogsOnError
        await self.terminate(
            job, exit_code=code, reason="Completed" if code == 0 else "Error", message=message
        )
        if code == 0:
            t = now_iso()
            await self.job_status(
                job,
                {
                    "active": 0,
                    "ready": 0,
                    "succeeded": 1,
                    "completionTime": t,
                    "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": t}],
                },
            )
        else:
            await self.fail_job(
                job, "BackoffLimitExceeded", "Job has reached the specified backoff limit"
            )
        return code, output


def _image(job: dict[str, Any]) -> str:
    return str(job["spec"]["template"]["spec"]["containers"][0].get("image", ""))
