"""Causal LM: padding-free packing (same loss as padding) and the Liger-kernel decision."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import DOMAIN, MakeJob, write_rows
from transformers import DataCollatorWithFlattening, LlamaConfig, LlamaForCausalLM

from finetune_trainer import lm_speed

pytestmark = pytest.mark.trainer


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                         max_position_embeddings=128)  # fmt: skip
    return LlamaForCausalLM(config).train()  # no dropout in Llama: train mode is deterministic


def documents() -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(1, 100, (n,), generator=g).tolist() for n in (5, 17, 9, 30, 2)]
    return [{"input_ids": d, "labels": d} for d in docs]


def pad(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """What DataCollatorForSeq2Seq builds: right padding, mask, labels padded with -100."""
    width = max(len(f["input_ids"]) for f in features)
    rows = [f["input_ids"] + [0] * (width - len(f["input_ids"])) for f in features]
    mask = [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]
    ids, attention = torch.tensor(rows), torch.tensor(mask)
    return {"input_ids": ids, "attention_mask": attention,
            "labels": ids.masked_fill(attention == 0, -100)}  # fmt: skip


def loss_and_grads(model: LlamaForCausalLM, batch: dict[str, Any]) -> tuple[float, torch.Tensor]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return float(loss.detach()), grads


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packing_changes_no_loss_and_no_gradient(attention: str) -> None:
    model = tiny_llama()
    model.config._attn_implementation = attention
    features = documents()
    padded_batch = pad(features)
    assert padded_batch["input_ids"].shape == (5, 30)
    packed_batch = lm_speed.packing_collator(model)(features)
    assert packed_batch["input_ids"].shape == (1, 63)  # no padding at all
    loss_padded, grads_padded = loss_and_grads(model, padded_batch)
    loss_packed, grads_packed = loss_and_grads(model, packed_batch)
    assert loss_packed == pytest.approx(loss_padded, abs=1e-5)
    assert torch.allclose(grads_packed, grads_padded, atol=1e-5)


def test_without_use_cache_false_attention_crosses_documents() -> None:
    """Why PackingCollator adds use_cache=False (transformers 5.24 behaviour)."""
    model = tiny_llama()
    features = documents()
    plain = DataCollatorWithFlattening()(features)
    ours = lm_speed.packing_collator(model)(features)
    alone = model(input_ids=torch.tensor([features[1]["input_ids"]])).logits[0]
    second = slice(5, 22)
    leaked = model(**plain).logits[0, second]
    kept = model(**ours).logits[0, second]
    assert torch.allclose(kept, alone, atol=1e-5)
    assert not torch.allclose(leaked, alone, atol=1e-3)


def test_packing_is_on_for_flash_attention_only(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_llama()
    model.config._attn_implementation = "sdpa"
    assert not lm_speed.use_packing(model)
    model.config._attn_implementation = "flash_attention_2"
    assert lm_speed.use_packing(model)
    assert lm_speed.packing_collator(model).return_flash_attn_kwargs
    monkeypatch.setenv("FINETUNE_PACKING", "0")
    assert not lm_speed.use_packing(model)
    model.config._attn_implementation = "sdpa"
    monkeypatch.setenv("FINETUNE_PACKING", "1")
    assert lm_speed.use_packing(model)


def test_liger_falls_back_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_llama()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert lm_speed.liger_decision(model) == (
        False,
        "no CUDA device (Liger kernels are Triton GPU kernels)",
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.monkey_patch", None)
    apply, why = lm_speed.liger_decision(model)
    assert not apply and "not importable" in why
    fake = types.ModuleType("liger_kernel.transformers.monkey_patch")
    fake.MODEL_TYPE_TO_APPLY_LIGER_FN = {"llama": print}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.monkey_patch", fake)
    assert lm_speed.liger_decision(model) == (True, "Liger kernels for llama")
    model.config.model_type = "bert"
    apply, why = lm_speed.liger_decision(model)
    assert not apply and "'bert'" in why


def test_a_packed_causal_lm_run_trains(
    gpt2_dir: Path, make_job: MakeJob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finetune_trainer.run import run

    monkeypatch.setenv("FINETUNE_PACKING", "1")
    train = write_rows(tmp_path / "train.jsonl", [{"text": t} for t in DOMAIN * 20])
    dev = write_rows(tmp_path / "dev.jsonl", [{"text": t} for t in DOMAIN * 2])
    job = make_job(task="causal-lm", model_path=gpt2_dir, train=train, eval=dev,
                   hyperparameters={"learningRate": 1e-2, "epochs": 4, "batchSize": 8})  # fmt: skip
    metrics = run(job, spec_dir=tmp_path, output_dir=tmp_path / "out")
    assert metrics["perplexity"] < metrics["perplexityBefore"] / 2, metrics
    assert metrics["tokensPerSecond"] > metrics["samplesPerSecond"] > 0
