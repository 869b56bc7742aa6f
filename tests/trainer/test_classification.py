"""Sequence classification end to end on a tiny random BERT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import MakeJob, sentiment_rows, topic_rows, train_losses, write_rows

pytestmark = pytest.mark.trainer

HP = {"learningRate": 3e-3, "epochs": 6, "batchSize": 8, "loggingSteps": 2}


def test_string_labels_round_trip_and_artifacts(
    bert_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    from finetune_trainer.predict import predict
    from finetune_trainer.run import run

    train, dev = sentiment_data
    out = tmp_path / "out"
    job = make_job(
        task="classification", model_path=bert_dir, train=train, eval=dev, hyperparameters=HP
    )
    metrics = run(job, spec_dir=tmp_path, output_dir=out)

    losses = train_losses(out)
    assert losses[-1] < losses[0] * 0.7, losses
    assert metrics["accuracy"] >= 0.9
    assert 0.9 <= metrics["f1Macro"] <= 1.0
    assert {"trainLoss", "evalLoss", "samplesPerSecond"} <= set(metrics)
    for name in (
        "metrics.json",
        "confusion_matrix.png",
        "classification_report.json",
        "label_map.json",
        "loss.png",
        "run.json",
        "model/config.json",
    ):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints").exists()
    state = json.loads((out / "metrics.json").read_text())
    assert state["phase"] == "Succeeded" and state["history"]
    assert state["artifacts"]["confusionMatrix"].endswith("confusion_matrix.png")
    report = json.loads((out / "classification_report.json").read_text())
    assert {"neg", "pos", "macro avg"} <= set(report)

    # The label map lives in the saved config: reload outside the project.
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert predict(out, ["great good movie", "awful bad film", "the plot was superb"]) == [
        "pos",
        "neg",
        "pos",
    ]


def test_many_int_classes_tsv(bert_dir: Path, make_job: MakeJob, tmp_path: Path) -> None:
    from finetune_trainer.predict import predict
    from finetune_trainer.run import run

    names = sorted({r["label"] for r in topic_rows(5)})

    def as_ints(rows: list[dict[str, str]]) -> list[dict[str, object]]:
        return [{"text": r["text"], "label": names.index(r["label"]) + 10} for r in rows]

    train = write_rows(tmp_path / "train.tsv", as_ints(topic_rows(150, seed=3)))
    dev = write_rows(tmp_path / "dev.tsv", as_ints(topic_rows(40, seed=4)))
    out = tmp_path / "out"
    job = make_job(
        task="classification",
        model_path=bert_dir,
        train=train,
        eval=dev,
        hyperparameters=HP | {"epochs": 8},
    )
    metrics = run(job, spec_dir=tmp_path, output_dir=out)
    assert metrics["accuracy"] >= 0.8, metrics
    info = json.loads((out / "run.json").read_text())
    assert info["labels"] == ["10", "11", "12", "13", "14"]
    assert predict(out, ["goal match team", "pizza soup cheese"]) == [
        str(10 + names.index("sports")),
        str(10 + names.index("food")),
    ]


def test_jsonl_without_eval_holds_out_a_fraction(
    bert_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    from finetune_trainer.run import run

    train = write_rows(tmp_path / "all.jsonl", sentiment_rows(100, seed=5))
    out = tmp_path / "out"
    job = make_job(
        task="classification",
        model_path=bert_dir,
        train=train,
        hyperparameters=HP | {"epochs": 1, "maxSteps": 4},
        dataset={"evalFraction": 0.2},
    )
    run(job, spec_dir=tmp_path, output_dir=out)
    report = json.loads((out / "classification_report.json").read_text())
    assert report["macro avg"]["support"] == 20


def test_early_stopping_stops_when_eval_does_not_improve(
    bert_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from finetune_trainer.run import run

    train, dev = sentiment_data
    out = tmp_path / "out"
    job = make_job(
        task="classification",
        model_path=bert_dir,
        train=train,
        eval=dev,
        hyperparameters={
            "learningRate": 1e-9,
            "maxSteps": 40,
            "evalSteps": 2,
            "earlyStoppingPatience": 1,
        },
    )
    run(job, spec_dir=tmp_path, output_dir=out)
    state = json.loads((out / "metrics.json").read_text())
    assert state["phase"] == "Succeeded"
    assert state["progress"]["step"] < 40
    assert (out / "model" / "config.json").is_file()


def test_precision_auto_is_fp32_on_cpu_and_fp16_needs_a_gpu() -> None:
    import torch

    from finetune_api.models import Precision
    from finetune_trainer.errors import ModelError
    from finetune_trainer.modeling import choose_precision

    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    assert choose_precision(Precision.auto).name == "fp32"
    assert choose_precision(Precision.bf16).name == "bf16"
    with pytest.raises(ModelError, match="fp16 needs a CUDA GPU"):
        choose_precision(Precision.fp16)
