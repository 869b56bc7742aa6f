"""Pruning: measured sparsity equals the requested one, in the saved model too;
magnitude one-shot and gradual, heads (a smaller model that `predict` reloads), refusals."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from conftest import DOMAIN, MakeJob, write_rows

pytestmark = pytest.mark.trainer

HP = {"learningRate": 3e-3, "epochs": 6, "batchSize": 8, "loggingSteps": 2}


def _saved_sparsity(model_dir: Path) -> float:
    from transformers import AutoModelForSequenceClassification

    from finetune_trainer.pruning import measured_sparsity, prunable_layers

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    return measured_sparsity(prunable_layers(model))


@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_one_shot_magnitude_sparsity_is_the_requested_one(
    sparsity: float,
    bert_dir: Path,
    make_job: MakeJob,
    sentiment_data: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    from finetune_trainer.predict import predict
    from finetune_trainer.run import run

    train, dev = sentiment_data
    out = tmp_path / "out"
    job = make_job(
        task="classification",
        model_path=bert_dir,
        train=train,
        eval=dev,
        hyperparameters=HP,
        pruning={"sparsity": sparsity, "schedule": "one-shot"},
    )
    m = run(job, spec_dir=tmp_path, output_dir=out)

    assert m["sparsity"] == pytest.approx(sparsity, abs=1e-3)
    assert _saved_sparsity(out / "model") == pytest.approx(sparsity, abs=1e-3)  # permanent
    assert m["denseAccuracy"] >= 0.9 and "accuracy" in m
    assert m["nonzeroParameters"] < m["denseNonzeroParameters"]
    assert m["compressedSizeMb"] < m["denseCompressedSizeMb"]
    assert m["sizeMb"] == m["denseSizeMb"]  # unstructured zeros are still stored
    table = (out / "size_table.md").read_text()
    assert "| dense |" in table and "| pruned |" in table and "MB (zlib)" in table
    report = json.loads((out / "classification_report.json").read_text())
    assert report["accuracy"] == pytest.approx(m["accuracy"])  # the pruned model's report
    assert len(predict(out, ["great good movie", "awful bad film"])) == 2


def test_gradual_magnitude_on_a_causal_lm(
    gpt2_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    from finetune_trainer.pruning import measured_sparsity, prunable_layers
    from finetune_trainer.run import run

    train = write_rows(tmp_path / "train.csv", [{"text": t} for t in DOMAIN] * 10)
    out = tmp_path / "out"
    job = make_job(
        task="causal-lm",
        model_path=gpt2_dir,
        train=train,
        eval=train,
        hyperparameters={"epochs": 4, "learningRate": 3e-3, "loggingSteps": 1},
        pruning={"sparsity": 0.6},  # magnitude, gradual by default
    )
    m = run(job, spec_dir=tmp_path, output_dir=out)

    assert m["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert m["perplexity"] < m["perplexityBefore"]  # still learnt while being pruned
    assert "densePerplexity" not in m  # gradual: no dense model at the end to compare
    layers = prunable_layers(AutoModelForCausalLM.from_pretrained(out / "model"))
    assert any("c_attn" in name for name, _ in layers)  # GPT-2's Conv1D projections
    assert measured_sparsity(layers) == pytest.approx(0.6, abs=1e-3)


def test_cubic_schedule_rises_monotonically_to_the_target() -> None:
    from finetune_trainer.pruning import cubic_sparsity

    values = [cubic_sparsity(step, 100, 0.8) for step in range(101)]
    assert values[:10] == [0.0] * 10  # dense start
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert values[70:] == [pytest.approx(0.8)] * 31  # final sparsity, then recovery
    assert values[40] > 0.8 * 0.5  # cubic: most of it early in the ramp


def test_head_pruning_shrinks_the_saved_model_and_predict_reloads_it(
    bert_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from finetune_trainer.predict import load_run, predict
    from finetune_trainer.run import run

    train, dev = sentiment_data
    out = tmp_path / "out"
    job = make_job(
        task="classification",
        model_path=bert_dir,
        train=train,
        eval=dev,
        hyperparameters=HP,
        pruning={"sparsity": 0.5, "method": "heads"},
    )
    m = run(job, spec_dir=tmp_path, output_dir=out)

    assert m["sparsity"] == 0.5  # 2 of the 4 heads
    assert m["sizeMb"] < m["denseSizeMb"] and m["parameters"] < m["denseParameters"]
    on_disk = (out / "model" / "model.safetensors").stat().st_size / 1e6
    assert on_disk < m["denseSizeMb"]
    assert on_disk == pytest.approx(m["sizeMb"], abs=0.01)  # + the safetensors header
    _, model, _ = load_run(out)
    attention = model.bert.encoder.layer[0].attention
    assert attention.self.query.out_features == 16  # one 16-wide head left of two
    assert len(predict(out, ["great good movie", "awful bad film"])) == 2


def test_head_pruning_refuses_a_model_without_bert_attention_before_training(
    gpt2_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from finetune_trainer.errors import ModelError
    from finetune_trainer.run import run

    train, dev = sentiment_data
    job = make_job(
        task="classification",
        model_path=gpt2_dir,
        train=train,
        eval=dev,
        pruning={"method": "heads"},
    )
    with pytest.raises(ModelError, match="no BERT-style attention"):
        run(job, spec_dir=tmp_path, output_dir=tmp_path / "out")
    assert not (tmp_path / "out" / "log_history.json").exists()
