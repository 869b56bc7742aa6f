"""Evaluation: classification metrics and plots, perplexity, BLEU for generation."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score
from torch import nn
from torch.utils.data import DataLoader
from transformers import EvalPrediction, PreTrainedModel, PreTrainedTokenizerBase


class ClassificationMetrics:
    """compute_metrics for the Trainer; keeps the last predictions for the report."""

    def __init__(self) -> None:
        self.last_predictions: np.ndarray | None = None
        self.last_labels: np.ndarray | None = None

    def __call__(self, prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions
        if isinstance(logits, tuple):
            logits = logits[0]
        predicted = np.asarray(logits).argmax(axis=-1)
        labels = np.asarray(prediction.label_ids)
        self.last_predictions, self.last_labels = predicted, labels
        return classification_scores(labels, predicted)


def classification_scores(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "f1_macro": float(f1_score(labels, predicted, average="macro", zero_division=0)),
    }


def write_classification_report(
    labels: np.ndarray, predicted: np.ndarray, names: Sequence[str], directory: Path
) -> dict[str, Path]:
    """classification_report.{json,txt} and confusion_matrix.png; returns their paths."""
    ids = list(range(len(names)))
    kwargs: dict[str, Any] = {"labels": ids, "target_names": list(names), "zero_division": 0}
    text = classification_report(labels, predicted, digits=4, **kwargs)
    report = classification_report(labels, predicted, output_dict=True, **kwargs)
    (directory / "classification_report.txt").write_text(str(text))
    (directory / "classification_report.json").write_text(json.dumps(report, indent=2))
    matrix = confusion_matrix(labels, predicted, labels=ids)
    png = directory / "confusion_matrix.png"
    plot_confusion_matrix(matrix, names, png)
    return {
        "classificationReport": directory / "classification_report.json",
        "confusionMatrix": png,
    }


def plot_confusion_matrix(matrix: np.ndarray, names: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    size = min(4 + 0.4 * n, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (eval)")
    if n <= 50:
        ax.set_xticks(range(n), labels=[str(x)[:20] for x in names], rotation=90)
        ax.set_yticks(range(n), labels=[str(x)[:20] for x in names])
    if n <= 20:
        top = matrix.max() if matrix.size else 0
        for i in range(n):
            for j in range(n):
                color = "white" if matrix[i, j] > top / 2 else "black"
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=color)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


SMOOTH_MIN_WINDOW = 5


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Centred moving average over `window` points (the window shrinks at both ends)."""
    half = max(window, 1) // 2
    out = []
    for i in range(len(values)):
        lo, hi = max(0, i - half), min(len(values), i + half + 1)
        out.append(sum(values[lo:hi]) / (hi - lo))
    return out


def plot_loss(log_history: list[dict[str, Any]], path: Path) -> bool:
    """Training (and eval) loss against step; False when there is nothing to plot.

    The raw training loss zigzags: length-grouped batches run from long to short
    sequences within each group, and short ones have a different loss. A moving average
    over ~a tenth of the points is drawn over the faint raw points."""
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        steps, losses = zip(*train, strict=True)
        ax.plot(steps, losses, color="tab:blue", alpha=0.3, lw=0.8, label="train loss (raw)")
        window = max(SMOOTH_MIN_WINDOW, len(losses) // 10)
        ax.plot(steps, smooth(losses, window), color="tab:blue", label="train loss (smoothed)")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")


@torch.inference_mode()
def predict_classes(model: nn.Module, loader: DataLoader[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Argmax predictions and labels over a loader (used for the int8 model)."""
    model.eval()
    predicted, labels = [], []
    for batch in loader:
        batch_labels = batch.pop("labels")
        logits = model(**batch).logits
        predicted.append(logits.argmax(dim=-1).cpu().numpy())
        labels.append(batch_labels.cpu().numpy())
    return np.concatenate(predicted), np.concatenate(labels)


@torch.inference_mode()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    max_length: int,
    batch_size: int = 8,
    add_special_tokens: bool = True,
) -> list[str]:
    """Greedy continuations of the prompts (new text only), batched with left padding
    (add_special_tokens False: the prompts were rendered by a chat template)."""
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    outputs: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = [str(p) for p in prompts[start : start + batch_size]]
            enc = tokenizer(
                chunk,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
                add_special_tokens=add_special_tokens,
            ).to(device)
            out = model.generate(  # type: ignore[operator]
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return outputs


def continuations(
    info: dict[str, Any],
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    *,
    batch_size: int = 8,
    add_special_tokens: bool = True,
) -> list[str]:
    """`generate` for a finished run (its run.json `info` gives the length limit)."""
    return generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        max_length=int(info.get("maxLength") or 512),
        batch_size=batch_size,
        add_special_tokens=add_special_tokens,
    )


def encoded_batches(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int, batch_size: int = 32
) -> Iterator[Any]:
    """The texts tokenised in padded batches (for a finished run's forward passes)."""
    for start in range(0, len(texts), batch_size):
        yield tokenizer(
            list(texts[start : start + batch_size]),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=max_length,
        )


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)
