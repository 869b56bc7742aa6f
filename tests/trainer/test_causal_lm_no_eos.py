"""Causal LM with a tokenizer that has no eos token still builds labels and trains."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import QA, MakeJob, write_rows

pytestmark = pytest.mark.trainer


@pytest.fixture
def gpt2_without_eos(gpt2_dir: Path, tmp_path: Path) -> Path:
    from transformers import AutoTokenizer

    directory = tmp_path / "gpt2-no-eos"
    shutil.copytree(gpt2_dir, directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.eos_token = None
    tokenizer.save_pretrained(directory)
    assert AutoTokenizer.from_pretrained(directory).eos_token_id is None
    return directory


def test_tokenize_builds_labels_without_an_eos(
    gpt2_without_eos: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    import datasets
    from transformers import AutoTokenizer

    from finetune_trainer.data import Table
    from finetune_trainer.tasks import recipe_for

    tokenizer = AutoTokenizer.from_pretrained(gpt2_without_eos)
    table = Table(datasets.Dataset.from_dict({"text": ["the sky is blue ."]}), "t.jsonl")
    job = make_job(task="causal-lm", model_path=gpt2_without_eos, train=tmp_path / "t.jsonl")
    data = recipe_for(job.spec).tokenize(table, tokenizer, max_length=16)
    row = data[0]
    assert row["labels"] == row["input_ids"] and len(row["input_ids"]) == 5  # no eos appended


def test_causal_lm_trains_without_an_eos(
    gpt2_without_eos: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    from finetune_trainer.run import run

    rows = [{"text": f"{q} {a}"} for q, a in QA]
    train = write_rows(tmp_path / "train.jsonl", rows * 6)
    dev = write_rows(tmp_path / "dev.jsonl", rows)
    job = make_job(
        task="causal-lm",
        model_path=gpt2_without_eos,
        train=train,
        eval=dev,
        hyperparameters={"epochs": 2, "batchSize": 8},
    )
    metrics = run(job, spec_dir=tmp_path, output_dir=tmp_path / "out")
    assert metrics["perplexity"] < metrics["perplexityBefore"], metrics
