"""Knowledge distillation (Hinton et al., 2015): spec.model is the student, trained on

    alpha * KL(softmax(t / T) || softmax(s / T)) * T^2  +  (1 - alpha) * CE(s, labels)

The teacher is frozen and in eval mode (no dropout), so its logits for a training row
are the same in every epoch: they are computed once, before training, without
gradients, and carried in the training set as a column. That is the per-batch
computation done once instead of once per epoch; it also frees the teacher's memory
before the student trains, and it lets a teacher with another tokenizer tokenise the
same text itself (rows are matched by position, nothing is filtered for classification).
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    PreTrainedTokenizerBase,
    Trainer,
)

from finetune_api.models import Distillation
from finetune_trainer import sizes
from finetune_trainer.data import LENGTH_COLUMN, LabelMap, RawData, resolve
from finetune_trainer.errors import ModelError
from finetune_trainer.evaluation import classification_scores
from finetune_trainer.modeling import load_tokenizer, resolve_model
from finetune_trainer.rundir import RUN_INFO

if TYPE_CHECKING:
    from finetune_trainer.tasks.recipe import Recipe

log = logging.getLogger(__name__)

TEACHER_LOGITS = "teacher_logits"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
TEACHER_BATCH = 64
PROBE_ROWS = 64  # rows tokenised by both tokenizers to decide whether ids can be shared


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Soft-target KL (scaled by T^2 so its gradients keep their size as T grows) plus
    hard-label cross-entropy, both means over the batch."""
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    hard = F.cross_entropy(student_logits, labels)
    return alpha * soft * t * t + (1 - alpha) * hard


