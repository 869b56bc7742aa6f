"""spec.method, loss, chatTemplate and lora.quantizeBase: defaults, the recipe each spec
gets, sweepable paths and a sweep over method.beta accepted by the CRD (the bad specs
are in test_api_bad_manifests.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from finetune_api.models import TUNABLE_PATHS, FineTuneJobSpec
from finetune_operator.sweep_space import apply_params

pytestmark = pytest.mark.unit

Validate = Callable[[dict[str, Any]], list[str]]

SPEC: dict[str, Any] = {
    "task": "causal-lm",
    "model": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
    "dataset": {"train": {"path": "pref.jsonl"}},
    "method": {"type": "dpo"},
    "lora": {"rank": 8},
}


def test_defaults() -> None:
    spec = FineTuneJobSpec.model_validate({k: v for k, v in SPEC.items() if k != "method"})
    assert (spec.method.type, spec.method.beta) == ("sft", 0.1)
    assert spec.dataset.format == "text" and spec.loss is None and spec.chat_template is None
    assert spec.lora is not None and spec.lora.quantize_base is None
    hp = spec.hyperparameters
    assert hp.gradient_checkpointing is None and hp.packing is None  # decided per run


@pytest.mark.parametrize(
    ("changes", "recipe"),
    [
        ({"method": {"type": "sft"}}, "CausalLm"),
        (
            {
                "method": {"type": "sft"},
                "dataset": {"train": {"path": "c.jsonl"}, "format": "messages"},
            },
            "ChatSft",
        ),
        ({}, "Preference"),
        ({"method": {"type": "orpo"}}, "Preference"),
        ({"task": "masked-lm", "method": {"type": "sft"}}, "MaskedLm"),
    ],
)
def test_each_spec_gets_its_recipe(changes: dict[str, Any], recipe: str) -> None:
    from finetune_trainer.tasks import recipe_for

    spec = FineTuneJobSpec.model_validate(SPEC | changes)
    assert type(recipe_for(spec)).__name__ == recipe


def test_chat_loss_defaults_follow_the_format() -> None:
    from finetune_trainer.tasks import recipe_for

    def loss(fmt: str, chosen: str | None = None) -> str:
        doc = SPEC | {"method": {"type": "sft"}, "dataset": {"train": {"path": "c"}, "format": fmt}}
        spec = FineTuneJobSpec.model_validate(doc | ({"loss": chosen} if chosen else {}))
        return str(recipe_for(spec).loss)  # type: ignore[attr-defined]

    assert [loss(f) for f in ("messages", "sharegpt", "prompt-completion", "alpaca")] == [
        "assistant",
        "assistant",
        "completion",
        "completion",
    ]
    assert loss("messages", "all") == "all"


def test_sweeps_can_search_beta_and_the_new_switches() -> None:
    wanted = {"method.beta", "method.type", "loss", "lora.quantizeBase"}
    assert wanted <= set(TUNABLE_PATHS)
    assert "chatTemplate" not in TUNABLE_PATHS  # a template is not a hyperparameter
    trial = apply_params(FineTuneJobSpec.model_validate(SPEC), {"method.beta": 0.3})
    assert (trial.method.type, trial.method.beta) == ("dpo", 0.3)


@pytest.mark.cluster
def test_crd_accepts_a_sweep_over_beta(server_validate: Validate) -> None:
    sweep = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "HyperparameterSweep",
        "metadata": {"name": "dpo-beta"},
        "spec": {
            "template": SPEC,
            "objective": {"metric": "rewardAccuracy", "direction": "maximize"},
            "searchSpace": {
                "method.beta": {"type": "float", "low": 0.05, "high": 0.5, "log": True}
            },
            "maxTrials": 4,
        },
    }
    assert server_validate(sweep) == []
    job = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "qlora-chat"},
        "spec": SPEC
        | {
            "method": {"type": "sft"},
            "dataset": {"train": {"path": "c.jsonl"}, "format": "messages"},
            "loss": "assistant",
            "chatTemplate": "chatml",
            "lora": {"rank": 8, "quantizeBase": "nf4"},
            "hyperparameters": {"gradientCheckpointing": True, "packing": True},
        },
    }
    assert server_validate(job) == []
