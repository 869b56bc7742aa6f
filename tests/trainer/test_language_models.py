"""Masked-LM continued pre-training and causal LM: perplexity before and after."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DOMAIN, QA, MakeJob, write_rows

pytestmark = pytest.mark.trainer


def test_mlm_domain_adaptation_lowers_perplexity(
    bert_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    from transformers import AutoModelForMaskedLM

    from finetune_trainer.predict import predict
    from finetune_trainer.run import run

    train = write_rows(tmp_path / "corpus.jsonl", [{"text": t} for t in DOMAIN * 30])
    dev = write_rows(tmp_path / "dev.jsonl", [{"text": t} for t in DOMAIN * 4])
    out = tmp_path / "out"
    job = make_job(
        task="masked-lm",
        model_path=bert_dir,
        train=train,
        eval=dev,
        hyperparameters={"learningRate": 5e-3, "epochs": 4, "batchSize": 16},
        mlm={"maskProbability": 0.2},
    )
    m = run(job, spec_dir=tmp_path, output_dir=out)
    assert m["perplexity"] < m["perplexityBefore"] / 2, m
    AutoModelForMaskedLM.from_pretrained(out / "model")
    [filled] = predict(out, ["the court held that the [MASK] was void"])
    assert filled.startswith("the court held that the")


def test_causal_lm_full_fine_tune_bleu_and_generation(
    gpt2_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    from finetune_trainer.predict import predict
    from finetune_trainer.run import run

    train = write_rows(tmp_path / "train.csv", [{"text": q, "reference": a} for q, a in QA] * 12)
    dev = write_rows(tmp_path / "dev.csv", [{"text": q, "reference": a} for q, a in QA])
    out = tmp_path / "out"
    job = make_job(
        task="causal-lm",
        model_path=gpt2_dir,
        train=train,
        eval=dev,
        hyperparameters={"learningRate": 1e-2, "epochs": 12, "batchSize": 8},
        dataset={"targetColumn": "reference"},
    )
    m = run(job, spec_dir=tmp_path, output_dir=out)
    assert m["perplexity"] < m["perplexityBefore"] / 2, m
    assert m["bleu"] > 20, m
    [text] = predict(out, ["what color is the snow ?"], max_new_tokens=5)
    assert "white" in text
