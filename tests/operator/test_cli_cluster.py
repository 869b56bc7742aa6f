"""`finetune get / watch / describe / logs` against the session's real control plane.

The CLI runs as a real process (or its coroutines in-process, for the rendered content)
with KUBECONFIG for `viewer`, a ServiceAccount with a read-only ClusterRole (get, list and
watch): the audit policy logs every request of a ServiceAccount, so the tests wait on the
CLI's open watches and read its pods/log queries in the API server's audit log. The
objects the views read are created as admin and given their status through the /status
subresource (pods the test makes are bound to node "ghost", which no node agent serves,
and Jobs are `managedBy` the test, so no controller touches them). The logs tests read real
pods: the operator's Job, the Job controller's pods, run by the node agent (the stub
trainer prints what the test orders), through kube-apiserver's pods/log proxy to the node
agent's kubelet endpoint.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from operator_harness import (
    FTJ,
    JOB,
    NAMESPACE,
    POD,
    SMALL_SPEC,
    STUB_IMAGE,
    SWEEP,
    Cluster,
    Kubelet,
    OperatorRunner,
    free_port,
    make_ftj,
)
from rich.console import Console

from finetune_cli import cluster as cl
from finetune_cli import cluster_screens as screens
from finetune_cluster import controlplane
from finetune_cluster.controlplane import write_kubeconfig
from finetune_cluster.install import SYSTEM_NAMESPACE, apply, service_account_token
from finetune_operator.kube import USER_AGENT
from support.plane import Plane

pytestmark = pytest.mark.operator

SECRET = ("", "v1", "secrets")
VIEWER = "finetune-cli-viewer"
VIEWER_USER = f"system:serviceaccount:{SYSTEM_NAMESPACE}:{VIEWER}"
READ = ["get", "list", "watch"]
TEST_MANAGER = "finetune.dev/test"  # Job spec.managedBy: the Job controller leaves it alone


def rbac_docs(
    account: str, namespace: str, rules: list[dict[str, Any]], *, cluster_wide: bool
) -> list[dict[str, Any]]:
    """A ServiceAccount and a (Cluster)Role with `rules` bound to it."""
    kind = "ClusterRole" if cluster_wide else "Role"
    scope = {} if cluster_wide else {"namespace": namespace}
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": account, "namespace": namespace},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": account, **scope},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": f"{kind}Binding",
            "metadata": {"name": account, **scope},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    ]


def token_kubeconfig(plane: Plane, path: Path, namespace: str, account: str) -> Path:
    token = service_account_token(plane.cp, namespace, account)
    return write_kubeconfig(path, plane.server, plane.cp.ca_file, token, account)


@pytest.fixture(scope="module")
def viewer(control_plane: Plane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A kubeconfig for a user who may read what the CLI reads, in every namespace."""
    rules = [
        {"apiGroups": ["finetune.dev"], "resources": [cl.FTJ, cl.SWEEP], "verbs": READ},
        {"apiGroups": [""], "resources": ["pods", "pods/log", "events"], "verbs": READ},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": READ},
    ]
    apply(control_plane.cp, rbac_docs(VIEWER, SYSTEM_NAMESPACE, rules, cluster_wide=True))
    path = tmp_path_factory.mktemp("viewer") / "kubeconfig.json"
    yield token_kubeconfig(control_plane, path, SYSTEM_NAMESPACE, VIEWER)
    control_plane.kubectl(
        "delete", "clusterrolebinding,clusterrole", VIEWER, "--ignore-not-found", check=False
    )
    control_plane.kubectl(
        "delete", "serviceaccount", VIEWER, "-n", SYSTEM_NAMESPACE, "--ignore-not-found",
        check=False,
    )  # fmt: skip


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


def restricted_pod_spec() -> dict[str, Any]:
    """A pod spec that PodSecurity `restricted` (enforced in the test namespaces) admits."""
    return {
        "restartPolicy": "Never",
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "trainer",
                "image": STUB_IMAGE,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "capabilities": {"drop": ["ALL"]},
                },
            }
        ],
    }


async def session_for(kubeconfig: Path, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> cl.Session:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    return await cl.connect(kw.get("namespace"), kw.get("all_namespaces", False), None)


def render() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=160, color_system=None), out


