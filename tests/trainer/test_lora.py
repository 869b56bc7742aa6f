"""LoRA adapters (peft) on classification and causal LM; adapter-only artifacts."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from conftest import QA, MakeJob, train_losses, write_rows

pytestmark = pytest.mark.trainer


def test_lora_classification_saves_only_the_adapter(
    bert_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from finetune_trainer.predict import predict
    from finetune_trainer.run import run

    train, dev = sentiment_data
    out = tmp_path / "out"
    job = make_job(
        task="classification",
        model_path=bert_dir,
        train=train,
        eval=dev,
        hyperparameters={"learningRate": 3e-2, "epochs": 10, "batchSize": 8},
        lora={"rank": 8, "alpha": 16, "dropout": 0.0},
    )
    m = run(job, spec_dir=tmp_path, output_dir=out)
    assert m["accuracy"] >= 0.8, m
    adapter = out / "adapter"
    assert (adapter / "adapter_config.json").is_file()
    assert not (out / "model").exists() and not (adapter / "model.safetensors").exists()
    weights = load_file(adapter / "adapter_model.safetensors")
    names = set(weights)
    assert any("lora_A" in n for n in names)
    # No frozen base weights, but the pooler the masked-LM checkpoint lacks is trained and
    # saved with the adapter: left out, predict would meet another random pooler.
    assert all("lora_" in n or "classifier" in n or "pooler" in n for n in names), names
    assert any("pooler" in n for n in names), names
    assert {n.split(".")[-3] for n in names if "lora_A" in n} == {"query", "value"}
    # The reloaded run is the trained one: predict reproduces the run's eval accuracy.
    rows = list(csv.DictReader(dev.open()))
    predicted = predict(out, [r["text"] for r in rows])
    reloaded = sum(p == r["label"] for p, r in zip(predicted, rows, strict=True)) / len(rows)
    assert reloaded == pytest.approx(m["accuracy"]), (reloaded, m["accuracy"])


def test_lora_causal_lm_merge_and_generate(
    gpt2_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    from finetune_trainer.predict import predict
    from finetune_trainer.run import run

    rows = [{"text": q, "reference": a} for q, a in QA] * 12
    train = write_rows(tmp_path / "train.jsonl", rows)
    dev = write_rows(tmp_path / "dev.jsonl", [{"text": q, "reference": a} for q, a in QA])
    out = tmp_path / "out"
    job = make_job(
        task="causal-lm",
        model_path=gpt2_dir,
        train=train,
        eval=dev,
        hyperparameters={"learningRate": 2e-2, "epochs": 6, "batchSize": 8},
        dataset={"targetColumn": "reference"},
        lora={"rank": 16, "alpha": 32, "dropout": 0.0, "merge": True},
    )
    m = run(job, spec_dir=tmp_path, output_dir=out)
    # Adapters on a frozen *random* 2-layer base learn slowly: assert direction, not quality.
    losses = train_losses(out)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert m["perplexity"] < m["perplexityBefore"]
    assert "bleu" in m and (out / "generations.jsonl").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "merged" / "model.safetensors").is_file()
    prompts = ["what color is the grass ?", "what color is the sky ?"]
    merged = predict(out, prompts, max_new_tokens=5)
    shutil.rmtree(out / "merged")  # now predict must load base + adapter
    assert predict(out, prompts, max_new_tokens=5) == merged


def test_unknown_lora_target_names_the_real_modules(
    bert_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from finetune_trainer.errors import ModelError
    from finetune_trainer.run import run

    train, dev = sentiment_data
    job = make_job(
        task="classification",
        model_path=bert_dir,
        train=train,
        eval=dev,
        lora={"targetModules": ["q_proj"]},
    )
    with pytest.raises(ModelError) as err:
        run(job, spec_dir=tmp_path, output_dir=tmp_path / "out")
    message = str(err.value)
    assert "'q_proj'" in message and "query" in message and "value" in message


def test_lora_on_gpt2_classification_uses_gpt2_defaults(
    gpt2_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    import json

    from finetune_trainer.predict import predict
    from finetune_trainer.run import run

    train, dev = sentiment_data
    out = tmp_path / "out"
    job = make_job(
        task="classification",
        model_path=gpt2_dir,
        train=train,
        eval=dev,
        hyperparameters={"learningRate": 2e-2, "epochs": 4, "batchSize": 8},
        lora={"rank": 8, "alpha": 16, "dropout": 0.0},
    )
    run(job, spec_dir=tmp_path, output_dir=out)
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["c_attn", "c_fc", "c_proj"]
    labels = predict(out, ["good great film", "bad awful plot"])
    assert set(labels) <= {"neg", "pos"} and len(labels) == 2


def test_lora_masked_lm(bert_dir: Path, make_job: MakeJob, tmp_path: Path) -> None:
    from conftest import DOMAIN

    from finetune_trainer.predict import predict
    from finetune_trainer.run import run

    train = write_rows(tmp_path / "corpus.jsonl", [{"text": t} for t in DOMAIN * 20])
    out = tmp_path / "out"
    job = make_job(
        task="masked-lm",
        model_path=bert_dir,
        train=train,
        hyperparameters={"learningRate": 2e-2, "epochs": 3, "batchSize": 16},
        lora={"rank": 8, "alpha": 16, "dropout": 0.0},
    )
    m = run(job, spec_dir=tmp_path, output_dir=out)
    assert m["perplexity"] < m["perplexityBefore"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    [filled] = predict(out, ["the court held that the [MASK] was void"])
    assert filled.startswith("the court held that the")
