"""Quantization-aware training with torchao, ending in a truly int8 model.

Prepare: every Linear of the encoder (not the classification head) becomes a torchao
`FakeQuantizedLinear` (int8 per-token activations, int8 per-channel symmetric weights),
so training sees the rounding it will meet. Convert: the fake-quantised layers become
plain Linear layers holding torchao `Int8Tensor` weights (int8 data + fp32 scales) with
dynamic int8 activation quantisation: torchao's `Int8DynamicActivationInt8WeightConfig`.
The embedding tables (a third or more of a small encoder) are stored int8 too, per row
(`IntxWeightOnlyConfig`, post-training: a lookup has no activation to quantise).

Saved as `int8_model.pt` (the state dict, tensor subclasses included) next to the model
config and tokenizer; `load_int8` rebuilds the architecture from the config, applies the
same quantisation to the same layers and loads the int8 weights (`assign=True`).
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchao.quantization import (
    Int8DynamicActivationInt8WeightConfig,
    IntxWeightOnlyConfig,
    quantize_,
)
from torchao.quantization.granularity import PerAxis
from torchao.quantization.qat import FakeQuantizedLinear, IntxFakeQuantizeConfig, QATConfig
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

from finetune_trainer.errors import RunDirError

WEIGHTS_FILE = "int8_model.pt"
LAYERS_FILE = "quantization.json"
SCHEME = (
    "torchao Int8DynamicActivationInt8WeightConfig on Linear (int8 weights per channel, "
    "dynamic int8 activations per token); IntxWeightOnlyConfig int8 per row on embeddings"
)
HEAD_PREFIXES = ("classifier", "score", "pre_classifier", "lm_head")


def _base_config() -> Int8DynamicActivationInt8WeightConfig:
    return Int8DynamicActivationInt8WeightConfig()


def _embedding_config() -> IntxWeightOnlyConfig:
    return IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0))


def _embedding_filter(module: nn.Module, fqn: str) -> bool:
    return isinstance(module, nn.Embedding) and quantizable(fqn)


def quantizable(fqn: str) -> bool:
    return fqn.split(".")[0] not in HEAD_PREFIXES


def _linear_filter(module: nn.Module, fqn: str) -> bool:
    return isinstance(module, nn.Linear) and quantizable(fqn)


def prepare_qat(model: nn.Module) -> list[str]:
    """Swap the encoder's Linear layers for fake-quantised ones; return their names."""
    names = [n for n, m in model.named_modules() if _linear_filter(m, n)]
    config = QATConfig(
        activation_config=IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False),
        weight_config=IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True),
        step="prepare",
    )
    quantize_(model, config, filter_fn=_linear_filter)
    return names


def fp32_copy(model: nn.Module) -> nn.Module:
    """The QAT-trained weights as a plain float model (fake quantisation removed)."""
    clone = copy.deepcopy(model)
    swaps = [(n, m) for n, m in clone.named_modules() if isinstance(m, FakeQuantizedLinear)]
    for name, module in swaps:
        parent_name, _, child = name.rpartition(".")
        parent = clone.get_submodule(parent_name) if parent_name else clone
        setattr(parent, child, module.to_linear())
    return clone


def convert_int8(model: nn.Module) -> list[str]:
    """Replace the fake-quantised layers by real int8 ones and store the embedding tables
    as int8, in place; returns the embedding names."""
    quantize_(model, QATConfig(_base_config(), step="convert"), filter_fn=None)
    tied = _tied_embeddings(model)
    embeddings = [n for n, m in model.named_modules() if _embedding_filter(m, n) and n not in tied]
    chosen = set(embeddings)
    quantize_(model, _embedding_config(), filter_fn=lambda m, fqn: fqn in chosen)
    return embeddings


def _tied_embeddings(model: nn.Module) -> set[str]:
    """Embeddings whose weight another module shares (e.g. a tied LM head): left as is."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            owners.setdefault(id(weight), []).append(name)
    return {n for names in owners.values() if len(names) > 1 for n in names}


def serialized_mb(model: nn.Module) -> float:
    """Size of the model's serialised state dict in MB (what lands on disk)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1e6


LOAD_RECIPE = """# int8 model (torchao), written by finetune_trainer

Load it without finetune_trainer (needs torch, transformers, torchao):

```python
import json, torch
from torch import nn
from torchao.quantization import (Int8DynamicActivationInt8WeightConfig,
                                  IntxWeightOnlyConfig, quantize_)
from torchao.quantization.granularity import PerAxis
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

d = "THIS_DIRECTORY"
meta = json.load(open(f"{d}/quantization.json"))
model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(d))
quantize_(model, Int8DynamicActivationInt8WeightConfig(),
          filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn in meta["layers"])
quantize_(model, IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
          filter_fn=lambda m, fqn: fqn in meta["embeddings"])
state = torch.load(f"{d}/int8_model.pt", map_location="cpu", weights_only=False)
model.load_state_dict(state, assign=True)
model.eval()
tokenizer = AutoTokenizer.from_pretrained(d)
```
"""


def save_int8(
    model: PreTrainedModel, layers: list[str], embeddings: list[str], directory: Path
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    path = directory / WEIGHTS_FILE
    torch.save(model.state_dict(), path)
    (directory / "README.md").write_text(LOAD_RECIPE)
    (directory / LAYERS_FILE).write_text(
        json.dumps(
            {"scheme": SCHEME, "layers": layers, "embeddings": embeddings, "weights": WEIGHTS_FILE},
            indent=2,
        )
    )
    return path


def load_int8(
    directory: Path,
    auto_class: Callable[..., PreTrainedModel] = AutoModelForSequenceClassification.from_config,
) -> PreTrainedModel:
    """Rebuild an int8 model saved by `save_int8` (eval mode)."""
    meta_path = directory / LAYERS_FILE
    if not meta_path.is_file():
        raise RunDirError(f"{directory}: no {LAYERS_FILE}; not an int8 model directory")
    meta = json.loads(meta_path.read_text())
    layers, embeddings = set(meta["layers"]), set(meta.get("embeddings", []))
    config = AutoConfig.from_pretrained(directory)
    model = auto_class(config)
    quantize_(
        model, _base_config(), filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn in layers
    )
    quantize_(model, _embedding_config(), filter_fn=lambda m, fqn: fqn in embeddings)
    # The file holds torchao tensor subclasses, which the weights_only unpickler rejects;
    # it is our own artifact, written by save_int8.
    state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=False)
    model.load_state_dict(state, assign=True)
    model.eval()
    return model
