"""Operator scale benchmark against a real control plane (a benchmark, not a timed test).

    python benchmarks/operator_scale.py                   # N = 300 and 1000, 3 runs each
    python benchmarks/operator_scale.py --n 300 --runs 3
    python benchmarks/operator_scale.py --n 50 --runs 1 --reconcile-objects 0   # smoke

Every run starts a fresh control plane (finetune_cluster.controlplane.start: etcd with
--unsafe-no-fsync, kube-apiserver v1.37.2 with RBAC and its audit log, as the tests get it),
installs the CRDs and the chart's RBAC (chart rendered by the real Helm library, applied with
kubectl; no operator Deployment), creates namespace `bench` (PodSecurity restricted, with the
trainer ServiceAccount), and then starts one controller as its own process, authenticated
with a TokenRequest token of the chart's operator ServiceAccount, so every call it makes goes
through the real authenticator, RBAC, admission and audit:

- **null**: watches FineTuneJobs and, for each new one, POSTs the operator's own Job
  manifest (built once with the operator's build_job, renamed per object) from a pool of
  32 workers (`--null-workers`; on 2 cores 32 beat one task per object, which floods the
  client's event loop until the apiserver drops its watch as too slow). Nothing else.
  Done when every Job exists.
- **null+status**: the same, then the operator's own first status merge patch (phase
  Pending, conditions, observedGeneration, jobName) on the status subresource.
- **operator**: `finetune operator --namespace bench` (kopf), a subprocess, so its CPU and
  RSS are its alone.

The benchmark process (as admin) then creates N FineTuneJobs at once (64 requests in
flight) and watches Jobs (metadata only) and FineTuneJobs. A run is done when every
FineTuneJob has its Job and (all but "null") a current status: phase Pending and
status.observedGeneration == metadata.generation. Wall time runs from the first create to
that moment. Latency is per object, from the return of its create call to its Job's
ADDED event in the benchmark's watch (creationTimestamp has 1 s resolution, so it is not
used). Every watch here resumes from its last resourceVersion when the apiserver ends it
(its watch cache drops a watcher ~10 events behind; kopf resumes the same way), and the
controller's requests, watch restarts included, are counted from the audit log, which also
gives a server-side timeline per object (second table). CPU seconds (user + system, during
the burst) of the controller, kube-apiserver, etcd and the benchmark client itself; the
controller's peak RSS (VmHWM, start-up included).

kube-controller-manager and kube-scheduler are stopped once the plane is up (the default):
with them, each Job gets a pod that no node runs, the scheduler marks each unschedulable and
posts an Event, and the Job controller updates each Job's status: ~4 more writes per object
on the same 2 cores, whose Job/pod watch events reach the operator but not the null floors.
`--with-controllers` keeps them, for the cost of a cluster that does run them.

Runs are interleaved (null, null+status, operator, null, ...) so machine drift hits all
three alike; the table shows medians over the runs, and the range of run-by-run ratios.
Then the operator's per-object reconcile cost in-process (no HTTP).

Profiles: FINETUNE_BENCH_PYSPY=out.txt (py-spy raw stacks of the operator; needs py-spy),
FINETUNE_BENCH_PROFILE=out.prof (cProfile; distorts async code),
FINETUNE_BENCH_APISERVER_PPROF=/tmp/api (kube-apiserver's Go CPU profile of each burst's
first FINETUNE_BENCH_PPROF_SECONDS, default 3: /tmp/api-<controller>.pb.gz),
FINETUNE_BENCH_OPERATOR_PRELUDE='python code' (run in the operator process before it starts:
to try a setting without editing the operator).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

NAMESPACE = "bench"
ROOT = Path(__file__).resolve().parents[1]
OPERATOR_SA = "finetune"  # the chart's fullname for release "finetune"
TRAINER_IMAGE = "finetune-trainer:bench"
SPEC: dict[str, Any] = {
    "task": "classification",
    "model": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
    "dataset": {"train": {"path": "/data/train.tsv"}, "eval": {"path": "/data/dev.tsv"}},
    "hyperparameters": {"learningRate": 3e-5, "epochs": 1, "batchSize": 16},
    "resources": {"gpus": 1, "cpu": "4", "memory": "16Gi"},
}
CONTROLLERS = ("null", "null+status", "operator")
FTJ_PATH = f"/apis/finetune.dev/v1alpha1/namespaces/{NAMESPACE}/finetunejobs"
JOB_PATH = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
MERGE_PATCH = "application/merge-patch+json"
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
CREATE_CONCURRENCY = 64


# --------------------------------------------------------------------------- plane


def chart_docs() -> list[dict[str, Any]]:
    """The chart (cluster-wide mode, trainer RBAC in `bench`) minus the operator Deployment."""
    from finetune_cluster.install import render_chart

    values = {
        "trainer": {"namespaces": [NAMESPACE]},
        "image": {"repository": "finetune-operator", "tag": "bench"},
    }
    skip = ("Deployment", "ServiceMonitor")
    return [d for d in render_chart(values) if d["kind"] not in skip]


def _stop_component(pid: int, grace: float = 10) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)  # controlplane starts each in its own session
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def start_plane(root: Path, docs: list[dict[str, Any]], with_controllers: bool) -> Any:
    """A fresh control plane with the CRDs, the chart's RBAC and namespace `bench`;
    returns (ControlPlane, operator kubeconfig path, operator token)."""
    from finetune_cluster.controlplane import start, stop
    from finetune_cluster.install import (
        SYSTEM_NAMESPACE,
        apply,
        install_crds,
        namespace_doc,
        service_account_kubeconfig,
    )

    cp = start(root / "cp")
    try:
        if not with_controllers:
            for name in ("kube-scheduler", "kube-controller-manager"):
                _stop_component(cp.pids.pop(name))
            cp.save()
        apply(cp, [namespace_doc(n) for n in (SYSTEM_NAMESPACE, NAMESPACE)])
        install_crds(cp)
        apply(cp, docs)
        # A new CRD's watch cache answers 429 "storage is (re)initializing" for a moment.
        deadline = time.monotonic() + 60
        for watch_path in (FTJ_PATH, JOB_PATH):
            while cp.get(f"{watch_path}?watch=true&timeoutSeconds=1")[0] != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no watch on {watch_path} after 60 s")
                time.sleep(0.2)
        kubeconfig, token = service_account_kubeconfig(
            cp, root / "operator.kubeconfig", SYSTEM_NAMESPACE, OPERATOR_SA
        )
    except BaseException:
        stop(cp.dir)
        raise
    return cp, kubeconfig, token


# --------------------------------------------------------------------------- watching


async def watch_resumed(
    session: aiohttp.ClientSession,
    url: str,
    on_event: Any,
    *,
    accept: str = "application/json",
    opened: asyncio.Future[None] | None = None,
    restarts: list[int] | None = None,
) -> None:
    """List, then watch url from the list's resourceVersion, as an informer does: when the
    apiserver ends the stream (its watch cache closes a watcher that falls ~10 events
    behind: "Forcing ... watcher close due to unresponsiveness") watch again from the last
    resourceVersion seen; on 410 Gone list again. on_event gets every object as an
    ADDED/MODIFIED/DELETED event (a relist replays the list as ADDED)."""
    headers = {"Accept": accept}
    rv = ""
    while True:
        if not rv:  # list (first, or after 410): replay the objects as ADDED
            accept_list = accept.replace(
                "as=PartialObjectMetadata;", "as=PartialObjectMetadataList;"
            )
            async with session.get(url, headers={"Accept": accept_list}) as r:
                if r.status != 200:
                    raise RuntimeError(f"list {url}: {r.status} {await r.text()}")
                data = await r.json()
            for item in data.get("items") or []:
                on_event({"type": "ADDED", "object": item})
            rv = data["metadata"]["resourceVersion"]
        params = {"watch": "true", "resourceVersion": rv, "allowWatchBookmarks": "true"}
        async with session.get(url, params=params, headers=headers, timeout=None) as r:
            if r.status == 429:
                await asyncio.sleep(0.2)
                continue
            if r.status != 200:
                raise RuntimeError(f"watch {url}: {r.status} {await r.text()}")
            if opened is not None and not opened.done():
                opened.set_result(None)
            async for line in r.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        rv = ""  # too old: list again
                    break
                rv = obj.get("metadata", {}).get("resourceVersion") or rv
                if event.get("type") != "BOOKMARK":
                    on_event(event)
        if restarts is not None:
            restarts.append(1)


# --------------------------------------------------------------------------- null controller


def floor_templates() -> tuple[dict[str, Any], dict[str, Any]]:
    """The Job the operator makes for SPEC and the status patch it writes first, built
    with the operator's own functions (once, in the benchmark process)."""
    from finetune_api.conditions import now_rfc3339
    from finetune_operator.config import OperatorConfig
    from finetune_operator.handlers_job import parse_job
    from finetune_operator.jobs import build_job
    from finetune_operator.status import derive, status_patch

    ftj = {"metadata": {"name": "tmpl", "namespace": NAMESPACE, "generation": 1}, "spec": SPEC}
    model = parse_job(ftj)
    job = build_job(model, "uid", OperatorConfig(trainer_image=TRAINER_IMAGE))
    derived = derive(model.spec, job, [], default_image=TRAINER_IMAGE)
    status = status_patch(
        {}, derived, generation=1, job_name=job["metadata"]["name"], now=now_rfc3339()
    )
    return job, status


