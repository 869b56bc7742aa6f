"""Operator scale benchmark against kmock's emulator (a benchmark, not a timed test).

kmock's emulator costs O(objects) per request, so the operator's cost is shown next to two
floors served by *null controllers* in their own process: "null" only creates the Jobs
(the operator's own Job manifest, so the emulator stores and streams the same bytes);
"null+status" also writes each FineTuneJob's status once, the least any controller that
reports a status can do.

    python benchmarks/operator_scale.py                  # N = 10, 100, 300, 5 runs each
    python benchmarks/operator_scale.py --n 300 --repeat 3 --reconcile-objects 100

Each run starts a fresh emulator in its own process, then the controller (a null one, or
`finetune operator --namespace bench` as a real process), then creates N FineTuneJobs at
once and watches Jobs and FineTuneJobs until every Job exists and (except for "null")
every status is Pending or later. Reported per configuration, as medians over the runs
(the three controllers interleaved, so machine drift hits them alike): wall time, its
ratio to each floor (with the run-by-run range), p50/p99 create-to-Job latency, the
controller's CPU seconds and peak RSS (VmHWM), and the emulator's CPU seconds. Then the
operator's per-object reconcile cost in-process (spec parse + Job manifest + status
derivation + status patch), no HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
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
SPEC: dict[str, Any] = {
    "task": "classification",
    "model": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
    "dataset": {"train": {"path": "/data/train.tsv"}, "eval": {"path": "/data/dev.tsv"}},
    "hyperparameters": {"learningRate": 3e-5, "epochs": 1, "batchSize": 16},
    "resources": {"gpus": 1, "cpu": "4", "memory": "16Gi"},
}
# Floors first: "null" only creates the Jobs (the floor the targets refer to); "null+status"
# also writes each status once, the least any controller that reports status can do.
CONTROLLERS = ("null", "null+status", "operator")
FTJ_PATH = f"/apis/finetune.dev/v1alpha1/namespaces/{NAMESPACE}/finetunejobs"
JOB_PATH = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"


# --------------------------------------------------------------------------- emulator process


def serve_emulator(lean: int) -> None:
    """Child process: the emulator on a free port; prints the URL, runs until killed.

    Stock kmock keeps every request and, for each new request, runs its reaction filters
    over that whole log to find the request again: O(requests so far) per request, so a
    run's cost grows with the square of its request count. With lean=1 the filters only
    see the request being served, which is the one they look for (no reaction here
    depends on other requests); responses and stored objects are unchanged, and the
    O(objects) work per request remains.
    """
    import contextvars

    import kmock

    sys.path.insert(0, str(ROOT / "tests" / "operator"))
    sys.path.insert(0, str(ROOT / "tests"))  # operator_harness imports support.apiserver
    from operator_harness import RESOURCES

    serving: contextvars.ContextVar[Any] = contextvars.ContextVar("serving")

    class LeanEmulator(kmock.KubernetesEmulator):
        async def _handle(self, request: Any) -> Any:
            token = serving.set(request)  # aiohttp serves each request in its own task
            try:
                return await super()._handle(request)
            finally:
                serving.reset(token)

        def __iter__(self) -> Any:
            request = serving.get(None)
            return iter(() if request is None else (request,))

    cls = LeanEmulator if lean else kmock.KubernetesEmulator

    async def main() -> None:
        async with cls() as emulator, kmock.Server(emulator) as server:
            for key, info in RESOURCES.items():
                emulator.resources[key] = info
            print(str(server.url).rstrip("/"), flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())


def start_emulator(window: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-emulator", str(window)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        raise RuntimeError(f"emulator did not start: {url!r}")
    return proc, url


# --------------------------------------------------------------------------- null controller


def job_template() -> dict[str, Any]:
    """The Job the operator makes for SPEC (built once, in the benchmark process)."""
    from finetune_operator.config import OperatorConfig
    from finetune_operator.handlers_job import parse_job
    from finetune_operator.jobs import build_job

    ftj = {"metadata": {"name": "tmpl", "namespace": NAMESPACE}, "spec": SPEC}
    return build_job(parse_job(ftj), "uid", OperatorConfig(trainer_image="trainer:bench"))


def null_controller(url: str, template_file: str, write_status: bool) -> None:
    """Child process: watch FineTuneJobs and create a Job for each (the operator's own Job
    manifest, renamed per object, so the emulator stores and streams the same bytes), and
    with write_status also patch `status.phase: Pending`. Nothing else."""
    template = json.loads(Path(template_file).read_text())

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

        async def handle(session: aiohttp.ClientSession, ftj: dict[str, Any]) -> None:
            async with session.post(url + JOB_PATH, json=job_for(ftj)) as r:
                await r.read()
            if write_status:
                status = {
                    "status": {"phase": "Pending", "jobName": f"{ftj['metadata']['name']}-train"}
                }
                async with session.patch(
                    f"{url}{FTJ_PATH}/{ftj['metadata']['name']}/status",
                    data=json.dumps(status),
                    headers={"Content-Type": "application/merge-patch+json"},
                ) as r:
                    await r.read()

        watch = {"watch": "true"}
        async with (
            aiohttp.ClientSession() as session,
            session.get(url + FTJ_PATH, params=watch, timeout=None) as r,
        ):
            print("ready", flush=True)
            async for line in r.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event.get("object", {})
                name = obj.get("metadata", {}).get("name")
                if event.get("type") != "ADDED" or not name or name in seen:
                    continue
                seen.add(name)
                task = asyncio.create_task(handle(session, obj))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

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


def cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


async def _wait_ready(
    session: aiohttp.ClientSession, proc: subprocess.Popen[Any], health: str | None
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"controller exited with {proc.returncode}")
        if health is None:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() == "ready":
                return
        else:
            try:
                async with session.get(health) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
        await asyncio.sleep(0.2)
    raise RuntimeError("controller not ready in 60 s")


async def run_once(kind: str, n: int, timeout: float, window: int) -> dict[str, Any]:
    emulator, url = start_emulator(window)
    tmp = Path(tempfile.mkdtemp(prefix="ftj-bench-"))
    kubeconfig = tmp / "kubeconfig.json"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "e", "cluster": {"server": url}}],
                "users": [{"name": "e", "user": {"token": "x"}}],
                "contexts": [{"name": "e", "context": {"cluster": "e", "user": "e"}}],
                "current-context": "e",
            }
        )
    )
    health = None
    template = tmp / "job.json"
    template.write_text(json.dumps(job_template()))
    ctl: subprocess.Popen[Any]
    if kind in CONTROLLERS[:2]:
        ctl = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--null-controller",
                url,
                "--job-template",
                str(template),
                "--with-status",
                str(int(kind != "null")),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
    else:
        port, hport = _free_port(), _free_port()
        health = f"http://127.0.0.1:{hport}/healthz"
        profile = os.environ.get("FINETUNE_BENCH_PROFILE")  # cProfile output path, optional
        code = "from finetune_cli.app import main; main()"
        if profile:
            code = (
                "import cProfile; from finetune_cli.app import main; p = cProfile.Profile()\n"
                f"try:\n    p.runcall(main)\nfinally:\n    p.dump_stats({profile!r})"
            )
        prefix = ["-c", code]
        ctl = subprocess.Popen(
            [
                sys.executable,
                *prefix,
                "operator",
                "--namespace",
                NAMESPACE,
                "--metrics-port",
                str(port),
                "--health-port",
                str(hport),
                "--log-level",
                "warning",
            ],
            env=dict(
                os.environ, KUBECONFIG=str(kubeconfig), FINETUNE_TRAINER_IMAGE="trainer:bench"
            ),
            stdout=subprocess.DEVNULL,
            stderr=(tmp / "operator.log").open("w"),
        )
    try:
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None)
        ) as session:
            await _wait_ready(session, ctl, health)
            spy = _py_spy(emulator if os.environ.get("FINETUNE_BENCH_SPY_EMULATOR") else ctl, kind)
            cpu0 = cpu_seconds(ctl.pid)
            emu0 = cpu_seconds(emulator.pid)
            sent: dict[str, float] = {}
            job_at: dict[str, float] = {}
            status_at: dict[str, float] = {}
            done = asyncio.Event()
            need_status = kind != "null"

            def check() -> None:
                if len(job_at) >= n and (not need_status or len(status_at) >= n):
                    done.set()

            async def watch(path: str, record: dict[str, float], key: Any) -> None:
                async with session.get(url + path, params={"watch": "true"}) as r:
                    async for line in r.content:
                        if line.strip():
                            name = key(json.loads(line))
                            if name and name not in record:
                                record[name] = time.perf_counter()
                                check()

            def job_key(e: dict[str, Any]) -> str | None:
                return str(e["object"]["metadata"]["name"]).removesuffix("-train")

            def status_key(e: dict[str, Any]) -> str | None:
                obj = e.get("object", {})
                if (obj.get("status") or {}).get("phase"):
                    return str(obj["metadata"]["name"])
                return None

            watchers = [
                asyncio.create_task(watch(JOB_PATH, job_at, job_key)),
                asyncio.create_task(watch(FTJ_PATH, status_at, status_key)),
            ]
            await asyncio.sleep(0.3)

            async def create(i: int) -> None:
                name = f"ftj-{i:05d}"
                body = {
                    "apiVersion": "finetune.dev/v1alpha1",
                    "kind": "FineTuneJob",
                    "metadata": {
                        "name": name,
                        "namespace": NAMESPACE,
                        "uid": str(uuid.uuid4()),
                        "generation": 1,
                        "resourceVersion": "1",
                    },
                    "spec": SPEC,
                }
                sent[name] = time.perf_counter()
                async with session.post(url + FTJ_PATH, json=body) as r:
                    assert r.status < 300, await r.text()

            t0 = time.perf_counter()
            await asyncio.gather(*(create(i) for i in range(n)))
            created = time.perf_counter() - t0
            try:
                await asyncio.wait_for(done.wait(), timeout)
                complete = True
            except TimeoutError:
                complete = False
            wall = time.perf_counter() - t0
            cpu = cpu_seconds(ctl.pid) - cpu0
            emu_cpu = cpu_seconds(emulator.pid) - emu0
            for w in watchers:
                w.cancel()
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
            lat = sorted(job_at[k] - sent[k] for k in job_at if k in sent)
            last_job = max(job_at.values()) - t0 if job_at else float("nan")
            return {
                "emulator_window": window,  # 1 = lean, 0 = stock
                "controller": kind,
                "n": n,
                "complete": complete,
                "jobs": len(job_at),
                "statuses": len(status_at) if need_status else None,
                "create_s": round(created, 2),
                "wall_s": round(wall, 2),
                "last_job_s": round(last_job, 2),
                "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
                "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1)
                if lat
                else None,
                "cpu_s": round(cpu, 2),
                "emulator_cpu_s": round(emu_cpu, 2),
                "peak_rss_mb": round(peak_rss_mb(ctl.pid), 1),
            }
    finally:
        if os.environ.get("FINETUNE_BENCH_PROFILE") and kind == "operator":
            ctl.send_signal(signal.SIGINT)  # let cProfile write its output
            ctl.wait(30)
        ctl.kill()
        ctl.wait()
        emulator.kill()
        emulator.wait()


def _py_spy(proc: subprocess.Popen[Any], kind: str) -> subprocess.Popen[Any] | None:
    """Optional sampling profile of an operator run: FINETUNE_BENCH_PYSPY=out.txt (raw
    collapsed stacks; needs `pip install py-spy`); of the emulator instead with
    FINETUNE_BENCH_SPY_EMULATOR=1. (cProfile, FINETUNE_BENCH_PROFILE, distorts async code.)"""
    out = os.environ.get("FINETUNE_BENCH_PYSPY")
    if not out or kind != "operator":
        return None
    cmd = ["py-spy", "record", "--pid", str(proc.pid), "-r", "400", "-f", "raw", "-o", out]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the burst
    return spy


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    pods = [
        [],
        [
            {
                "metadata": {"name": "p"},
                "status": {
                    "phase": "Running",
                    "containerStatuses": [{"name": "trainer", "state": {"running": {}}}],
                },
            }
        ],
        [
            {
                "metadata": {"name": "p"},
                "status": {
                    "phase": "Succeeded",
                    "containerStatuses": [
                        {
                            "name": "trainer",
                            "state": {
                                "terminated": {
                                    "exitCode": 0,
                                    "reason": "Completed",
                                    "message": json.dumps(
                                        {"phase": "Succeeded", "metrics": {"accuracy": 0.9}}
                                    ),
                                }
                            },
                        }
                    ],
                },
            }
        ],
        [
            {
                "metadata": {"name": "p"},
                "status": {
                    "phase": "Failed",
                    "containerStatuses": [
                        {
                            "name": "trainer",
                            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
                        }
                    ],
                },
            }
        ],
    ]
    objects: list[dict[str, Any]] = []
    for i in range(count):
        spec = json.loads(json.dumps(SPEC))
        spec["hyperparameters"]["learningRate"] = rng.choice([1e-5, 3e-5, 5e-5])
        objects.append(
            {
                "apiVersion": "finetune.dev/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {
                    "name": f"ftj-{i}",
                    "namespace": NAMESPACE,
                    "uid": str(uuid.uuid4()),
                    "generation": 1,
                    "labels": {},
                },
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


NUMERIC = ("create_s", "wall_s", "last_job_s", "p50_ms", "p99_ms", "cpu_s", "emulator_cpu_s")


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (emulator, N, controller): the median of each figure over the repeats,
    the max of peak RSS, and the spread of the run-by-run ratios to the floor."""
    groups: dict[tuple[int, int, str], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["emulator_window"], r["n"], r["controller"]), []).append(r)
    rows = []
    for (window, n, kind), group in groups.items():
        row: dict[str, Any] = {"emulator_window": window, "n": n, "controller": kind}
        row["repeats"] = len(group)
        row["complete"] = all(r["complete"] for r in group)
        for key in NUMERIC:
            values = [r[key] for r in group if r[key] is not None]
            row[key] = round(statistics.median(values), 2) if values else None
        row["peak_rss_mb"] = max(r["peak_rss_mb"] for r in group)
        for floor_kind, field in (("null", "ratio"), ("null+status", "ratio_status")):
            floors = [r["wall_s"] for r in groups.get((window, n, floor_kind), [])]
            ratios = sorted(a["wall_s"] / b for a, b in zip(group, floors, strict=False) if b)
            row[field] = round(row["wall_s"] / statistics.median(floors), 2) if floors else None
            row[field + "_range"] = f"{ratios[0]:.2f}-{ratios[-1]:.2f}" if ratios else ""
        rows.append(row)
    return rows


