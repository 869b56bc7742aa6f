"""Generate apiextensions.k8s.io/v1 CRDs from the pydantic models.

Pydantic emits JSON Schema 2020-12; the apiserver wants a *structural*
OpenAPI v3 subset. `structural()` does the translation: inline $refs, turn
`anyOf [X, null]` into `nullable`, `const` into a one-value enum, numeric
exclusive bounds into OpenAPI's boolean form, untyped values into
`x-kubernetes-preserve-unknown-fields`, and drop what the apiserver rejects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from finetune_api import models
from finetune_api.models import STRUCTURAL_ANY_OF

CRD_DIR = Path(__file__).resolve().parent.parent  # crds/ in a checkout
_DROP = {"title", "additionalProperties", "$defs", "discriminator"}


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"].split("/")[-1]
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**defs[ref], **rest}
    return schema


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Translate one pydantic JSON-schema node into a structural CRD schema node."""
    schema = _resolve(schema, defs)
    out: dict[str, Any] = {}
    if schema.get("x-kubernetes-int-or-string"):
        # The controller-gen shape for resource quantities; `pattern` applies to strings only.
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        out["x-kubernetes-int-or-string"] = True
        patterns = [s["pattern"] for s in schema.get("anyOf", []) if "pattern" in s]
        if patterns:
            out["pattern"] = patterns[0]
        # maxLength bounds what a CEL rule reading the value may cost (tests/unit/test_crd_cel_cost.py).
        lengths = [s["maxLength"] for s in schema.get("anyOf", []) if "maxLength" in s]
        if lengths:
            out["maxLength"] = lengths[0]
        if isinstance(schema.get("default"), int | str):
            out["default"] = schema["default"]
        if "description" in schema:
            out["description"] = schema["description"]
        return out

    any_of = schema.get("anyOf")
    if any_of is not None:
        non_null = [s for s in any_of if s.get("type") != "null"]
        if len(non_null) == 1:
            inner = structural(non_null[0], defs)
            extra = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
            inner.update(structural_extras(extra))
            # Optional fields are not `nullable`: the apiserver prunes a null for a
            # non-nullable field, so `has()` in CEL rules means "set".
            if schema.get("default") is not None:
                inner["default"] = schema["default"]
            return inner
        raise ValueError(f"cannot express anyOf {any_of} structurally")

    if not schema.get("type") and "enum" not in schema and "const" not in schema:
        out = {"x-kubernetes-preserve-unknown-fields": True}
        if "description" in schema:
            out["description"] = schema["description"]
        return out

    for key, value in schema.items():
        if key in _DROP or key in ("properties", "items", "const", "anyOf", STRUCTURAL_ANY_OF):
            continue
        if key == "default" and value is None:
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
            continue
        if key == "minLength" and schema.get("type") == "array":
            key = "minItems"
        if key == "maxLength" and schema.get("type") == "array":
            key = "maxItems"
        if key in ("minLength", "maxLength") and schema.get("type") == "object":
            key = "minProperties" if key == "minLength" else "maxProperties"
        out[key] = value
    if "const" in schema:
        out["enum"] = [schema["const"]]
        out.setdefault("type", "string")
    if "enum" in schema and "type" not in out:
        out["type"] = "string"

    if schema.get("type") == "object":
        if "properties" in schema:
            out["properties"] = {k: structural(v, defs) for k, v in schema["properties"].items()}
        else:
            values = schema.get("additionalProperties")
            if isinstance(values, dict) and values:
                out["additionalProperties"] = structural(values, defs)
            else:
                out["x-kubernetes-preserve-unknown-fields"] = True
    if schema.get("type") == "array":
        out["items"] = structural(schema.get("items", {}), defs)
    if STRUCTURAL_ANY_OF in schema:
        out["anyOf"] = schema[STRUCTURAL_ANY_OF]
    return out


def structural_extras(extra: dict[str, Any]) -> dict[str, Any]:
    keep = ("description", "x-kubernetes-validations", "minimum", "maximum")
    return {k: v for k, v in extra.items() if k in keep}


def schema_for(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


def _column(name: str, path: str, typ: str = "string", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": typ, "jsonPath": path, **extra}


def _crd(
    kind: str,
    plural: str,
    short: list[str],
    spec: type[BaseModel],
    status: type[BaseModel],
    columns: list[dict[str, Any]],
    description: str,
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{models.GROUP}"},
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short,
                "categories": ["finetune"],
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        *columns,
                        _column("Age", ".metadata.creationTimestamp", "date"),
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": schema_for(spec),
                                "status": schema_for(status),
                            },
                        }
                    },
                }
            ],
        },
    }


def finetunejob_crd() -> dict[str, Any]:
    return _crd(
        "FineTuneJob",
        "finetunejobs",
        ["ftj"],
        models.FineTuneJobSpec,
        models.FineTuneJobStatus,
        [
            _column("Task", ".spec.task"),
            _column("Phase", ".status.phase"),
            _column("Step", ".status.progress.step", "integer"),
            _column("Accuracy", ".status.metrics.accuracy", "number"),
            _column("Eval-Loss", ".status.metrics.evalLoss", "number"),
            _column("Perplexity", ".status.metrics.perplexity", "number", priority=1),
            _column("Message", ".status.message", priority=1),
        ],
        "FineTuneJob fine-tunes one Hugging Face model on one dataset.",
    )


def sweep_crd() -> dict[str, Any]:
    return _crd(
        "HyperparameterSweep",
        "hyperparametersweeps",
        ["hps", "sweep"],
        models.HyperparameterSweepSpec,
        models.HyperparameterSweepStatus,
        [
            _column("Phase", ".status.phase"),
            _column("Metric", ".spec.objective.metric"),
            _column("Best", ".status.bestTrial.value", "number"),
            _column("Trials", ".status.trials.total", "integer"),
            _column("Running", ".status.trials.running", "integer"),
            _column("Best-Trial", ".status.bestTrial.name", priority=1),
        ],
        "HyperparameterSweep runs an Optuna study whose trials are child FineTuneJobs.",
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD object."""
    return {
        f"finetunejobs.{models.GROUP}.yaml": finetunejob_crd(),
        f"hyperparametersweeps.{models.GROUP}.yaml": sweep_crd(),
    }


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(crd: dict[str, Any]) -> str:
    return yaml.dump(crd, Dumper=_Dumper, sort_keys=False, width=100)


def render_all() -> str:
    """Every CRD as one YAML stream: what `finetune crds` prints, equal to `cat crds/*.yaml`."""
    return "".join("---\n" + render(c) for c in all_crds().values())


def write_all(directory: Path = CRD_DIR) -> list[Path]:
    written = []
    for name, crd in all_crds().items():
        path = directory / name
        path.write_text("---\n" + render(crd))
        written.append(path)
    return written