def null_controller(config_file: str) -> None:
    """Child process: watch FineTuneJobs; for each ADDED one create the operator's Job
    (renamed, owned by it) and, with write_status, patch the operator's first status
    (observedGeneration from the object). Nothing else."""
    cfg = json.loads(Path(config_file).read_text())
    server, template, status = cfg["server"], cfg["job"], cfg["status"]
    headers = {"Authorization": f"Bearer {cfg['token']}"}

    def job_for(ftj: dict[str, Any]) -> dict[str, Any]:
        name, uid = ftj["metadata"]["name"], ftj["metadata"]["uid"]
        meta = template["metadata"]
        ref = {**meta["ownerReferences"][0], "name": name, "uid": uid}
        labels = {**meta["labels"], "finetune.dev/job": name}
        new_meta = {**meta, "name": f"{name}-train", "labels": labels, "ownerReferences": [ref]}
        return {**template, "metadata": new_meta}

    async def main() -> None:
        seen: set[str] = set()
        tasks: set[asyncio.Task[None]] = set()
        ctx = ssl.create_default_context(cafile=cfg["ca_file"])

        async def handle(session: aiohttp.ClientSession, ftj: dict[str, Any]) -> None:
            name = ftj["metadata"]["name"]
            async with session.post(server + JOB_PATH, json=job_for(ftj)) as r:
                await r.read()
                if r.status >= 300 and r.status != 409:
                    print(f"job {name}: {r.status}", file=sys.stderr, flush=True)
            if cfg["write_status"]:
                body = {
                    "status": {
                        **status,
                        "jobName": f"{name}-train",
                        "observedGeneration": ftj["metadata"].get("generation"),
                    }
                }
                async with session.patch(
                    f"{server}{FTJ_PATH}/{name}/status",
                    data=json.dumps(body),
                    headers={"Content-Type": MERGE_PATCH},
                ) as r:
                    await r.read()
                    if r.status >= 300:
                        print(f"status {name}: {r.status}", file=sys.stderr, flush=True)

        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def on_event(event: dict[str, Any]) -> None:
            obj = event["object"]
            name = obj.get("metadata", {}).get("name")
            if event.get("type") == "DELETED" or not name or name in seen:
                return
            seen.add(name)
            if workers:
                queue.put_nowait(obj)
            else:
                task = asyncio.create_task(handle(session, obj))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        async def worker() -> None:
            while True:
                await handle(session, await queue.get())

        workers = int(cfg["workers"])
        connector = aiohttp.TCPConnector(ssl=ctx, limit=workers or 100)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            pool = [asyncio.create_task(worker()) for _ in range(workers)]  # noqa: F841
            opened = asyncio.get_running_loop().create_future()
            watcher = asyncio.create_task(
                watch_resumed(session, server + FTJ_PATH, on_event, opened=opened)
            )
            await asyncio.wait([watcher, opened], return_when=asyncio.FIRST_COMPLETED)
            if watcher.done():
                watcher.result()  # raises why it ended
            print("ready", flush=True)
            await watcher

    asyncio.run(main())


