"""promote.py's pure core: the gate with its gap, where the model is served from, and the
InferenceService manifest (runtime, backend, resources, LoRA on its base)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from finetune_api.models import FineTuneJob, Promote, PromoteWhen
from finetune_operator import promote

pytestmark = pytest.mark.unit


def _job(**spec: Any) -> FineTuneJob:
    return FineTuneJob.model_validate(
        {
            "metadata": {"name": "bot", "namespace": "ml"},
            "spec": {
                "task": "causal-lm",
                "model": {"name": "org/base"},
                "dataset": {"train": {"path": "/d.jsonl"}},
                "output": {"path": "/output", "pvc": "runs"},
                **spec,
            },
        }
    )


def test_gate_states_value_bound_and_gap() -> None:
    when = PromoteWhen(metric="lmEval.tiny_colors.acc", minimum=0.6)
    met = promote.check_gate(when, {"lmEval.tiny_colors.acc": 0.75})
    assert (met.holds, met.reason) == (True, "GateMet")
    assert met.message == "lmEval.tiny_colors.acc 0.75 against minimum 0.6: gap +0.15"
    missed = promote.check_gate(when, {"lmEval.tiny_colors.acc": 0.5})
    assert (missed.holds, missed.reason) == (False, "GateNotMet")
    assert "gap -0.1" in missed.message
    lower = promote.check_gate(PromoteWhen(metric="perplexity", maximum=10), {"perplexity": 12})
    assert not lower.holds and "maximum 10: gap -2" in lower.message
    absent = promote.check_gate(when, {"perplexity": 3.0})
    assert (absent.holds, absent.reason) == (False, "MetricMissing")
    assert "reported: perplexity" in absent.message


def test_gate_needs_exactly_one_bound() -> None:
    for bad in ({"metric": "acc"}, {"metric": "acc", "minimum": 1, "maximum": 2}):
        with pytest.raises(ValidationError, match="exactly one of minimum, maximum or beatsBase"):
            PromoteWhen.model_validate(bad)


def test_storage_uri_from_the_artifacts() -> None:
    cfg = Promote.model_validate({"when": {"metric": "perplexity", "maximum": 9}})
    assert promote.storage_uri(_job(), cfg, {"model": "/output/model"}) == (
        "pvc://runs/model",
        "model",
    )
    lora = _job(lora={"rank": 4})
    assert promote.storage_uri(lora, cfg, {"model": "/output/adapter"}) == (
        "pvc://runs/adapter",
        "lora",
    )
    both = {"model": "/output/adapter", "mergedModel": "/output/merged"}
    assert promote.storage_uri(lora, cfg, both) == ("pvc://runs/merged", "merged")
    assert promote.storage_uri(_job(), cfg, {"model": "s3://b/run/model"})[0] == "s3://b/run/model"
    no_pvc = _job(output={"path": "/output"})
    uri, why = promote.storage_uri(no_pvc, cfg, {"model": "/output/model"})
    assert uri is None and "output.pvc" in why
    assert promote.storage_uri(_job(), cfg, {})[0] is None


def test_inference_service_defaults_and_lora() -> None:
    cfg = Promote.model_validate({"when": {"metric": "perplexity", "maximum": 9}})
    doc = promote.build_inference_service(_job(), "u1", cfg, "pvc://runs/model", "model")
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert doc["metadata"]["ownerReferences"][0] == {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "name": "bot",
        "uid": "u1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    model = doc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "huggingface"}
    assert "--backend=huggingface" in model["args"]  # CPU: transformers
    assert model["resources"]["limits"] == {"cpu": "1", "memory": "4Gi"}
    gpu = Promote.model_validate(
        {"when": {"metric": "perplexity", "maximum": 9}, "inferenceService": {"gpus": 1}}
    )
    lora = promote.build_inference_service(
        _job(lora={"rank": 4}), "u1", gpu, "pvc://runs/adapter", "lora"
    )["spec"]["predictor"]["model"]
    assert lora["args"][:2] == ["--model_name=bot", "--backend=vllm"]
    assert "--model_id=org/base" in lora["args"] and "--enable-lora" in lora["args"]
    assert lora["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_served_url_only_once_ready() -> None:
    ready = {"type": "Ready", "status": "True"}
    assert promote.served_url({"status": {"url": "http://x", "conditions": [ready]}}) == "http://x"
    not_ready = {"type": "Ready", "status": "False"}
    assert promote.served_url({"status": {"url": "http://x", "conditions": [not_ready]}}) is None
    assert promote.served_url({}) is None
