"""spec.distillation and spec.pruning: defaults, sweepable paths, and a sweep over them
accepted by the CRD (the bad specs are in test_api_bad_manifests.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from finetune_api.models import TUNABLE_PATHS, FineTuneJobSpec
from finetune_operator.sweep_space import apply_params

pytestmark = pytest.mark.unit

# The real kube-apiserver's dry-run create (tests/conftest.py server_validate).
Validate = Callable[[dict[str, Any]], list[str]]

SPEC: dict[str, Any] = {
    "task": "classification",
    "model": {"path": "/models/student"},
    "dataset": {"train": {"path": "train.tsv"}},
    "distillation": {"teacher": {"path": "/runs/teacher"}},
}


def test_defaults_and_schedule_per_method() -> None:
    spec = FineTuneJobSpec.model_validate(SPEC | {"pruning": {}})
    assert spec.distillation is not None and spec.pruning is not None
    assert (spec.distillation.temperature, spec.distillation.alpha) == (2.0, 0.5)
    assert (spec.pruning.sparsity, spec.pruning.method) == (0.5, "magnitude")
    assert spec.pruning.effective_schedule == "gradual"
    heads = FineTuneJobSpec.model_validate(SPEC | {"pruning": {"method": "heads"}})
    assert heads.pruning is not None and heads.pruning.effective_schedule == "one-shot"


def test_sweeps_can_search_temperature_alpha_and_sparsity() -> None:
    wanted = {"distillation.temperature", "distillation.alpha", "pruning.sparsity"}
    assert wanted <= set(TUNABLE_PATHS)
    assert not any(p.startswith("distillation.teacher") for p in TUNABLE_PATHS)
    trial = apply_params(
        FineTuneJobSpec.model_validate(SPEC),
        {"distillation.temperature": 4.0, "distillation.alpha": 0.9, "pruning.sparsity": 0.3},
    )
    assert trial.distillation is not None and trial.pruning is not None
    assert (trial.distillation.temperature, trial.distillation.alpha) == (4.0, 0.9)
    assert trial.distillation.teacher.path == "/runs/teacher"  # kept from the template
    assert trial.pruning.sparsity == 0.3


@pytest.mark.cluster
def test_crd_accepts_a_sweep_over_the_new_paths(server_validate: Validate) -> None:
    sweep = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "HyperparameterSweep",
        "metadata": {"name": "kd"},
        "spec": {
            "template": SPEC | {"pruning": {"sparsity": 0.5, "schedule": "one-shot"}},
            "searchSpace": {
                "distillation.temperature": {"type": "float", "low": 1.0, "high": 8.0},
                "distillation.alpha": {"type": "float", "low": 0.1, "high": 0.9},
                "pruning.sparsity": {"type": "categorical", "choices": [0.3, 0.5, 0.7]},
            },
            "maxTrials": 4,
        },
    }
    assert server_validate(sweep) == []
