"""A new task head is said in one line, never as transformers' LOAD REPORT table."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import MakeJob

pytestmark = pytest.mark.trainer


def test_new_head_in_one_line_and_no_load_report(
    bert_dir: Path, make_job: MakeJob, capfd: pytest.CaptureFixture[str]
) -> None:
    from finetune_api.models import ModelSource
    from finetune_trainer.data import LabelMap
    from finetune_trainer.modeling import load_model_noted, load_tokenizer, resolve_model
    from finetune_trainer.tasks import recipe_for

    job = make_job(task="classification", model_path=bert_dir, train=bert_dir / "train.csv")
    recipe = recipe_for(job.spec)
    ref = resolve_model(ModelSource(path=str(bert_dir)), None)
    tokenizer = load_tokenizer(ref, recipe)
    labels = LabelMap(labels=("neg", "neu", "pos"), values=("neg", "neu", "pos"))
    model, note, new_modules = load_model_noted(ref, recipe, tokenizer, labels)
    assert model.config.num_labels == 3
    assert note.startswith("new classification head: 3 labels")
    # The tiny BERT is a masked-LM checkpoint: its pooler starts random (LoRA must save it).
    assert new_modules == ["bert.pooler.dense"]
    captured = capfd.readouterr()
    assert "LOAD REPORT" not in captured.out + captured.err
    assert "were not sharded" not in captured.out + captured.err  # no side effect of quieting


def test_note_names_base_weights_that_start_random() -> None:
    from finetune_trainer.weights import new_weights_note

    class Model:
        base_model_prefix = "bert"

    def head(tensors: int) -> str:
        return f"new head ({tensors} tensors)"

    info = {"missing_keys": {"classifier.weight", "classifier.bias"}, "mismatched_keys": set()}
    assert new_weights_note(Model(), info, head) == "new head (2 tensors)"
    info = {"missing_keys": {"bert.encoder.layer.0.attention.self.query.weight"}}
    note = new_weights_note(Model(), info, head)
    assert note.startswith("warning: 1 weights of the base model are not in the checkpoint")
    assert new_weights_note(Model(), {"missing_keys": set()}, head) == ""
