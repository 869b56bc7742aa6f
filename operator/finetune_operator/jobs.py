"""Pure core: a validated FineTuneJob -> the batch/v1 Job manifest that runs the trainer.

No I/O, no Kubernetes client, no torch: the same input always gives the same
manifest, which is what makes creation idempotent (deterministic name) and what
the golden tests pin down.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from finetune_api.models import API_VERSION, DEFAULT_GRACE_SECONDS, FineTuneJob, FineTuneJobSpec
from finetune_operator.config import (
    ANNOTATION_SPEC_HASH,
    CONTAINER_NAME,
    DEFAULT_OUTPUT_PATH,
    KUEUE_QUEUE_LABEL,
    LABEL_COMPONENT,
    LABEL_JOB,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_TASK,
    MANAGED_BY,
    PASSTHROUGH_LABELS,
    TERMINATION_LOG,
    OperatorConfig,
)
from finetune_operator.gang import shape_job
from finetune_operator.hardening import (
    container_security_context,
    pod_security_context,
    scratch_env,
    scratch_volumes,
)
from finetune_operator.runtime import owner_reference

MAX_NAME = 63
JOB_SUFFIX = "-train"


def job_name(ftj_name: str) -> str:
    """The Job's name: `<name>-train`, shortened with a stable hash when it would exceed 63."""
    name = f"{ftj_name}{JOB_SUFFIX}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(ftj_name.encode()).hexdigest()[:8]
    head = ftj_name[: MAX_NAME - len(JOB_SUFFIX) - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}{JOB_SUFFIX}"


def spec_hash(spec: FineTuneJobSpec) -> str:
    """A short digest of the defaulted spec, minus `suspend` (which is applied in place)."""
    data = spec.dump()
    data.pop("suspend", None)
    raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def job_labels(ftj: FineTuneJob) -> dict[str, str]:
    labels = {
        LABEL_NAME: "finetune-trainer",
        LABEL_COMPONENT: "trainer",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_JOB: ftj.metadata.name,
        LABEL_TASK: ftj.spec.task.value,
    }
    for key in PASSTHROUGH_LABELS:
        if key in ftj.metadata.labels:
            labels[key] = ftj.metadata.labels[key]
    return labels


def is_kueue_managed(ftj: FineTuneJob) -> bool:
    return KUEUE_QUEUE_LABEL in ftj.metadata.labels


def desired_suspend(ftj: FineTuneJob, current: bool | None) -> bool:
    """What the Job's spec.suspend should be.

    spec.suspend true always suspends. Otherwise a plain Job runs; a Kueue-managed
    Job (queue-name label) is left as Kueue set it (Kueue unsuspends on admission),
    and is created suspended so Kueue can admit it.
    """
    if ftj.spec.suspend:
        return True
    if is_kueue_managed(ftj):
        return True if current is None else current
    return False


