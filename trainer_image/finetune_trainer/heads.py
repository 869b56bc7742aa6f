"""Structured attention-head pruning: heads are removed, so the model is smaller.

transformers 5 dropped `PreTrainedModel.prune_heads` (and `config.pruned_heads`), but its
forward passes size heads from the projections (`view(..., -1, head_size)`), so heads go
with `transformers.pytorch_utils.prune_linear_layer`: the query/key/value rows and the
output projection columns of each removed head. Supported: BERT-style attention (BERT,
RoBERTa, MiniLM, ELECTRA...: `attention.self.{query,key,value}` + `attention.output.dense`).

Which heads: the smallest L1 norm of their query, key, value and output weights, ranked
across all layers (data-free, like magnitude pruning), keeping at least one per layer.
The removed heads are recorded in the config (`finetune_pruned_heads`), and
`load_pruned` rebuilds the smaller shapes before loading the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from finetune_trainer.errors import ModelError

CONFIG_KEY = "finetune_pruned_heads"


def attention_blocks(model: nn.Module) -> dict[str, Any]:
    """name -> attention module (with .self and .output.dense), or a clear refusal."""
    found = {
        name: module
        for name, module in model.named_modules()
        if all(hasattr(getattr(module, "self", None), p) for p in ("query", "key", "value"))
        and isinstance(getattr(getattr(module, "output", None), "dense", None), nn.Linear)
    }
    if not found:
        raise ModelError(
            f"pruning.method heads: {type(model).__name__} has no BERT-style attention "
            "(attention.self.query/key/value + attention.output.dense); use method magnitude"
        )
    return found


def _head_scores(attention: Any) -> torch.Tensor:
    """L1 norm per head of its q/k/v rows and output-projection columns."""
    self_attn = attention.self
    n, size = _heads(attention), self_attn.attention_head_size
    score = sum(
        getattr(self_attn, p).weight.detach().abs().reshape(n, size, -1).sum(dim=(1, 2))
        for p in ("query", "key", "value")
    )
    out = attention.output.dense.weight.detach().abs().reshape(-1, n, size).sum(dim=(0, 2))
    return score + out


def _heads(attention: Any) -> int:
    return int(attention.self.query.out_features // attention.self.attention_head_size)


def choose_heads(blocks: dict[str, Any], share: float) -> dict[str, list[int]]:
    """The `share` of all heads with the smallest scores, at least one head kept per block."""
    ranked = sorted(
        (float(s), name, head)
        for name, block in blocks.items()
        for head, s in enumerate(_head_scores(block))
    )
    budget = round(share * len(ranked))
    chosen: dict[str, list[int]] = {name: [] for name in blocks}
    for _, name, head in ranked:
        if budget == 0:
            break
        if len(chosen[name]) < _heads(blocks[name]) - 1:
            chosen[name].append(head)
            budget -= 1
    return {name: sorted(h) for name, h in chosen.items() if h}


@torch.no_grad()
def remove_heads(model: nn.Module, removed: dict[str, list[int]]) -> None:
    """Shrink each named attention block to the heads not in `removed[name]`."""
    blocks = attention_blocks(model)
    for name, drop in removed.items():
        attention = blocks[name]
        self_attn, size = attention.self, attention.self.attention_head_size
        keep = [h for h in range(_heads(attention)) if h not in set(drop)]
        rows = [h * size + i for h in keep for i in range(size)]
        index: Any = torch.tensor(rows, dtype=torch.long)  # prune_linear_layer: LongTensor
        for p in ("query", "key", "value"):
            setattr(self_attn, p, prune_linear_layer(getattr(self_attn, p), index, dim=0))
        attention.output.dense = prune_linear_layer(attention.output.dense, index, dim=1)
        self_attn.num_attention_heads = len(keep)
        self_attn.all_head_size = len(keep) * size


def prune_heads(model: nn.Module, share: float) -> float:
    """Remove `share` of the heads; record them in the config. Returns the share removed."""
    blocks = attention_blocks(model)
    total = sum(_heads(b) for b in blocks.values())
    removed = choose_heads(blocks, share)
    remove_heads(model, removed)
    config: Any = getattr(model, "config", None)
    if config is not None:
        setattr(config, CONFIG_KEY, removed)
    return sum(len(h) for h in removed.values()) / total


def load_pruned(directory: Path, from_config: Any) -> nn.Module:
    """A head-pruned model saved with save_pretrained: build, shrink, then load weights."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(directory)
    model = from_config(config)
    remove_heads(model, getattr(config, CONFIG_KEY, None) or {})
    state: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        state |= load_file(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(k not in _tied(model) for k in missing):
        raise ModelError(f"{directory}: weights do not fit the head-pruned model: {missing}")
    model.tie_weights()
    return model


def _tied(model: nn.Module) -> set[str]:
    return set(getattr(model, "_tied_weights_keys", None) or ())


def is_pruned(directory: Path) -> bool:
    """A model directory whose config records removed heads."""
    import json

    config = directory / "config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get(CONFIG_KEY))