def _ratio(row: dict[str, Any], field: str) -> str:
    return "" if row[field] is None else f"{row[field]:.2f} ({row[field + '_range']})"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| emulator | N | controller | runs | wall s | ratio to null (range) "
        "| ratio to null+status (range) | p50 ms | p99 ms | CPU s "
        "| peak RSS MB | emulator CPU s | complete |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        log = "lean" if r["emulator_window"] else "stock"
        lines.append(
            f"| {log} | {r['n']} | {r['controller']} | {r['repeats']} | {r['wall_s']} "
            f"| {_ratio(r, 'ratio')} | {_ratio(r, 'ratio_status')} | {r['p50_ms']} | {r['p99_ms']} "
            f"| {r['cpu_s']} | {r['peak_rss_mb']} | {r['emulator_cpu_s']} | {r['complete']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", default="10,100,300", help="comma-separated N values")
    parser.add_argument("--reconcile-objects", type=int, default=10_000)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument(
        "--repeat", type=int, default=5, help="runs per configuration (medians are reported)"
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--emulator",
        default="lean",
        help="emulators to run, comma-separated: lean (request log not rescanned), stock",
    )
    parser.add_argument("--serve-emulator", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--null-controller", help=argparse.SUPPRESS)
    parser.add_argument("--with-status", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--job-template", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_emulator is not None:
        return serve_emulator(args.serve_emulator)
    if args.null_controller:
        return null_controller(args.null_controller, args.job_template, bool(args.with_status))

    rows = []
    for window in [1 if e == "lean" else 0 for e in args.emulator.split(",") if e]:
        for n in [int(x) for x in args.n.split(",") if x]:
            for _ in range(args.repeat):  # interleaved, so drift hits both controllers alike
                for kind in CONTROLLERS:
                    row = asyncio.run(run_once(kind, n, args.timeout, window))
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    cost = reconcile_cost(args.reconcile_objects) if args.reconcile_objects else None
    print()
    summary = summarise(rows)
    print(table(summary))
    if cost:
        print(
            f"\nin-process reconcile: {cost['objects']} objects, {cost['total_s']} s, {cost['per_object_ms']} ms/object"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"summary": summary, "runs": rows, "reconcile": cost, "cpus": os.cpu_count()},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
