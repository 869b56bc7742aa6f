"""Read manifests from YAML and turn validation failures into one clear message.

Used by the CLI (`finetune run`, `finetune sweep`) and by the operator, so a
bad spec reads the same everywhere: `spec.hyperparameters.learningRate: Input
should be greater than 0 (got -1)`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from finetune_api.models import (
    FineTuneJobSpec,
    HyperparameterSweep,
    HyperparameterSweepSpec,
)

M = TypeVar("M", bound=BaseModel)


class UserError(Exception):
    """An error the user can fix; the CLI prints its message, never a traceback."""


class SpecError(UserError, ValueError):
    """A manifest that cannot be used; the message names the field and the reason."""


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        where = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check spelling and nesting)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif "input" in e and not isinstance(e["input"], dict | list):
            msg += f" (got {e['input']!r})"
        lines.append(f"{where}: {msg}")
    return "\n".join(dict.fromkeys(lines))


def parse(model: type[M], data: Any, prefix: str = "") -> M:
    """Validate data into model, raising SpecError with field paths on failure."""
    try:
        # by_name=False: the wire form is camelCase only, exactly as the CRD schema accepts.
        return model.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, prefix)) from None


def load_documents(path: str | Path) -> list[dict[str, Any]]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise SpecError(f"{p}: cannot read the file ({err.strerror})") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise SpecError(f"{p}: not valid YAML: {err}") from None
    if not docs:
        raise SpecError(f"{p}: the file holds no YAML document")
    for d in docs:
        if not isinstance(d, dict):
            raise SpecError(f"{p}: each document must be a mapping, got {type(d).__name__}")
    return docs


# One-of sources: setting one member with --set drops the others from that mapping, so
# `--set spec.model.path=DIR` on a manifest naming model.name means "use DIR instead".
# Keyed by the mapping's own name (model, distillation.teacher, dataset.train/eval).
ONE_OF: dict[str, dict[str, tuple[str, ...]]] = {
    "model": {"name": ("path", "uri"), "path": ("name", "uri"), "uri": ("name", "path")},
    "teacher": {"name": ("path", "uri"), "path": ("name", "uri"), "uri": ("name", "path")},
    "train": {
        "path": ("hub", "config", "split", "uri"),
        "hub": ("path", "uri"),
        "uri": ("path", "hub", "config", "split"),
    },
    "eval": {
        "path": ("hub", "config", "split", "uri"),
        "hub": ("path", "uri"),
        "uri": ("path", "hub", "config", "split"),
    },
}


def _drop_alternatives(node: dict[str, Any], parent: str, key: str) -> None:
    for other in ONE_OF.get(parent, {}).get(key, ()):
        node.pop(other, None)


def apply_overrides(
    doc: dict[str, Any], overrides: list[str], cwd: Path | None = None
) -> dict[str, Any]:
    """Apply `--set a.b.c=value` overrides (value parsed as YAML) to a manifest.

    Setting one source of a model or data source replaces the other (see ONE_OF). With
    `cwd`, a relative `path` set this way resolves against it (the shell's current
    directory), not against the YAML file's folder as the file's own paths do."""
    out = copy.deepcopy(doc)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected PATH=VALUE, e.g. spec.model.path=/models/x")
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SpecError(f"--set {item!r}: {part} is not a mapping")
            node = child
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            problem = " ".join(str(getattr(err, "problem", None) or err).split())
            raise SpecError(
                f"--set {item!r}: the value is not valid YAML ({problem}); e.g. "
                "--set 'spec.model={path: /models/x}' or --set spec.model.path=/models/x"
            ) from None
        node[parts[-1]] = _absolute_paths(parts[-1], value, cwd) if cwd else value
        if len(parts) > 1:
            _drop_alternatives(node, parts[-2], parts[-1])
    return out


def _absolute_paths(key: str, value: Any, cwd: Path) -> Any:
    """A relative `path` given with --set, against `cwd` (where the shell user typed it),
    at any depth of the value: `spec.model.path=m` and `spec.model={path: m}` alike."""
    if key == "path" and isinstance(value, str) and value and "://" not in value:
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else cwd / p)
    if isinstance(value, dict):
        return {k: _absolute_paths(str(k), v, cwd) for k, v in value.items()}
    return value


def load_manifest(path: str | Path, kind: type[M], overrides: list[str] | None = None) -> M:
    """The single document of the given kind in path, validated."""
    docs = [d for d in load_documents(path) if d.get("kind") == kind.__name__]
    if len(docs) != 1:
        raise SpecError(f"{path}: expected exactly one {kind.__name__} document, found {len(docs)}")
    _check_sweep_overrides(kind, overrides or [])
    doc = apply_overrides(docs[0], overrides or [], cwd=Path.cwd())
    return parse(kind, doc, prefix=f"{path}: ")


def _check_sweep_overrides(kind: type[BaseModel], overrides: list[str]) -> None:
    """On a sweep, `--set spec.hyperparameters.x=...` means the template: say so."""
    if kind is not HyperparameterSweep:
        return
    own = {f.alias or n for n, f in HyperparameterSweepSpec.model_fields.items()}
    job = {f.alias or n for n, f in FineTuneJobSpec.model_fields.items()}
    for item in overrides:
        parts = item.partition("=")[0].split(".")
        if len(parts) > 1 and parts[0] == "spec" and parts[1] not in own and parts[1] in job:
            rest = ".".join(parts[1:])
            raise SpecError(
                f"--set {item!r}: a HyperparameterSweep has no spec.{parts[1]}; the trials' "
                f"FineTuneJob spec is spec.template, e.g. --set spec.template.{rest}=..."
            )
