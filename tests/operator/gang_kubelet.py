"""A test "kubelet" for Indexed Jobs: one pod per completion index, each running the pod
spec's command as a local process, as the nodes of a multi-node run would.

What a real cluster does and what is substituted here (127.0.0.1 is every node):

- the Job controller creates pod i with the annotation and label
  `batch.kubernetes.io/job-completion-index: i` and hostname `<job>-i`; here the pod is
  created with the same label/annotation, and JOB_COMPLETION_INDEX (a fieldRef on that
  annotation in the pod spec) is resolved to i;
- the kubelet expands `$(VAR)` in env values and args from the variables defined before
  them: done here the same way (so `PET_NODE_RANK=$(JOB_COMPLETION_INDEX)` becomes i);
- cluster DNS resolves `<job>-0.<service>` (the headless Service) to pod 0: here
  `PET_MASTER_ADDR` (torchrun's --master-addr) is rewritten to 127.0.0.1 and
  `PET_MASTER_PORT` to a free port, so several test runs can share the machine;
- `python` is this interpreter; the termination message goes to a file per pod and into
  the pod's terminated state; FINETUNE_KUBE_API_URL points the status sink at the emulator.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid
from pathlib import Path
from typing import Any

from operator_harness import JOB, POD, Cluster, free_port, now_iso

INDEX_KEY = "batch.kubernetes.io/job-completion-index"
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command/args (unknown references stay as written)."""
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), value)


def pod_command(container: dict[str, Any], env: dict[str, str]) -> list[str]:
    """The container's command + args as the kubelet would run them."""
    out = [expand(arg, env) for arg in [*container["command"], *(container.get("args") or [])]]
    return [sys.executable if arg == "python" else arg for arg in out]


def pod_env(
    container: dict[str, Any], index: int, port: int, extra: dict[str, str]
) -> dict[str, str]:
    """The container env as the kubelet builds it (rendezvous rewritten to 127.0.0.1:port)."""
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
        elif INDEX_KEY in str(item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")):
            env[item["name"]] = str(index)  # the downward API on the index annotation
    if "PET_MASTER_ADDR" in env:
        env |= {"PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}
    return {**os.environ, **env, **extra}


async def create_index_pod(cluster: Cluster, job: dict[str, Any], index: int) -> str:
    meta = job["metadata"]
    labels = dict(job["spec"]["template"]["metadata"].get("labels") or {})
    labels |= {"batch.kubernetes.io/job-name": meta["name"], INDEX_KEY: str(index)}
    if meta.get("uid"):
        labels["batch.kubernetes.io/controller-uid"] = meta["uid"]
    name = f"{meta['name']}-{index}-{uuid.uuid4().hex[:5]}"
    cs = {"name": "trainer", "ready": True, "restartCount": 0}
    cs["state"] = {"running": {"startedAt": now_iso()}}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "uid": str(uuid.uuid4()),
            "labels": labels,
            "annotations": {INDEX_KEY: str(index)},
            "creationTimestamp": f"{now_iso()[:-1]}.{index:03d}Z",
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": meta["name"],
                    "uid": meta.get("uid"),
                }
            ],
        },
        "spec": {**job["spec"]["template"]["spec"], "hostname": f"{meta['name']}-{index}"},
        "status": {"phase": "Running", "containerStatuses": [cs]},
    }
    await cluster.create(POD, pod)
    return name


async def _run(
    command: list[str], env: dict[str, str], cwd: Path, timeout: float
) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *command,
        cwd=str(cwd),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
    return (proc.returncode if proc.returncode is not None else -9), out.decode(errors="replace")


async def run_indexed_job(
    cluster: Cluster,
    job: dict[str, Any],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 300,
) -> list[tuple[int, str]]:
    """Start every index's pod and trainer process at once; report exits into Pod/Job status.

    Returns (exit code, output) per index. Success needs every index to exit 0 (the Job's
    completions); any non-zero exit fails the Job as the podFailurePolicy FailJob would.
    """
    ns, jname = job["metadata"]["namespace"], job["metadata"]["name"]
    nodes = int(job["spec"].get("completions") or 1)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    port = free_port()
    names, runs = [], []
    for index in range(nodes):
        names.append(await create_index_pod(cluster, job, index))
        log = cwd / f"termination-{jname}-{index}.log"
        extra = {"FINETUNE_TERMINATION_LOG": str(log), "FINETUNE_KUBE_API_URL": cluster.url}
        penv = pod_env(container, index, port, extra | (env or {}))
        runs.append(_run(pod_command(container, penv), penv, cwd, timeout))
    await _status(cluster, job, {"active": nodes, "ready": nodes, "startTime": now_iso()})
    results = await asyncio.gather(*runs)
    for index, (name, (code, output)) in enumerate(zip(names, results, strict=True)):
        log = cwd / f"termination-{jname}-{index}.log"
        message = log.read_text()[:4096] if log.exists() else ""
        if not message and code != 0:
            message = "\n".join(output.splitlines()[-20:])[-4096:]  # FallbackToLogsOnError
        term = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
        term |= {"finishedAt": now_iso(), "message": message}
        cs = {"name": "trainer", "ready": False, "restartCount": 0, "state": {"terminated": term}}
        phase = "Succeeded" if code == 0 else "Failed"
        await cluster.patch(
            POD, ns, name, {"status": {"phase": phase, "containerStatuses": [cs]}}, status=True
        )
    await _finish(cluster, job, [code for code, _ in results])
    return list(results)


async def _status(cluster: Cluster, job: dict[str, Any], status: dict[str, Any]) -> None:
    meta = job["metadata"]
    await cluster.patch(JOB, meta["namespace"], meta["name"], {"status": status}, status=True)


async def _finish(cluster: Cluster, job: dict[str, Any], codes: list[int]) -> None:
    t = now_iso()
    if all(code == 0 for code in codes):
        done = [{"type": "Complete", "status": "True", "lastTransitionTime": t}]
        status = {"active": 0, "ready": 0, "succeeded": len(codes), "completionTime": t}
        await _status(cluster, job, status | {"conditions": done})
        return
    failed = {"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}
    failed |= {"message": "Container trainer exited with a non-zero code", "lastTransitionTime": t}
    status = {"active": 0, "ready": 0, "failed": sum(1 for c in codes if c != 0)}
    await _status(cluster, job, status | {"conditions": [failed]})
