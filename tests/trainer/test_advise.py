"""`finetune advise`: data size, lengths, domain proxy and baseline on tiny data, no training."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from conftest import FILLER, MakeJob, sentiment_rows, topic_rows, write_rows

pytestmark = pytest.mark.trainer

LONG_EVERY = 4  # every 4th training row gets EXTRA more words
EXTRA = 7


def long_sentiment_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """sentiment rows (5 words); every LONG_EVERY-th row has EXTRA filler words appended."""
    rows = sentiment_rows(n, seed=seed)
    for i, row in enumerate(rows):
        if i % LONG_EVERY == 0:
            row["text"] += " " + " ".join(FILLER[:EXTRA])
    return rows


def gibberish_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Text no tokenizer here has seen: random consonant strings; labels still separable."""
    rng = random.Random(seed)

    def word() -> str:
        return "".join(rng.choice("bcdfghjkmnpqvwxz") for _ in range(rng.randint(5, 9)))

    marks = {"a": "zzqx", "b": "vvkw"}
    rows = []
    for i in range(n):
        label = "a" if i % 2 == 0 else "b"
        rows.append({"text": " ".join([word() for _ in range(4)] + [marks[label]]), "label": label})
    return rows


def test_length_stats_truncation_and_recommended_length() -> None:
    from finetune_trainer.advise import length_stats

    lengths = [5] * 60 + [12] * 40
    stats = length_stats(lengths, max_length=8, model_limit=64)
    assert stats.truncated_share == pytest.approx(0.40)
    assert stats.mean == pytest.approx(7.8)
    assert (stats.p50, stats.p95, stats.max) == (5, 12, 12)
    assert stats.recommended_max_length == 16  # p95 rounded up to a multiple of 8
    assert stats.total_tokens == 5 * 60 + 12 * 40
    # capped at the model's limit; nothing truncated when maxLength covers the longest row
    assert length_stats(lengths, max_length=12, model_limit=10).recommended_max_length == 10
    assert length_stats(lengths, max_length=12, model_limit=None).truncated_share == 0.0


def test_class_stats_and_eval_margin() -> None:
    from finetune_trainer.advise import class_stats, eval_margin

    stats = class_stats([0] * 30 + [1] * 6 + [2] * 12, [0, 0, 2], ["a", "b", "c"])
    assert stats.counts == {"a": 30, "b": 6, "c": 12}
    assert (stats.num_classes, stats.min_per_class, stats.max_per_class) == (3, 6, 30)
    assert stats.median_per_class == 12
    assert stats.imbalance_ratio == pytest.approx(5.0)
    assert stats.missing_in_eval == ("b",)
    assert eval_margin(100, 0.5) == pytest.approx(0.098)


def test_advise_classification_numbers(bert_dir: Path, make_job: MakeJob, tmp_path: Path) -> None:
    from finetune_trainer.advise import advise

    train = write_rows(tmp_path / "train.csv", long_sentiment_rows(96, seed=1))
    dev = write_rows(tmp_path / "dev.csv", sentiment_rows(40, seed=2))
    job = make_job(
        task="classification",
        model_path=bert_dir,
        train=train,
        eval=dev,
        hyperparameters={"maxLength": 10, "batchSize": 8, "epochs": 2},
    )
    advice = advise(job, spec_dir=tmp_path)

    assert (advice.data.train_rows, advice.data.eval_rows) == (96, 40)
    assert advice.data.eval_source == "dataset.eval"
    assert advice.classes is not None
    assert advice.classes.counts == {"neg": 48, "pos": 48}
    assert advice.classes.imbalance_ratio == 1.0
    # WordLevel tokenizer + [CLS] ... [SEP]: 5 words -> 7 tokens, 12 words -> 14 tokens.
    ln = advice.lengths
    assert ln.truncated_share == pytest.approx(24 / 96)  # the long rows, cut at maxLength 10
    assert (ln.p50, ln.p95, ln.max) == (7, 14, 14)
    assert ln.mean == pytest.approx((72 * 7 + 24 * 14) / 96)
    assert ln.recommended_max_length == 16 and ln.model_limit == 64
    # the sentiment words are all in the vocabulary: no UNK, not flagged
    assert advice.domain.unk_rate == 0.0
    assert not advice.domain.unfamiliar
    # linearly separable data: the baseline is (nearly) perfect
    assert advice.baseline is not None
    assert advice.baseline.accuracy >= 0.95 and advice.baseline.f1_macro >= 0.95
    assert advice.baseline.majority_accuracy == pytest.approx(0.5)
    assert (advice.steps_per_epoch, advice.total_steps) == (12, 24)  # ceil(96/8) x 2 epochs
    text = " ".join(advice.recommendations)
    assert "hyperparameters.maxLength: 16" in text and "25.0%" in text
    assert "Small data (96 rows" in text
    assert not any("masked-lm" in r for r in advice.recommendations)
    warnings = " ".join(advice.warnings)
    assert "Only 24 optimizer steps" in warnings and "Only 40 eval rows" in warnings


