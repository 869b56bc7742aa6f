"""Validate a manifest the way the apiserver would against our generated CRDs.

The apiserver (with kubectl's default strict field validation) prunes nulls,
applies schema defaults, rejects unknown fields, checks the OpenAPI v3 schema
and then evaluates the x-kubernetes-validations CEL rules. This module does the
same with jsonschema (OpenAPI v3.0 is draft-4 shaped) and cel-python, so tests
can show that a bad manifest is refused at `kubectl apply` time.

`admit()` is the apiserver's write path for one custom resource, used by the
operator tests' emulator (tests/support/apiserver.py) and by the status-pruning
tests: nulls pruned, unknown fields pruned (reported, not refused: the default
`fieldValidation=Warn` of API clients), schema defaults applied, then the schema
and the CEL rules checked, each failure a `Cause` shaped like a metav1.StatusCause.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from dataclasses import dataclass
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


@functools.lru_cache(maxsize=256)
def _program(rule: str) -> Any:
    return _ENV.program(_ENV.compile(rule))


@dataclass(frozen=True)
class Cause:
    """One metav1.StatusCause: the field (dotted, as the apiserver writes it), why, how."""

    field: str
    message: str
    reason: str = "FieldValueInvalid"
    path: tuple[str | int, ...] = ()  # where the checked value sits, for ratcheting

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}


def _field(path: str) -> str:
    return path.lstrip(".") or "<root>"


def cel_causes(
    schema: dict[str, Any], value: Any, path: str = "", at: tuple[str | int, ...] = ()
) -> list[Cause]:
    """The x-kubernetes-validations rules that `value` breaks, innermost fields included."""
    causes = []
    for rule in schema.get("x-kubernetes-validations", []):
        result = _program(rule["rule"]).evaluate({"self": _to_cel(schema, value)})
        if result is not True and not (isinstance(result, celpy.celtypes.BoolType) and result):
            kind = "object" if isinstance(value, dict) else type(value).__name__
            message = f'Invalid value: "{kind}": {rule["message"]}'
            causes.append(Cause(_field(path), message, path=at))
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                causes += cel_causes(sub, value[key], f"{path}.{key}", (*at, key))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, v in value.items():
                causes += cel_causes(extra, v, f"{path}[{key}]", (*at, key))
    elif isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            causes += cel_causes(schema["items"], v, f"{path}[{i}]", (*at, i))
    return causes


def _cel_errors(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    return [
        f"{c.field.replace('<root>', '(root)')}: Invalid value: {c.message.split(': ', 2)[-1]}"
        for c in cel_causes(schema, value, path)
    ]


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


# --------------------------------------------------------------------------- the write path

# Root fields every object keeps whatever its schema says (metadata is ObjectMeta, which
# the apiserver prunes and validates with its own Go type, not with the CRD schema).
_ROOT_KEPT = ("apiVersion", "kind", "metadata")


def prune(schema: dict[str, Any], value: Any, path: str = "") -> tuple[Any, list[str]]:
    """Structural pruning: (a copy without the fields the schema does not know, their paths).

    Fields under `x-kubernetes-preserve-unknown-fields` are kept; known fields beneath such
    a node are still pruned inside. Scalars and type mismatches are left to validation.
    """
    dropped: list[str] = []
    if isinstance(value, dict) and schema.get("type", "object") == "object":
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        keep_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        out: dict[str, Any] = {}
        for key, sub_value in value.items():
            sub_path = f"{path}.{key}" if key.isidentifier() else f"{path}[{key}]"
            if key in props:
                out[key], lost = prune(props[key], sub_value, sub_path)
                dropped += lost
            elif isinstance(extra, dict):
                out[key], lost = prune(extra, sub_value, f"{path}[{key}]")
                dropped += lost
            elif keep_unknown or extra is True:
                out[key] = copy.deepcopy(sub_value)
            else:
                dropped.append(_field(sub_path))
        return out, dropped
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        items = [prune(schema["items"], v, f"{path}[{i}]") for i, v in enumerate(value)]
        return [v for v, _ in items], [p for _, lost in items for p in lost]
    return copy.deepcopy(value), dropped


def prune_object(schema: dict[str, Any], obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`prune` for a whole object: apiVersion, kind and metadata pass untouched."""
    body = {k: v for k, v in obj.items() if k not in _ROOT_KEPT}
    pruned, dropped = prune(schema, body)
    return {**{k: obj[k] for k in _ROOT_KEPT if k in obj}, **pruned}, dropped


def drop_nulls(schema: dict[str, Any], value: Any) -> Any:
    """Nulls of non-nullable fields: defaulted where the schema has a default, else pruned.

    The apiserver does this before defaulting; under preserve-unknown-fields nulls stay.
    """
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        out = {}
        for key, sub_value in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is None:
                out[key] = sub_value
            elif sub_value is not None:
                out[key] = drop_nulls(sub, sub_value)
            elif sub.get("nullable"):
                out[key] = None
            elif "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [v if v is None else drop_nulls(schema["items"], v) for v in value]
    return value


_REASONS = {
    "required": "FieldValueRequired",
    "enum": "FieldValueNotSupported",
    "type": "FieldValueTypeInvalid",
    "maxItems": "FieldValueTooMany",
    "maxProperties": "FieldValueTooMany",
    "maxLength": "FieldValueTooLong",
}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "integer" if isinstance(value, int) else "number"
    return {dict: "object", list: "array", str: "string", type(None): "null"}[type(value)]