# --------------------------------------------------------------------------- one run


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return float("nan")
    return float(t.user + t.system)


def _operator_watching(audit_log: Path, user: str) -> set[str]:
    """Resources the operator has open watches on, from the apiserver's audit log."""
    found: set[str] = set()
    if not audit_log.exists():
        return found
    for line in audit_log.read_text(errors="replace").splitlines():
        if '"watch"' not in line:
            continue
        with contextlib.suppress(ValueError):
            e = json.loads(line)
            ok = e.get("responseStatus", {}).get("code", 200) < 300
            if ok and e.get("verb") == "watch" and e.get("user", {}).get("username") == user:
                found.add(str(e.get("objectRef", {}).get("resource")))
    return found


def _audit_time(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def timeline(audit_log: Path, since: int) -> dict[str, list[float] | None]:
    """Where each object's time went, server side, from the audit log (p50, p99 in ms):
    react = FineTuneJob stored -> the controller's Job POST received (watch delivery plus
    the controller's own reaction); job = the Job POST in the apiserver; gap = Job POST
    answered -> the status PATCH received; patch = the status PATCH in the apiserver."""
    stamps: dict[str, dict[str, tuple[float, float]]] = {"ftj": {}, "job": {}, "patch": {}}
    with audit_log.open("rb") as f:
        f.seek(since)
        lines = f.read().splitlines()
    for line in lines:
        with contextlib.suppress(ValueError, KeyError):
            e = json.loads(line)
            if e.get("stage") != "ResponseComplete" or e["responseStatus"]["code"] >= 300:
                continue
            ref, verb = e["objectRef"], e["verb"]
            kind = {
                ("create", "finetunejobs", None): "ftj",
                ("create", "jobs", None): "job",
                ("patch", "finetunejobs", "status"): "patch",
            }.get((verb, ref.get("resource"), ref.get("subresource")))
            name = str(ref.get("name", "")).removesuffix("-train")
            if kind and name not in stamps[kind]:
                span = (
                    _audit_time(e["requestReceivedTimestamp"]),
                    _audit_time(e["stageTimestamp"]),
                )
                stamps[kind][name] = span

    def stat(values: list[float]) -> list[float] | None:
        values.sort()
        if not values:
            return None
        return [round(1000 * statistics.median(values), 1), _pct(values, 0.99) or 0.0]

    ftj, job, patch = stamps["ftj"], stamps["job"], stamps["patch"]
    return {
        "react": stat([job[k][0] - ftj[k][1] for k in job if k in ftj]),
        "job": stat([b - a for a, b in job.values()]),
        "gap": stat([patch[k][0] - job[k][1] for k in patch if k in job]),
        "patch": stat([b - a for a, b in patch.values()]),
    }


def controller_requests(audit_log: Path, since: int) -> dict[str, int]:
    """The controller's (the operator ServiceAccount's) requests after byte offset since,
    by `verb resource[/subresource]`, from the apiserver's audit log (its writes and, as a
    ServiceAccount, its reads are logged)."""
    counts: dict[str, int] = {}
    user = f"system:serviceaccount:finetune-system:{OPERATOR_SA}"
    with audit_log.open("rb") as f:
        f.seek(since)
        lines = f.read().splitlines()
    for line in lines:
        with contextlib.suppress(ValueError):
            e = json.loads(line)
            verb = e.get("verb")
            final = "ResponseStarted" if verb == "watch" else "ResponseComplete"
            if e.get("stage") != final or e.get("user", {}).get("username") != user:
                continue
            ref = e.get("objectRef", {})
            what = ref.get("resource", "?") + (
                "/" + ref["subresource"] if ref.get("subresource") else ""
            )
            code = e.get("responseStatus", {}).get("code", 200)
            key = f"{verb} {what}" + (f" {code}" if code >= 300 else "")
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def start_controller(
    kind: str, cp: Any, kubeconfig: Path, token: str, tmp: Path, templates: Any, null_workers: int
) -> subprocess.Popen[Any]:
    if kind != "operator":
        config = tmp / "null.json"
        config.write_text(
            json.dumps(
                {
                    "server": cp.server,
                    "ca_file": str(cp.ca_file),
                    "token": token,
                    "job": templates[0],
                    "status": templates[1],
                    "write_status": kind == "null+status",
                    "workers": null_workers,
                }
            )
        )
        return subprocess.Popen(
            [sys.executable, __file__, "--null-controller", str(config)],
            stdout=subprocess.PIPE,
            stderr=(tmp / "controller.log").open("w"),
            text=True,
        )
    profile = os.environ.get("FINETUNE_BENCH_PROFILE")  # cProfile output path, optional
    # For experiments: Python run in the operator process before it starts (e.g. to try a
    # setting without editing the operator).
    prelude = os.environ.get("FINETUNE_BENCH_OPERATOR_PRELUDE", "")
    code = prelude + "\nfrom finetune_cli.app import main; main()"
    if profile:
        code = (
            prelude
            + "\nimport cProfile; from finetune_cli.app import main; p = cProfile.Profile()\n"
            f"try:\n    p.runcall(main)\nfinally:\n    p.dump_stats({profile!r})"
        )
    from finetune_cluster.controlplane import free_port

    argv = [sys.executable, "-c", code, "operator", "--namespace", NAMESPACE]
    argv += ["--metrics-port", str(free_port()), "--health-port", str(free_port())]
    argv += ["--log-level", "warning"]
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), FINETUNE_TRAINER_IMAGE=TRAINER_IMAGE)
    return subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "controller.log").open("w"),
    )


