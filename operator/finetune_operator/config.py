"""Operator configuration: defaults, environment overrides, label and annotation keys.

Everything the pure core needs to build a Job lives in one frozen value so the
manifest builder stays a pure function of (FineTuneJob, OperatorConfig).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from finetune_api.manifest import UserError

# Labels and annotations the operator writes (a contract for dashboards and Kueue).
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "finetune-operator"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_JOB = "finetune.dev/job"  # the owning FineTuneJob's name, on the Job and its pods
LABEL_TASK = "finetune.dev/task"
ANNOTATION_SPEC_HASH = "finetune.dev/spec-hash"
# On a sweep's trial: "best" once the sweep succeeded and this trial is its best; only
# then does the trial's spec.promote (the sweep's) act.
ANNOTATION_PROMOTE = "finetune.dev/promote"
PROMOTE_BEST = "best"
# On a multi-node trainer Job: what disrupted one of its pods ("pod X was disrupted
# (EvictionByEvictionAPI)"), written when the operator sees DisruptionTarget, so the gang
# restart that follows survives an operator restart (handlers_job._restart_disrupted_gang).
ANNOTATION_DISRUPTED = "finetune.dev/disrupted"
# Labels copied from the FineTuneJob onto the Job (Kueue reads its labels from the Job).
PASSTHROUGH_LABELS = (
    "kueue.x-k8s.io/queue-name",
    "kueue.x-k8s.io/priority-class",
    "finetune.dev/sweep",
    "finetune.dev/trial",
)
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

CONTAINER_NAME = "trainer"
DEFAULT_TRAINER_IMAGE = "ghcr.io/finetune-dev/finetune-trainer:0.1.0"
DEFAULT_SERVICE_ACCOUNT = "finetune-trainer"
DEFAULT_OUTPUT_PATH = "/output"
TERMINATION_LOG = "/dev/termination-log"
DEFAULT_TMP_SIZE_LIMIT = "4Gi"
DEFAULT_CACHE_SIZE_LIMIT = "50Gi"


@dataclass(frozen=True)
class OperatorConfig:
    """Settings that shape the Jobs the operator creates."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    # The trainer's narrowly scoped service account (patch finetunejobs/status only);
    # empty string = the namespace's default service account.
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    image_pull_policy: str = "IfNotPresent"
    # Optional imagePullSecrets for the trainer image (comma separated in the env var).
    image_pull_secrets: tuple[str, ...] = ()
    # Extra env for the trainer (tests point FINETUNE_KUBE_API_URL at the emulator).
    extra_env: tuple[tuple[str, str], ...] = ()
    status_interval_seconds: int | None = None
    # Applied to GPU Jobs whose spec sets none (GPU node pools are usually labelled/tainted).
    default_node_selector: tuple[tuple[str, str], ...] = ()
    default_tolerations: tuple[dict[str, Any], ...] = ()
    # sizeLimit of the trainer's emptyDir scratch mounts (/tmp and the HF cache).
    tmp_size_limit: str = DEFAULT_TMP_SIZE_LIMIT
    cache_size_limit: str = DEFAULT_CACHE_SIZE_LIMIT
    # A PVC used as the HF cache of every trainer pod whose spec sets no `cache` (chart
    # value trainer.cache); ReadWriteMany when several pods or nodes share it.
    cache_pvc: str = ""
    cache_read_only: bool = False
    # Cost reporting (chart values cost.*): currency per GPU-hour; None = no cost.
    gpu_hour_price: float | None = None
    cost_currency: str = "USD"
    # Out-of-memory recovery (chart value oomRecovery.maxRetries): retry Jobs at most.
    oom_max_retries: int = 3
    # spec.promote: how often an InferenceService that is not Ready yet is read again, and
    # how often a promotion refused for lack of KServe (or RBAC) is tried again.
    promote_poll_seconds: float = 10.0
    promote_recheck_seconds: float = 300.0

    @classmethod
    def from_env(cls, trainer_image: str | None = None) -> OperatorConfig:
        """Defaults, then FINETUNE_* environment variables, then explicit arguments."""
        env = os.environ
        secrets = tuple(s for s in env.get("FINETUNE_IMAGE_PULL_SECRETS", "").split(",") if s)
        interval = env.get("FINETUNE_TRAINER_STATUS_INTERVAL")
        extra = tuple(
            (k.removeprefix("FINETUNE_TRAINER_ENV_"), v)
            for k, v in sorted(env.items())
            if k.startswith("FINETUNE_TRAINER_ENV_")
        )
        return cls(
            trainer_image=trainer_image
            or env.get("FINETUNE_TRAINER_IMAGE")
            or DEFAULT_TRAINER_IMAGE,
            service_account=env.get("FINETUNE_TRAINER_SERVICE_ACCOUNT", DEFAULT_SERVICE_ACCOUNT),
            image_pull_policy=env.get("FINETUNE_TRAINER_PULL_POLICY", "IfNotPresent"),
            image_pull_secrets=secrets,
            extra_env=extra,
            status_interval_seconds=int(interval) if interval else None,
            default_node_selector=tuple(
                sorted(_json_env("FINETUNE_DEFAULT_NODE_SELECTOR", dict).items())
            ),
            default_tolerations=tuple(_json_env("FINETUNE_DEFAULT_TOLERATIONS", list)),
            tmp_size_limit=env.get("FINETUNE_TRAINER_TMP_SIZE_LIMIT") or DEFAULT_TMP_SIZE_LIMIT,
            cache_size_limit=env.get("FINETUNE_TRAINER_CACHE_SIZE_LIMIT")
            or DEFAULT_CACHE_SIZE_LIMIT,
            cache_pvc=env.get("FINETUNE_TRAINER_CACHE_PVC", ""),
            cache_read_only=env.get("FINETUNE_TRAINER_CACHE_READ_ONLY", "").lower() == "true",
            gpu_hour_price=_number_env("FINETUNE_GPU_HOUR_PRICE", float, None),
            cost_currency=env.get("FINETUNE_COST_CURRENCY") or "USD",
            oom_max_retries=int(_number_env("FINETUNE_OOM_MAX_RETRIES", int, 3) or 0),
            promote_poll_seconds=float(
                _number_env("FINETUNE_PROMOTE_POLL_SECONDS", float, 10.0) or 10.0
            ),
            promote_recheck_seconds=float(
                _number_env("FINETUNE_PROMOTE_RECHECK_SECONDS", float, 300.0) or 300.0
            ),
        )


class ConfigError(UserError, ValueError):
    """A FINETUNE_* setting the operator cannot use."""


def _json_env(name: str, kind: type[dict[str, Any]] | type[list[Any]]) -> Any:
    """A JSON object/array from an environment variable (the Helm chart's toJson)."""
    raw = os.environ.get(name, "").strip()
    if not raw or raw == "null":
        return kind()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{name} is not valid JSON: {err}") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{name} must be a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def _number_env(name: str, kind: type[int] | type[float], default: float | None) -> float | None:
    """A non-negative number from an environment variable; unset or empty = default."""
    raw = os.environ.get(name, "").strip()
    if not raw or raw == "null":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a {kind.__name__}, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative, got {raw!r}")
    return value
