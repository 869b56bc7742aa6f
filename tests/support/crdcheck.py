"""Validate a manifest the way the apiserver would against our generated CRDs.

The apiserver (with kubectl's default strict field validation) prunes nulls,
applies schema defaults, rejects unknown fields, checks the OpenAPI v3 schema
and then evaluates the x-kubernetes-validations CEL rules. This module does the
same with jsonschema (OpenAPI v3.0 is draft-4 shaped) and cel-python, so tests
can show that a bad manifest is refused at `kubectl apply` time.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


def load_crds() -> dict[str, dict[str, Any]]:
    """kind -> openAPIV3Schema from the committed crds/*.yaml."""
    out = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        kind = crd["spec"]["names"]["kind"]
        out[kind] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return out


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = _apply_defaults(sub, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                value[key] = _apply_defaults(extra, value[key])
    elif isinstance(value, list) and "items" in schema:
        return [_apply_defaults(schema["items"], v) for v in value]
    return value


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Close every object schema: unknown fields are errors (strict field validation)."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes")}
    if "properties" in schema:
        out["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(schema["additionalProperties"])
    if "items" in schema:
        out["items"] = _strict(schema["items"])
    return out


def _to_cel(schema: dict[str, Any], value: Any) -> Any:
    """JSON -> CEL values, typed by the schema (a `number` is always a double)."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return celpy.celtypes.MapType(
            {
                celpy.celtypes.StringType(k): _to_cel(
                    props.get(k, extra if isinstance(extra, dict) else {}), v
                )
                for k, v in value.items()
            }
        )
    if isinstance(value, list):
        return celpy.celtypes.ListType([_to_cel(schema.get("items", {}), v) for v in value])
    if schema.get("type") == "number" and isinstance(value, int | float):
        return celpy.celtypes.DoubleType(float(value))
    return celpy.json_to_cel(value)


_ENV = celpy.Environment()


def _cel_errors(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        program = _ENV.program(_ENV.compile(rule["rule"]))
        result = program.evaluate({"self": _to_cel(schema, value)})
        if result is not True and not (isinstance(result, celpy.celtypes.BoolType) and result):
            errors.append(f"{path.lstrip('.') or '(root)'}: Invalid value: {rule['message']}")
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += _cel_errors(sub, value[key], f"{path}.{key}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, v in value.items():
                errors += _cel_errors(extra, v, f"{path}[{key}]")
    elif isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errors += _cel_errors(schema["items"], v, f"{path}[{i}]")
    return errors


def validate(manifest: dict[str, Any], crds: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Errors the apiserver would report for this manifest ([] when it is accepted)."""
    crds = crds or load_crds()
    kind = manifest.get("kind")
    if kind not in crds:
        return [f"kind: no CRD for {kind!r}"]
    schema = crds[kind]
    obj = _apply_defaults(schema, _drop_nulls(copy.deepcopy(manifest)))
    validator = jsonschema.Draft4Validator(_strict(schema))
    errors = [
        f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    ]
    if errors:  # the apiserver runs CEL only on schema-valid objects
        return errors
    return _cel_errors(schema, obj, "")