async def wait_ready(kind: str, ctl: subprocess.Popen[Any], cp: Any, timeout: float = 90) -> None:
    """null: it prints "ready" once its watch is open. operator: its watches on
    FineTuneJobs, Jobs, Pods and sweeps are open (audit log), plus 0.5 s to settle."""
    deadline = time.monotonic() + timeout
    if kind != "operator":
        assert ctl.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(ctl.stdout.readline), timeout)
        if line.strip() != "ready":
            raise RuntimeError(f"{kind} controller did not start (rc {ctl.poll()})")
        return
    user = f"system:serviceaccount:finetune-system:{OPERATOR_SA}"
    audit = cp.dir / "logs" / "audit.log"
    while time.monotonic() < deadline:
        if ctl.poll() is not None:
            raise RuntimeError(f"operator exited with {ctl.returncode}")
        if {"finetunejobs", "jobs", "pods", "hyperparametersweeps"} <= _operator_watching(
            audit, user
        ):
            await asyncio.sleep(0.5)
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"operator not watching after {timeout:.0f} s")


def _py_spy(proc: subprocess.Popen[Any], kind: str) -> subprocess.Popen[Any] | None:
    out = os.environ.get("FINETUNE_BENCH_PYSPY")
    if not out or kind != "operator":
        return None
    cmd = ["py-spy", "record", "--pid", str(proc.pid), "-r", "400", "-f", "raw", "-o", out]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the burst
    return spy