def test_gibberish_domain_is_flagged_and_few_shot_advised(
    bert_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    from finetune_trainer.advise import advise

    train = write_rows(tmp_path / "train.jsonl", gibberish_rows(12))
    job = make_job(
        task="classification",
        model_path=bert_dir,
        train=train,
        dataset={"evalFraction": 0.25},
    )
    advice = advise(job, spec_dir=tmp_path)

    assert (advice.data.train_rows, advice.data.eval_rows) == (9, 3)
    assert advice.data.eval_source == "held out 0.25 of train"
    assert advice.domain.unk_rate == 1.0  # no gibberish word is in the WordLevel vocabulary
    assert advice.domain.unfamiliar
    assert advice.classes is not None and advice.classes.min_per_class < 8
    assert any(r.startswith("Too few examples") for r in advice.recommendations)
    assert any("masked-LM continued pre-training" in r for r in advice.recommendations)
    assert any("are UNK" in w for w in advice.warnings)


def test_fertility_flags_unseen_text_with_a_subword_tokenizer() -> None:
    """A WordPiece tokenizer trained on English: gibberish splits into many pieces."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from finetune_trainer.advise import REFERENCE_TEXT, domain_stats

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    corpus = list(REFERENCE_TEXT) + [r["text"] for r in sentiment_rows(200)]
    tok.train_from_iterator(
        corpus, trainers.WordPieceTrainer(vocab_size=400, special_tokens=["[UNK]", "[PAD]"])
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")

    english = domain_stats(tokenizer, [r["text"] for r in sentiment_rows(50, seed=3)])
    assert english.fertility < 1.3 * english.reference_fertility
    assert english.unk_rate == 0.0 and not english.unfamiliar

    strange = domain_stats(tokenizer, [r["text"] for r in gibberish_rows(50)])
    assert strange.fertility_ratio >= 1.3, strange
    assert strange.unfamiliar


def test_advise_causal_lm_has_no_baseline(
    gpt2_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    from finetune_trainer.advise import advise

    train = write_rows(tmp_path / "corpus.jsonl", sentiment_rows(40))
    job = make_job(task="causal-lm", model_path=gpt2_dir, train=train)
    advice = advise(job, spec_dir=tmp_path)
    assert advice.classes is None and advice.baseline is None
    # 5 words + <eos> per row, as the trainer tokenises causal-LM text
    assert advice.lengths.p95 == 6 and advice.lengths.total_tokens == 6 * advice.data.train_rows
    assert any("Small corpus" in r for r in advice.recommendations)


def test_cli_advise_prints_table_and_fails_cleanly(bert_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from finetune_cli.app import app

    write_rows(tmp_path / "data" / "train.csv", topic_rows(60, seed=1))
    spec = tmp_path / "job.yaml"
    spec.write_text(
        "apiVersion: finetune.dev/v1alpha1\n"
        "kind: FineTuneJob\n"
        "metadata: {name: topics}\n"
        "spec:\n"
        "  task: classification\n"
        "  model: {name: not/used}\n"
        "  dataset: {train: {path: data/train.csv}, evalFraction: 0.25}\n"
        "  hyperparameters: {batchSize: 4, maxLength: 32}\n"
    )
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["advise", str(spec), "--set", f"spec.model={{path: {bert_dir}}}"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "finetune advise: topics" in out
    assert "45" in out and "15" in out  # train / eval rows
    assert "TF-IDF + logreg accuracy" in out and "Recommendations" in out
    assert "steps per epoch" in out and "12" in out  # ceil(45 / 4)

    result = runner.invoke(
        app,
        [
            "advise",
            str(spec),
            "--set",
            f"spec.model={{path: {bert_dir}}}",
            "--set",
            "spec.dataset.textColumn=body",
        ],
    )
    assert result.exit_code == 2
    assert "dataset.textColumn 'body' not found" in result.output
