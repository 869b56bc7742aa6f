"""Pure core: several trainer processes, on one pod or on a gang of pods, with torchrun.

`jobs.build_job` builds the one-pod Job; `shape_job` turns it into what the spec asks for:

- one pod, one process (gpus <= 1, nodes = 1): unchanged, `python -m finetune_trainer`;
- one pod, several GPUs: torchrun standalone with one process per GPU (the HF Trainer
  then runs DDP/FSDP instead of one process driving all GPUs);
- nodes > 1: an Indexed Job (completions = parallelism = nodes) whose pods are named by a
  headless Service (`build_service`, the pod template's `subdomain`), so pod i resolves as
  `<job>-<i>.<service>`. Every pod runs torchrun with the static rendezvous on pod 0
  (master address `<job>-0.<service>`), nodes, processes per node (gpus, or 1) and the
  node rank `$(JOB_COMPLETION_INDEX)` (the Job controller's index, expanded by the
  kubelet from the container env).

torchrun takes every setting from its documented environment form, `PET_<FLAG>`
(`PET_NNODES`, `PET_NODE_RANK`, `PET_MASTER_ADDR`, ...): the rendezvous is readable in
the pod's env, and the command stays `python -m finetune_trainer.torchrun -m finetune_trainer` (torchrun
itself, `torch.distributed.run`, with one error line instead of a traceback on failure).

Failure policy (docs/distributed.md): a trainer that exits non-zero fails the whole Job at
once (`podFailurePolicy` FailJob), which stops the other pods; the survivors of a lost
peer exit non-zero too (collective errors, the rendezvous timeout), so a gang never hangs.
A pod that fails without a trainer exit code (never started, evicted before start) is
replaced within `backoffLimit` and rejoins the rendezvous, which waits RENDEZVOUS_TIMEOUT_S.
Kueue admits the gang as one workload through the Job's `suspend` (jobs.desired_suspend).
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from finetune_api.models import FineTuneJob
from finetune_operator.config import (
    CONTAINER_NAME,
    LABEL_COMPONENT,
    LABEL_JOB,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
)

SERVICE_RESOURCE = ("", "v1", "services")
RENDEZVOUS_PORT = 29500
RENDEZVOUS_TIMEOUT_S = 1800  # pod 0 waits this long for the others (image pulls, scheduling)
TORCHRUN = ("python", "-m", "finetune_trainer.torchrun")  # torchrun, one error line on failure
TRAINER_MODULE = ("-m", "finetune_trainer")
INDEX_ENV = "JOB_COMPLETION_INDEX"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
MAX_NAME = 63


def processes_per_node(ftj: FineTuneJob) -> int:
    """One worker process per GPU of a pod; one on a CPU-only pod."""
    return max(ftj.spec.resources.gpus, 1)


def world_size(ftj: FineTuneJob) -> int:
    return ftj.spec.resources.nodes * processes_per_node(ftj)


def service_name(job_name: str) -> str:
    """The headless Service (= pods' subdomain): the Job's name, made a DNS-1035 label."""
    if job_name[:1].isalpha():
        return job_name
    name = f"ftj-{job_name}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(job_name.encode()).hexdigest()[:8]
    return f"ftj-{job_name[: MAX_NAME - 13].rstrip('-')}-{digest}"


def rendezvous_host(job_name: str) -> str:
    """Pod 0 of the Indexed Job, by its hostname within the headless Service."""
    return f"{job_name}-0.{service_name(job_name)}"


def torchrun_settings(ftj: FineTuneJob, job_name: str) -> dict[str, str]:
    """torchrun's settings for this spec, as its PET_<FLAG> environment variables."""
    nodes = ftj.spec.resources.nodes
    common = {
        "PET_NNODES": str(nodes),
        "PET_NPROC_PER_NODE": str(processes_per_node(ftj)),
        "PET_MAX_RESTARTS": "0",  # a failed worker fails the pod (and the gang): no retry inside
    }
    if nodes == 1:
        return {"PET_STANDALONE": "1", **common}
    return {
        **common,
        "PET_NODE_RANK": f"$({INDEX_ENV})",
        "PET_MASTER_ADDR": rendezvous_host(job_name),
        "PET_MASTER_PORT": str(RENDEZVOUS_PORT),
        "PET_RDZV_CONF": f"timeout={RENDEZVOUS_TIMEOUT_S}",
    }


def service_selector(ftj: FineTuneJob) -> dict[str, str]:
    return {LABEL_JOB: ftj.metadata.name, LABEL_COMPONENT: "trainer"}


def shape_job(job: dict[str, Any], ftj: FineTuneJob) -> dict[str, Any]:
    """The one-pod trainer Job reshaped for the spec's nodes and GPUs (a new dict)."""
    if world_size(ftj) == 1:
        return job
    job = copy.deepcopy(job)
    name = job["metadata"]["name"]
    spec = job["spec"]
    pod = spec["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == CONTAINER_NAME)
    container["command"] = [*TORCHRUN, *TRAINER_MODULE]
    settings = [{"name": k, "value": v} for k, v in torchrun_settings(ftj, name).items()]
    nodes = ftj.spec.resources.nodes
    if nodes == 1:
        container["env"] = [*container["env"], *settings]
        return job
    # Declared first so $(JOB_COMPLETION_INDEX) in PET_NODE_RANK expands whatever the Job
    # controller version does (it adds the same variable only when the container lacks it).
    index = {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_ANNOTATION}']"}}
    container["env"] = [{"name": INDEX_ENV, "valueFrom": index}, *container["env"], *settings]
    pod["subdomain"] = service_name(name)
    spec["completionMode"] = "Indexed"
    spec["completions"] = nodes
    spec["parallelism"] = nodes
    spec["podFailurePolicy"] = {
        "rules": [
            # a disruption first (eviction, preemption, drain): the pod is recreated and
            # the gang re-forms (torchrun's rendezvous), no failure counted
            *spec.get("podFailurePolicy", {}).get("rules", []),
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": CONTAINER_NAME,
                    "operator": "NotIn",
                    "values": [0],
                },
            },
        ]
    }
    return job


def build_service(job: dict[str, Any], ftj: FineTuneJob) -> dict[str, Any] | None:
    """The headless Service naming a multi-node Job's pods (None for one pod).

    `job` is the Job manifest (name, namespace and owner reference are taken from it, so
    both share the FineTuneJob as owner). publishNotReadyAddresses: pods resolve while
    they start, before any readiness, which is when torchrun rendezvouses.
    """
    if ftj.spec.resources.nodes == 1:
        return None
    meta = job["metadata"]
    metadata: dict[str, Any] = {
        "name": service_name(meta["name"]),
        "labels": {
            LABEL_NAME: "finetune-trainer",
            LABEL_COMPONENT: "trainer",
            LABEL_MANAGED_BY: MANAGED_BY,
            LABEL_JOB: ftj.metadata.name,
        },
        "ownerReferences": copy.deepcopy(meta["ownerReferences"]),
    }
    if meta.get("namespace"):
        metadata["namespace"] = meta["namespace"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "clusterIP": "None",
            "selector": service_selector(ftj),
            "publishNotReadyAddresses": True,
        },
    }


def disruption(pods: list[dict[str, Any]]) -> str | None:
    """What disrupted a trainer pod (the first with DisruptionTarget True: eviction,
    preemption, drain), in words; None when none was."""
    for pod in pods:
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
                name = pod.get("metadata", {}).get("name")
                return f"pod {name} was disrupted ({cond.get('reason') or 'DisruptionTarget'})"
    return None