async def apiserver_profile(session: aiohttp.ClientSession, server: str, kind: str) -> None:
    """kube-apiserver's CPU profile (/debug/pprof) over the first
    FINETUNE_BENCH_PPROF_SECONDS (default 3) of the burst, to
    $FINETUNE_BENCH_APISERVER_PPROF-<controller>.pb.gz (read with `go tool pprof`)."""
    seconds = os.environ.get("FINETUNE_BENCH_PPROF_SECONDS", "3")
    url = f"{server}/debug/pprof/profile?seconds={seconds}"
    async with session.get(url) as r:
        data = await r.read()
    out = f"{os.environ['FINETUNE_BENCH_APISERVER_PPROF']}-{kind.replace('+', '-')}.pb.gz"
    Path(out).write_bytes(data)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 1)


async def burst(
    cp: Any, kind: str, n: int, timeout: float, pids: dict[str, int | None]
) -> dict[str, Any]:
    """Create N FineTuneJobs at once (as admin) and watch until every one is served."""
    ctx = ssl.create_default_context(cafile=str(cp.ca_file))
    connector = aiohttp.TCPConnector(ssl=ctx, limit=CREATE_CONCURRENCY + 4)
    headers = {"Authorization": f"Bearer {cp.admin_token}"}
    need_status = kind != "null"
    created_at: dict[str, float] = {}
    job_at: dict[str, float] = {}
    status_at: dict[str, float] = {}
    phases: dict[str, str] = {}
    done = asyncio.Event()

    def check() -> None:
        if len(job_at) >= n and (not need_status or len(status_at) >= n):
            done.set()

    async with aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=aiohttp.ClientTimeout(total=None)
    ) as session:
        loop = asyncio.get_running_loop()
        opened: list[asyncio.Future[None]] = [loop.create_future(), loop.create_future()]
        restarts: list[int] = []

        def on_job(e: dict[str, Any]) -> None:
            name = str(e["object"]["metadata"]["name"]).removesuffix("-train")
            if name not in job_at:
                job_at[name] = time.perf_counter()
                check()

        def on_ftj(e: dict[str, Any]) -> None:
            obj = e.get("object", {})
            meta, status = obj.get("metadata", {}), obj.get("status") or {}
            name = meta.get("name")
            if not name or name in status_at or not status.get("phase"):
                return
            phases[name] = status["phase"]
            if status["phase"] == "Pending" and status.get("observedGeneration") == meta.get(
                "generation"
            ):
                status_at[name] = time.perf_counter()
                check()

        server = cp.server
        watchers = [
            asyncio.create_task(
                watch_resumed(
                    session, server + JOB_PATH, on_job, accept=METADATA_ONLY,
                    opened=opened[0], restarts=restarts,
                )
            ),
            asyncio.create_task(
                watch_resumed(
                    session, server + FTJ_PATH, on_ftj, opened=opened[1], restarts=restarts
                )
            ),
        ]  # fmt: skip
        both: asyncio.Future[Any] = asyncio.gather(*opened)
        pending: list[asyncio.Future[Any]] = [*watchers, both]
        await asyncio.wait(pending, timeout=30, return_when="FIRST_COMPLETED")
        for w in watchers:
            if w.done():
                w.result()  # raises why it ended
        if not all(f.done() for f in opened):
            raise RuntimeError("the benchmark's watches did not open in 30 s")
        await asyncio.sleep(0.2)

        limit = asyncio.Semaphore(CREATE_CONCURRENCY)
        errors: list[str] = []

        async def create(i: int) -> None:
            name = f"ftj-{i:05d}"
            body = {
                "apiVersion": "finetune.dev/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": SPEC,
            }
            async with limit, session.post(server + FTJ_PATH, json=body) as r:
                text = await r.read()
                if r.status >= 300:
                    errors.append(f"{r.status} {text[:300]!r}")
            created_at[name] = time.perf_counter()

        pprof = None
        if os.environ.get("FINETUNE_BENCH_APISERVER_PPROF"):  # Go CPU profile of the burst
            pprof = asyncio.create_task(apiserver_profile(session, server, kind))
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        bench0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(create(i) for i in range(n)))
        create_s = time.perf_counter() - t0
        if errors:
            raise RuntimeError(f"{len(errors)} creates refused, e.g. {errors[0]}")
        waiter: asyncio.Future[Any] = asyncio.create_task(done.wait())
        pending = [waiter, *watchers]
        await asyncio.wait(pending, timeout=timeout, return_when="FIRST_COMPLETED")
        waiter.cancel()
        for w in watchers:
            if w.done():
                w.result()  # a watch that failed: raise why
        complete = done.is_set()
        wall = time.perf_counter() - t0
        cpu = {k: cpu_seconds(p) - cpu0[k] for k, p in pids.items()}
        bench_cpu = time.process_time() - bench0
        if pprof is not None:
            await pprof
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)

    lat = sorted(job_at[k] - created_at[k] for k in job_at if k in created_at)
    other = sorted({p for p in phases.values() if p != "Pending"})
    return {
        "controller": kind,
        "n": n,
        "complete": complete,
        "jobs": len(job_at),
        "statuses": len(status_at) if need_status else None,
        "other_phases": other or None,
        "create_s": round(create_s, 2),
        "wall_s": round(wall, 2),
        "last_job_s": round(max(job_at.values()) - t0, 2) if job_at else None,
        "last_status_s": round(max(status_at.values()) - t0, 2) if status_at else None,
        "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
        "p99_ms": _pct(lat, 0.99),
        "max_ms": round(1000 * lat[-1], 1) if lat else None,
        "cpu_s": round(cpu["controller"], 2),
        "apiserver_cpu_s": round(cpu["kube-apiserver"], 2),
        "etcd_cpu_s": round(cpu["etcd"], 2),
        "kcm_cpu_s": round(cpu["kube-controller-manager"], 2),
        "bench_cpu_s": round(bench_cpu, 2),
        "bench_watch_restarts": len(restarts),
    }


