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


def test_beats_base_compares_with_the_base_models_value_plus_the_margin() -> None:
    when = PromoteWhen.model_validate({"metric": "accuracy", "beatsBase": {"by": 0.05}})
    met = promote.check_gate(when, {"accuracy": 0.8, "base.accuracy": 0.7})
    assert met.holds and met.message == "accuracy 0.8 against at least base 0.7 + 0.05: gap +0.05"
    missed = promote.check_gate(when, {"accuracy": 0.72, "base.accuracy": 0.7})
    assert not missed.holds and "gap -0.03" in missed.message
    # a perplexity is better lower: the run must be at most base - by
    ppl = PromoteWhen.model_validate({"metric": "perplexity", "beatsBase": {"by": 1}})
    assert promote.check_gate(ppl, {"perplexity": 8.0, "base.perplexity": 10.0}).holds
    worse = promote.check_gate(ppl, {"perplexity": 9.5, "base.perplexity": 10.0})
    assert not worse.holds and "at most base 10 - 1: gap -0.5" in worse.message
    # an explicit direction wins over the name
    odd = PromoteWhen.model_validate(
        {"metric": "lmEval.t.acc", "beatsBase": {"direction": "minimize"}}
    )
    assert promote.check_gate(odd, {"lmEval.t.acc": 0.1, "base.lmEval.t.acc": 0.2}).holds
    absent = promote.check_gate(when, {"accuracy": 0.9})
    assert (absent.holds, absent.reason) == (False, "MetricMissing")
    assert absent.message.startswith("base.accuracy was not reported")


def test_gate_one_of_three() -> None:
    with pytest.raises(ValidationError, match="exactly one of minimum, maximum or beatsBase"):
        PromoteWhen.model_validate({"metric": "acc", "minimum": 1, "beatsBase": {}})
    assert PromoteWhen.model_validate({"metric": "acc", "beatsBase": {}}).beats_base is not None


def test_a_sweep_carries_promote_to_its_trials_not_its_template() -> None:
    from finetune_api.models import HyperparameterSweep
    from finetune_operator.sweep_space import trial_manifest

    base = {
        "metadata": {"name": "hp", "namespace": "ml"},
        "spec": {
            "template": _job().spec.dump(),
            "searchSpace": {"hyperparameters.epochs": {"type": "int", "low": 1, "high": 3}},
            "objective": {"metric": "perplexity", "direction": "minimize"},
            "promote": {"when": {"metric": "perplexity", "maximum": 9}},
        },
    }
    sweep = HyperparameterSweep.model_validate(base)
    child = trial_manifest(sweep, 0, {"hyperparameters.epochs": 2})
    assert child["spec"]["promote"]["when"] == {"metric": "perplexity", "maximum": 9.0}
    assert "finetune.dev/promote" not in child["metadata"]["annotations"]  # not yet the best
    inner = {**base["spec"], "template": {**base["spec"]["template"], **base["spec"]}}
    inner["template"] = {**_job().spec.dump(), "promote": base["spec"]["promote"]}
    with pytest.raises(ValidationError, match="promotes only its best trial"):
        HyperparameterSweep.model_validate({**base, "spec": inner})
