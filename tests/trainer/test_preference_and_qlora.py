"""Preference tuning (TRL DPO, ORPO) and QLoRA (a bitsandbytes nf4 base) on tiny Llamas:
reward metrics in metrics.json and status, the adapter alone saved, predict reloads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeJob, write_rows

from support.tiny_models import chat_rows, preference_rows, tiny_llama

pytestmark = pytest.mark.unit

REWARDS = ("rewardMargin", "rewardAccuracy", "chosenLogps", "rejectedLogps")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def llama256_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bitsandbytes' CPU 4-bit kernel needs hidden size >= 256."""
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama-256"), hidden=256)


def _job(make_job: MakeJob, model: Path, train: Path, **spec: Any) -> Any:
    return make_job(
        task="causal-lm",
        model_path=model,
        train=train,
        hyperparameters={"epochs": 1, "batchSize": 4, "maxLength": 64, "learningRate": 1e-3},
        **spec,
    )


@pytest.mark.parametrize(
    ("method", "lora"), [("dpo", {"rank": 4}), ("dpo", None), ("orpo", {"rank": 4})]
)
def test_preference_run_reports_reward_metrics(
    method: str, lora: dict[str, Any] | None, llama_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    from finetune_trainer.predict import predict
    from finetune_trainer.run import run

    data = write_rows(tmp_path / "pref.jsonl", preference_rows(24))
    spec: dict[str, Any] = {"method": {"type": method, "beta": 0.2}}
    if lora:
        spec["lora"] = lora
    out = tmp_path / "out"
    metrics = run(_job(make_job, llama_dir, data, **spec), spec_dir=None, output_dir=out)
    state = json.loads((out / "metrics.json").read_text())
    assert state["phase"] == "Succeeded"
    for name in REWARDS:
        assert name in state["metrics"] and name in metrics, name
    assert 0.0 <= metrics["rewardAccuracy"] <= 1.0
    assert metrics["chosenLogps"] < 0 and metrics["rejectedLogps"] < 0
    assert "perplexity" not in metrics  # an eval loss of DPO is not a language-model loss
    assert state["history"] and "rewardMargin" in state["history"][-1]
    info = json.loads((out / "run.json").read_text())
    assert (info["method"], info["beta"]) == (method, 0.2)
    assert (out / ("adapter" if lora else "model")).is_dir()
    assert len(predict(out, ["what color is the sky ?"], max_new_tokens=3)) == 1


def test_preference_rows_in_the_messages_form(
    llama_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    """prompt/chosen/rejected as message lists: TRL renders them with the chat template."""
    from finetune_trainer.run import run

    rows = [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in preference_rows(16)
    ]
    data = write_rows(tmp_path / "pref.jsonl", rows)
    job = _job(make_job, llama_dir, data, method={"type": "dpo"}, lora={"rank": 4})
    metrics = run(job, spec_dir=None, output_dir=tmp_path / "out")
    assert "rewardMargin" in metrics


def test_preference_data_needs_its_columns(
    llama_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    from finetune_trainer.errors import DataError
    from finetune_trainer.run import run

    data = write_rows(tmp_path / "chat.jsonl", chat_rows(8))
    job = _job(make_job, llama_dir, data, method={"type": "dpo"})
    with pytest.raises(DataError, match=r"method.type dpo: column 'prompt' not found"):
        run(job, spec_dir=None, output_dir=tmp_path / "out")


def test_qlora_trains_adapters_on_an_nf4_base_and_predict_loads_them(
    llama256_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    import bitsandbytes as bnb

    from finetune_trainer.predict import load_run, predict
    from finetune_trainer.run import run

    data = write_rows(tmp_path / "chat.jsonl", chat_rows(16))
    job = _job(
        make_job,
        llama256_dir,
        data,
        dataset={"format": "messages"},
        lora={"rank": 4, "quantizeBase": "nf4"},
    )
    out = tmp_path / "out"
    metrics = run(job, spec_dir=None, output_dir=out)
    assert metrics["trainLoss"] > 0
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert not (out / "model").exists() and not (out / "merged").exists()
    weights = sum(p.stat().st_size for p in (out / "adapter").glob("*.safetensors"))
    base = sum(p.stat().st_size for p in llama256_dir.glob("*.safetensors"))
    assert weights < base / 10  # the adapter alone
    assert json.loads((out / "run.json").read_text())["quantizeBase"] == "nf4"
    _, model, _ = load_run(out)
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linears, "predict reloads the base quantised as it was trained"
    assert len(predict(out, ["what color is the sky ?"], max_new_tokens=3)) == 1


def test_gradient_checkpointing_follows_the_spec(
    llama_dir: Path, make_job: MakeJob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Set: as set (the Trainer really runs with it). Unset: on for a causal LM with LoRA
    on a GPU only."""
    import torch
    from transformers import TrainerCallback

    from finetune_trainer import run as run_module
    from finetune_trainer.tasks import recipe_for

    seen: dict[str, Any] = {}

    class Spy(TrainerCallback):
        def on_train_begin(
            self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
        ) -> None:
            seen["args"] = args.gradient_checkpointing
            seen["model"] = getattr(model, "is_activation_checkpointing", None)

    data = write_rows(tmp_path / "chat.jsonl", chat_rows(8))
    hp = {"epochs": 1, "batchSize": 4, "maxLength": 64, "gradientCheckpointing": True}
    job = make_job(
        task="causal-lm",
        model_path=llama_dir,
        train=data,
        hyperparameters=hp,
        dataset={"format": "messages"},
    )
    run_module.run(job, spec_dir=None, output_dir=tmp_path / "out", callbacks=[Spy()])
    assert seen == {"args": True, "model": True}

    class Probe:  # the fields the default reads
        def __init__(self, spec: Any) -> None:
            self.spec, self.recipe = spec, recipe_for(spec)

    lora = _job(make_job, llama_dir, data, lora={"rank": 4})
    full = _job(make_job, llama_dir, data)
    assert run_module._gradient_checkpointing(Probe(lora.spec)) is False  # type: ignore[arg-type]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert run_module._gradient_checkpointing(Probe(lora.spec)) is True  # type: ignore[arg-type]
    assert run_module._gradient_checkpointing(Probe(full.spec)) is False  # type: ignore[arg-type]