def run_once(
    kind: str, n: int, timeout: float, docs: list[dict[str, Any]], args: argparse.Namespace
) -> dict[str, Any]:
    from finetune_cluster.controlplane import stop

    tmp = Path(tempfile.mkdtemp(prefix="ftj-bench-"))
    started = time.perf_counter()
    cp, kubeconfig, token = start_plane(tmp, docs, args.with_controllers)
    ctl: subprocess.Popen[Any] | None = None
    keep = False
    try:
        setup_s = time.perf_counter() - started
        ctl = start_controller(
            kind, cp, kubeconfig, token, tmp, floor_templates(), args.null_workers
        )
        try:
            asyncio.run(wait_ready(kind, ctl, cp))
        except RuntimeError as err:
            log = (tmp / "controller.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{err}; its log ends:\n{log}") from None
        spy = _py_spy(ctl, kind)
        pids = {
            "controller": ctl.pid,
            "kube-apiserver": cp.pids["kube-apiserver"],
            "etcd": cp.pids["etcd"],
            "kube-controller-manager": cp.pids.get("kube-controller-manager"),
        }
        audit = cp.dir / "logs" / "audit.log"
        offset = audit.stat().st_size
        row = asyncio.run(burst(cp, kind, n, timeout, pids))
        row["requests"] = controller_requests(audit, offset)
        row["server_ms"] = timeline(audit, offset)
        row["peak_rss_mb"] = round(peak_rss_mb(ctl.pid), 1)
        row["setup_s"] = round(setup_s, 1)
        if args.keep:
            row["dir"] = str(tmp)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        keep = args.keep
        if not row["complete"]:
            keep = keep or args.keep_failed
            log = (tmp / "controller.log").read_text(errors="replace")[-2000:]
            print(f"incomplete run ({tmp}); controller log tail:\n{log}", file=sys.stderr)
        return row
    finally:
        if ctl is not None:
            if os.environ.get("FINETUNE_BENCH_PROFILE") and kind == "operator":
                ctl.send_signal(signal.SIGINT)  # let cProfile write its output
                with contextlib.suppress(subprocess.TimeoutExpired):
                    ctl.wait(30)
            ctl.kill()
            ctl.wait()
        stop(cp.dir)
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- in-process