async def cli(kubeconfig: Path, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    """`finetune ARGS` as a process with KUBECONFIG=kubeconfig: (rc, stdout, stderr)."""
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
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:  # timed out or cancelled: no CLI outlives its test
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(), err.decode()


# --------------------------------------------------------------------------- audit


def cli_calls(
    cluster: Cluster,
    plural: str,
    *,
    subresource: str = "",
    verb: str | None = None,
    name: str | None = None,
) -> list[dict[str, Any]]:
    """The CLI's requests on `plural` in this test, from the audit log (watches once,
    when the stream starts; every other request once, when it completes)."""
    found = []
    for event in cluster.audit():
        ref = event.get("objectRef") or {}
        if (
            event.get("user", {}).get("username") == VIEWER_USER
            and event.get("userAgent") == USER_AGENT
            and ref.get("resource") == plural
            and (ref.get("subresource") or "") == subresource
            and verb in (None, event.get("verb"))
            and name in (None, ref.get("name"))
        ):
            found.append(event)
    return found


def query(event: dict[str, Any]) -> dict[str, list[str]]:
    return parse_qs(urlsplit(str(event.get("requestURI", ""))).query)


def log_calls(cluster: Cluster, pod: str) -> list[dict[str, Any]]:
    """The CLI's finished pods/log requests on `pod`."""
    return cli_calls(cluster, "pods", subresource="log", name=pod)


def log_streaming(cluster: Cluster, pod: str) -> bool:
    """Whether the CLI's pods/log request on `pod` has its 200 headers (the node agent
    answered and streams): the audit log's ResponseStarted stage of a long-running request,
    which Plane.audit() leaves out for anything but watches."""
    with cluster.plane.audit_log.open("rb") as f:
        f.seek(cluster.audit_start)
        lines = f.read().splitlines()
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:  # a line being written
            continue
        ref = event.get("objectRef") or {}
        if (
            event.get("stage") == "ResponseStarted"
            and event.get("user", {}).get("username") == VIEWER_USER
            and ref.get("subresource") == "log"
            and ref.get("name") == pod
            and event.get("responseStatus", {}).get("code") == 200
        ):
            return True
    return False


async def wait_watching(cluster: Cluster, plural: str, count: int = 1) -> None:
    """Until the CLI holds `count` open watch requests on `plural`."""
    await cluster.wait_for(
        lambda: len(cli_calls(cluster, plural, verb="watch")) >= count,
        timeout=30,
        message=f"a watch on {plural}",
    )


# --------------------------------------------------------------------------- get


async def test_get_table_groups_trials_under_sweep(
    cluster: Cluster, viewer: Path, monkeypatch: pytest.MonkeyPatch
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

    session = await session_for(viewer, monkeypatch, namespace=NAMESPACE)
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

    session = await session_for(viewer, monkeypatch, all_namespaces=True)
    console, out = render()
    await screens.get_view(session, console)
    await cl.close(session)
    assert out.getvalue().split()[0] == "NAMESPACE"
    assert any(
        line.startswith("team-b") and "elsewhere" in line for line in out.getvalue().splitlines()
    )


async def test_get_cli_over_kubeconfig(cluster: Cluster, viewer: Path) -> None:
    await put(cluster, FTJ, make_ftj("demo", SMALL_SPEC), running())
    rc, out, err = await cli(viewer, "get", "-n", NAMESPACE)
    assert rc == 0, err
    assert "demo" in out and "120/250" in out and "accuracy 0.8100" in out


# --------------------------------------------------------------------------- watch


async def test_watch_exits_0_when_the_job_succeeds(cluster: Cluster, viewer: Path) -> None:
    await put(cluster, FTJ, make_ftj("demo", SMALL_SPEC), {"phase": "Pending"})
    task = asyncio.create_task(cli(viewer, "watch", "demo", "-n", NAMESPACE))
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


async def test_watch_exits_1_with_the_message_when_the_job_fails(
    cluster: Cluster, viewer: Path
) -> None:
    await put(cluster, FTJ, make_ftj("demo", SMALL_SPEC), running())
    task = asyncio.create_task(cli(viewer, "watch", "demo", "-n", NAMESPACE))
    await wait_watching(cluster, "finetunejobs")
    message = "The trainer ran out of memory and was killed (OOMKilled, limit 8Gi)."
    failed = {"phase": "Failed", "message": message}
    await cluster.patch(FTJ, NAMESPACE, "demo", {"status": failed}, status=True)
    rc, out, err = await task
    assert rc == 1, out + err
    assert "error: demo failed: The trainer ran out of memory" in out
    assert out.splitlines()[-2].startswith("[Failed]")


async def test_watch_sweep_shows_trials_and_exits_on_the_sweep(
    cluster: Cluster, viewer: Path
) -> None:
    await put(cluster, SWEEP, sweep_body("sw"), {"phase": "Running", "trials": {"total": 0}})
    task = asyncio.create_task(cli(viewer, "watch", "sw", "-n", NAMESPACE))
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


async def test_watch_uses_the_watch_api(
    cluster: Cluster, viewer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put(cluster, FTJ, make_ftj("demo", SMALL_SPEC), running())
    session = await session_for(viewer, monkeypatch, namespace=NAMESPACE)
    console, _out = render()
    task = asyncio.create_task(screens.watch_view(session, "demo", console))
    await wait_watching(cluster, "finetunejobs")
    await cluster.patch(FTJ, NAMESPACE, "demo", {"status": {"phase": "Succeeded"}}, status=True)
    assert await asyncio.wait_for(task, 10) == 0
    await cl.close(session)
    calls = cli_calls(cluster, "finetunejobs")
    assert [e["verb"] for e in calls] == ["get", "watch"]  # one get, then one stream
    assert calls[0]["objectRef"]["name"] == "demo"
    assert query(calls[1])["fieldSelector"] == ["metadata.name=demo"]


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
        "metadata": {"name": "demo-train", "namespace": NAMESPACE},
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": 600,
            "managedBy": TEST_MANAGER,
            "suspend": True,
            "template": {"spec": restricted_pod_spec()},
        },
    }
    # The API server's rules for a Job's status: a Failed Job has a start time and was
    # FailureTarget first, as the Job controller writes it.
    failure = {"status": "True", "reason": "BackoffLimitExceeded", "message": "x"}
    conditions = [{"type": "FailureTarget", **failure}, {"type": "Failed", **failure}]
    await put(cluster, JOB, job, {"startTime": ago(90), "failed": 1, "conditions": conditions})
    term = {"exitCode": 137, "reason": "OOMKilled", "finishedAt": ago(31)}
    labels = {"finetune.dev/job": "demo", "batch.kubernetes.io/job-name": "demo-train"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "demo-train-x7k2p", "namespace": NAMESPACE, "labels": labels},
        "spec": {**restricted_pod_spec(), "nodeName": "ghost"},
    }
    cs = {"name": "trainer", "restartCount": 0, "state": {"terminated": term}}
    await put(cluster, POD, pod, {"phase": "Failed", "containerStatuses": [cs]})
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": "demo.", "namespace": NAMESPACE},
        "involvedObject": {"kind": "FineTuneJob", "name": "demo", "namespace": NAMESPACE},
        "reason": "Failed",
        "message": "OOMKilled: raise spec.resources.memory",
        "type": "Warning",
        "lastTimestamp": ago(29),
    }
    await cluster.create(("", "v1", "events"), event)


