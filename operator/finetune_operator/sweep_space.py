"""Search space -> trial: dotted-path params applied to the sweep's template.

Pure and torch-free: shared by the operator (child FineTuneJobs) and by
`finetune sweep` (in-process trials). See docs/CONTRACTS.md "Sweep trials" for
the names, labels and annotations written here.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from finetune_api.manifest import SpecError, parse
from finetune_api.models import (
    API_VERSION,
    FineTuneJob,
    FineTuneJobSpec,
    HyperparameterSweep,
)
from finetune_operator.runtime import owner_reference

LABEL_SWEEP = "finetune.dev/sweep"
LABEL_TRIAL = "finetune.dev/trial"
ANNOTATION_PARAMS = "finetune.dev/trial-params"
ANNOTATION_STATE = "finetune.dev/trial-state"
STATE_PRUNED = "pruned"

MAX_NAME = 63


def trial_name(sweep_name: str, number: int) -> str:
    """`<sweep>-trial-<n>`, the deterministic child name (n from 0)."""
    return f"{sweep_name}-trial-{number}"


def trial_number(name: str) -> int | None:
    """The n of `<sweep>-trial-<n>`, or None for a name that is not a trial's."""
    head, sep, tail = name.rpartition("-trial-")
    if not sep or not head or not tail.isdigit():
        return None
    return int(tail)


def apply_params(template: FineTuneJobSpec, params: dict[str, Any]) -> FineTuneJobSpec:
    """The template with each dotted path (camelCase, as in searchSpace) set to its value.

    A path into an optional section the template leaves out (e.g. `lora.rank`
    without a `lora:` block) creates that section with its defaults. The result
    is validated like any spec, so an impossible combination fails with the
    field's path in the message.
    """
    doc = template.dump()
    for path, value in params.items():
        set_path(doc, path, value)
    return parse(FineTuneJobSpec, doc, prefix="trial spec: ")


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    node = doc
    parts = path.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SpecError(f"searchSpace path {path}: {part} is not a mapping in the template")
        node = child
    node[parts[-1]] = value


def trial_spec(sweep: HyperparameterSweep, number: int, params: dict[str, Any]) -> FineTuneJobSpec:
    """The trial's FineTuneJob spec; an explicit template output path gets a per-trial folder."""
    spec = apply_params(sweep.spec.template, params)
    if spec.output.path:
        base = spec.output.path.rstrip("/")
        spec = spec.model_copy(
            update={
                "output": spec.output.model_copy(
                    update={"path": f"{base}/{trial_name(sweep.metadata.name, number)}"}
                )
            }
        )
    return spec


def trial_job(sweep: HyperparameterSweep, number: int, params: dict[str, Any]) -> FineTuneJob:
    """The trial as a FineTuneJob model (what `finetune sweep` runs in-process)."""
    manifest = trial_manifest(sweep, number, params)
    return parse(FineTuneJob, manifest, prefix=f"{manifest['metadata']['name']}: ")


def trial_manifest(
    sweep: HyperparameterSweep,
    number: int,
    params: dict[str, Any],
    *,
    owner_uid: str | None = None,
) -> dict[str, Any]:
    """The child FineTuneJob manifest: name, labels, params annotation, owner reference."""
    sweep_name = sweep.metadata.name
    name = trial_name(sweep_name, number)
    if len(name) > MAX_NAME:
        raise SpecError(
            f"trial name {name} is longer than {MAX_NAME} characters; use a shorter sweep name"
        )
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {
            **copy.deepcopy(sweep.metadata.labels),
            LABEL_SWEEP: sweep_name,
            LABEL_TRIAL: str(number),
        },
        "annotations": {ANNOTATION_PARAMS: encode_params(params)},
    }
    if sweep.metadata.namespace:
        metadata["namespace"] = sweep.metadata.namespace
    if owner_uid:
        metadata["ownerReferences"] = [
            owner_reference("HyperparameterSweep", sweep_name, owner_uid)
        ]
    spec = trial_spec(sweep, number, params).dump()
    if sweep.spec.promote is not None:
        # The sweep's gate and InferenceService, acted on only for the best trial, once
        # the sweep succeeded (its annotation ANNOTATION_PROMOTE, set by the sweep handler).
        spec["promote"] = sweep.spec.promote.dump()
    return {
        "apiVersion": API_VERSION,
        "kind": "FineTuneJob",
        "metadata": metadata,
        "spec": spec,
    }


def encode_params(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def decode_params(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
