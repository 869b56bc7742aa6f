"""Model sizes for the size tables: parameters, MB of weights, MB compressed."""

from __future__ import annotations

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
