"""Golden tests: multi-process and multi-node trainer Jobs and their headless Service
(jobs.build_job -> gang.shape_job, gang.build_service), plus the shared HF cache mount.

Regenerate after an intended change with UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from finetune_api.models import FineTuneJob
from finetune_operator.config import OperatorConfig
from finetune_operator.gang import (
    build_service,
    rendezvous_host,
    service_name,
    torchrun_settings,
    world_size,
)
from finetune_operator.jobs import build_job, job_name

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent.parent / "operator" / "golden"
UID = "0b5c0f0e-1111-4222-8333-444455556666"

BASE: dict[str, Any] = {
    "task": "classification",
    "model": {"path": "/models/minilm"},
    "dataset": {"train": {"path": "/data/train.tsv"}, "eval": {"path": "/data/dev.tsv"}},
    "volumes": [{"claimName": "models", "mountPath": "/models"}],
}

CASES: dict[str, tuple[dict[str, Any], dict[str, str], OperatorConfig]] = {
    "multinode-cpu": (
        {**BASE, "resources": {"gpus": 0, "nodes": 2, "cpu": "2", "memory": "4Gi"}},
        {},
        OperatorConfig(),
    ),
    "multinode-gpu-kueue-cache": (
        {
            **BASE,
            "model": {"name": "sentence-transformers/all-MiniLM-L6-v2"},
            "resources": {"gpus": 4, "nodes": 2, "cpu": "16", "memory": "64Gi"},
            "distributed": {"strategy": "fsdp"},
            "cache": {"pvc": "hf-cache", "readOnly": True},
        },
        {"kueue.x-k8s.io/queue-name": "gpu"},
        OperatorConfig(),
    ),
    "multigpu-one-node-chart-cache": (
        {**BASE, "resources": {"gpus": 2}},
        {},
        OperatorConfig(cache_pvc="shared-hf-cache"),
    ),
}


def ftj_of(name: str) -> tuple[FineTuneJob, OperatorConfig]:
    spec, labels, config = CASES[name]
    ftj = FineTuneJob.model_validate(
        {"metadata": {"name": "demo", "namespace": "team-a", "labels": labels}, "spec": spec}
    )
    return ftj, config


def golden(path: Path, manifest: dict[str, Any] | None) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"missing {path}; run with UPDATE_GOLDEN=1"
    assert json.loads(path.read_text()) == manifest


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_job_and_service(name: str) -> None:
    ftj, config = ftj_of(name)
    job = build_job(ftj, UID, config)
    golden(GOLDEN / f"job-{name}.json", job)
    golden(GOLDEN / f"service-{name}.json", build_service(job, ftj))


def test_two_nodes_of_four_gpus_make_an_indexed_gang() -> None:
    ftj, config = ftj_of("multinode-gpu-kueue-cache")
    job = build_job(ftj, UID, config)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2
    assert spec["suspend"] is True  # Kueue admits the whole gang by unsuspending
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "demo-train"
    (container,) = pod["containers"]
    assert container["command"] == [
        "python", "-m", "finetune_trainer.torchrun", "-m", "finetune_trainer"
    ]  # fmt: skip
    env = {e["name"]: e for e in container["env"]}
    rendezvous = {k: v.get("value") for k, v in env.items() if k.startswith("PET_")}
    assert rendezvous == {
        "PET_NNODES": "2",
        "PET_NPROC_PER_NODE": "4",
        "PET_MAX_RESTARTS": "0",
        "PET_NODE_RANK": "$(JOB_COMPLETION_INDEX)",
        "PET_MASTER_ADDR": "demo-train-0.demo-train",
        "PET_MASTER_PORT": "29500",
        "PET_RDZV_CONF": "timeout=1800",
    }
    # The index variable comes first: PET_NODE_RANK's $(...) may only name earlier ones.
    assert container["env"][0]["name"] == "JOB_COMPLETION_INDEX"
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    # A disruption (eviction, preemption, drain) is not a failure; one failed trainer
    # fails the whole gang at once (no survivor waits on a dead peer).
    disruption, rule = spec["podFailurePolicy"]["rules"]
    assert disruption == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert rule["action"] == "FailJob"
    assert rule["onExitCodes"] == {"containerName": "trainer", "operator": "NotIn", "values": [0]}
    assert world_size(ftj) == 8


def test_service_is_headless_owned_and_selects_exactly_the_job_pods() -> None:
    ftj, config = ftj_of("multinode-cpu")
    job = build_job(ftj, UID, config)
    service = build_service(job, ftj)
    assert service is not None
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["metadata"]["name"] == job["spec"]["template"]["spec"]["subdomain"]
    assert service["metadata"]["ownerReferences"] == job["metadata"]["ownerReferences"]
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    env = {
        e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["PET_NPROC_PER_NODE"] == "1"


def test_one_node_one_process_is_unchanged() -> None:
    ftj = FineTuneJob.model_validate({"metadata": {"name": "demo"}, "spec": BASE})
    job = build_job(ftj, UID, OperatorConfig())
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "finetune_trainer"]
    assert not [e for e in container["env"] if e["name"].startswith("PET_")]
    assert "completionMode" not in job["spec"]
    assert build_service(job, ftj) is None


def test_shared_cache_mount_and_read_only_offline_env() -> None:
    ftj, config = ftj_of("multinode-gpu-kueue-cache")
    pod = build_job(ftj, UID, config)["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "hf-cache"]
    assert volume["persistentVolumeClaim"] == {"claimName": "hf-cache", "readOnly": True}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "hf-cache"]
    assert mount == {"name": "hf-cache", "mountPath": "/cache/huggingface", "readOnly": True}
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["HF_HOME"] == "/cache/huggingface" and env["HF_HUB_OFFLINE"] == "1"
    assert env["HF_DATASETS_CACHE"].startswith("/tmp/")
    # The chart's default cache is writable and needs no offline mode.
    ftj, config = ftj_of("multigpu-one-node-chart-cache")
    pod = build_job(ftj, UID, config)["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "hf-cache"]
    assert volume["persistentVolumeClaim"] == {"claimName": "shared-hf-cache"}
    assert "HF_HUB_OFFLINE" not in {e["name"] for e in pod["containers"][0]["env"]}


DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize("name", ["demo", "7up", "x" * 63, "9" + "y" * 62])
def test_service_names_are_dns_1035_and_deterministic(name: str) -> None:
    svc = service_name(job_name(name))
    assert DNS_1035.match(svc) and len(svc) <= 63
    assert svc == service_name(job_name(name))
    assert rendezvous_host(job_name(name)) == f"{job_name(name)}-0.{svc}"


def test_single_node_multi_gpu_uses_standalone_torchrun() -> None:
    ftj, _ = ftj_of("multigpu-one-node-chart-cache")
    assert torchrun_settings(ftj, "demo-train") == {
        "PET_STANDALONE": "1",
        "PET_NNODES": "1",
        "PET_NPROC_PER_NODE": "2",
        "PET_MAX_RESTARTS": "0",
    }


def test_torchrun_reads_these_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The PET_* names are torchrun's own: its parser turns them into the flags."""
    from torch.distributed.run import get_args_parser

    ftj, _ = ftj_of("multinode-gpu-kueue-cache")
    for key, value in torchrun_settings(ftj, "demo-train").items():
        monkeypatch.setenv(key, value.replace("$(JOB_COMPLETION_INDEX)", "1"))
    args = get_args_parser().parse_args(["-m", "finetune_trainer"])
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "4", 1)
    assert (args.master_addr, args.master_port) == ("demo-train-0.demo-train", 29500)
    assert (args.rdzv_conf, args.max_restarts, args.module) == ("timeout=1800", 0, True)
    assert args.training_script == "finetune_trainer" and not args.standalone


def test_a_renamed_job_keeps_its_gang_consistent() -> None:
    """An out-of-memory retry Job has its own name: the pods' subdomain, the rendezvous
    host and the Service must follow it, or no pod would resolve pod 0."""
    ftj, config = ftj_of("multinode-cpu")
    job = build_job(ftj, UID, config, name_override="demo-r1-train")
    pod = job["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert job["metadata"]["name"] == pod["subdomain"] == "demo-r1-train"
    assert env["PET_MASTER_ADDR"] == "demo-r1-train-0.demo-r1-train"
    service = build_service(job, ftj)
    assert service is not None and service["metadata"]["name"] == "demo-r1-train"
