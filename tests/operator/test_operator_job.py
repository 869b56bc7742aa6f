"""The real operator (kopf, in-process, as the chart's ServiceAccount) against the real
control plane: the Job controller makes the pods, the node agent runs them."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest
from operator_harness import (
    FTJ,
    JOB,
    NAMESPACE,
    POD,
    SMALL_SPEC,
    STUB_IMAGE,
    ApiError,
    Cluster,
    Kubelet,
    OperatorRunner,
    make_ftj,
    parse_metrics,
    sample,
)

pytestmark = pytest.mark.operator


def spec(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(SMALL_SPEC)
    out.update(changes)
    return out


def job_creates(cluster: Cluster) -> int:
    return cluster.count_creates(JOB)


def reasons(cluster: Cluster, name: str) -> list[str]:
    return [e["reason"] for e in cluster.events(NAMESPACE, name)]


async def test_apply_creates_job_with_the_right_fields(
    cluster: Cluster, operator: OperatorRunner
) -> None:
    full = spec(
        resources={
            "gpus": 2,
            "cpu": "8",
            "memory": "32Gi",
            "nodeSelector": {"nvidia.com/gpu.product": "A100"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
        secrets=[{"env": "HF_TOKEN", "secretRef": {"name": "hf", "key": "token"}}],
        output={"path": "/models/out", "pvc": "results"},
        backoffLimit=1,
        activeDeadlineSeconds=3600,
    )
    ftj = make_ftj("demo", full, labels={"kueue.x-k8s.io/queue-name": "gpu-queue"})
    ftj = await cluster.create(FTJ, ftj)  # uid and generation are the apiserver's
    job = await cluster.wait_for_object(JOB, NAMESPACE, "demo-train")

    meta = job["metadata"]
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "name": "demo",
            "uid": ftj["metadata"]["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "finetune-operator"
    js = job["spec"]
    assert js["suspend"] is True  # Kueue admits it by unsuspending
    assert js["backoffLimit"] == 1 and js["activeDeadlineSeconds"] == 3600
    pod = js["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "A100"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["serviceAccountName"] == "finetune-trainer"
    assert {"name": "output", "persistentVolumeClaim": {"claimName": "results"}} in pod["volumes"]
    (c,) = pod["containers"]
    assert c["image"] == STUB_IMAGE
    # 2 GPUs: one trainer process per GPU under torchrun standalone (docs/distributed.md).
    assert c["command"] == ["python", "-m", "finetune_trainer.torchrun", "-m", "finetune_trainer"]
    torchrun = {e["name"]: e["value"] for e in c["env"] if e["name"].startswith("PET_")}
    assert torchrun["PET_STANDALONE"] == "1" and torchrun["PET_NPROC_PER_NODE"] == "2"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    env = {e["name"]: e for e in c["env"]}
    assert env["FINETUNE_STATUS_SINK"]["value"] == "kubernetes"
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}},
    }
    payload = json.loads(env["FINETUNE_JOB"]["value"])
    assert payload["metadata"] == {
        "name": "demo",
        "namespace": NAMESPACE,
        "uid": ftj["metadata"]["uid"],
    }
    assert payload["spec"]["hyperparameters"]["learningRate"] == 5e-5  # defaulted by the models

    status = await cluster.wait_phase(NAMESPACE, "demo", "Pending")
    assert status["jobName"] == "demo-train"
    assert status["observedGeneration"] == 1
    assert cluster.condition(NAMESPACE, "demo", "Ready")["reason"] == "Queued"
    await cluster.wait_for(lambda: "JobCreated" in reasons(cluster, "demo"))

    text = await operator.metrics()
    assert (
        sample(text, "finetune_job_phase", namespace=NAMESPACE, name="demo", phase="Pending") == 1
    )
    assert (
        sample(text, "finetune_job_phase", namespace=NAMESPACE, name="demo", phase="Running") == 0
    )
    assert any(k[0] == "finetune_reconcile_seconds_count" for k in parse_metrics(text))
    code, _ = await operator.get(operator.health_port, "/healthz")
    assert code == 200
    assert job_creates(cluster) == 1


async def test_running_then_succeeded(
    cluster: Cluster, operator: OperatorRunner, kubelet: Kubelet
) -> None:
    await cluster.create(FTJ, make_ftj("ok", SMALL_SPEC))
    job = await cluster.wait_for_object(JOB, NAMESPACE, "ok-train")
    assert job["spec"]["suspend"] is False
    # Pending lasts as long as the pod takes to start: milliseconds on the node agent.
    await cluster.wait_for(lambda: cluster.condition(NAMESPACE, "ok", "Failed"))
    failed_ltt = cluster.condition(NAMESPACE, "ok", "Failed")["lastTransitionTime"]

    await kubelet.run_pod(job)
    await cluster.wait_phase(NAMESPACE, "ok", "Running")
    # The trainer's own sink patches live progress/metrics; the operator republishes them.
    await cluster.patch(
        FTJ,
        NAMESPACE,
        "ok",
        {
            "status": {
                "progress": {"epoch": 1, "step": 5, "totalSteps": 10},
                "metrics": {"trainLoss": 0.5},
            }
        },
        status=True,
    )
    text = await _wait_metric(operator, "ok", "trainLoss")  # live metrics are republished
    assert sample(text, "finetune_job_progress_ratio", namespace=NAMESPACE, name="ok") == 0.5
    await kubelet.succeed(job, metrics={"accuracy": 0.91, "evalLoss": 0.3, "trainLoss": 0.49})
    status = await cluster.wait_phase(NAMESPACE, "ok", "Succeeded")

    # Live metric kept, missing ones filled in from the termination message.
    assert status["metrics"] == {"trainLoss": 0.5, "accuracy": 0.91, "evalLoss": 0.3}
    assert status["artifacts"] == {"model": "/output/model"}
    assert status["completionTime"] and status["startTime"]
    ready = cluster.condition(NAMESPACE, "ok", "Ready")
    assert ready["status"] == "True" and ready["reason"] == "Succeeded"
    assert cluster.condition(NAMESPACE, "ok", "Succeeded")["status"] == "True"
    # Failed never flipped, so its lastTransitionTime never moved.
    assert cluster.condition(NAMESPACE, "ok", "Failed")["lastTransitionTime"] == failed_ltt
    await cluster.wait_for(
        lambda: {"JobCreated", "Running", "Succeeded"} <= set(reasons(cluster, "ok"))
    )

    text = await operator.metrics()
    assert (
        sample(text, "finetune_job_phase", namespace=NAMESPACE, name="ok", phase="Succeeded") == 1
    )
    assert (
        sample(text, "finetune_job_metric", namespace=NAMESPACE, name="ok", metric="accuracy")
        == 0.91
    )
    assert sample(text, "finetune_job_progress_ratio", namespace=NAMESPACE, name="ok") == 0.5

    # The finished Job is cleaned up (TTL controller, kubectl): the result stays, no rerun.
    await cluster.delete(JOB, NAMESPACE, "ok-train")
    await cluster.patch(FTJ, NAMESPACE, "ok", {"metadata": {"annotations": {"touched": "1"}}})
    await asyncio.sleep(1.0)
    assert cluster.get_object(JOB, NAMESPACE, "ok-train") is None
    assert cluster.status(FTJ, NAMESPACE, "ok")["phase"] == "Succeeded"
    assert job_creates(cluster) == 1


async def test_failures_reach_status_message(
    cluster: Cluster, operator: OperatorRunner, kubelet: Kubelet
) -> None:
    # batchSize 1: nothing to halve, so no out-of-memory retry (test_operator_oom.py).
    # backoffLimit 0: the Job controller fails the Job at the first failed pod.
    small = {"gpus": 1, "cpu": "1", "memory": "256Mi"}
    oom_spec = spec(hyperparameters={"batchSize": 1}, resources=small, backoffLimit=0)
    await cluster.create(FTJ, make_ftj("oom", oom_spec))
    await cluster.create(FTJ, make_ftj("pull", spec(image="registry.example/nope:1")))
    await cluster.create(FTJ, make_ftj("late", spec(activeDeadlineSeconds=4, backoffLimit=0)))
    await cluster.create(FTJ, make_ftj("crash", spec(backoffLimit=0)))
    bad = spec(model={"name": "bert-base-uncased", "path": "/models/bert"})
    with pytest.raises(ApiError, match=r"422.*spec.model.*exactly one of model.name") as refused:
        await cluster.create(FTJ, make_ftj("bad", bad))  # the CRD's CEL rule refuses it
    assert refused.value.body["details"]["causes"][0]["field"] == "spec.model"

    oom = await cluster.wait_for_object(JOB, NAMESPACE, "oom-train")
    await kubelet.run_pod(oom)
    killed = await kubelet.oom_kill(oom)  # the node agent kills it at 256Mi
    (cs,) = killed["status"]["containerStatuses"]
    assert cs["state"]["terminated"]["reason"] == "OOMKilled"
    assert cs["state"]["terminated"]["exitCode"] == 137
    status = await cluster.wait_phase(NAMESPACE, "oom", "Failed")
    assert cluster.condition(NAMESPACE, "oom", "Failed")["reason"] == "OOMKilled"
    assert "out of memory" in status["message"] and "resources.memory" in status["message"]

    # registry.example never resolves: the node agent reports the pull failure a kubelet would.
    await cluster.wait_for(
        lambda: (
            cluster.condition(NAMESPACE, "pull", "Ready").get("reason")
            in ("ImagePullBackOff", "ErrImagePull")
        )
    )
    status = cluster.status(FTJ, NAMESPACE, "pull")
    assert status["phase"] == "Pending"
    assert (
        "registry.example/nope:1" in status["message"] and "imagePullSecrets" in status["message"]
    )
    await cluster.wait_for(
        lambda: {"ImagePullBackOff", "ErrImagePull"} & set(reasons(cluster, "pull"))
    )

    # The Job controller ends the Job at its activeDeadlineSeconds and deletes its pod.
    late = await cluster.wait_for_object(JOB, NAMESPACE, "late-train")
    await kubelet.run_pod(late)
    await kubelet.wait_job_condition(late, "Failed", timeout=30)
    assert kubelet.job_condition(late, "Failed")["reason"] == "DeadlineExceeded"
    status = await cluster.wait_phase(NAMESPACE, "late", "Failed")
    assert "activeDeadlineSeconds (4 s)" in status["message"]

    crash = await cluster.wait_for_object(JOB, NAMESPACE, "crash-train")
    await kubelet.run_pod(crash)
    report = {
        "phase": "Failed",
        "message": "dataset.textColumn 'text' not found; columns: sentence, label",
    }
    await kubelet.fail(crash, exit_code=1, message=json.dumps(report))
    assert kubelet.job_condition(crash, "Failed")["reason"] == "BackoffLimitExceeded"
    status = await cluster.wait_phase(NAMESPACE, "crash", "Failed")
    assert "textColumn 'text' not found" in status["message"]

    await cluster.wait_for(lambda: "OOMKilled" in reasons(cluster, "oom"))
    events = {e["reason"]: e for e in cluster.events(NAMESPACE, "oom")}
    assert events["OOMKilled"]["type"] == "Warning"
    text = await operator.metrics()
    for name in ("oom", "late", "crash"):
        assert (
            sample(text, "finetune_job_phase", namespace=NAMESPACE, name=name, phase="Failed") == 1
        )


async def test_suspend_and_resume(cluster: Cluster, operator: OperatorRunner) -> None:
    await cluster.create(FTJ, make_ftj("sus", spec(suspend=True)))
    job = await cluster.wait_for_object(JOB, NAMESPACE, "sus-train")
    assert job["spec"]["suspend"] is True
    await cluster.wait_phase(NAMESPACE, "sus", "Suspended")
    suspended = cluster.condition(NAMESPACE, "sus", "Suspended")
    assert suspended["status"] == "True"

    await cluster.patch(
        FTJ,
        NAMESPACE,
        "sus",
        {"spec": {"suspend": False}},  # generation 2: the apiserver's
    )
    await cluster.wait_for(
        lambda: cluster.get_object(JOB, NAMESPACE, "sus-train")["spec"]["suspend"] is False
    )
    # Pending until the Job controller's pod runs, which takes milliseconds here.
    status = await cluster.wait_for(
        lambda: (
            (s := cluster.status(FTJ, NAMESPACE, "sus")).get("phase") in ("Pending", "Running")
            and s.get("observedGeneration") == 2
            and s
        ),
        message="sus resumed at generation 2",
    )
    assert status["observedGeneration"] == 2
    resumed = cluster.condition(NAMESPACE, "sus", "Suspended")
    assert resumed["status"] == "False"
    assert resumed["observedGeneration"] == 2
    assert resumed["lastTransitionTime"] >= suspended["lastTransitionTime"]
    await cluster.wait_for(lambda: {"Suspended", "Resumed"} <= set(reasons(cluster, "sus")))

    # Pruning a sweep trial suspends the running Job in place.
    await cluster.patch(
        FTJ,
        NAMESPACE,
        "sus",
        {"spec": {"suspend": True}},  # generation 3
    )
    await cluster.wait_for(
        lambda: cluster.get_object(JOB, NAMESPACE, "sus-train")["spec"]["suspend"] is True
    )
    await cluster.wait_phase(NAMESPACE, "sus", "Suspended")


async def test_delete_cleans_up_job_and_metrics(
    cluster: Cluster, operator: OperatorRunner, kubelet: Kubelet
) -> None:
    await cluster.create(FTJ, make_ftj("gone", SMALL_SPEC))
    job = await cluster.wait_for_object(JOB, NAMESPACE, "gone-train")
    await kubelet.run_pod(job)
    await cluster.wait_phase(NAMESPACE, "gone", "Running")
    assert "gone" in await operator.metrics()

    # No finalizer on the FineTuneJob: deletion is never blocked by the operator.
    assert not cluster.get_object(FTJ, NAMESPACE, "gone")["metadata"].get("finalizers")
    (pod,) = cluster.pods(job)
    await cluster.delete(FTJ, NAMESPACE, "gone")
    # The garbage collector removes the Job, and with it the pod (its process is stopped).
    await cluster.wait_gone(FTJ, NAMESPACE, "gone")
    await cluster.wait_gone(JOB, NAMESPACE, "gone-train")
    await cluster.wait_gone(POD, NAMESPACE, pod["metadata"]["name"])
    await cluster.wait_for(
        lambda: not [k for k in parse_metrics_sync(operator) if ("name", "gone") in k[1]]
    )


async def test_restart_mid_job_neither_duplicates_nor_loses_metrics(
    cluster: Cluster, operator: OperatorRunner, kubelet: Kubelet
) -> None:
    await cluster.create(FTJ, make_ftj("keep", SMALL_SPEC))
    job = await cluster.wait_for_object(JOB, NAMESPACE, "keep-train")
    await kubelet.run_pod(job)
    await cluster.wait_phase(NAMESPACE, "keep", "Running")

    await operator.stop()
    # While the operator is down the trainer finishes; its live status patch never landed.
    await kubelet.succeed(job, metrics={"accuracy": 0.87, "evalLoss": 0.4})
    await operator.start()

    status = await cluster.wait_phase(NAMESPACE, "keep", "Succeeded")
    assert status["metrics"] == {"accuracy": 0.87, "evalLoss": 0.4}
    assert job_creates(cluster) == 1
    assert len([j for j in cluster.objects(JOB, NAMESPACE)]) == 1

    await operator.restart()  # a fresh process republishes the finished job's metrics
    text = await _wait_metric(operator, "keep", "accuracy")
    assert (
        sample(text, "finetune_job_metric", namespace=NAMESPACE, name="keep", metric="accuracy")
        == 0.87
    )
    assert (
        sample(text, "finetune_job_phase", namespace=NAMESPACE, name="keep", phase="Succeeded") == 1
    )
    assert job_creates(cluster) == 1
    assert reasons(cluster, "keep").count("Succeeded") == 1  # milestones are not repeated


async def test_existing_job_is_adopted(cluster: Cluster, operator_factory: Any) -> None:
    """A Job we own that exists before the operator sees it (e.g. created just before a
    crash) is adopted; a foreign Job with the same name is reported, not overwritten."""
    from finetune_api.models import FineTuneJob
    from finetune_operator.config import OperatorConfig
    from finetune_operator.jobs import build_job

    mine = await cluster.create(FTJ, make_ftj("adopt", SMALL_SPEC))  # the operator is not up yet
    manifest = build_job(
        FineTuneJob.model_validate(mine), mine["metadata"]["uid"], OperatorConfig()
    )
    manifest["spec"]["suspend"] = True  # its pod is not the point here
    await cluster.create(JOB, manifest)
    foreign = copy.deepcopy(manifest)
    foreign["metadata"] = {"name": "clash-train", "namespace": NAMESPACE}
    foreign["spec"]["template"]["metadata"] = {}
    foreign = await cluster.create(JOB, foreign)
    await cluster.create(FTJ, make_ftj("clash", SMALL_SPEC))
    await operator_factory()

    await cluster.wait_phase(NAMESPACE, "adopt", "Pending")
    await cluster.wait_for(
        lambda: cluster.condition(NAMESPACE, "clash", "Ready").get("reason") == "JobNameConflict"
    )
    assert job_creates(cluster) == 0  # the operator created no Job: adopted, never re-created
    assert len(cluster.objects(JOB, NAMESPACE)) == 2
    clash = cluster.get_object(JOB, NAMESPACE, "clash-train")
    assert clash["metadata"]["uid"] == foreign["metadata"]["uid"]


async def test_all_namespaces(cluster: Cluster, operator_factory: Any) -> None:
    """With no namespace named, one operator serves FineTuneJobs of every namespace from
    cluster-wide watches: each gets one Job in its own namespace, owned by it, and a
    current status."""
    await operator_factory(namespaces=[])
    for ns in ("team-a", "team-b"):
        await cluster.create(FTJ, make_ftj("wide", SMALL_SPEC, namespace=ns))
    for ns in ("team-a", "team-b"):
        job = await cluster.wait_for_object(JOB, ns, "wide-train")
        ftj = cluster.get_object(FTJ, ns, "wide") or {}
        assert job["metadata"]["namespace"] == ns
        owners = [r["uid"] for r in job["metadata"]["ownerReferences"]]
        assert owners == [ftj["metadata"]["uid"]]
        status = await cluster.wait_phase(ns, "wide", "Pending")
        assert status["jobName"] == "wide-train"
        assert status["observedGeneration"] == ftj["metadata"]["generation"]
    assert job_creates(cluster) == 2
    watches = {
        e["requestURI"].split("?")[0]
        for e in cluster.audit()
        if e["verb"] == "watch" and e["user"]["username"] == cluster.plane.operator_user
    }
    assert "/apis/finetune.dev/v1alpha1/finetunejobs" in watches  # not per namespace
    assert not any("/namespaces/" in path for path in watches)


def parse_metrics_sync(
    operator: OperatorRunner,
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics") as resp:
        return parse_metrics(resp.read().decode())


async def _wait_metric(operator: OperatorRunner, name: str, metric: str) -> str:
    for _ in range(100):
        text = await operator.metrics()
        labels = {"namespace": NAMESPACE, "name": name, "metric": metric}
        if sample(text, "finetune_job_metric", **labels) is not None:
            return text
        await asyncio.sleep(0.1)
    raise AssertionError(f"{metric} of {name} never reappeared on /metrics")