def trainer_payload(ftj: FineTuneJob, uid: str) -> dict[str, Any]:
    """The manifest handed to the trainer in env FINETUNE_JOB (CONTRACTS.md)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "FineTuneJob",
        "metadata": {
            "name": ftj.metadata.name,
            "namespace": ftj.metadata.namespace,
            "uid": uid,
        },
        "spec": ftj.spec.dump(),
    }


def _quantity(value: int | str) -> str:
    return str(value)


def _env(ftj: FineTuneJob, uid: str, config: OperatorConfig) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {
            "name": "FINETUNE_JOB",
            "value": json.dumps(trainer_payload(ftj, uid), sort_keys=True, separators=(",", ":")),
        },
        {"name": "FINETUNE_STATUS_SINK", "value": "kubernetes"},
        {"name": "FINETUNE_TERMINATION_LOG", "value": TERMINATION_LOG},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
        *scratch_env(ftj.spec, config),
    ]
    if config.status_interval_seconds is not None:
        env.append(
            {"name": "FINETUNE_STATUS_INTERVAL", "value": str(config.status_interval_seconds)}
        )
    if ftj.spec.budget is not None and config.gpu_hour_price is not None:
        # spec.budget.maxCost is priced as status cost: the same price per GPU-hour
        env.append({"name": "FINETUNE_GPU_HOUR_PRICE", "value": str(config.gpu_hour_price)})
    env.extend({"name": k, "value": v} for k, v in config.extra_env)
    # Secrets: only references travel; the value never leaves the Secret.
    env.extend(
        {
            "name": s.env,
            "valueFrom": {"secretKeyRef": {"name": s.secret_ref.name, "key": s.secret_ref.key}},
        }
        for s in ftj.spec.secrets
    )
    tracking = ftj.spec.tracking.mlflow if ftj.spec.tracking else None
    if tracking is not None and tracking.secret_ref is not None:
        ref = tracking.secret_ref
        env.append(
            {
                "name": MLFLOW_TOKEN_ENV,
                "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
            }
        )
    return env


MLFLOW_TOKEN_ENV = "MLFLOW_TRACKING_TOKEN"  # spec.tracking.mlflow.secretRef


def _resources(spec: FineTuneJobSpec) -> dict[str, Any]:
    res = spec.resources
    amounts: dict[str, str] = {"cpu": _quantity(res.cpu), "memory": _quantity(res.memory)}
    limits = dict(amounts)
    requests = dict(amounts)
    if res.gpus > 0:
        limits["nvidia.com/gpu"] = str(res.gpus)
        requests["nvidia.com/gpu"] = str(res.gpus)
    return {"requests": requests, "limits": limits}


def _volumes(spec: FineTuneJobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    output_path = spec.output.path or DEFAULT_OUTPUT_PATH
    if spec.output.pvc:
        output_volume: dict[str, Any] = {
            "name": "output",
            "persistentVolumeClaim": {"claimName": spec.output.pvc},
        }
    else:
        output_volume = {"name": "output", "emptyDir": {}}
    volumes: list[dict[str, Any]] = [
        output_volume,
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "output", "mountPath": output_path},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    for i, vol in enumerate(spec.volumes):
        name = f"vol-{i}"
        volumes.append(
            {
                "name": name,
                "persistentVolumeClaim": {"claimName": vol.claim_name, "readOnly": vol.read_only},
            }
        )
        mounts.append({"name": name, "mountPath": vol.mount_path, "readOnly": vol.read_only})
    return volumes, mounts


# podFailurePolicy: a pod that ends with the DisruptionTarget condition (the Eviction
# API, preemption, a node drain, taint eviction) is replaced without counting a failure.
def disruption_rule() -> dict[str, Any]:
    return {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }


def grace_period_seconds(spec: FineTuneJobSpec) -> int:
    """spec.checkpoint.gracePeriodSeconds, default DEFAULT_GRACE_SECONDS."""
    chosen = spec.checkpoint.grace_period_seconds if spec.checkpoint else None
    return chosen or DEFAULT_GRACE_SECONDS


def build_job(
    ftj: FineTuneJob,
    uid: str,
    config: OperatorConfig,
    *,
    current_suspend: bool | None = None,
    name_override: str | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job for a validated FineTuneJob (namespace from its metadata).

    `name_override` names the Job otherwise (an out-of-memory retry): set here, before
    the multi-node shape, so the pods' subdomain and rendezvous host follow the name."""
    spec = ftj.spec
    name = ftj.metadata.name
    labels = job_labels(ftj)
    volumes, mounts = _volumes(spec)
    scratch, scratch_mounts = scratch_volumes(spec, config)
    volumes += scratch
    mounts += scratch_mounts
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image or config.trainer_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["python", "-m", "finetune_trainer"],
        "env": _env(ftj, uid, config),
        "resources": _resources(spec),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(),
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # SIGTERM to SIGKILL: the trainer saves its last completed step in between
        "terminationGracePeriodSeconds": grace_period_seconds(spec),
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
    }
    if config.service_account:
        pod_spec["serviceAccountName"] = config.service_account
    if config.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in config.image_pull_secrets]
    gpu = spec.resources.gpus > 0
    if spec.resources.node_selector:
        pod_spec["nodeSelector"] = dict(spec.resources.node_selector)
    elif gpu and config.default_node_selector:
        pod_spec["nodeSelector"] = dict(config.default_node_selector)
    if spec.resources.tolerations:
        pod_spec["tolerations"] = [t.dump() for t in spec.resources.tolerations]
    elif gpu and config.default_tolerations:
        pod_spec["tolerations"] = [dict(t) for t in config.default_tolerations]

    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "completions": 1,
        "parallelism": 1,
        # an evicted/preempted/drained pod is recreated, not counted against backoffLimit
        "podFailurePolicy": {"rules": [disruption_rule()]},
        "suspend": desired_suspend(ftj, current_suspend),
        "template": {
            "metadata": {"labels": dict(labels)},
            "spec": pod_spec,
        },
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds

    metadata: dict[str, Any] = {
        "name": name_override or job_name(name),
        "labels": labels,
        "annotations": {ANNOTATION_SPEC_HASH: spec_hash(spec)},
        "ownerReferences": [owner_reference("FineTuneJob", name, uid)],
    }
    if ftj.metadata.namespace:
        metadata["namespace"] = ftj.metadata.namespace
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}
    return shape_job(job, ftj)  # torchrun: several GPUs, or an Indexed Job over nodes


def owner_ftj_name(obj: dict[str, Any]) -> str | None:
    """The name of the FineTuneJob owning obj (by owner reference, else by label)."""
    meta = obj.get("metadata", {})
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == "FineTuneJob" and ref.get("apiVersion", "").startswith(
            "finetune.dev/"
        ):
            return str(ref.get("name"))
    label = (meta.get("labels") or {}).get(LABEL_JOB)
    return str(label) if label else None