def _schema_cause(err: jsonschema.ValidationError) -> Cause:
    """A jsonschema error in the apiserver's words (k8s.io/kube-openapi validate errors)."""
    field = ".".join(str(p) for p in err.absolute_path)
    name = field or "<root>"
    kind, value = err.validator, err.instance
    reason = _REASONS.get(str(kind), "FieldValueInvalid")
    shown = json.dumps(value) if not isinstance(value, dict | list) else f'"{_json_type(value)}"'
    if kind == "required":
        # one error per missing property: "'name' is a required property"
        missing = err.message.split("'")[1] if err.message.startswith("'") else err.message
        return Cause(f"{field}.{missing}".lstrip("."), "Required value", reason)
    if kind == "enum":
        supported = ", ".join(json.dumps(v) for v in err.validator_value)
        return Cause(name, f"Unsupported value: {shown}: supported values: {supported}", reason)
    if kind == "type":
        got = _json_type(value)
        message = f'Invalid value: "{got}": {name} in body must be of type {err.validator_value}'
        return Cause(name, f'{message}: "{got}"', reason)
    if kind in ("minimum", "maximum"):
        strict = err.schema.get("exclusiveMinimum" if kind == "minimum" else "exclusiveMaximum")
        word = "greater than" if kind == "minimum" else "less than"
        bound = f"{word}{'' if strict else ' or equal to'} {err.validator_value}"
        return Cause(name, f"Invalid value: {shown}: {name} in body should be {bound}", reason)
    if kind in ("maxItems", "maxProperties"):
        size = len(value)
        noun = "items" if kind == "maxItems" else "properties"
        return Cause(
            name, f"Too many: {size}: must have at most {err.validator_value} {noun}", reason
        )
    if kind == "pattern":
        return Cause(
            name,
            f"Invalid value: {shown}: {name} in body should match '{err.validator_value}'",
            reason,
        )
    return Cause(name, f"Invalid value: {shown}: {err.message}", reason)


# id(schema) -> (schema, its validator): every write of the emulator checks one of a few
# schemas; keeping the schema in the value keeps its id from being reused.
_VALIDATORS: dict[int, tuple[dict[str, Any], jsonschema.Draft4Validator]] = {}


def schema_causes(schema: dict[str, Any], obj: Any) -> list[Cause]:
    """OpenAPI (types, enums, bounds, required, patterns) failures, in path order."""
    if id(schema) not in _VALIDATORS:
        _VALIDATORS[id(schema)] = (schema, jsonschema.Draft4Validator(_openapi(schema)))
    validator = _VALIDATORS[id(schema)][1]
    errors = sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    return [dataclasses.replace(_schema_cause(e), path=tuple(e.absolute_path)) for e in errors]


def _openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema jsonschema should check: extensions dropped (metadata's shape is Go's)."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes")}
    if "properties" in schema:
        out["properties"] = {k: _openapi(v) for k, v in schema["properties"].items()}
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = _openapi(schema["additionalProperties"])
    if "items" in schema:
        out["items"] = _openapi(schema["items"])
    return out


@dataclass
class Admission:
    """What the apiserver makes of one write: the object it stores, or why it refuses it."""

    obj: dict[str, Any]
    pruned: list[str]
    causes: list[Cause]


_MISSING = object()


def _at(obj: Any, path: tuple[str | int, ...]) -> Any:
    for key in path:
        try:
            obj = obj[key]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return obj


def _changed(old: Any, new: Any, path: tuple[str | int, ...]) -> bool:
    before = _at(old, path)
    return before is _MISSING or before != _at(new, path)


def admit(
    schema: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None = None
) -> Admission:
    """Decode (nulls, pruning, defaults) and validate (schema, then CEL) one whole object.

    With `old` (an update) validation ratchets, as kube-apiserver does since 1.30: a failure
    whose value is unchanged from the stored object does not refuse the write, so an object
    stored under an older, laxer schema can still have its status written.
    """
    body = drop_nulls(schema, {k: v for k, v in obj.items() if k not in _ROOT_KEPT})
    pruned, dropped = prune_object(schema, {**{k: obj[k] for k in _ROOT_KEPT if k in obj}, **body})
    defaulted = _apply_defaults(schema, pruned)
    causes = schema_causes(schema, {k: v for k, v in defaulted.items() if k != "metadata"})
    if not causes:  # the apiserver runs CEL only on schema-valid objects
        causes = cel_causes(schema, {k: v for k, v in defaulted.items() if k != "metadata"})
    if old is not None:  # the stored object is read back defaulted too
        before = _apply_defaults(schema, prune_object(schema, drop_nulls(schema, old))[0])
        causes = [c for c in causes if _changed(before, defaulted, c.path)]
    return Admission(defaulted, dropped, causes)


def status_loss(
    kind: str, status: dict[str, Any], crds: dict[str, dict[str, Any]] | None = None
) -> tuple[list[str], list[Cause]]:
    """What a real apiserver does to a status write: (fields it prunes, causes to refuse it)."""
    root = (crds or load_crds())[kind]
    schema = {"type": "object", "properties": {"status": root["properties"]["status"]}}
    pruned, dropped = prune(schema, drop_nulls(schema, {"status": status}))
    return dropped, schema_causes(schema, _apply_defaults(schema, pruned))