class DistillationMixin(Trainer):
    """Trainer behaviour: the training loss is kd_loss over the teacher_logits column;
    evaluation keeps the plain CE loss, so evalLoss compares with a run without a teacher.
    Mixed into whichever Trainer class the run uses (`trainer_class`)."""

    distillation: Distillation

    def __init__(self, *args: Any, distillation: Distillation, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.distillation = distillation
        self.loss_is_scaled_for_ga = False  # kd_loss is a per-batch mean

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and TEACHER_LOGITS not in self._signature_columns:
            self._signature_columns.append(TEACHER_LOGITS)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        teacher = inputs.pop(TEACHER_LOGITS, None)
        if teacher is None:  # evaluation rows carry no teacher logits
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.logits
        loss = kd_loss(
            logits,
            teacher.to(logits.dtype),
            labels,
            temperature=self.distillation.temperature,
            alpha=self.distillation.alpha,
        )
        return (loss, outputs) if return_outputs else loss


def trainer_class(base: type[Trainer], spec: Distillation) -> Callable[..., Trainer]:
    """`base` (Trainer or a subclass) with the distillation loss."""
    cls = type(f"Distilling{base.__name__}", (DistillationMixin, base), {})
    return functools.partial(cls, distillation=spec)


@dataclass
class Teacher:
    model: Any
    tokenizer: PreTrainedTokenizerBase
    location: str
    columns: list[int]  # teacher logit column for each student class id


def load_teacher(
    spec: Distillation, spec_dir: Path | None, label_map: LabelMap, recipe: Recipe
) -> Teacher:
    """A fine-tuned classifier: a finished run's directory (any format `predict` reads),
    a model directory or a hub id. Its labels must be the dataset's labels, its task the
    student's (the recipe's)."""
    teacher_dir = _run_dir(spec, spec_dir)
    if teacher_dir is not None:
        from finetune_trainer.predict import load_run  # peft/torchao only for such teachers

        info, model, tokenizer = load_run(teacher_dir)
        if info["task"] != recipe.task.value:
            raise ModelError(f"distillation.teacher {teacher_dir}: a {info['task']} run")
        location = str(teacher_dir)
    else:
        ref = resolve_model(spec.teacher, spec_dir, "spec.distillation.teacher.uri")
        tokenizer = load_tokenizer(ref, recipe)
        model = AutoModelForSequenceClassification.from_pretrained(ref.location, **ref.kwargs())
        location = ref.location
        architectures = getattr(model.config, "architectures", None) or []
        if not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise ModelError(
                f"distillation.teacher {location}: not a fine-tuned classifier "
                f"(architectures {architectures}); fine-tune it first with `finetune run` and "
                "point distillation.teacher.path at that run's directory"
            )
    columns = _label_columns(model.config, label_map, location)
    return Teacher(model.eval(), tokenizer, location, columns)


def _run_dir(spec: Distillation, spec_dir: Path | None) -> Path | None:
    if spec.teacher.path is None:
        return None
    path = resolve(spec.teacher.path, spec_dir)
    return path if (path / RUN_INFO).is_file() else None


def _label_columns(config: Any, label_map: LabelMap, location: str) -> list[int]:
    """Map the dataset's class ids to the teacher's logit columns (by label name)."""
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    if len(id2label) != len(label_map):
        raise ModelError(
            f"distillation.teacher {location}: {len(id2label)} classes, the dataset has "
            f"{len(label_map)} ({', '.join(label_map.labels)})"
        )
    if all(re.fullmatch(r"LABEL_\d+", v) for v in id2label.values()):
        log.warning("teacher %s has no label names; assuming the dataset's order", location)
        return list(range(len(label_map)))
    label2id = {v: k for k, v in id2label.items()}
    missing = [label for label in label_map.labels if label not in label2id]
    if missing:
        raise ModelError(
            f"distillation.teacher {location}: labels {sorted(label2id)} do not match the "
            f"dataset's {list(label_map.labels)} (missing {missing})"
        )
    return [label2id[label] for label in label_map.labels]


def shares_input_ids(
    student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase, texts: list[str]
) -> bool:
    """Same vocabulary and the same ids for sample texts: the teacher reads the student's
    input_ids; otherwise it tokenises the text itself."""
    if student.get_vocab() != teacher.get_vocab():
        return False
    return bool(student(texts)["input_ids"] == teacher(texts)["input_ids"])


@torch.inference_mode()
def logits(
    model: Any, tokenizer: PreTrainedTokenizerBase, data: datasets.Dataset, batch_size: int
) -> np.ndarray:
    """The model's logits over a tokenised dataset, in row order, without gradients.
    Rows run sorted by length, so a batch pads to rows of its own length."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    inputs = [c for c in MODEL_INPUTS if c in data.column_names]
    order = np.argsort(np.asarray(data[LENGTH_COLUMN]), kind="stable")
    loader = DataLoader(
        data.select(order).select_columns(inputs).with_format("torch"),
        batch_size=batch_size,
        collate_fn=DataCollatorWithPadding(tokenizer),
    )
    out = [model(**{k: v.to(device) for k, v in b.items()}).logits.float().cpu() for b in loader]
    result = np.empty((len(order), out[0].shape[-1]) if out else (0, 0), dtype=np.float32)
    if out:
        result[order] = torch.cat(out).numpy()
    return result


def _teacher_view(
    teacher: Teacher,
    student_tokenizer: PreTrainedTokenizerBase,
    table: Any,
    tokenized: datasets.Dataset,
    recipe: Recipe,
    max_length: int,
) -> datasets.Dataset:
    """The rows as the teacher reads them: the student's ids when they agree, else the
    teacher's own tokenisation of the same text (same rows, same order)."""
    probe = recipe.texts(table)[:PROBE_ROWS]
    if shares_input_ids(student_tokenizer, teacher.tokenizer, probe):
        return tokenized
    limit = getattr(teacher.model.config, "max_position_embeddings", None) or max_length
    return recipe.tokenize(table, teacher.tokenizer, min(max_length, int(limit)))


def attach_teacher_logits(
    spec: Distillation,
    spec_dir: Path | None,
    *,
    student: Any,
    student_tokenizer: PreTrainedTokenizerBase,
    raw: RawData,
    train_ds: datasets.Dataset,
    eval_ds: datasets.Dataset,
    recipe: Recipe,
    max_length: int,
) -> tuple[datasets.Dataset, dict[str, float]]:
    """The training set with a teacher_logits column, and the teacher's metrics on the
    eval set (teacherAccuracy, teacherF1Macro) with both models' sizes."""
    assert raw.label_map is not None
    teacher = load_teacher(spec, spec_dir, raw.label_map, recipe)
    views = [
        _teacher_view(teacher, student_tokenizer, table, ds, recipe, max_length)
        for table, ds in ((raw.train, train_ds), (raw.eval, eval_ds))
    ]
    shared = views[0] is train_ds
    log.info("teacher %s reads %s", teacher.location, "the student's ids" if shared else "text")
    start = time.perf_counter()
    train_logits, eval_logits = (
        logits(teacher.model, teacher.tokenizer, view, TEACHER_BATCH)[:, teacher.columns]
        for view in views
    )
    seconds = time.perf_counter() - start
    log.info("teacher logits for %d rows in %.1f s", len(views[0]) + len(views[1]), seconds)
    scores = classification_scores(np.asarray(eval_ds["labels"]), eval_logits.argmax(axis=-1))
    metrics = {
        "teacherAccuracy": scores["accuracy"],
        "teacherF1Macro": scores["f1_macro"],
        **sizes.size_metrics(teacher.model, "teacher"),
        **sizes.size_metrics(student, "student"),
    }
    teacher.model.to("cpu")
    del teacher
    return train_ds.add_column(TEACHER_LOGITS, train_logits.tolist()), metrics
