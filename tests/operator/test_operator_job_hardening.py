"""The Job the real operator creates (kopf, as the chart's ServiceAccount) runs a hardened
trainer pod: the Job controller's pods pass the test namespaces' PodSecurity `restricted`
admission, and the node agent runs them with the scratch environment the Job sets."""

from __future__ import annotations

import json

import pytest
from operator_harness import (
    FTJ,
    JOB,
    NAMESPACE,
    SMALL_SPEC,
    Cluster,
    Kubelet,
    OperatorRunner,
    make_ftj,
)

pytestmark = pytest.mark.operator


def stub_env(log: str) -> dict[str, str]:
    """The environment the stub trainer printed (`stub: env {json}`) when it started."""
    for line in log.splitlines():
        if line.startswith("stub: env "):
            return dict(json.loads(line.removeprefix("stub: env ")))
    raise AssertionError(f"no env line in the pod's log:\n{log}")


def failed_creates(cluster: Cluster, job: str) -> list[str]:
    return [e["message"] for e in cluster.events(NAMESPACE, job) if e["reason"] == "FailedCreate"]


async def test_created_job_has_the_security_context_read_only_root_and_scratch_mounts(
    cluster: Cluster, operator: OperatorRunner, kubelet: Kubelet
) -> None:
    spec = {**SMALL_SPEC, "output": {"path": "/results", "pvc": "fresh-pvc"}}
    await cluster.create(FTJ, make_ftj("hard", spec))
    job = await cluster.wait_for_object(JOB, NAMESPACE, "hard-train")
    pod = job["spec"]["template"]["spec"]
    # fsGroup: the freshly provisioned, root-owned PVC is writable for uid 10001.
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    assert mounts["/tmp"]["emptyDir"]["sizeLimit"]
    assert mounts["/cache/huggingface"]["emptyDir"]["sizeLimit"]
    assert mounts["/results"]["persistentVolumeClaim"] == {"claimName": "fresh-pvc"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HOME"] == env["TMPDIR"] == "/tmp"
    assert env["HF_HOME"] == "/cache/huggingface"

    # PodSecurity `restricted` (enforced in team-a) admits the Job controller's pod. Its
    # claim is never bound here (no volume provisioner), so it is not scheduled.
    (created,) = await cluster.wait_for(lambda: cluster.pods(job), 30, "a pod of hard-train")
    assert created["spec"]["securityContext"] == pod["securityContext"]
    assert not failed_creates(cluster, "hard-train")

    # Without a claim the pod runs: the node agent starts the (stub) trainer with the
    # Job's scratch environment, as the process sees it.
    await cluster.create(FTJ, make_ftj("hard-run", SMALL_SPEC))
    run = await cluster.wait_for_object(JOB, NAMESPACE, "hard-run-train")
    running = await kubelet.run_pod(run)
    assert not failed_creates(cluster, "hard-run-train")
    seen = await cluster.wait_for(
        lambda: "stub: env " in cluster.pod_log(running) and stub_env(cluster.pod_log(running)),
        30,
        "the stub's env line",
    )
    assert seen["HOME"] == seen["TMPDIR"] == "/tmp"
    assert seen["HF_HOME"] == "/cache/huggingface"
    (cs,) = running["status"]["containerStatuses"]
    assert "running" in cs["state"]
