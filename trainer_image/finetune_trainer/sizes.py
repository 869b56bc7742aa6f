"""Model sizes for the size tables: parameters, MB of weights, MB compressed."""

from __future__ import annotations

import math
import zlib

import torch
from torch import nn

MB = 1e6


def _tensors(model: nn.Module) -> list[torch.Tensor]:
    """The state dict's tensors, tied weights (shared storage) counted once."""
    seen: dict[tuple[int, int, tuple[int, ...]], torch.Tensor] = {}
    for tensor in model.state_dict().values():
        seen.setdefault((tensor.data_ptr(), tensor.numel(), tuple(tensor.shape)), tensor)
    return list(seen.values())


def parameters(model: nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def dense_mb(model: nn.Module) -> float:
    """Bytes of the distinct parameters and buffers: what a safetensors file holds."""
    return sum(t.numel() * t.element_size() for t in _tensors(model)) / MB


def size_metrics(model: nn.Module, prefix: str) -> dict[str, float]:
    """{prefix}Parameters and {prefix}SizeMb."""
    return {
        f"{prefix}Parameters": float(parameters(model)),
        f"{prefix}SizeMb": round(dense_mb(model), 3),
    }


def compressed_mb(model: nn.Module) -> float:
    """The weights deflated (zlib level 1, tensor by tensor): the zeros of a pruned model
    compress away, so this is the size it ships at in a zip or a gzip'd image layer."""
    compressor = zlib.compressobj(1)
    total = 0
    for tensor in _tensors(model):
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        total += len(compressor.compress(raw.tobytes()))
    return (total + len(compressor.flush())) / MB


# (row name, metric prefix): the models a compression run compares, in order.
TABLE_ROWS = (("teacher", "teacher"), ("dense", "dense"), ("student", "student"), ("model", ""))
TABLE_COLUMNS = (
    ("parameters", "Parameters", "{:,.0f}"),
    ("nonzero", "NonzeroParameters", "{:,.0f}"),
    ("MB (fp32)", "SizeMb", "{:.3f}"),
    ("MB (zlib)", "CompressedSizeMb", "{:.3f}"),
    ("accuracy", "Accuracy", "{:.4f}"),
    ("perplexity", "Perplexity", "{:.3f}"),
)


def _key(prefix: str, name: str) -> str:
    return prefix + name if prefix else name[0].lower() + name[1:]


def size_table(metrics: dict[str, float]) -> str:
    """Markdown: one row per model the run measured (teacher, dense, student/pruned),
    one column per size or score any of them has."""
    rows = [(label, p) for label, p in TABLE_ROWS if any(k.startswith(p) for k in metrics)]
    if "studentParameters" in metrics:  # the run's own model is the student
        rows = [(label, p) for label, p in rows if label != "model"]
    elif "sparsity" in metrics:
        rows = [("pruned" if label == "model" else label, p) for label, p in rows]
        metrics = metrics | {"studentAccuracy": metrics.get("accuracy", math.nan)}
    columns = [c for c in TABLE_COLUMNS if any(_key(p, c[1]) in metrics for _, p in rows)]
    lines = ["| model | " + " | ".join(c[0] for c in columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for label, prefix in rows:
        cells = [
            fmt.format(metrics[_key(prefix, name)]) if _key(prefix, name) in metrics else ""
            for _, name, fmt in columns
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
