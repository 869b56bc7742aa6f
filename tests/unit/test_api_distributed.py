"""The multi-node API: resources.nodes, distributed.strategy, cache, and the CEL rule that
every node must reach the model (checked by the real kube-apiserver)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from finetune_api.models import FineTuneJobSpec, FineTuneJobStatus

pytestmark = pytest.mark.unit

# The real kube-apiserver's dry-run create (tests/conftest.py server_validate).
Validate = Callable[[dict[str, Any]], list[str]]


def manifest(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "task": "classification",
        "model": {"path": "/models/minilm"},
        "dataset": {"train": {"path": "/data/train.tsv"}},
    }
    base.update(spec)
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "dist"},
        "spec": copy.deepcopy(base),
    }


def test_defaults_single_node_ddp_no_cache() -> None:
    spec = FineTuneJobSpec.model_validate(manifest()["spec"])
    assert spec.resources.nodes == 1
    assert spec.distributed.strategy == "ddp"
    assert spec.cache is None


@pytest.mark.parametrize("nodes", [0, 65])
@pytest.mark.cluster
def test_nodes_bounds(nodes: int, server_validate: Validate) -> None:
    doc = manifest(resources={"nodes": nodes})
    assert any("nodes" in e for e in server_validate(doc))
    with pytest.raises(ValidationError, match="nodes"):
        FineTuneJobSpec.model_validate(doc["spec"])


@pytest.mark.cluster
def test_unknown_strategy_is_refused(server_validate: Validate) -> None:
    doc = manifest(distributed={"strategy": "deepspeed"})
    assert any("strategy" in e for e in server_validate(doc))


SHARED = [{"claimName": "models", "mountPath": "/models"}]


@pytest.mark.parametrize(
    ("case", "spec", "ok"),
    [
        ("one node, local path", {}, True),
        ("two nodes, path not on a volume", {"resources": {"nodes": 2}}, False),
        ("two nodes, path on a PVC", {"resources": {"nodes": 2}, "volumes": SHARED}, True),
        (
            "two nodes, prefix is not a parent folder",
            {
                "resources": {"nodes": 2},
                "volumes": [{"claimName": "m", "mountPath": "/mod"}],
            },
            False,
        ),
        (
            "two nodes, hub name without cache",
            {"resources": {"nodes": 2}, "model": {"name": "bert-base-uncased"}},
            False,
        ),
        (
            "two nodes, hub name with cache",
            {
                "resources": {"nodes": 2},
                "model": {"name": "bert-base-uncased"},
                "cache": {"pvc": "hf-cache"},
            },
            True,
        ),
        (
            "two nodes, model.uri (each pod downloads it)",
            {"resources": {"nodes": 2}, "model": {"uri": "s3://models/minilm"}},
            True,
        ),
        (
            "two nodes, path inside the cache",
            {
                "resources": {"nodes": 2},
                "model": {"path": "/cache/huggingface/minilm"},
                "cache": {"pvc": "hf-cache", "readOnly": True},
            },
            True,
        ),
    ],
)
@pytest.mark.cluster
def test_multi_node_model_must_be_reachable_from_every_node(
    case: str, spec: dict[str, Any], ok: bool, server_validate: Validate
) -> None:
    errors = server_validate(manifest(**spec))
    if ok:
        assert errors == [], case
    else:
        assert any("every pod must reach the model" in e for e in errors), (case, errors)


def test_the_reachability_rule_is_cluster_only() -> None:
    """`finetune run` runs every node on one machine: a local path is fine there."""
    spec = FineTuneJobSpec.model_validate(manifest(resources={"nodes": 2})["spec"])
    assert spec.resources.nodes == 2


def test_status_workers_round_trip() -> None:
    status = FineTuneJobStatus.model_validate({"workers": {"ready": 1, "total": 2}})
    assert status.dump()["workers"] == {"ready": 1, "total": 2}


@pytest.mark.parametrize("extra", [{"lora": {"rank": 4}}, {"quantization": {"mode": "qat"}}])
@pytest.mark.cluster
def test_fsdp_is_for_full_fine_tuning(extra: dict[str, Any], server_validate: Validate) -> None:
    doc = manifest(distributed={"strategy": "fsdp"}, **extra)
    assert any("fsdp is for full fine-tuning" in e for e in server_validate(doc))
    with pytest.raises(ValidationError, match="fsdp is for full fine-tuning"):
        FineTuneJobSpec.model_validate(doc["spec"])
    doc = manifest(distributed={"strategy": "ddp"}, **extra)
    assert server_validate(doc) == []
