"""Sequence classification: a text column and a label column; accuracy, F1, report."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
)

from finetune_api.models import Task
from finetune_trainer import atomic, evaluation
from finetune_trainer.data import (
    LENGTH_COLUMN,
    LabelMap,
    Table,
    build_label_map,
    encode_labels,
    tokenize_texts,
)
from finetune_trainer.tasks.recipe import Recipe

if TYPE_CHECKING:
    from finetune_trainer.runstate import RunState


class Classification(Recipe):
    task = Task.classification
    auto_class = AutoModelForSequenceClassification
    peft_task_type = "SEQ_CLS"
    best_metric = ("accuracy", True)
    reports_perplexity = False
    token_labels = False
    kind = "classification"

    def columns(self) -> list[tuple[str, str]]:
        return [*super().columns(), (self.spec.dataset.label_column, "dataset.labelColumn")]

    def encode(self, train: Table, evaluation: Table) -> tuple[Table, Table, LabelMap | None]:
        label = self.spec.dataset.label_column
        label_map = build_label_map(train, label)
        return (
            encode_labels(train, label, label_map),
            encode_labels(evaluation, label, label_map),
            label_map,
        )

    def tokenize(
        self, table: Table, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> datasets.Dataset:
        text = self.spec.dataset.text_column
        return tokenize_texts(
            table, tokenizer, lambda b: [str(t) for t in b[text]], max_length, keep=["labels"]
        )

    def model_kwargs(self, label_map: LabelMap | None) -> dict[str, Any]:
        assert label_map is not None
        return {
            "num_labels": len(label_map),
            "id2label": label_map.id2label,
            "label2id": label_map.label2id,
            # A checkpoint already fine-tuned with another number of classes gets a new head.
            "ignore_mismatched_sizes": True,
        }

    def head_note(self, head_tensors: int, label_map: LabelMap | None) -> str:
        return f"new classification head: {len(label_map) if label_map else '?'} labels"

    def collator(self, tokenizer: PreTrainedTokenizerBase) -> Any:
        return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=None)

    def metrics_fn(self) -> evaluation.ClassificationMetrics:
        return evaluation.ClassificationMetrics()

    def evaluate(self, state: RunState) -> None:
        """Classification report (QAT: fp32 vs int8 first)."""
        assert state.raw.label_map is not None and state.metrics_fn is not None
        if state.spec.quantization is not None:
            qat_metrics, predicted, labels = finish_qat(state)
            state.final |= qat_metrics
        else:
            predicted, labels = _predictions(state.trainer, state.metrics_fn)
        report = evaluation.write_classification_report(
            labels, predicted, state.raw.label_map.labels, state.output_dir
        )
        state.artifacts |= {k: str(v) for k, v in report.items()}

    def evaluate_as_worker(self, state: RunState) -> None:
        if state.spec.quantization is None:
            assert state.metrics_fn is not None
            _predictions(state.trainer, state.metrics_fn)

    @classmethod
    @torch.inference_mode()
    def predict(
        cls,
        info: dict[str, Any],
        model: Any,
        tokenizer: PreTrainedTokenizerBase,
        texts: Sequence[str],
        max_new_tokens: int,
    ) -> list[str]:
        id2label = _id2label(info, model)
        batches = evaluation.encoded_batches(tokenizer, texts, int(info.get("maxLength") or 512))
        return [id2label[int(i)] for enc in batches for i in model(**enc).logits.argmax(dim=-1)]


def _id2label(info: dict[str, Any], model: PreTrainedModel) -> dict[int, str]:
    if info.get("labels"):
        return dict(enumerate(info["labels"]))
    return {int(k): str(v) for k, v in (model.config.id2label or {}).items()}


def _predictions(trainer: Trainer, metrics_fn: evaluation.ClassificationMetrics) -> tuple[Any, Any]:
    if metrics_fn.last_predictions is None or metrics_fn.last_labels is None:
        trainer.evaluate()
    assert metrics_fn.last_predictions is not None and metrics_fn.last_labels is not None
    return metrics_fn.last_predictions, metrics_fn.last_labels


def _eval_loader(eval_ds: Any, tokenizer: PreTrainedTokenizerBase, batch_size: int) -> Any:
    data = eval_ds.remove_columns([LENGTH_COLUMN]).with_format("torch")
    return DataLoader(data, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer))


def finish_qat(state: RunState) -> tuple[dict[str, float], Any, Any]:
    """fp32 (QAT weights, fake quantisation off) vs the converted int8 model, side by side;
    the int8 model is saved as the run's model."""
    from finetune_trainer import qat

    trainer, tokenizer, output_dir = state.trainer, state.tokenizer, state.output_dir
    model: Any = trainer.model
    if hasattr(model, "merge_and_unload"):  # LoRA + QAT: keep the adapter, ship it merged
        adapter_dir = output_dir / "adapter"
        shutil.rmtree(adapter_dir, ignore_errors=True)
        model.save_pretrained(str(adapter_dir))
        tokenizer.save_pretrained(adapter_dir)
        state.artifacts["adapter"] = str(adapter_dir)
        model = model.merge_and_unload()
    assert isinstance(model, torch.nn.Module)
    model = model.to("cpu").eval()
    loader = _eval_loader(state.eval_ds, tokenizer, trainer.args.per_device_eval_batch_size)
    fp32 = qat.fp32_copy(model)
    fp32_pred, labels = evaluation.predict_classes(fp32, loader)
    fp32_scores = evaluation.classification_scores(labels, fp32_pred)
    fp32_mb = qat.serialized_mb(fp32)
    del fp32
    embeddings = qat.convert_int8(model)
    int8_pred, labels = evaluation.predict_classes(model, loader)
    int8_scores = evaluation.classification_scores(labels, int8_pred)
    directory = Path(output_dir) / "model"
    assert isinstance(model, PreTrainedModel)
    layers = state.qat_layers
    atomic.save_dir(  # all or nothing (atomic.py)
        directory, lambda d: qat.save_int8(model, layers, embeddings, d), tokenizer.save_pretrained
    )
    state.artifacts["model"] = str(directory)
    metrics = {
        "fp32Accuracy": fp32_scores["accuracy"],
        "int8Accuracy": int8_scores["accuracy"],
        "fp32F1Macro": fp32_scores["f1_macro"],
        "int8F1Macro": int8_scores["f1_macro"],
        "fp32SizeMb": round(fp32_mb, 3),
        "int8SizeMb": round(qat.serialized_mb(model), 3),
        # The shipped model is the int8 one: its scores are the run's scores.
        "accuracy": int8_scores["accuracy"],
        "f1Macro": int8_scores["f1_macro"],
    }
    return metrics, int8_pred, labels
