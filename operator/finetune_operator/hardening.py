"""The trainer pod's hardening: identity, a read-only root and its writable scratch mounts.

Pure helpers for `jobs.build_job`. The trainer image runs as uid/gid 10001; the pod says
so too (so `runAsNonRoot` can be verified) and sets `fsGroup`, which makes a freshly
provisioned, root-owned output PVC writable. The root filesystem is read-only, so every
path the trainer and its libraries write to is a mount:

- `/tmp` (emptyDir with a sizeLimit): TMPDIR, HOME (~/.cache, ~/.triton, torch's
  inductor cache) and MPLCONFIGDIR (matplotlib's font cache);
- `/cache/huggingface` (emptyDir with a sizeLimit, or a PVC): HF_HOME, the hub and
  datasets caches;
- the output directory (`spec.output`), `/dev/shm` and `spec.volumes` (jobs.py).
"""

from __future__ import annotations

from typing import Any

from finetune_api.models import FineTuneJobSpec
from finetune_operator.config import OperatorConfig

TRAINER_UID = 10001  # the user and group of trainer_image/Dockerfile
TMP_PATH = "/tmp"
HF_CACHE_PATH = "/cache/huggingface"
TMP_VOLUME = "tmp"
CACHE_VOLUME = "hf-cache"

# Libraries that write under $HOME or a cache dir find a writable mount.
SCRATCH_ENV: tuple[tuple[str, str], ...] = (
    ("HOME", TMP_PATH),
    ("TMPDIR", TMP_PATH),
    ("MPLCONFIGDIR", f"{TMP_PATH}/matplotlib"),
    ("HF_HOME", HF_CACHE_PATH),
)


def pod_security_context() -> dict[str, Any]:
    """Pod-level identity: uid/gid 10001, group-owned volumes, seccomp RuntimeDefault."""
    return {
        "runAsNonRoot": True,
        "runAsUser": TRAINER_UID,
        "runAsGroup": TRAINER_UID,
        "fsGroup": TRAINER_UID,
        # Re-chown a volume only when its root is not already ours (fast on big PVCs).
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """The Pod Security "restricted" profile plus a read-only root filesystem."""
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def cache_volume(spec: FineTuneJobSpec, config: OperatorConfig) -> dict[str, Any]:
    """The volume mounted at HF_HOME: today a bounded emptyDir.

    The one place that decides where the Hugging Face cache lives: a PVC given for the
    cache (`spec.cache`, planned with multi-node training) is returned from here instead.
    """
    del spec  # the seam for spec.cache
    return {"name": CACHE_VOLUME, "emptyDir": {"sizeLimit": config.cache_size_limit}}


def scratch_volumes(
    spec: FineTuneJobSpec, config: OperatorConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The writable mounts a read-only root needs: /tmp and the HF cache (volumes, mounts)."""
    volumes = [
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": config.tmp_size_limit}},
        cache_volume(spec, config),
    ]
    mounts = [
        {"name": TMP_VOLUME, "mountPath": TMP_PATH},
        {"name": CACHE_VOLUME, "mountPath": HF_CACHE_PATH},
    ]
    return volumes, mounts


def scratch_env() -> list[dict[str, Any]]:
    """HOME, TMPDIR, MPLCONFIGDIR and HF_HOME pointed into the scratch mounts."""
    return [{"name": k, "value": v} for k, v in SCRATCH_ENV]