async def test_describe_a_failed_job(cluster: Cluster, viewer: Path) -> None:
    await failed_job(cluster)
    rc, out, err = await cli(viewer, "describe", "demo", "-n", NAMESPACE)
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


async def test_describe_explains_trainer_error_and_deadline(cluster: Cluster, viewer: Path) -> None:
    await failed_job(cluster)
    report = {"phase": "Failed", "message": "train file data/x.tsv has no rows"}
    term = {"exitCode": 1, "reason": "Error", "message": json.dumps(report)}
    cs = {"name": "trainer", "state": {"terminated": term}}
    await cluster.patch(
        POD, NAMESPACE, "demo-train-x7k2p", {"status": {"containerStatuses": [cs]}}, status=True
    )
    deadline = {"status": "True", "reason": "DeadlineExceeded"}
    conditions = [{"type": "FailureTarget", **deadline}, {"type": "Failed", **deadline}]
    await cluster.patch(
        JOB, NAMESPACE, "demo-train", {"status": {"conditions": conditions}}, status=True
    )
    rc, out, err = await cli(viewer, "describe", "demo", "-n", NAMESPACE)
    assert rc == 0, err
    assert "trainer error: train file data/x.tsv has no rows" in out
    assert "DeadlineExceeded: the Job ran longer than activeDeadlineSeconds (600 s)" in out


