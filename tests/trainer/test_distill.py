"""Knowledge distillation: the loss against hand-computed values, a distilled run end to
end (teacher sharing the student's ids, and a teacher with its own tokenizer), refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import MakeJob, topic_rows, write_rows

from support.tiny_models import tiny_bert

pytestmark = pytest.mark.trainer

HP = {"learningRate": 3e-3, "epochs": 6, "batchSize": 8, "loggingSteps": 2}


@pytest.mark.parametrize(
    ("temperature", "alpha", "expected"),
    [
        # s = [0, 0], t = [ln 3, 0], label 0. T = 1: p_t = [3/4, 1/4], p_s = [1/2, 1/2];
        # KL = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.130812; CE = ln 2 = 0.693147.
        (1.0, 0.5, 0.5 * 0.130812 + 0.5 * 0.693147),
        # T = 2: p_t = [√3, 1] / (√3 + 1) = [0.633975, 0.366025];
        # KL = 0.633975 ln(1.267949) + 0.366025 ln(0.732051) = 0.036341, times T² = 4.
        (2.0, 0.5, 0.5 * 4 * 0.036341 + 0.5 * 0.693147),
        (2.0, 1.0, 4 * 0.036341),
        (2.0, 0.0, 0.693147),
    ],
)
def test_kd_loss_matches_hand_computed(temperature: float, alpha: float, expected: float) -> None:
    import torch

    from finetune_trainer.distill import kd_loss

    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    loss = kd_loss(student, teacher, torch.tensor([0]), temperature=temperature, alpha=alpha)
    assert float(loss) == pytest.approx(expected, abs=1e-5)


def test_kd_loss_is_a_batch_mean() -> None:
    import torch

    from finetune_trainer.distill import kd_loss

    s = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    t = torch.tensor([[math.log(3.0), 0.0], [0.5, 0.5]])
    y = torch.tensor([0, 1])
    both = kd_loss(s, t, y, temperature=2.0, alpha=0.3)
    rows = [
        kd_loss(s[i : i + 1], t[i : i + 1], y[i : i + 1], temperature=2.0, alpha=0.3)
        for i in range(2)
    ]
    assert float(both) == pytest.approx(float(sum(rows)) / 2, abs=1e-6)


def _teacher_run(
    model_dir: Path, make_job: MakeJob, data: tuple[Path, Path], out: Path, tmp: Path
) -> dict[str, float]:
    from finetune_trainer.run import run

    train, dev = data
    job = make_job(
        task="classification", model_path=model_dir, train=train, eval=dev, hyperparameters=HP
    )
    return run(job, spec_dir=tmp, output_dir=out)


def test_distilled_student_reports_teacher_and_sizes_and_predicts(
    bert_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from finetune_trainer.predict import predict
    from finetune_trainer.run import run

    teacher = _teacher_run(bert_dir, make_job, sentiment_data, tmp_path / "teacher", tmp_path)
    train, dev = sentiment_data
    out = tmp_path / "student"
    job = make_job(
        task="classification",
        model_path=bert_dir,
        train=train,
        eval=dev,
        hyperparameters=HP,
        distillation={"teacher": {"path": str(tmp_path / "teacher")}, "temperature": 2.0},
    )
    m = run(job, spec_dir=tmp_path, output_dir=out)

    # The teacher, run again on the same eval set, scores what its own run reported.
    assert m["teacherAccuracy"] == pytest.approx(teacher["accuracy"])
    assert m["accuracy"] >= 0.9
    assert m["studentParameters"] == m["teacherParameters"] > 0  # same tiny architecture here
    assert m["studentSizeMb"] > 0
    state = json.loads((out / "metrics.json").read_text())
    assert {"teacherAccuracy", "teacherSizeMb", "studentSizeMb"} <= set(state["metrics"])
    assert (out / "confusion_matrix.png").is_file()
    table = (out / "size_table.md").read_text()
    assert "| teacher |" in table and "| student |" in table
    assert f"{m['teacherAccuracy']:.4f}" in table and f"{m['accuracy']:.4f}" in table
    assert predict(out, ["great good movie", "awful bad film"]) == ["pos", "neg"]


def test_teacher_with_another_tokenizer_reads_the_text_itself(
    bert_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    from finetune_trainer.distill import shares_input_ids
    from finetune_trainer.run import run

    other = tiny_bert(tmp_path / "reversed", reverse_vocab=True, seed=1)
    texts = ["good movie", "bad plot"]
    assert not shares_input_ids(
        AutoTokenizer.from_pretrained(bert_dir), AutoTokenizer.from_pretrained(other), texts
    )
    assert shares_input_ids(
        AutoTokenizer.from_pretrained(bert_dir), AutoTokenizer.from_pretrained(bert_dir), texts
    )
    teacher = _teacher_run(other, make_job, sentiment_data, tmp_path / "teacher", tmp_path)
    assert teacher["accuracy"] >= 0.9
    train, dev = sentiment_data
    job = make_job(
        task="classification",
        model_path=bert_dir,
        train=train,
        eval=dev,
        hyperparameters=HP | {"epochs": 1},
        distillation={"teacher": {"path": str(tmp_path / "teacher" / "model")}},
    )
    m = run(job, spec_dir=tmp_path, output_dir=tmp_path / "student")
    # With the student's ids the teacher would read other words and score near chance.
    assert m["teacherAccuracy"] == pytest.approx(teacher["accuracy"])


def test_teachers_that_cannot_teach_are_refused_before_training(
    bert_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from finetune_trainer.errors import ModelError
    from finetune_trainer.run import run

    train, dev = sentiment_data
    topics = write_rows(tmp_path / "topics.csv", topic_rows(40))
    _teacher_run(bert_dir, make_job, (topics, topics), tmp_path / "topic-teacher", tmp_path)

    def distil(teacher: Path) -> None:
        job = make_job(
            task="classification",
            model_path=bert_dir,
            train=train,
            eval=dev,
            distillation={"teacher": {"path": str(teacher)}},
        )
        run(job, spec_dir=tmp_path, output_dir=tmp_path / "student")

    with pytest.raises(ModelError, match="5 classes, the dataset has 2"):
        distil(tmp_path / "topic-teacher")
    with pytest.raises(ModelError, match="not a fine-tuned classifier"):
        distil(bert_dir)  # a masked-LM checkpoint: no trained classification head
    state = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert state["phase"] == "Failed" and "fine-tune it first" in state["message"]


def test_training_batches_carry_teacher_logits_into_the_kd_loss(
    bert_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    import datasets
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        Trainer,
        TrainingArguments,
    )

    from finetune_api.models import Distillation
    from finetune_trainer.distill import TEACHER_LOGITS, kd_loss, trainer_class
    from finetune_trainer.tasks import recipe_for

    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    model = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    enc = tokenizer(["good movie", "bad plot", "great film", "awful acting"])
    rows = dict(enc) | {"labels": [1, 0, 1, 0], TEACHER_LOGITS: [[-2.0, 2.0], [2.0, -2.0]] * 2}
    spec = Distillation.model_validate({"teacher": {"path": "t"}, "temperature": 3, "alpha": 0.7})
    trainer = trainer_class(Trainer, spec)(
        model=model,
        args=TrainingArguments(
            str(tmp_path),
            per_device_train_batch_size=4,
            report_to="none",
            dataloader_pin_memory=False,
        ),
        train_dataset=datasets.Dataset.from_dict(rows),
        data_collator=recipe_for(
            make_job(task="classification", model_path=bert_dir, train=tmp_path / "t.csv").spec
        ).collator(tokenizer),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert TEACHER_LOGITS in batch  # not dropped as an unknown column
    expected_inputs = {k: v for k, v in batch.items() if k not in (TEACHER_LOGITS, "labels")}
    model.eval()
    with torch.no_grad():
        expected = kd_loss(
            model(**expected_inputs).logits,
            batch[TEACHER_LOGITS],
            batch["labels"],
            temperature=3.0,
            alpha=0.7,
        )
        loss = trainer.compute_loss(model, dict(batch))
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)


def test_distillation_into_a_lora_student(
    bert_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from finetune_trainer.predict import predict
    from finetune_trainer.run import run

    teacher = _teacher_run(bert_dir, make_job, sentiment_data, tmp_path / "teacher", tmp_path)
    train, dev = sentiment_data
    out = tmp_path / "student"
    job = make_job(
        task="classification",
        model_path=bert_dir,
        train=train,
        eval=dev,
        hyperparameters=HP | {"learningRate": 1e-2},
        lora={"rank": 4},
        distillation={"teacher": {"path": str(tmp_path / "teacher")}, "alpha": 0.9},
    )
    m = run(job, spec_dir=tmp_path, output_dir=out)
    assert m["teacherAccuracy"] == pytest.approx(teacher["accuracy"])
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert len(predict(out, ["great good movie", "awful bad film"])) == 2
