"""finetune_api.task_metrics (the rule a sweep objective is checked against) lists what a
run really reports: each tiny run's metrics.json keys are the rule's names (mfu: GPU only)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import QA, MakeJob, write_rows

from finetune_api.models import template_metrics

pytestmark = pytest.mark.trainer

HP = {"maxSteps": 2, "loggingSteps": 1, "evalSteps": 2, "epochs": 1}


def _check(job: object, tmp_path: Path) -> None:
    from finetune_trainer.run import run

    metrics = run(job, spec_dir=tmp_path, output_dir=tmp_path / "out")  # type: ignore[arg-type]
    reported, _ = template_metrics(job.spec)  # type: ignore[attr-defined]
    assert set(metrics) <= reported, set(metrics) - reported
    assert reported - set(metrics) <= {"mfu"}, reported - set(metrics)


def test_classification_reports_what_the_rule_says(
    bert_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    train, dev = sentiment_data
    job = make_job(
        task="classification", model_path=bert_dir, train=train, eval=dev, hyperparameters=HP
    )
    _check(job, tmp_path)


def test_causal_lm_with_a_target_reports_what_the_rule_says(
    gpt2_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    rows = [{"text": q, "reference": a} for q, a in QA] * 4
    train = write_rows(tmp_path / "train.jsonl", rows)
    job = make_job(
        task="causal-lm",
        model_path=gpt2_dir,
        train=train,
        eval=train,
        hyperparameters=HP,
        dataset={"targetColumn": "reference"},
    )
    _check(job, tmp_path)


def test_chat_sft_reports_what_the_rule_says(make_job: MakeJob, tmp_path: Path) -> None:
    from support.tiny_models import chat_rows, tiny_llama

    model = tiny_llama(tmp_path / "llama")
    train = write_rows(tmp_path / "chat.jsonl", chat_rows(16))
    job = make_job(
        task="causal-lm",
        model_path=model,
        train=train,
        hyperparameters=HP,
        dataset={"format": "messages"},
    )
    _check(job, tmp_path)


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_preference_tuning_reports_what_the_rule_says(
    method: str, make_job: MakeJob, tmp_path: Path
) -> None:
    from support.tiny_models import preference_rows, tiny_llama

    model = tiny_llama(tmp_path / "llama")
    train = write_rows(tmp_path / "pref.jsonl", preference_rows(16))
    job = make_job(
        task="causal-lm",
        model_path=model,
        train=train,
        hyperparameters=HP,
        method={"type": method},
        lora={"rank": 4},
    )
    _check(job, tmp_path)
