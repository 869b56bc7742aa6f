"""`finetune get / watch / describe / logs` against kmock's emulator over KUBECONFIG.

The emulator holds the objects (written over HTTP, so watch streams see each change);
the CLI runs as a real process with KUBECONFIG pointing at it, or its coroutines run
in-process for the rendered content. kmock does not serve pods/log, so a reaction in
`log_route` plays the kubelet's log endpoint.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kmock
import pytest
from operator_harness import (
    FTJ,
    JOB,
    NAMESPACE,
    POD,
    SMALL_SPEC,
    SWEEP,
    Cluster,
    make_ftj,
    write_kubeconfig,
)
from rich.console import Console

from finetune_cli import cluster as cl
from finetune_cli import cluster_screens as screens

pytestmark = pytest.mark.operator


def ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


async def put(
    cluster: Cluster,
    res: tuple[str, str, str],
    body: dict[str, Any],
    status: dict[str, Any] | None = None,
) -> None:
    await cluster.create(res, body)
    if status:
        meta = body["metadata"]
        await cluster.patch(res, meta["namespace"], meta["name"], {"status": status}, status=True)


def sweep_body(name: str) -> dict[str, Any]:
    body = make_ftj(name, {})
    body["kind"] = "HyperparameterSweep"
    body["spec"] = {
        "template": SMALL_SPEC,
        "objective": {"metric": "accuracy", "direction": "maximize"},
        "searchSpace": {
            "hyperparameters.learningRate": {"type": "float", "low": 1e-5, "high": 1e-3}
        },
        "maxTrials": 4,
        "parallelism": 2,
    }
    return body


def trial_body(sweep: str, n: int, params: dict[str, Any]) -> dict[str, Any]:
    body = make_ftj(f"{sweep}-trial-{n}", SMALL_SPEC)
    body["metadata"]["labels"] = {"finetune.dev/sweep": sweep, "finetune.dev/trial": str(n)}
    body["metadata"]["annotations"] = {"finetune.dev/trial-params": json.dumps(params)}
    return body


def running() -> dict[str, Any]:
    """A job 60 s into training, stamped now (a module constant would age during the run)."""
    return {
        "phase": "Running",
        "startTime": ago(60),
        "progress": {"epoch": 0.48, "step": 120, "totalSteps": 250},
        "metrics": {"trainLoss": 0.52, "accuracy": 0.81},
    }


async def session_for(cluster: Cluster, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> cl.Session:
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    return await cl.connect(kw.get("namespace"), kw.get("all_namespaces", False), None)


def render() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=160, color_system=None), out


async def cli(
    cluster: Cluster | Path, *args: str, timeout: float = 60, started: asyncio.Event | None = None
) -> tuple[int, str, str]:
    """`finetune ARGS` as a process with KUBECONFIG -> the emulator: (rc, stdout, stderr)."""
    kubeconfig = cluster if isinstance(cluster, Path) else cluster.kubeconfig
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), COLUMNS="160")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from finetune_cli.app import main; main()",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def wait_watching(cluster: Cluster, plural: str, count: int = 1) -> None:
    """Until the CLI holds `count` open watch requests on `plural`."""

    def watching() -> bool:
        n = sum(
            1
            for r in cluster.requests()
            if r.resource is not None
            and r.resource.plural == plural
            and r.params.get("watch") == "true"
            and r.headers.get("User-Agent", "").startswith("finetune-operator/")
        )
        return n >= count

    await cluster.wait_for(watching, timeout=30, message=f"a watch on {plural}")


# --------------------------------------------------------------------------- get


async def test_get_table_groups_trials_under_sweep(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    await put(cluster, FTJ, make_ftj("demo", SMALL_SPEC), running())
    done = {"phase": "Succeeded", "progress": {"step": 250, "totalSteps": 250}}
    done["metrics"] = {"accuracy": 0.8372, "evalLoss": 0.37}
    await put(cluster, FTJ, make_ftj("finished", SMALL_SPEC), done)
    sweep_status = {
        "phase": "Running",
        "trials": {"total": 2, "running": 1, "succeeded": 1},
        "bestTrial": {"name": "sw-trial-0", "value": 0.84, "params": {}},
    }
    await put(cluster, SWEEP, sweep_body("sw"), sweep_status)
    await put(
        cluster, FTJ, trial_body("sw", 0, {}), {"phase": "Succeeded", "metrics": {"accuracy": 0.84}}
    )
    await put(cluster, FTJ, trial_body("sw", 1, {}), running())
    await put(cluster, FTJ, make_ftj("elsewhere", SMALL_SPEC, namespace="team-b"), done)

    session = await session_for(cluster, monkeypatch, namespace=NAMESPACE)
    console, out = render()
    assert await screens.get_view(session, console) == 0
    await cl.close(session)
    lines = out.getvalue().splitlines()
    text = out.getvalue()
    assert lines[0].split() == ["NAME", "KIND", "PHASE", "PROGRESS", "METRIC", "ETA", "AGE"]
    demo = next(line for line in lines if line.startswith("demo "))
    assert "Running" in demo and "48% 120/250" in demo and "accuracy 0.8100" in demo
    # 60 s (plus the time this test took) for 120 steps, 130 to go
    eta = int(demo.split("accuracy 0.8100")[1].split()[0].rstrip("s"))
    assert 60 * 130 / 120 - 1 <= eta <= (62 + time.monotonic() - started) * 130 / 120  # 1 s ticks
    finished = next(line for line in lines if line.startswith("finished "))
    assert "Succeeded" in finished and "100% 250/250" in finished and "accuracy 0.8372" in finished
    order = [line.split()[0] for line in lines[1:]]
    assert order.index("sw") < order.index("├─") < order.index("└─")
    sweep_row = next(line for line in lines if line.startswith("sw "))
    assert "1/4 trials" in sweep_row and "accuracy 0.8400 (best)" in sweep_row
    assert "├─ sw-trial-0" in text and "└─ sw-trial-1" in text
    assert "elsewhere" not in text

    session = await session_for(cluster, monkeypatch, all_namespaces=True)
    console, out = render()
    await screens.get_view(session, console)
    await cl.close(session)
    assert out.getvalue().split()[0] == "NAMESPACE"
    assert any(
        line.startswith("team-b") and "elsewhere" in line for line in out.getvalue().splitlines()
    )


async def test_get_cli_over_kubeconfig(cluster: Cluster) -> None:
    await put(cluster, FTJ, make_ftj("demo", SMALL_SPEC), running())
    rc, out, err = await cli(cluster, "get", "-n", NAMESPACE)
    assert rc == 0, err
    assert "demo" in out and "120/250" in out and "accuracy 0.8100" in out


# --------------------------------------------------------------------------- watch


async def test_watch_exits_0_when_the_job_succeeds(cluster: Cluster) -> None:
    await put(cluster, FTJ, make_ftj("demo", SMALL_SPEC), {"phase": "Pending"})
    task = asyncio.create_task(cli(cluster, "watch", "demo", "-n", NAMESPACE))
    await wait_watching(cluster, "finetunejobs")
    await cluster.patch(FTJ, NAMESPACE, "demo", {"status": running()}, status=True)
    evaluation = {"epoch": 0.8, "step": 200, "evalLoss": 0.41, "accuracy": 0.83}
    later = {"progress": {"epoch": 0.8, "step": 200, "totalSteps": 250}, "history": [evaluation]}
    await asyncio.sleep(0.3)
    await cluster.patch(FTJ, NAMESPACE, "demo", {"status": later}, status=True)
    await asyncio.sleep(0.3)
    final = {"phase": "Succeeded", "progress": {"epoch": 1.0, "step": 250, "totalSteps": 250}}
    final["metrics"] = {"accuracy": 0.8372, "evalLoss": 0.3742}
    await cluster.patch(FTJ, NAMESPACE, "demo", {"status": final}, status=True)
    rc, out, err = await task
    assert rc == 0, out + err
    lines = out.splitlines()
    assert lines[0] == "[Pending] step 0"
    assert any(line.startswith("[Running] step 120/250") and "ETA" in line for line in lines)
    assert any(line.startswith("[Running] step 200/250") for line in lines)
    assert lines[-1].startswith("[Succeeded] step 250/250") and "accuracy=0.8372" in lines[-1]


async def test_watch_exits_1_with_the_message_when_the_job_fails(cluster: Cluster) -> None:
    await put(cluster, FTJ, make_ftj("demo", SMALL_SPEC), running())
    task = asyncio.create_task(cli(cluster, "watch", "demo", "-n", NAMESPACE))
    await wait_watching(cluster, "finetunejobs")
    message = "The trainer ran out of memory and was killed (OOMKilled, limit 8Gi)."
    failed = {"phase": "Failed", "message": message}
    await cluster.patch(FTJ, NAMESPACE, "demo", {"status": failed}, status=True)
    rc, out, err = await task
    assert rc == 1, out + err
    assert "error: demo failed: The trainer ran out of memory" in out
    assert out.splitlines()[-2].startswith("[Failed]")


async def test_watch_sweep_shows_trials_and_exits_on_the_sweep(cluster: Cluster) -> None:
    await put(cluster, SWEEP, sweep_body("sw"), {"phase": "Running", "trials": {"total": 0}})
    task = asyncio.create_task(cli(cluster, "watch", "sw", "-n", NAMESPACE))
    await wait_watching(cluster, "finetunejobs")
    await wait_watching(cluster, "hyperparametersweeps")
    await put(cluster, FTJ, trial_body("sw", 0, {"hyperparameters.learningRate": 1e-4}), running())
    await asyncio.sleep(0.3)
    done = {"phase": "Succeeded", "metrics": {"accuracy": 0.86}}
    await cluster.patch(FTJ, NAMESPACE, "sw-trial-0", {"status": done}, status=True)
    await asyncio.sleep(0.3)
    best = {"name": "sw-trial-0", "value": 0.86, "params": {"hyperparameters.learningRate": 1e-4}}
    final = {"phase": "Succeeded", "trials": {"total": 4, "succeeded": 4}, "bestTrial": best}
    await cluster.patch(SWEEP, NAMESPACE, "sw", {"status": final}, status=True)
    rc, out, err = await task
    assert rc == 0, out + err
    assert "[Running] 0/4 trials running sw-trial-0" in out
    assert out.splitlines()[-1] == "[Succeeded] 4/4 trials best accuracy 0.8600 (sw-trial-0)"


async def test_watch_uses_the_watch_api(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    await put(cluster, FTJ, make_ftj("demo", SMALL_SPEC), running())
    session = await session_for(cluster, monkeypatch, namespace=NAMESPACE)
    console, _out = render()
    task = asyncio.create_task(screens.watch_view(session, "demo", console))
    await wait_watching(cluster, "finetunejobs")
    await cluster.patch(FTJ, NAMESPACE, "demo", {"status": {"phase": "Succeeded"}}, status=True)
    assert await asyncio.wait_for(task, 10) == 0
    await cl.close(session)
    gets = [
        r
        for r in cluster.requests()
        if r.resource is not None
        and r.resource.plural == "finetunejobs"
        and r.method.value == "GET"
    ]
    assert [r.params.get("watch") for r in gets] == [None, "true"]  # one get, then one stream


# --------------------------------------------------------------------------- describe


async def failed_job(cluster: Cluster) -> None:
    message = "The trainer ran out of memory and was killed (OOMKilled, limit 8Gi)."
    status = {
        "phase": "Failed",
        "jobName": "demo-train",
        "message": message,
        "progress": {"step": 40, "totalSteps": 250},
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": "OOMKilled",
                "message": message,
                "lastTransitionTime": ago(30),
            }
        ],
    }
    await put(cluster, FTJ, make_ftj("demo", SMALL_SPEC), status)
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "demo-train", "namespace": NAMESPACE, "uid": "j1"},
        "spec": {"backoffLimit": 0, "activeDeadlineSeconds": 600},
    }
    conditions = [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "x"}
    ]
    await put(cluster, JOB, job, {"failed": 1, "conditions": conditions})
    term = {"exitCode": 137, "reason": "OOMKilled", "finishedAt": ago(31)}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "demo-train-x7k2p",
            "namespace": NAMESPACE,
            "labels": {"finetune.dev/job": "demo", "batch.kubernetes.io/job-name": "demo-train"},
            "creationTimestamp": ago(90),
        },
    }
    cs = {"name": "trainer", "restartCount": 0, "state": {"terminated": term}}
    await put(cluster, POD, pod, {"phase": "Failed", "containerStatuses": [cs]})
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "demo.1", "namespace": NAMESPACE},
        "involvedObject": {"kind": "FineTuneJob", "name": "demo", "namespace": NAMESPACE},
        "reason": "Failed",
        "message": "OOMKilled: raise spec.resources.memory",
        "type": "Warning",
        "lastTimestamp": ago(29),
    }
    await cluster.create(("", "v1", "events"), event)


async def test_describe_a_failed_job(cluster: Cluster) -> None:
    await failed_job(cluster)
    rc, out, err = await cli(cluster, "describe", "demo", "-n", NAMESPACE)
    assert rc == 0, err
    sections = [line.strip() for line in out.splitlines()]
    why = sections.index("Why it failed")
    assert sections.index("Conditions") > why
    assert (
        "The trainer ran out of memory and was killed (OOMKilled, limit 8Gi)." in sections[why + 1]
    )
    assert "BackoffLimitExceeded: every attempt failed (backoffLimit 0)" in out
    assert "OOMKilled: the trainer ran out of memory (limit 8Gi)" not in out  # said once
    assert "demo-train-x7k2p" in out and "terminated (OOMKilled) exit 137" in out
    assert "Warning" in out and "OOMKilled: raise spec.resources.memory" in out
    assert "demo-train: active 0, succeeded 0, failed 1" in out


async def test_describe_explains_trainer_error_and_deadline(cluster: Cluster) -> None:
    await failed_job(cluster)
    report = {"phase": "Failed", "message": "train file data/x.tsv has no rows"}
    term = {"exitCode": 1, "reason": "Error", "message": json.dumps(report)}
    cs = {"name": "trainer", "state": {"terminated": term}}
    await cluster.patch(
        POD, NAMESPACE, "demo-train-x7k2p", {"status": {"containerStatuses": [cs]}}, status=True
    )
    conditions = [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]
    await cluster.patch(
        JOB, NAMESPACE, "demo-train", {"status": {"conditions": conditions}}, status=True
    )
    rc, out, err = await cli(cluster, "describe", "demo", "-n", NAMESPACE)
    assert rc == 0, err
    assert "trainer error: train file data/x.tsv has no rows" in out
    assert "DeadlineExceeded: the Job ran longer than activeDeadlineSeconds (600 s)" in out


async def test_describe_a_sweep_shows_best_and_trials(cluster: Cluster) -> None:
    best = {"name": "sw-trial-1", "value": 0.86, "params": {"hyperparameters.learningRate": 2e-4}}
    status = {"phase": "Succeeded", "trials": {"total": 2, "succeeded": 1, "failed": 1}}
    await put(cluster, SWEEP, sweep_body("sw"), {**status, "bestTrial": best})
    message = "model error: no such model directory /models/x (identical in every trial)"
    await put(
        cluster,
        FTJ,
        trial_body("sw", 0, {"hyperparameters.learningRate": 1e-5}),
        {"phase": "Failed", "message": message},
    )
    await put(
        cluster,
        FTJ,
        trial_body("sw", 1, {"hyperparameters.learningRate": 2e-4}),
        {"phase": "Succeeded", "metrics": {"accuracy": 0.86}},
    )
    rc, out, err = await cli(cluster, "describe", "sw", "-n", NAMESPACE)
    assert rc == 0, err
    assert "accuracy 0.8600 (sw-trial-1)" in out
    assert "hyperparameters.learningRate: 0.0002" in out
    assert "learningRate=1e-05" in out and "learningRate=0.0002" in out
    assert "(identical in every trial)" in out  # failure messages wrap, never cut
    rc, out, err = await cli(cluster, "describe", "sw-trial-1", "-n", NAMESPACE)
    assert rc == 0, err
    assert "1 of sweep sw: learningRate=0.0002" in out


# --------------------------------------------------------------------------- logs


def log_route(cluster: Cluster, logs: dict[str, list[bytes]], delay: float = 0.0) -> list[Any]:
    """Serve GET .../pods/NAME/log from `logs` (kmock has no pods/log); returns the requests."""
    seen: list[Any] = []

    async def lines(request: Any) -> AsyncIterator[bytes]:
        seen.append(request)
        for line in logs.get(request.name, []):
            if delay:
                await asyncio.sleep(delay)
            yield line

    cluster.emulator[kmock.subresource("log")] << (lambda request: lines(request))
    return seen


async def trainer_pod(cluster: Cluster, name: str, index: int | None, created: float) -> None:
    labels = {"finetune.dev/job": "demo", "batch.kubernetes.io/job-name": "demo-train"}
    if index is not None:
        labels["batch.kubernetes.io/job-completion-index"] = str(index)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
    }
    pod["metadata"]["creationTimestamp"] = ago(created)
    await cluster.create(POD, pod)


async def test_logs_reads_the_pod_log_subresource(cluster: Cluster) -> None:
    await put(cluster, FTJ, make_ftj("demo", SMALL_SPEC), running())
    await trainer_pod(cluster, "demo-train-old", None, 300)
    await trainer_pod(cluster, "demo-train-new", None, 100)
    seen = log_route(
        cluster, {"demo-train-new": [b"[progress] step 10/250\n", b"[progress] step 20/250\n"]}
    )
    rc, out, err = await cli(cluster, "logs", "demo", "-n", NAMESPACE)
    assert rc == 0, err
    assert "pod demo-train-new" in err  # names the pod it reads: the latest attempt
    assert out == "[progress] step 10/250\n[progress] step 20/250\n"
    assert seen[0].params.get("container") == "trainer" and "follow" not in seen[0].params


async def test_logs_follow_and_rank(cluster: Cluster) -> None:
    await put(cluster, FTJ, make_ftj("demo", SMALL_SPEC), running())
    await trainer_pod(cluster, "demo-train-0-abc", 0, 100)
    await trainer_pod(cluster, "demo-train-1-def", 1, 100)
    logs = {
        "demo-train-1-def": [b"rank 1 says a\n", b"rank 1 says b\n"],
        "demo-train-0-abc": [b"rank 0\n"],
    }
    seen = log_route(cluster, logs, delay=0.2)
    rc, out, err = await cli(cluster, "logs", "demo", "-f", "--rank", "1", "-n", NAMESPACE)
    assert rc == 0, err
    assert "pod demo-train-1-def (rank 1)" in err
    assert out == "rank 1 says a\nrank 1 says b\n"
    assert seen[0].params.get("follow") == "true"
    rc, out, err = await cli(cluster, "logs", "demo", "--rank", "3", "-n", NAMESPACE)
    assert rc == 2 and "no trainer pod with rank 3 for demo yet (phase Running)" in err


# --------------------------------------------------------------------------- errors


async def test_unknown_name(cluster: Cluster) -> None:
    rc, _out, err = await cli(cluster, "describe", "nope", "-n", NAMESPACE)
    assert rc == 2
    assert "no FineTuneJob or HyperparameterSweep named 'nope' in namespace 'team-a'" in err
    assert "Traceback" not in err


async def test_forbidden_by_rbac(cluster: Cluster) -> None:
    forbidden = {
        "kind": "Status",
        "reason": "Forbidden",
        "message": 'finetunejobs is forbidden: User "bob"',
    }
    cluster.emulator[kmock.resource("finetune.dev", "v1alpha1", "finetunejobs")] << 403 << forbidden
    rc, _out, err = await cli(cluster, "get", "-n", NAMESPACE)
    assert rc == 2
    assert "not allowed to list finetunejobs in namespace 'team-a' (403 Forbidden" in err
    assert "RBAC" in err


async def test_no_crds(tmp_path: Path) -> None:
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources["v1/pods"] = kmock.ResourceInfo(kind="Pod", namespaced=True)
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig.json", str(server.url).rstrip("/"))
        for args in (("get",), ("watch", "demo"), ("describe", "demo")):
            rc, out, err = await cli(kubeconfig, *args)
            assert rc == 2, (args, out, err)
            assert "CRDs are not installed" in err, (args, err)


async def test_no_cluster(tmp_path: Path) -> None:
    from operator_harness import free_port

    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig.json", f"http://127.0.0.1:{free_port()}")
    rc, _out, err = await cli(kubeconfig, "get")
    assert rc == 2
    assert "cannot reach the Kubernetes API server at http://127.0.0.1:" in err
    rc, _out, err = await cli(tmp_path / "missing.yaml", "get")
    assert rc == 2 and "no usable Kubernetes credentials" in err
    assert "missing.yaml does not exist" in err and "Config not found" not in err


async def test_namespace_flags_exclude_each_other(cluster: Cluster) -> None:
    rc, _out, err = await cli(cluster, "get", "-n", NAMESPACE, "-A")
    assert rc == 2 and "exclude each other" in err


async def test_watch_on_a_terminal_renders_the_live_view(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put(cluster, FTJ, make_ftj("demo", SMALL_SPEC), running())
    session = await session_for(cluster, monkeypatch, namespace=NAMESPACE)
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    task = asyncio.create_task(screens.watch_view(session, "demo", console))
    await wait_watching(cluster, "finetunejobs")
    history = [{"epoch": 0.8, "step": 200, "evalLoss": 0.41, "accuracy": 0.83}]
    final = {"phase": "Failed", "message": "trainer error: CUDA out of memory", "history": history}
    await cluster.patch(FTJ, NAMESPACE, "demo", {"status": final}, status=True)
    assert await asyncio.wait_for(task, 10) == 1
    await cl.close(session)
    screen = out.getvalue()
    assert "demo  Failed" in screen and "evaluations" in screen and "0.83" in screen
    assert "error: demo failed: trainer error: CUDA out of memory" in screen


async def test_logs_follow_waits_for_the_pod_and_its_container(cluster: Cluster) -> None:
    await put(cluster, FTJ, make_ftj("demo", SMALL_SPEC), {"phase": "Pending"})
    starting = {"kind": "Status", "reason": "BadRequest", "message": "ContainerCreating"}
    calls: list[Any] = []

    async def log(request: Any) -> AsyncIterator[bytes]:
        calls.append(request)
        yield b"[start] classification\n"
        yield b"[progress] step 10/250\n"

    # the first log request finds the container still starting (400), the next one streams
    cluster.emulator[kmock.subresource("log")][:1] << 400 << starting
    cluster.emulator[kmock.subresource("log")] << (lambda request: log(request))
    task = asyncio.create_task(cli(cluster, "logs", "demo", "-f", "-n", NAMESPACE))
    await wait_watching(cluster, "pods")
    await trainer_pod(cluster, "demo-train-abc", None, 1)
    rc, out, err = await task
    assert rc == 0, err
    assert "waiting for a trainer pod of demo" in err and "pod demo-train-abc" in err
    assert out == "[start] classification\n[progress] step 10/250\n"
    served = [r for r in cluster.requests() if r.subresource == "log"]
    assert len(served) == 2 and len(calls) == 1  # a 400 while starting, then the stream