async def test_describe_a_sweep_shows_best_and_trials(cluster: Cluster, viewer: Path) -> None:
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
    rc, out, err = await cli(viewer, "describe", "sw", "-n", NAMESPACE)
    assert rc == 0, err
    assert "accuracy 0.8600 (sw-trial-1)" in out
    assert "hyperparameters.learningRate: 0.0002" in out
    assert "learningRate=1e-05" in out and "learningRate=0.0002" in out
    assert "(identical in every trial)" in out  # failure messages wrap, never cut
    rc, out, err = await cli(viewer, "describe", "sw-trial-1", "-n", NAMESPACE)
    assert rc == 0, err
    assert "1 of sweep sw: learningRate=0.0002" in out


# --------------------------------------------------------------------------- logs


def container_running(pod: dict[str, Any]) -> bool:
    return any(
        "running" in (cs.get("state") or {})
        for cs in (pod.get("status") or {}).get("containerStatuses") or []
    )


def rank_of(pod: dict[str, Any]) -> int:
    return int(pod["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"])


async def test_logs_reads_the_pod_log_subresource(
    cluster: Cluster, viewer: Path, operator: OperatorRunner, kubelet: Kubelet
) -> None:
    await cluster.create(FTJ, make_ftj("demo", {**SMALL_SPEC, "backoffLimit": 1}))
    job = await cluster.wait_for_object(JOB, NAMESPACE, "demo-train")
    old = await kubelet.terminate(job, exit_code=1, log=["attempt 1: CUDA error"])
    # The Job controller's second attempt (after its 10 s pod-failure backoff).
    lines = ["[progress] step 10/250", "[progress] step 20/250"]
    new = await kubelet.terminate(job, exit_code=0, log=lines)
    name = new["metadata"]["name"]
    assert name != old["metadata"]["name"]
    rc, out, err = await cli(viewer, "logs", "demo", "-n", NAMESPACE)
    assert rc == 0, err
    assert f"pod {name}" in err  # names the pod it reads: the latest attempt
    assert out == cluster.pod_log(new)  # the container's whole log, as the node agent has it
    assert out.startswith("stub: env ") and out.endswith("\n".join(lines) + "\n")
    assert "attempt 1" not in out
    (request,) = cli_calls(cluster, "pods", subresource="log")
    assert request["objectRef"]["name"] == name
    assert request["responseStatus"]["code"] == 200
    assert query(request)["container"] == ["trainer"] and "follow" not in query(request)


