"""Multi-node FineTuneJobs through the real operator on the real control plane.

A 2-node FineTuneJob with 4 GPUs per node gets an Indexed Job (suspended for Kueue), the
headless Service its pods are named by, torchrun with the rendezvous on pod 0 and the
node rank from the completion index, and a status that counts ready workers. The Job
controller makes one pod per index (hostname `<job>-<i>`, the index annotation), the
scheduler binds them, and the node agent runs them with `$(VAR)` expansion, the index
fieldRef and an /etc/hosts that resolves `<job>-<i>.<service>` (there is no cluster DNS).
The e2e test runs the real trainer in both pods: a 2-node torchrun/gloo run that
rendezvouses on pod 0 by that name and reports through rank 0 only.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from operator_harness import (
    FTJ,
    JOB,
    NAMESPACE,
    SERVICE,
    TRAINER_IMAGE,
    ApiError,
    Cluster,
    Kubelet,
    make_ftj,
    report_message,
)

from support.tiny_models import sentiment_rows, tiny_bert, write_rows

pytestmark = pytest.mark.operator

PV = ("", "v1", "persistentvolumes")
PVC = ("", "v1", "persistentvolumeclaims")
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
GANG_SPEC: dict[str, Any] = {
    "task": "classification",
    "model": {"path": "/models/minilm"},
    "dataset": {"train": {"path": "/data/train.tsv"}},
    "resources": {"gpus": 4, "nodes": 2, "cpu": "16", "memory": "64Gi"},
    "volumes": [{"claimName": "models", "mountPath": "/models"}],
}
# The trainer pods' environment as an air-gapped cluster sets it (chart: trainer.env).
OFFLINE = (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"))


@contextlib.asynccontextmanager
async def bound_claim(
    cluster: Cluster, name: str, namespace: str = NAMESPACE, size: str = "1Gi"
) -> AsyncIterator[Path]:
    """A PersistentVolumeClaim bound to its own PersistentVolume; yields the folder the
    node agent mounts for the claim (`<state-dir>/pvc/<namespace>/<claim>`).

    The scheduler only places a pod whose claims are bound (spec.volumeName plus the
    bind-completed annotation) to a PV it knows. This plane runs no PV controller and no
    provisioner, so the test binds the pair itself as they would, and, without the
    pvc-protection and pv-protection controllers, removes their finalizers when done."""
    folder = cluster.plane.cp.dir / "node" / "pvc" / namespace / name
    folder.mkdir(parents=True, exist_ok=True)
    pv_name = f"{namespace}-{name}"
    modes = ["ReadWriteMany"]
    await cluster.create(
        PV,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": modes,
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": str(folder), "type": "Directory"},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                             "namespace": namespace, "name": name},
            },
        },
    )  # fmt: skip
    try:
        claim = await cluster.create(
            PVC,
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "annotations": {
                        "pv.kubernetes.io/bind-completed": "yes",
                        "pv.kubernetes.io/bound-by-controller": "yes",
                    },
                },
                "spec": {
                    "accessModes": modes,
                    "resources": {"requests": {"storage": size}},
                    "storageClassName": "",
                    "volumeName": pv_name,
                },
            },
        )
        ref = {"claimRef": {"uid": claim["metadata"]["uid"]}}
        await cluster.patch(PV, None, pv_name, {"spec": ref})
        await cluster.patch(PV, None, pv_name, {"status": {"phase": "Bound"}}, status=True)
        bound = {"phase": "Bound", "accessModes": modes, "capacity": {"storage": size}}
        await cluster.patch(PVC, namespace, name, {"status": bound}, status=True)
        yield folder
    finally:
        for res, ns, obj in ((PVC, namespace, name), (PV, None, pv_name)):
            with contextlib.suppress(ApiError):
                await cluster.patch(res, ns, obj, {"metadata": {"finalizers": None}})
                await cluster.delete(res, ns, obj)
        shutil.rmtree(folder, ignore_errors=True)


def share(folder: Path) -> Path:
    """Make what root wrote there readable by the pods' uid 10001 (safetensors writes its
    files 0600); the hostPath PV gets no fsGroup ownership change from the kubelet."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
    return folder


