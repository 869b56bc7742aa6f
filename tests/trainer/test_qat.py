"""Quantization-aware training ends in a truly int8 model that reloads and predicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import MakeJob

pytestmark = pytest.mark.trainer

# The int8 model may lose at most this much accuracy against the fp32 weights.
TOLERANCE = 0.1


def test_qat_int8_smaller_close_and_reloadable(
    bert_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    import torch

    from finetune_trainer.predict import load_run, predict
    from finetune_trainer.run import run

    train, dev = sentiment_data
    out = tmp_path / "out"
    job = make_job(
        task="classification",
        model_path=bert_dir,
        train=train,
        eval=dev,
        hyperparameters={"learningRate": 3e-3, "epochs": 6, "batchSize": 8},
        quantization={"mode": "qat"},
    )
    m = run(job, spec_dir=tmp_path, output_dir=out)

    assert m["int8SizeMb"] < m["fp32SizeMb"]
    assert m["fp32Accuracy"] >= 0.9
    assert abs(m["fp32Accuracy"] - m["int8Accuracy"]) <= TOLERANCE
    assert m["accuracy"] == m["int8Accuracy"]
    state = json.loads((out / "metrics.json").read_text())
    assert {"fp32Accuracy", "int8Accuracy", "fp32SizeMb", "int8SizeMb"} <= set(state["metrics"])

    outside = _readme_recipe_loads(out / "model")
    _, model, _ = load_run(out)
    assert type(outside) is type(model)
    query = model.bert.encoder.layer[0].attention.self.query
    assert query.weight.qdata.dtype == torch.int8  # really int8 storage, not fake quant
    assert model.bert.embeddings.word_embeddings.weight.qdata.dtype == torch.int8
    # Tiny tensors carry pickling overhead; all-MiniLM-L6-v2 goes 90.9 MB -> 23.1 MB.
    assert m["int8SizeMb"] < 0.6 * m["fp32SizeMb"]
    assert predict(out, ["good great film", "bad awful plot"]) == ["pos", "neg"]


def _readme_recipe_loads(model_dir: Path) -> object:
    """Run the load recipe the run writes into model/README.md (no finetune_trainer)."""
    import re

    readme = (model_dir / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S)
    assert code is not None
    namespace: dict[str, object] = {}
    exec(code.group(1).replace("THIS_DIRECTORY", str(model_dir)), namespace)
    return namespace["model"]


def test_lora_with_qat_ships_a_merged_int8_model_and_the_adapter(
    bert_dir: Path, make_job: MakeJob, sentiment_data: tuple[Path, Path], tmp_path: Path
) -> None:
    import torch

    from finetune_trainer.predict import load_run, predict
    from finetune_trainer.run import run

    train, dev = sentiment_data
    out = tmp_path / "out"
    job = make_job(
        task="classification",
        model_path=bert_dir,
        train=train,
        eval=dev,
        hyperparameters={"learningRate": 3e-2, "epochs": 10, "batchSize": 8},
        lora={"rank": 8, "alpha": 16, "dropout": 0.0},
        quantization={"mode": "qat"},
    )
    m = run(job, spec_dir=tmp_path, output_dir=out)
    assert m["int8SizeMb"] < m["fp32SizeMb"]
    assert abs(m["fp32Accuracy"] - m["int8Accuracy"]) <= TOLERANCE
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    _, model, _ = load_run(out)
    assert model.bert.encoder.layer[0].attention.self.value.weight.qdata.dtype == torch.int8
    assert set(predict(out, ["good great film", "bad awful plot"])) <= {"neg", "pos"}
