"""The Job the real operator creates (kopf, over HTTP) runs a hardened trainer pod."""

from __future__ import annotations

import pytest
from operator_harness import FTJ, JOB, NAMESPACE, SMALL_SPEC, Cluster, OperatorRunner, make_ftj

pytestmark = pytest.mark.operator


async def test_created_job_has_the_security_context_read_only_root_and_scratch_mounts(
    cluster: Cluster, operator: OperatorRunner
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
