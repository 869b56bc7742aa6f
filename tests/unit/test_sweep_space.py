"""Search space -> trial spec and the child manifest (names, labels, annotation, owner)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from finetune_api.manifest import SpecError
from finetune_api.models import FineTuneJob, HyperparameterSweep
from finetune_operator.sweep_space import (
    ANNOTATION_PARAMS,
    LABEL_SWEEP,
    LABEL_TRIAL,
    apply_params,
    decode_params,
    trial_job,
    trial_manifest,
    trial_name,
    trial_number,
)

pytestmark = pytest.mark.unit


def sweep(**spec: Any) -> HyperparameterSweep:
    doc: dict[str, Any] = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "HyperparameterSweep",
        "metadata": {"name": "demo", "namespace": "ml", "labels": {"team": "nlp"}},
        "spec": {
            "template": {
                "task": "classification",
                "model": {"path": "/models/m"},
                "dataset": {"train": {"path": "train.tsv"}},
                "hyperparameters": {"epochs": 1},
            },
            "searchSpace": {
                "hyperparameters.learningRate": {"type": "float", "low": 1e-5, "high": 1e-3},
            },
            **spec,
        },
    }
    return HyperparameterSweep.model_validate(doc)


def test_dotted_paths_set_template_fields() -> None:
    sw = sweep()
    spec = apply_params(
        sw.spec.template,
        {"hyperparameters.learningRate": 3e-4, "hyperparameters.batchSize": 32},
    )
    assert spec.hyperparameters.learning_rate == 3e-4
    assert spec.hyperparameters.batch_size == 32
    assert spec.hyperparameters.epochs == 1  # untouched fields keep the template's value
    assert sw.spec.template.hyperparameters.learning_rate == 5e-5  # template not mutated


def test_path_into_absent_optional_section_creates_it() -> None:
    spec = apply_params(sweep().spec.template, {"lora.rank": 16, "lora.dropout": 0.2})
    assert spec.lora is not None
    assert (spec.lora.rank, spec.lora.dropout, spec.lora.alpha) == (16, 0.2, 32)


def test_invalid_value_names_the_field() -> None:
    with pytest.raises(SpecError, match="learningRate"):
        apply_params(sweep().spec.template, {"hyperparameters.learningRate": -1.0})


def test_trial_manifest_contract() -> None:
    sw = sweep()
    params = {"hyperparameters.learningRate": 1e-4}
    m = trial_manifest(sw, 3, params, owner_uid="uid-1")
    meta = m["metadata"]
    assert meta["name"] == "demo-trial-3" == trial_name("demo", 3)
    assert meta["namespace"] == "ml"
    assert meta["labels"] == {"team": "nlp", LABEL_SWEEP: "demo", LABEL_TRIAL: "3"}
    assert json.loads(meta["annotations"][ANNOTATION_PARAMS]) == params
    (owner,) = meta["ownerReferences"]
    assert owner["kind"] == "HyperparameterSweep" and owner["uid"] == "uid-1"
    assert owner["controller"] is True
    job = FineTuneJob.model_validate(m)
    assert job.spec.hyperparameters.learning_rate == 1e-4


def test_trial_output_path_gets_a_folder_per_trial() -> None:
    sw = sweep()
    sw.spec.template.output.path = "/output/sweeps/"
    job = trial_job(sw, 0, {"hyperparameters.learningRate": 1e-4})
    assert job.spec.output.path == "/output/sweeps/demo-trial-0"
    assert trial_job(sweep(), 0, {}).spec.output.path is None


def test_trial_numbers_and_params_roundtrip() -> None:
    assert trial_number("a-b-trial-12") == 12
    assert trial_number("a-b-trial-x") is None
    assert trial_number("trial-3") is None
    assert decode_params('{"a": 1}') == {"a": 1}
    assert decode_params("not json") == {}
    assert decode_params(None) == {}


def test_long_sweep_name_is_a_clear_error() -> None:
    sw = sweep()
    sw.metadata.name = "x" * 60
    with pytest.raises(SpecError, match="shorter sweep name"):
        trial_manifest(sw, 1, {})