async def test_logs_follow_and_rank(cluster: Cluster, viewer: Path, kubelet: Kubelet) -> None:
    # Two ranks: an Indexed Job with the trainer pods' labels, whose pods the Job controller
    # makes (each with its completion index) and the node agent runs. Not the operator's
    # 2-node Job: that needs a ReadWriteMany model cache PVC, and this plane binds none.
    await put(cluster, FTJ, make_ftj("demo", SMALL_SPEC), running())
    labels = {"finetune.dev/job": "demo"}
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "demo-train", "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "completionMode": "Indexed",
            "completions": 2,
            "parallelism": 2,
            "backoffLimit": 0,
            "template": {"metadata": {"labels": labels}, "spec": restricted_pod_spec()},
        },
    }
    job = await cluster.create(JOB, job)
    pods = await cluster.wait_for(
        lambda: (
            (ps := [p for p in cluster.pods(job) if container_running(p)])
            and len(ps) == 2
            and sorted(ps, key=rank_of)
        ),
        timeout=60,
        message="both pods of the Indexed Job running",
    )
    assert [rank_of(p) for p in pods] == [0, 1]
    rc, out, err = await cli(viewer, "logs", "demo", "--rank", "3", "-n", NAMESPACE)
    assert rc == 2 and "no trainer pod with rank 3 for demo yet (phase Running)" in err

    rank1 = pods[1]
    name = rank1["metadata"]["name"]
    task = asyncio.create_task(cli(viewer, "logs", "demo", "-f", "--rank", "1", "-n", NAMESPACE))
    await cluster.wait_for(
        lambda: task.done() or log_streaming(cluster, name), message=f"the CLI following {name}"
    )
    assert not task.done(), f"the CLI stopped before the trainer wrote: {task.result()}"
    # Lines written while the CLI follows; the trainer then exits, which ends the stream.
    kubelet.order(rank1, {"exit": 0, "log": ["rank 1 says a", "rank 1 says b"]})
    rc, out, err = await task
    assert rc == 0, err
    assert f"pod {name} (rank 1)" in err
    assert out == cluster.pod_log(rank1)
    assert out.endswith("rank 1 says a\nrank 1 says b\n")
    env = json.loads(out.splitlines()[0].removeprefix("stub: env "))
    assert env["JOB_COMPLETION_INDEX"] == "1"  # rank 1's own container
    (request,) = log_calls(cluster, name)
    assert query(request)["follow"] == ["true"] and query(request)["container"] == ["trainer"]


async def test_logs_follow_waits_for_the_pod_and_its_container(
    cluster: Cluster,
    viewer: Path,
    operator_factory: Callable[..., Awaitable[OperatorRunner]],
    kubelet: Kubelet,
) -> None:
    # The pod waits first for a node (its nodeSelector matches none until the test labels
    # one), then for its container, which cannot start until its secret exists
    # (CreateContainerConfigError): meanwhile the API server answers pods/log with 400.
    key, value = "cli-test.finetune.dev/logs", uuid.uuid4().hex[:12]
    resources = {**SMALL_SPEC["resources"], "nodeSelector": {key: value}}
    secrets = [{"env": "HF_TOKEN", "secretRef": {"name": "demo-hf", "key": "token"}}]
    spec = {**SMALL_SPEC, "resources": resources, "secrets": secrets}
    await cluster.create(FTJ, make_ftj("demo", spec))
    task = asyncio.create_task(cli(viewer, "logs", "demo", "-f", "-n", NAMESPACE, timeout=120))
    node = "node-0"
    try:
        await wait_watching(cluster, "pods")
        assert not task.done(), task.result()
        await operator_factory()  # only now: the CLI is waiting when the first pod appears
        job = await cluster.wait_for_object(JOB, NAMESPACE, "demo-train")

        def unschedulable() -> dict[str, Any] | None:
            for pod in cluster.pods(job):
                for c in (pod.get("status") or {}).get("conditions") or []:
                    if c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable":
                        return pod
            return None

        pod = await cluster.wait_for(unschedulable, message="the pod waiting for a node")
        name = pod["metadata"]["name"]
        await asyncio.sleep(2 * screens.LOG_RETRY_SECONDS)  # the CLI's turn at a pod on no node
        assert not task.done(), f"the CLI ended while {name} had no node: {task.result()}"
        cluster.plane.kubectl("label", "node", node, f"{key}={value}")
        await cluster.wait_for(
            lambda: (
                task.done()
                or any(e["responseStatus"]["code"] == 400 for e in log_calls(cluster, name))
            ),
            message=f"the CLI's pods/log answered 400 while {name} starts",
        )
        assert not task.done(), f"the CLI ended while {name} was starting: {task.result()}"
        assert (cluster.get_object(POD, NAMESPACE, name) or {})["spec"]["nodeName"] == node
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "demo-hf", "namespace": NAMESPACE},
            "stringData": {"token": "hf_test"},
        }
        await cluster.create(SECRET, secret)
        lines = ["[start] classification", "[progress] step 10/250"]
        ran = await kubelet.terminate(job, exit_code=0, log=lines)
        assert ran["metadata"]["name"] == name
        rc, out, err = await task
    finally:
        task.cancel()
        cluster.plane.kubectl("label", "node", node, f"{key}-", check=False)
    assert rc == 0, err
    assert "waiting for a trainer pod of demo" in err and f"pod {name}" in err
    assert out == cluster.pod_log(ran) and out.endswith("\n".join(lines) + "\n")
    codes = [e["responseStatus"]["code"] for e in log_calls(cluster, name)]
    assert codes[-1] == 200 and 400 in codes[:-1], codes  # 400 while starting, then the stream
    assert query(log_calls(cluster, name)[-1])["follow"] == ["true"]