def reconcile_cost(count: int) -> dict[str, Any]:
    """Per-object pure reconcile cost: parse + Job manifest + status derivation + patch."""
    from finetune_api.conditions import now_rfc3339 as now_iso
    from finetune_operator.config import OperatorConfig
    from finetune_operator.handlers_job import parse_job
    from finetune_operator.jobs import build_job
    from finetune_operator.status import derive, status_patch

    config = OperatorConfig()
    rng = random.Random(0)
    t = "2026-01-01T00:00:00Z"
    job_states: list[dict[str, Any]] = [
        {"status": {}},
        {"status": {"active": 1, "ready": 1, "startTime": t}},
        {
            "status": {
                "succeeded": 1,
                "completionTime": t,
                "conditions": [{"type": "Complete", "status": "True"}],
            }
        },
        {
            "status": {
                "failed": 3,
                "conditions": [
                    {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}
                ],
            }
        },
    ]

    def pod(phase: str, state: dict[str, Any]) -> list[dict[str, Any]]:
        status = {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]}
        return [{"metadata": {"name": "p"}, "status": status}]

    report = json.dumps({"phase": "Succeeded", "metrics": {"accuracy": 0.9}})
    pods = [
        [],
        pod("Running", {"running": {}}),
        pod("Succeeded", {"terminated": {"exitCode": 0, "reason": "Completed", "message": report}}),
        pod("Failed", {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}),
    ]
    objects: list[dict[str, Any]] = []
    for i in range(count):
        spec = json.loads(json.dumps(SPEC))
        spec["hyperparameters"]["learningRate"] = rng.choice([1e-5, 3e-5, 5e-5])
        meta: dict[str, Any] = {"name": f"ftj-{i}", "namespace": NAMESPACE}
        meta |= {"uid": str(uuid.uuid4()), "generation": 1, "labels": {}}
        objects.append(
            {
                "apiVersion": "finetune.dev/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": meta,
                "spec": spec,
                "status": {},
            }
        )
    started = time.perf_counter()
    for i, obj in enumerate(objects):
        model = parse_job(obj)
        job = build_job(model, obj["metadata"]["uid"], config)
        k = i % 4
        observed = {**job, "status": job_states[k]["status"]}
        derived = derive(model.spec, observed, pods[k])
        status_patch(
            obj["status"], derived, generation=1, job_name=job["metadata"]["name"], now=now_iso()
        )
    elapsed = time.perf_counter() - started
    return {
        "objects": count,
        "total_s": round(elapsed, 3),
        "per_object_ms": round(1000 * elapsed / count, 3),
    }


# --------------------------------------------------------------------------- main


NUMERIC = (
    "create_s", "wall_s", "last_job_s", "last_status_s", "p50_ms", "p99_ms", "max_ms",
    "cpu_s", "apiserver_cpu_s", "etcd_cpu_s", "kcm_cpu_s", "bench_cpu_s", "setup_s",
)  # fmt: skip


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (N, controller): the median of each figure over the runs, the max of
    peak RSS, and the range of the run-by-run ratios to each floor (run i against run i)."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["n"], r["controller"]), []).append(r)
    rows = []
    for (n, kind), group in groups.items():
        row: dict[str, Any] = {"n": n, "controller": kind, "runs": len(group)}
        row["complete"] = all(r["complete"] for r in group)
        for key in NUMERIC:
            values = [r[key] for r in group if r.get(key) is not None and r[key] == r[key]]
            row[key] = round(statistics.median(values), 2) if values else None
        row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in group)
        row["requests"] = group[-1]["requests"]  # of the last run
        row["server_ms"] = {}
        for stage in ("react", "job", "gap", "patch"):
            pairs = [r["server_ms"][stage] for r in group if r["server_ms"].get(stage)]
            row["server_ms"][stage] = (
                [round(statistics.median(p[i] for p in pairs), 1) for i in (0, 1)]
                if pairs
                else None
            )
        for floor_kind, field in (("null", "ratio"), ("null+status", "ratio_status")):
            floors = [r["wall_s"] for r in groups.get((n, floor_kind), [])]
            ratios = sorted(a["wall_s"] / b for a, b in zip(group, floors, strict=False) if b)
            row[field] = round(row["wall_s"] / statistics.median(floors), 2) if floors else None
            row[field + "_range"] = f"{ratios[0]:.2f}-{ratios[-1]:.2f}" if len(ratios) > 1 else ""
        rows.append(row)
    return rows


