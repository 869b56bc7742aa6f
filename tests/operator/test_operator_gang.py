"""Multi-node FineTuneJobs through the real operator against the emulator.

A 2-node FineTuneJob with 4 GPUs per node gets an Indexed Job (suspended for Kueue), the
headless Service its pods are named by, torchrun with the rendezvous on pod 0 and the
node rank from the completion index, and a status that counts ready workers. The e2e
test has the gang kubelet (gang_kubelet.py) start both pods' trainer processes from the
pod spec: a real 2-process gloo run that reports through rank 0 only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gang_kubelet import run_indexed_job
from operator_harness import FTJ, JOB, NAMESPACE, Cluster, make_ftj

from support.tiny_models import sentiment_rows, tiny_bert, write_rows

pytestmark = pytest.mark.operator

SERVICE = ("", "v1", "services")
GANG_SPEC: dict[str, Any] = {
    "task": "classification",
    "model": {"path": "/models/minilm"},
    "dataset": {"train": {"path": "/data/train.tsv"}},
    "resources": {"gpus": 4, "nodes": 2, "cpu": "16", "memory": "64Gi"},
    "volumes": [{"claimName": "models", "mountPath": "/models"}],
}


async def test_two_nodes_of_four_gpus_get_an_indexed_job_service_and_rendezvous(
    cluster: Cluster, operator: Any
) -> None:
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
    assert spec["podFailurePolicy"]["rules"][0]["action"] == "FailJob"
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

    # Workers: the Job's ready pods of spec.resources.nodes; one index done is not success.
    await cluster.patch(JOB, NAMESPACE, "gang-train", {"spec": {"suspend": False}})
    await cluster.patch(
        JOB, NAMESPACE, "gang-train", {"status": {"active": 2, "ready": 1}}, status=True
    )
    status = await cluster.wait_for(
        lambda: (
            (s := cluster.status(FTJ, NAMESPACE, "gang")).get("workers", {}).get("ready") == 1 and s
        )
    )
    assert status["workers"] == {"ready": 1, "total": 2}
    assert status["phase"] == "Running"
    status_patch = {"status": {"active": 1, "ready": 1, "succeeded": 1}}
    await cluster.patch(JOB, NAMESPACE, "gang-train", status_patch, status=True)
    await cluster.wait_for(
        lambda: cluster.status(FTJ, NAMESPACE, "gang").get("workers", {}).get("ready") == 1
    )
    assert cluster.status(FTJ, NAMESPACE, "gang")["phase"] == "Running"


async def test_one_node_makes_no_service(cluster: Cluster, operator: Any) -> None:
    spec = GANG_SPEC | {"resources": {"gpus": 1}}
    await cluster.create(FTJ, make_ftj("solo", spec))
    job = await cluster.wait_for_object(JOB, NAMESPACE, "solo-train")
    assert "completionMode" not in job["spec"]
    await cluster.wait_for(lambda: cluster.status(FTJ, NAMESPACE, "solo").get("phase"))
    assert cluster.objects(SERVICE, NAMESPACE) == []
    assert "workers" not in cluster.status(FTJ, NAMESPACE, "solo")


@pytest.mark.slow
async def test_the_kubelet_runs_both_pods_trainers_from_the_pod_spec(
    tmp_path: Path, cluster: Cluster, operator_factory: Any
) -> None:
    from finetune_operator.config import OperatorConfig

    models = tmp_path / "models"
    model = tiny_bert(models / "bert")
    train = write_rows(tmp_path / "data" / "train.csv", sentiment_rows(64, seed=1))
    dev = write_rows(tmp_path / "data" / "dev.csv", sentiment_rows(16, seed=2))
    spec = {
        "task": "classification",
        "model": {"path": str(model)},
        "dataset": {"train": {"path": str(train)}, "eval": {"path": str(dev)}},
        "hyperparameters": {
            "learningRate": 0.005,
            "epochs": 1,
            "batchSize": 4,
            "maxLength": 32,
            "maxSteps": 6,
            "evalSteps": 3,
            "loggingSteps": 2,
        },
        "output": {"path": str(tmp_path / "out")},
        "resources": {"gpus": 0, "nodes": 2, "cpu": "1", "memory": "2Gi"},
        "volumes": [{"claimName": "models", "mountPath": str(models)}],
    }
    await operator_factory(
        config=OperatorConfig(trainer_image="finetune-trainer:test", status_interval_seconds=1)
    )
    await cluster.create(FTJ, make_ftj("duo", spec))
    job = await cluster.wait_for_object(JOB, NAMESPACE, "duo-train")
    await cluster.wait_for_object(SERVICE, NAMESPACE, "duo-train")

    results = await run_indexed_job(
        cluster, job, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"}, timeout=400
    )
    for code, output in results:
        assert code == 0, output[-4000:]
    rank0, rank1 = (output for _, output in results)
    assert "[start]" in rank0 and "[start]" not in rank1, "only rank 0 reports"
    assert "2 workers" in rank0

    status = await cluster.wait_phase(NAMESPACE, "duo", "Succeeded", timeout=30)
    assert status["metrics"]["worldSize"] == 2
    assert status["progress"]["step"] == 6
    assert status["history"], "rank 0's status sink patched the history"
    # Only index 0 wrote a termination message (the one the operator reads).
    reports = sorted(p.name for p in tmp_path.glob("termination-duo-train-*.log"))
    assert reports == ["termination-duo-train-0.log"]
    report = json.loads((tmp_path / reports[0]).read_text())
    assert report["phase"] == "Succeeded" and report["metrics"]["worldSize"] == 2
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()
