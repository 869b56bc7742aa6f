"""The CRDs in crds/ are generated from the models and are valid, structural CRDs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from finetune_api import crd
from finetune_cli.app import app
from support.crds import load_crds

pytestmark = pytest.mark.unit

# The real kube-apiserver's dry-run create (tests/conftest.py server_validate).
Validate = Callable[[dict[str, Any]], list[str]]
ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_committed_crds_match_the_models() -> None:
    for name, obj in crd.all_crds().items():
        committed = (ROOT / "crds" / name).read_text()
        assert committed == "---\n" + crd.render(obj), (
            f"crds/{name} drifted: run `finetune crds --write`"
        )


def test_finetune_crds_prints_exactly_the_committed_files() -> None:
    result = CliRunner().invoke(app, ["crds"])
    assert result.exit_code == 0
    assert result.stdout == "".join(p.read_text() for p in sorted((ROOT / "crds").glob("*.yaml")))


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    nodes = [(path, schema)]
    for key, sub in schema.get("properties", {}).items():
        nodes += _walk(sub, f"{path}.{key}")
    if isinstance(schema.get("additionalProperties"), dict):
        nodes += _walk(schema["additionalProperties"], f"{path}[*]")
    if "items" in schema:
        nodes += _walk(schema["items"], f"{path}[]")
    for sub in schema.get("anyOf", []):
        nodes.append((f"{path}(anyOf)", sub))
    return nodes


@pytest.mark.parametrize("kind", ["FineTuneJob", "HyperparameterSweep"])
def test_schema_is_structural(kind: str) -> None:
    """Rules the apiserver enforces for apiextensions.k8s.io/v1 structural schemas."""
    schema = load_crds()[kind]
    for path, node in _walk(schema):
        if path.endswith("(anyOf)"):
            # int-or-string branches carry a type; value-validation branches (required)
            # none, as kube-apiserver's structural schema rules allow.
            assert set(node) <= {"type"} or set(node) <= {"required"}, (
                f"{path}: anyOf branches may only carry type, or only required"
            )
            continue
        has_type = "type" in node
        escape = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
            "x-kubernetes-int-or-string"
        )
        assert has_type or escape, f"{kind}{path}: every node needs a type"
        assert not ("properties" in node and "additionalProperties" in node), path
        for banned in ("$ref", "$defs", "title", "const", "nullable", "allOf", "oneOf", "not"):
            assert banned not in node, f"{kind}{path}: {banned} is not allowed"
        if node.get("type") == "array":
            assert "items" in node, f"{kind}{path}: arrays need items"
        if "default" in node and has_type:
            assert node["default"] is not None
        for k in ("exclusiveMinimum", "exclusiveMaximum"):
            if k in node:
                assert isinstance(node[k], bool), f"{path}: OpenAPI v3.0 wants a boolean {k}"


@pytest.mark.parametrize("kind", ["FineTuneJob", "HyperparameterSweep"])
def test_crd_metadata(kind: str) -> None:
    files = {
        yaml.safe_load(p.read_text())["spec"]["names"]["kind"]: p
        for p in (ROOT / "crds").glob("*.yaml")
    }
    obj = yaml.safe_load(files[kind].read_text())
    assert obj["apiVersion"] == "apiextensions.k8s.io/v1"
    spec = obj["spec"]
    assert spec["group"] == "finetune.dev"
    assert spec["names"]["categories"] == ["finetune"]
    short = {"FineTuneJob": ["ftj"], "HyperparameterSweep": ["hps", "sweep"]}[kind]
    assert spec["names"]["shortNames"] == short
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Age"] == ".metadata.creationTimestamp"
    key_metric = {"FineTuneJob": "Accuracy", "HyperparameterSweep": "Best"}[kind]
    assert key_metric in columns
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["phase"]["enum"] == ["Pending", "Running", "Succeeded", "Failed", "Suspended"]
    cond = status["conditions"]["items"]
    assert set(cond["required"]) == {"type", "status", "reason", "lastTransitionTime"}
    assert "observedGeneration" in status


def test_field_descriptions_reach_kubectl_explain() -> None:
    spec = load_crds()["FineTuneJob"]["properties"]["spec"]
    assert "hub id" in spec["properties"]["model"]["properties"]["name"]["description"]
    assert (
        "Peak learning rate"
        in (spec["properties"]["hyperparameters"]["properties"]["learningRate"]["description"])
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
@pytest.mark.cluster
def test_examples_validate_against_the_crds(path: Path, server_validate: Validate) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        assert server_validate(doc) == []


@pytest.mark.cluster
def test_apiserver_defaults_match_model_defaults(control_plane: Any) -> None:
    """A minimal manifest defaulted by kube-apiserver (a dry-run create) equals the
    model's defaults."""
    from finetune_api.models import FineTuneJobSpec

    minimal = {
        "task": "classification",
        "model": {"name": "m"},
        "dataset": {"train": {"path": "t.csv"}},
        "hyperparameters": {},
    }
    doc = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "minimal", "namespace": "team-a"},
        "spec": minimal,
    }
    with control_plane.client() as client:
        resp = client.post(
            "/apis/finetune.dev/v1alpha1/namespaces/team-a/finetunejobs",
            params={"dryRun": "All"},
            json=doc,
        )
    assert resp.status_code == 201, resp.text
    defaulted = resp.json()["spec"]
    model = FineTuneJobSpec.model_validate(minimal).dump()
    assert defaulted["hyperparameters"] == model["hyperparameters"]