def _ratio(row: dict[str, Any], field: str) -> str:
    if row[field] is None:
        return ""
    spread = row[field + "_range"]
    return f"{row[field]:.2f}" + (f" ({spread})" if spread else "")


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| N | controller | runs | wall s | ratio to null (range) | ratio to null+status (range) "
        "| p50 ms | p99 ms | CPU s | peak RSS MB | apiserver CPU s | etcd CPU s "
        "| bench client CPU s | complete |"
    )
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['controller']} | {r['runs']} | {r['wall_s']} "
            f"| {_ratio(r, 'ratio')} | {_ratio(r, 'ratio_status')} | {r['p50_ms']} "
            f"| {r['p99_ms']} | {r['cpu_s']} | {r['peak_rss_mb']} | {r['apiserver_cpu_s']} "
            f"| {r['etcd_cpu_s']} | {r['bench_cpu_s']} | {r['complete']} |"
        )
    lines += [
        "",
        "Server side, from the audit log, p50 / p99 ms: react = FineTuneJob stored -> Job POST"
        " received; job = Job POST in the apiserver; gap = Job POST answered -> status PATCH"
        " received; patch = status PATCH in the apiserver.",
        "",
        "| N | controller | react | job POST | gap | status PATCH | controller requests |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [
            "" if v is None else f"{v[0]:g} / {v[1]:g}"
            for v in (r["server_ms"][k] for k in ("react", "job", "gap", "patch"))
        ]
        reqs = ", ".join(f"{k} {v}" for k, v in r["requests"].items())
        lines.append(f"| {r['n']} | {r['controller']} | {' | '.join(cells)} | {reqs} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", default="300,1000", help="comma-separated N values")
    parser.add_argument(
        "--runs", "--repeat", dest="runs", type=int, default=3,
        help="runs per (N, controller), interleaved; medians are reported",
    )  # fmt: skip
    parser.add_argument(
        "--controllers", default=",".join(CONTROLLERS), help="subset, comma-separated"
    )
    parser.add_argument("--reconcile-objects", type=int, default=10_000)
    parser.add_argument("--timeout", type=float, default=300, help="seconds per burst")
    parser.add_argument(
        "--with-controllers",
        action="store_true",
        help="keep kube-controller-manager and kube-scheduler running (pods get created)",
    )
    parser.add_argument(
        "--null-workers", type=int, default=32,
        help="requests the null floors keep in flight (a worker pool; 0 = one task per object)",
    )  # fmt: skip
    parser.add_argument("--keep-failed", action="store_true", help="keep an incomplete run's dir")
    parser.add_argument("--keep", action="store_true", help="keep every run's dir (plane stopped)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--null-controller", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.null_controller:
        return null_controller(args.null_controller)

    kinds = [k for k in args.controllers.split(",") if k]
    unknown = set(kinds) - set(CONTROLLERS)
    if unknown:
        parser.error(f"unknown controllers: {sorted(unknown)}")
    # A SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so each run stops its plane.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    docs = chart_docs()
    rows = []
    for n in [int(x) for x in args.n.split(",") if x]:
        for _ in range(args.runs):  # interleaved, so drift hits every controller alike
            for kind in kinds:
                row = run_once(kind, n, args.timeout, docs, args)
                print(json.dumps(row), flush=True)
                rows.append(row)
    cost = reconcile_cost(args.reconcile_objects) if args.reconcile_objects else None
    print()
    summary = summarise(rows)
    print(table(summary))
    if cost:
        print(
            f"\nin-process reconcile: {cost['objects']} objects, {cost['total_s']} s, "
            f"{cost['per_object_ms']} ms/object"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "summary": summary,
                    "runs": rows,
                    "reconcile": cost,
                    "cpus": os.cpu_count(),
                    "with_controllers": args.with_controllers,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