# --------------------------------------------------------------------------- errors


async def test_unknown_name(cluster: Cluster, viewer: Path) -> None:
    rc, _out, err = await cli(viewer, "describe", "nope", "-n", NAMESPACE)
    assert rc == 2
    assert "no FineTuneJob or HyperparameterSweep named 'nope' in namespace 'team-a'" in err
    assert "Traceback" not in err


async def test_forbidden_by_rbac(cluster: Cluster, tmp_path: Path) -> None:
    # A user who may read sweeps and pods in team-a, but not FineTuneJobs.
    account = "no-finetunejobs"
    rules = [
        {"apiGroups": ["finetune.dev"], "resources": [cl.SWEEP], "verbs": READ},
        {"apiGroups": [""], "resources": ["pods"], "verbs": READ},
    ]
    apply(cluster.plane.cp, rbac_docs(account, NAMESPACE, rules, cluster_wide=False))
    try:
        kubeconfig = token_kubeconfig(cluster.plane, tmp_path / "kubeconfig", NAMESPACE, account)
        rc, _out, err = await cli(kubeconfig, "get", "-n", NAMESPACE)
    finally:
        cluster.plane.kubectl(
            "delete", "rolebinding,role,serviceaccount", account, "-n", NAMESPACE,
            "--ignore-not-found", check=False,
        )  # fmt: skip
    assert rc == 2, err
    assert "not allowed to list finetunejobs in namespace 'team-a' (403 Forbidden" in err
    assert f'User "system:serviceaccount:{NAMESPACE}:{account}"' in err  # the server's words
    assert "RBAC" in err and "Traceback" not in err
    refused = [
        e
        for e in cluster.audit()
        if e.get("user", {}).get("username") == f"system:serviceaccount:{NAMESPACE}:{account}"
        and (e.get("objectRef") or {}).get("resource") == "finetunejobs"
    ]
    assert refused and all(e["responseStatus"]["code"] == 403 for e in refused)


async def test_no_crds(tmp_path: Path) -> None:
    """A second, bare control plane: kube-apiserver without the finetune.dev CRDs."""
    root = tmp_path / "bare"
    try:
        bare = controlplane.start(root)
        for args in (("get",), ("watch", "demo"), ("describe", "demo")):
            rc, out, err = await cli(bare.kubeconfig, *args)
            assert rc == 2, (args, out, err)
            assert "CRDs are not installed" in err, (args, err)
            assert bare.server in err, (args, err)
    finally:
        controlplane.stop(root)


async def test_no_cluster(control_plane: Plane, tmp_path: Path) -> None:
    token = "no-such-token"
    server = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    kubeconfig = write_kubeconfig(
        tmp_path / "kubeconfig.json", server, control_plane.cp.ca_file, token, "nobody"
    )
    rc, _out, err = await cli(kubeconfig, "get")
    assert rc == 2
    assert f"cannot reach the Kubernetes API server at {server}" in err
    rc, _out, err = await cli(tmp_path / "missing.yaml", "get")
    assert rc == 2 and "no usable Kubernetes credentials" in err
    assert "missing.yaml does not exist" in err and "Config not found" not in err


async def test_namespace_flags_exclude_each_other(viewer: Path) -> None:
    rc, _out, err = await cli(viewer, "get", "-n", NAMESPACE, "-A")
    assert rc == 2 and "exclude each other" in err


async def test_watch_on_a_terminal_renders_the_live_view(
    cluster: Cluster, viewer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put(cluster, FTJ, make_ftj("demo", SMALL_SPEC), running())
    session = await session_for(viewer, monkeypatch, namespace=NAMESPACE)
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
