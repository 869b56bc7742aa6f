"""Pure core of promotion to serving (spec.promote): the evaluation gate (minimum,
maximum or beatsBase against the trainer's `base.<metric>`), the `Promoted` condition's
message, where the model is served from, and the KServe InferenceService the operator
creates and owns. promotion.py does the I/O (create/adopt, poll for the URL, KServe not
installed); handlers_job calls it once a run is Succeeded. Unit-tested in
tests/unit/test_promote.py; the manifest against KServe's real CRD on the control plane
(tests/operator/test_promote_kserve_crd.py, tests/operator/test_operator_promote.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from finetune_api.models import FineTuneJob, Promote, PromoteWhen
from finetune_api.task_metrics import base_key, lower_is_better
from finetune_operator.config import LABEL_MANAGED_BY, MANAGED_BY
from finetune_operator.runtime import owner_reference

KSERVE_GROUP = "serving.kserve.io"
KSERVE_VERSION = "v1beta1"
KSERVE_PLURAL = "inferenceservices"
MOUNT = "/mnt/models"  # where KServe's storage initializer puts storageUri
OBJECT_STORES = ("s3://", "gs://", "https://", "hf://", "pvc://")


@dataclass(frozen=True)
class Gate:
    holds: bool
    reason: str  # the Promoted condition's reason
    message: str


def check_gate(when: PromoteWhen, metrics: dict[str, float]) -> Gate:
    """Does the run's `when.metric` meet the bound? The message states value, bound, gap
    (the gap is positive when the gate holds, by how much; negative: how far it missed).
    beatsBase compares with the base model's `base.<metric>` plus (or minus) `by`."""
    value = metrics.get(when.metric)
    if value is None:
        return _missing(when.metric, metrics)
    if when.minimum is not None:
        gap, bound = value - when.minimum, f"minimum {when.minimum:g}"
    elif when.maximum is not None:
        gap, bound = when.maximum - value, f"maximum {when.maximum:g}"
    else:
        assert when.beats_base is not None
        base = metrics.get(base_key(when.metric))
        if base is None:
            return _missing(base_key(when.metric), metrics)
        by, direction = when.beats_base.by, when.beats_base.direction
        lower = direction == "minimize" if direction else lower_is_better(when.metric)
        if lower:
            gap, bound = (base - by) - value, f"base {base:.4g} - {by:g}"
        else:
            gap, bound = value - (base + by), f"base {base:.4g} + {by:g}"
        bound = f"{'at most' if lower else 'at least'} {bound}"
    text = f"{when.metric} {value:.4g} against {bound}: gap {gap:+.4g}"
    if gap >= 0:
        return Gate(True, "GateMet", text)
    return Gate(False, "GateNotMet", text)


def _missing(metric: str, metrics: dict[str, float]) -> Gate:
    reported = ", ".join(sorted(metrics)) or "none"
    if len(reported) > 600:
        reported = reported[:597] + "..."
    return Gate(False, "MetricMissing", f"{metric} was not reported (reported: {reported})")


def isvc_name(ftj_name: str) -> str:
    return ftj_name  # one InferenceService per FineTuneJob, same name (both DNS labels)


def storage_uri(
    ftj: FineTuneJob, promote: Promote, artifacts: dict[str, str]
) -> tuple[str | None, str]:
    """(URI to serve, what it is) from status.artifacts: the merged model, else the full
    model, else the LoRA adapter; a path under output.path becomes `pvc://<pvc>/<rel>`.
    (None, why) when nothing outlives the pod."""
    if promote.inference_service.storage_uri:
        return promote.inference_service.storage_uri, "model"
    kind = "merged" if "mergedModel" in artifacts else "lora" if ftj.spec.lora else "model"
    path = artifacts.get("mergedModel") or artifacts.get("model")
    if not path:
        return None, "the run reported no model artifact"
    if path.startswith(OBJECT_STORES):
        return path, kind
    output = ftj.spec.output
    if not output.pvc:
        return None, "spec.output.pvc is not set: the model did not outlive the trainer pod"
    root = PurePosixPath(output.path or "/output")
    try:
        rel = PurePosixPath(path).relative_to(root)
    except ValueError:
        return None, f"{path} is not under output.path {root}"
    return f"pvc://{output.pvc}/{rel}", kind


def build_inference_service(
    ftj: FineTuneJob, uid: str, promote: Promote, uri: str, kind: str
) -> dict[str, Any]:
    """The InferenceService serving `uri` (KServe's huggingface runtime; vLLM with a GPU).
    A LoRA adapter is served on its base model (`--model_id`, a hub name) with vLLM's
    `--enable-lora`."""
    isvc = promote.inference_service
    backend = isvc.backend or ("vllm" if isvc.gpus else "huggingface")
    name = isvc_name(ftj.metadata.name)
    args = [f"--model_name={name}", f"--backend={backend}"]
    if kind == "lora":
        base = ftj.spec.model.name
        if base is None:
            raise ValueError("a LoRA adapter is served on a hub base model (model.name)")
        args += [f"--model_id={base}", "--enable-lora", f"--lora-modules={name}={MOUNT}"]
    if not isvc.gpus and backend == "huggingface":
        args.append("--dtype=float32")
    args += isvc.args
    amounts: dict[str, Any] = {"cpu": str(isvc.cpu), "memory": str(isvc.memory)}
    limits = dict(amounts) | ({"nvidia.com/gpu": str(isvc.gpus)} if isvc.gpus else {})
    model: dict[str, Any] = {
        "modelFormat": {"name": "huggingface"},
        "storageUri": uri,
        "args": args,
        "resources": {"requests": amounts, "limits": limits},
    }
    if isvc.runtime:
        model["runtime"] = isvc.runtime
    return {
        "apiVersion": f"{KSERVE_GROUP}/{KSERVE_VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "namespace": ftj.metadata.namespace,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY, "finetune.dev/job": ftj.metadata.name},
            "annotations": {"finetune.dev/promoted-from": kind},
            "ownerReferences": [owner_reference("FineTuneJob", ftj.metadata.name, uid)],
        },
        "spec": {"predictor": {"model": model}},
    }


def served_url(isvc: dict[str, Any]) -> str | None:
    """The URL once KServe reports the InferenceService Ready, else None."""
    status = isvc.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    url = status.get("url")
    return str(url) if ready and url else None


def no_kserve_message() -> str:
    return (
        f"the KServe CRDs ({KSERVE_PLURAL}.{KSERVE_GROUP}) are not installed: "
        "nothing was promoted; the run itself succeeded"
    )