def by_index(cluster: Cluster, job: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The Job's pods by completion index (the Job controller's annotation)."""
    return {int(p["metadata"]["annotations"][INDEX_KEY]): p for p in cluster.pods(job)}


def running(pod: dict[str, Any]) -> bool:
    return any("running" in (cs.get("state") or {}) for cs in pod["status"].get("containerStatuses") or [])  # fmt: skip


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    for cs in pod["status"].get("containerStatuses") or []:
        if "terminated" in (cs.get("state") or {}):
            return dict(cs["state"]["terminated"])
    return {}


def stub_env(cluster: Cluster, pod: dict[str, Any]) -> dict[str, str]:
    """The variables the stub trainer printed (`stub: env {...}`), from the pod's log."""
    for line in cluster.pod_log(pod).splitlines():
        if line.startswith("stub: env "):
            return dict(json.loads(line.removeprefix("stub: env ")))
    return {}


def workers(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict(cluster.status(FTJ, NAMESPACE, name).get("workers") or {})


async def test_two_nodes_of_four_gpus_get_an_indexed_job_service_and_rendezvous(
    cluster: Cluster, operator: Any, kubelet: Kubelet
) -> None:
    async with bound_claim(cluster, "models"):
        created = await cluster.create(
            FTJ, make_ftj("gang", GANG_SPEC, labels={"kueue.x-k8s.io/queue-name": "gpu"})
        )
        job = await cluster.wait_for_object(JOB, NAMESPACE, "gang-train")
        service = await cluster.wait_for_object(SERVICE, NAMESPACE, "gang-train")
        uid = created["metadata"]["uid"]

        spec = job["spec"]
        assert spec["completionMode"] == "Indexed"
        assert spec["completions"] == spec["parallelism"] == 2
        assert spec["suspend"] is True, "created suspended: Kueue admits the whole gang"
        assert [r["action"] for r in spec["podFailurePolicy"]["rules"]] == ["Ignore", "FailJob"]
        pod = spec["template"]["spec"]
        assert pod["subdomain"] == service["metadata"]["name"]
        (container,) = pod["containers"]
        command = ["python", "-m", "finetune_trainer.torchrun", "-m", "finetune_trainer"]
        assert container["command"] == command
        env = {e["name"]: e for e in container["env"]}
        # torchrun's flags in their environment form (PET_<FLAG>): the rendezvous on pod 0.
        rendezvous = {k: v.get("value") for k, v in env.items() if k.startswith("PET_")}
        assert rendezvous == {
            "PET_NNODES": "2",
            "PET_NPROC_PER_NODE": "4",
            "PET_MAX_RESTARTS": "0",
            "PET_NODE_RANK": "$(JOB_COMPLETION_INDEX)",
            "PET_MASTER_ADDR": "gang-train-0.gang-train",
            "PET_MASTER_PORT": "29500",
            "PET_RDZV_CONF": "timeout=1800",
        }
        field = env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert field == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"

        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["publishNotReadyAddresses"] is True
        template_labels = spec["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= template_labels.items()
        (owner,) = service["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("FineTuneJob", "gang", uid)
        assert cluster.pods(job) == [], "suspended: the Job controller makes no pod"

        # Kueue admits: the Job controller makes pod 0 and pod 1, the scheduler binds them.
        await cluster.patch(JOB, NAMESPACE, "gang-train", {"spec": {"suspend": False}})
        pods = await cluster.wait_for(
            lambda: (
                (p := by_index(cluster, job)).keys() == {0, 1}
                and all(map(running, p.values()))
                and p
            ),
            60,
            "both pods of the gang running",
        )
        for index, p in pods.items():
            assert p["spec"]["hostname"] == f"gang-train-{index}"
            assert p["spec"]["subdomain"] == "gang-train"
            assert p["spec"]["nodeName"] in ("node-0", "node-1")
            # As the pod saw them: the index fieldRef, PET_NODE_RANK expanded from it.
            seen = await cluster.wait_for(lambda p=p: stub_env(cluster, p), 10, "stub env")
            assert seen["JOB_COMPLETION_INDEX"] == str(index)
            assert seen["PET_NODE_RANK"] == str(index)
            assert seen["PET_MASTER_ADDR"] == "gang-train-0.gang-train"

        # Workers: the Job's ready pods of spec.resources.nodes (the Job controller counts).
        status = await cluster.wait_for(
            lambda: (
                (s := cluster.status(FTJ, NAMESPACE, "gang")).get("workers", {}).get("ready") == 2
                and s
            ),
            30,
            "2 ready workers",
        )
        assert status["workers"] == {"ready": 2, "total": 2}
        assert status["phase"] == "Running"
        # One index done is not success: pod 1 exits 0, pod 0 still runs.
        kubelet.order(pods[1], {"exit": 0})
        await kubelet.wait_terminated(pods[1])
        await cluster.wait_for(
            lambda: (cluster.status(JOB, NAMESPACE, "gang-train").get("succeeded") or 0) == 1,
            30,
            "the Job controller counting index 1 succeeded",
        )
        await cluster.wait_for(lambda: workers(cluster, "gang").get("ready") == 1, 30, "1 ready")
        assert workers(cluster, "gang") == {"ready": 1, "total": 2}
        assert cluster.status(FTJ, NAMESPACE, "gang")["phase"] == "Running"
        # Pod 0 reports: every index done completes the Indexed Job.
        report = report_message("Succeeded", {"accuracy": 0.7})
        kubelet.order(pods[0], {"exit": 0, "message": report})
        await kubelet.wait_job_condition(job, "Complete")
        status = await cluster.wait_phase(NAMESPACE, "gang", "Succeeded")
        assert status["metrics"] == {"accuracy": 0.7}

        # The FineTuneJob owns both: the garbage collector deletes the Job and the Service
        # (it learns the CRD's kind at its 30 s discovery resync after the plane started).
        await cluster.delete(FTJ, NAMESPACE, "gang")
        await cluster.wait_gone(SERVICE, NAMESPACE, "gang-train", timeout=90)
        await cluster.wait_gone(JOB, NAMESPACE, "gang-train", timeout=90)


async def test_one_node_makes_no_service(cluster: Cluster, operator: Any) -> None:
    spec = GANG_SPEC | {"resources": {"gpus": 1}}
    await cluster.create(FTJ, make_ftj("solo", spec))
    job = await cluster.wait_for_object(JOB, NAMESPACE, "solo-train")
    # The operator sets no completion mode; the apiserver defaults it to NonIndexed.
    assert job["spec"]["completionMode"] == "NonIndexed"
    assert "subdomain" not in job["spec"]["template"]["spec"]
    await cluster.wait_for(lambda: cluster.status(FTJ, NAMESPACE, "solo").get("phase"))
    assert cluster.objects(SERVICE, NAMESPACE) == []
    assert "workers" not in cluster.status(FTJ, NAMESPACE, "solo")


@pytest.mark.slow
async def test_both_pods_run_torchrun_with_the_rendezvous_through_their_hostnames(
    cluster: Cluster, operator_factory: Any
) -> None:
    from finetune_operator.config import OperatorConfig

    spec = {
        "task": "classification",
        "model": {"path": "/data/bert"},
        "dataset": {"train": {"path": "/data/train.csv"}, "eval": {"path": "/data/dev.csv"}},
        "hyperparameters": {
            "learningRate": 0.005,
            "epochs": 1,
            "batchSize": 4,
            "maxLength": 32,
            "maxSteps": 6,
            "evalSteps": 3,
            "loggingSteps": 2,
        },
        "output": {"path": "/output", "pvc": "duo-output"},
        "resources": {"gpus": 0, "nodes": 2, "cpu": "1", "memory": "4Gi"},
        "volumes": [{"claimName": "duo-data", "mountPath": "/data", "readOnly": True}],
    }
    async with bound_claim(cluster, "duo-data") as data, bound_claim(cluster, "duo-output") as out:
        tiny_bert(data / "bert")
        write_rows(data / "train.csv", sentiment_rows(64, seed=1))
        write_rows(data / "dev.csv", sentiment_rows(16, seed=2))
        share(data)
        config = OperatorConfig(
            trainer_image=TRAINER_IMAGE, status_interval_seconds=1, extra_env=OFFLINE
        )
        await operator_factory(config=config)
        await cluster.create(FTJ, make_ftj("duo", spec))
        job = await cluster.wait_for_object(JOB, NAMESPACE, "duo-train")
        await cluster.wait_for_object(SERVICE, NAMESPACE, "duo-train")

        def ended() -> dict[int, dict[str, Any]] | None:
            pods = by_index(cluster, job)
            if any(terminated(p).get("exitCode", 0) != 0 for p in pods.values()):
                return pods  # a failed index fails the Job at once (podFailurePolicy)
            done = pods.keys() == {0, 1} and all(terminated(p) for p in pods.values())
            return pods if done else None

        pods = await cluster.wait_for(ended, 400, "both trainer pods to exit")
        logs = {i: cluster.pod_log(p) for i, p in pods.items()}
        for i, p in pods.items():
            assert terminated(p)["exitCode"] == 0, (i, terminated(p), logs[i][-4000:])
        assert pods[0]["spec"]["hostname"] == "duo-train-0"
        assert pods[1]["spec"]["hostname"] == "duo-train-1"
        assert "[start]" in logs[0] and "[start]" not in logs[1], "only rank 0 reports"
        assert "2 workers" in logs[0]

        status = await cluster.wait_phase(NAMESPACE, "duo", "Succeeded", timeout=30)
        assert status["metrics"]["worldSize"] == 2
        assert status["progress"]["step"] == 6
        assert status["history"], "rank 0's status sink patched the history"
        # Only index 0 wrote a termination message (the one the operator reads).
        assert "message" not in terminated(pods[1])
        report = json.loads(terminated(pods[0])["message"])
        assert report["phase"] == "Succeeded" and report["metrics"]["worldSize"] == 2
        assert (out / "model" / "model.safetensors").is_file()
        # Rank 0's live patches reached the status subresource as the trainer's
        # ServiceAccount, through the in-cluster config (the real RBAC authorizer).
        trainer = f"system:serviceaccount:{NAMESPACE}:finetune-trainer"
        assert any(
            e.get("verb") == "patch"
            and e.get("user", {}).get("username") == trainer
            and (e.get("objectRef") or {}).get("subresource") == "status"
            and (e.get("objectRef") or {}).get("name") == "duo"
            and e.get("responseStatus", {}).get("code") == 200
            for e in cluster.audit()
        )


async def test_one_failed_rank_fails_the_gang_by_the_pod_failure_policy(
    cluster: Cluster, operator: Any, kubelet: Kubelet
) -> None:
    """podFailurePolicy FailJob, as the real Job controller applies it: one rank exiting
    non-zero fails the whole Job at once (no retry within backoffLimit), the other rank's
    pod is stopped, and the FineTuneJob fails with the trainer's own message."""
    async with bound_claim(cluster, "models"):
        await cluster.create(FTJ, make_ftj("split", GANG_SPEC))
        job = await cluster.wait_for_object(JOB, NAMESPACE, "split-train")
        assert job["spec"]["suspend"] is False  # no Kueue label: runs at once
        pods = await cluster.wait_for(
            lambda: (
                (p := by_index(cluster, job)).keys() == {0, 1}
                and all(map(running, p.values()))
                and p
            ),
            60,
            "both pods of the gang running",
        )
        message = report_message("Failed", message="rank 1: CUDA error: an illegal memory access")
        kubelet.order(pods[1], {"exit": 1, "message": message})
        failed = await kubelet.wait_job_condition(job, "Failed", timeout=60)
        assert failed["reason"] == "PodFailurePolicy"
        # The Job controller stops the surviving rank; no replacement pod is made.
        await cluster.wait_for(
            lambda: (
                all(
                    terminated(p) or p["metadata"].get("deletionTimestamp")
                    for p in cluster.pods(job)
                )
                or not cluster.pods(job)
            ),
            60,
            "rank 0 stopped",
        )
        assert len({p["metadata"]["annotations"][INDEX_KEY] for p in cluster.pods(job)}) <= 2
        assert (cluster.status(JOB, NAMESPACE, "split-train").get("failed") or 0) >= 1
        status = await cluster.wait_phase(NAMESPACE, "split", "Failed", timeout=60)
        assert "illegal memory access" in status["message"]


async def test_an_evicted_rank_restarts_the_whole_gang_in_a_new_job(
    cluster: Cluster, operator: Any, kubelet: Kubelet
) -> None:
    """Eviction of one rank (the Eviction API): its pod is replaced without a counted
    failure (podFailurePolicy Ignore on DisruptionTarget); the surviving rank then fails
    its collective (here: ordered to exit 1, as gloo's broken connection does), which
    fails the Job by FailJob; the operator re-creates the gang as a whole (a new Job, both
    pods, Warning Event GangRestart) and the run finishes."""
    async with bound_claim(cluster, "models"):
        await cluster.create(FTJ, make_ftj("drain", GANG_SPEC))
        job = await cluster.wait_for_object(JOB, NAMESPACE, "drain-train")

        def both_running(j: dict[str, Any]) -> dict[int, dict[str, Any]] | None:
            pods = by_index(cluster, j)
            fresh = {i: p for i, p in pods.items() if p["metadata"]["uid"] not in kubelet.ordered}
            return fresh if fresh.keys() == {0, 1} and all(map(running, fresh.values())) else None

        pods = await cluster.wait_for(lambda: both_running(job), 60, "both pods running")
        evicted = pods[1]["metadata"]["name"]
        eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": evicted}}
        await cluster.request(
            "POST", f"/api/v1/namespaces/{NAMESPACE}/pods/{evicted}/eviction", eviction
        )
        kubelet.ordered.add(pods[1]["metadata"]["uid"])
        await cluster.wait_for(
            lambda: cluster.get_object(("", "v1", "pods"), NAMESPACE, evicted) is None,
            60,
            "the evicted pod gone",
        )
        kubelet.order(
            pods[0],
            {
                "exit": 1,
                "message": report_message("Failed", message="gloo: Connection closed by peer"),
            },
        )

        def new_job() -> dict[str, Any] | None:
            fresh = cluster.get_object(JOB, NAMESPACE, "drain-train")
            return fresh if fresh and fresh["metadata"]["uid"] != job["metadata"]["uid"] else None

        second = await cluster.wait_for(new_job, 90, "the gang re-created in a new Job")
        restarts = await cluster.wait_for(
            lambda: [e for e in cluster.events(NAMESPACE, "drain") if e["reason"] == "GangRestart"],
            30,
            "the GangRestart Event",
        )
        assert (
            restarts
            and f"pod {evicted} was disrupted (EvictionByEvictionAPI)" in restarts[0]["message"]
        )
        pods = await cluster.wait_for(lambda: both_running(second), 60, "the new gang running")
        report = report_message("Succeeded", {"accuracy": 0.9})
        kubelet.order(pods[1], {"exit": 0})
        kubelet.order(pods[0], {"exit": 0, "message": report})
        await cluster.wait_phase(NAMESPACE, "drain", "Succeeded", timeout=60)


async def test_a_disruption_persisted_on_the_job_restarts_the_gang_after_an_operator_restart(
    cluster: Cluster, operator: Any, kubelet: Kubelet
) -> None:
    """The operator writes what disrupted a rank onto the Job (annotation
    finetune.dev/disrupted) when it sees DisruptionTarget. Stopped right after, it misses
    the evicted pod's deletion and the gang's failure; a new operator process, with no
    memory of the eviction, still restarts the gang from the annotation."""
    async with bound_claim(cluster, "models"):
        await cluster.create(FTJ, make_ftj("drain2", GANG_SPEC))
        job = await cluster.wait_for_object(JOB, NAMESPACE, "drain2-train")
        pods = await cluster.wait_for(
            lambda: (
                (p := by_index(cluster, job)).keys() == {0, 1}
                and all(map(running, p.values()))
                and p
            ),
            60,
            "both pods running",
        )
        evicted = pods[1]["metadata"]["name"]
        eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": evicted}}
        await cluster.request(
            "POST", f"/api/v1/namespaces/{NAMESPACE}/pods/{evicted}/eviction", eviction
        )
        kubelet.ordered.add(pods[1]["metadata"]["uid"])

        def noted() -> str | None:
            fresh = cluster.get_object(JOB, NAMESPACE, "drain2-train") or {}
            return (fresh.get("metadata", {}).get("annotations") or {}).get(
                "finetune.dev/disrupted"
            )

        why = await cluster.wait_for(noted, 30, "the disruption persisted on the Job")
        assert why == f"pod {evicted} was disrupted (EvictionByEvictionAPI)"
        await operator.stop()  # its in-memory caches go with it

        await cluster.wait_for(
            lambda: cluster.get_object(("", "v1", "pods"), NAMESPACE, evicted) is None,
            60,
            "the evicted pod gone",
        )
        gloo = report_message("Failed", message="gloo: Connection closed by peer")
        kubelet.order(pods[0], {"exit": 1, "message": gloo})
        await kubelet.wait_job_condition(job, "Failed", timeout=60)
        assert not [e for e in cluster.events(NAMESPACE, "drain2") if e["reason"] == "GangRestart"]

        await operator.start()  # a new process: nothing in memory about the eviction

        def new_job() -> dict[str, Any] | None:
            fresh = cluster.get_object(JOB, NAMESPACE, "drain2-train")
            return fresh if fresh and fresh["metadata"]["uid"] != job["metadata"]["uid"] else None

        second = await cluster.wait_for(new_job, 90, "the gang re-created in a new Job")
        assert "finetune.dev/disrupted" not in (second["metadata"].get("annotations") or {})
        restarts = await cluster.wait_for(
            lambda: [
                e for e in cluster.events(NAMESPACE, "drain2") if e["reason"] == "GangRestart"
            ],
            30,
            "the GangRestart Event",
        )
        assert f"pod {evicted} was disrupted (EvictionByEvictionAPI)" in restarts[0]["message"]
        pods = await cluster.wait_for(
            lambda: (
                (p := by_index(cluster, second)).keys() == {0, 1}
                and all(map(running, p.values()))
                and p
            ),
            60,
            "the new gang running",
        )
        kubelet.order(pods[1], {"exit": 0})
        kubelet.order(
            pods[0], {"exit": 0, "message": report_message("Succeeded", {"accuracy": 0.9})}
        )
        await cluster.wait_phase(NAMESPACE, "drain2", "Succeeded", timeout=60)
