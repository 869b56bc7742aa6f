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
    """The volume mounted at HF_HOME: a PVC (`spec.cache`, else the chart's `trainer.cache`),
    else a bounded emptyDir.

    The one place that decides where the Hugging Face cache lives: a shared PVC lets
    several pods (nodes of one run, trials of a sweep, later runs) reuse downloads.
    """
    claim, read_only = cache_claim(spec, config)
    if claim:
        pvc: dict[str, Any] = {"claimName": claim}
        if read_only:
            pvc["readOnly"] = True
        return {"name": CACHE_VOLUME, "persistentVolumeClaim": pvc}
    return {"name": CACHE_VOLUME, "emptyDir": {"sizeLimit": config.cache_size_limit}}


def cache_claim(spec: FineTuneJobSpec, config: OperatorConfig) -> tuple[str | None, bool]:
    """(PVC, read-only) of the HF cache: `spec.cache`, else the chart's default, else none."""
    if spec.cache is not None:
        return spec.cache.pvc, spec.cache.read_only
    if config.cache_pvc:
        return config.cache_pvc, config.cache_read_only
    return None, False


def scratch_volumes(
    spec: FineTuneJobSpec, config: OperatorConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The writable mounts a read-only root needs: /tmp and the HF cache (volumes, mounts)."""
    volumes = [
        {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": config.tmp_size_limit}},
        cache_volume(spec, config),
    ]
    cache_mount: dict[str, Any] = {"name": CACHE_VOLUME, "mountPath": HF_CACHE_PATH}
    if cache_claim(spec, config)[1]:
        cache_mount["readOnly"] = True
    mounts = [{"name": TMP_VOLUME, "mountPath": TMP_PATH}, cache_mount]
    return volumes, mounts


def scratch_env(spec: FineTuneJobSpec, config: OperatorConfig) -> list[dict[str, Any]]:
    """HOME, TMPDIR, MPLCONFIGDIR and HF_HOME pointed into the scratch mounts.

    A read-only cache takes no downloads and no Arrow files of the datasets library: the
    trainer then runs offline and builds datasets under /tmp.
    """
    env = [{"name": k, "value": v} for k, v in SCRATCH_ENV]
    if cache_claim(spec, config)[1]:
        env += [
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "HF_DATASETS_CACHE", "value": f"{TMP_PATH}/hf-datasets"},
        ]
    return env
