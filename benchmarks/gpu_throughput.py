"""GPU training throughput: our Trainer configuration against a plain Trainer script.

    python benchmarks/gpu_throughput.py [--workloads cls-64 cls-256 lora-1b chat-sft-1b] [--json FILE]
    python benchmarks/gpu_throughput.py --smoke      # tiny models on CPU, seconds

Built for one H200 within 8 minutes: random-init models from configs (no hub access),
synthetic token data (no tokenizer files, no `datasets`, no `pydantic`: only torch,
transformers, numpy, and peft for the LoRA workload; put `trainer_image` on PYTHONPATH).

Workloads (each on the same model weights and data for every recipe):

  cls-64, cls-256  BERT-base-shaped (110M) sequence classification, short texts (SST-2
                   phrase lengths: 13 tokens on average, max 64), batch 64 / 256
  lora-1b          Llama-shaped 1.1B (TinyLlama config), bf16 weights, LoRA r16 on every
                   linear layer, causal LM on variable-length documents (231 tokens on
                   average, max 512), batch 16
  chat-sft-1b      the same model and lengths as chat SFT: the first half of each row
                   masked (-100, the prompt), ours packed (hyperparameters.packing: true)

Recipes:

  plain-fp32 / plain-bf16  a plain transformers Trainer script: default TrainingArguments
                   (+ bf16=True), DataCollatorWithPadding (classification) or
                   DataCollatorForLanguageModeling(mlm=False) (LM)
  ours             the Trainer configuration `finetune run` builds (finetune_trainer:
                   FastTrainer's pre-padded length buckets, fused AdamW, loader workers
                   and pinned memory, precision auto = bf16, causal LM: lm_speed's
                   packing/Liger decisions)
  ours[LABEL]      ours with environment switches (`--variant LABEL:NAME=VALUE,...`),
                   e.g. FINETUNE_PACKING=1, FINETUNE_FAST_BATCHES=0, FINETUNE_OPTIM=adamw_torch,
                   FINETUNE_COMPILE=1

Samples/s = training samples / training-loop seconds: a callback timestamps optimizer
steps, the first --warmup steps are not timed (CUDA is synchronised at each stamp).
Tokens/s = samples/s x the mean non-padding tokens per row; MFU for LoRA uses
finetune_trainer.throughput (4N + 2N_trainable FLOPs per token, dense bf16 peak).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "trainer_image"))

import numpy as np
import torch


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # "cls" | "lora" | "chat"
    batch: int
    mean_len: float
    max_len: int
    rows: int
    steps: int
    warmup: int


FULL = [
    Workload("cls-64", "cls", 64, 13.0, 64, 20_000, 60, 10),
    Workload("cls-256", "cls", 256, 13.0, 64, 40_000, 40, 8),
    Workload("lora-1b", "lora", 16, 231.0, 512, 2_000, 30, 6),
    Workload("chat-sft-1b", "chat", 16, 231.0, 512, 2_000, 30, 6),
]
SMOKE_VOCAB = 500
SMOKE = [
    Workload("cls-64", "cls", 8, 13.0, 64, 200, 4, 1),
    Workload("cls-256", "cls", 16, 13.0, 64, 200, 4, 1),
    Workload("lora-1b", "lora", 4, 40.0, 96, 60, 4, 1),
    Workload("chat-sft-1b", "chat", 4, 40.0, 96, 60, 4, 1),
]


class Rows(list):  # type: ignore[type-arg]
    """Rows (dicts) with column access: a map-style dataset for the Trainer and the
    columns FastTrainer pre-pads (finetune_trainer.batching)."""

    @property
    def column_names(self) -> list[str]:
        return list(self[0]) if self else []

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return [row[key] for row in self]
        return list.__getitem__(self, key)


def synthetic_rows(w: Workload, vocab: int, seed: int = 0) -> Rows:
    """Token rows whose lengths follow a log-normal, clipped to [2, max_len], with its
    location fitted (bisection) so that the clipped mean is the workload's mean."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(w.rows)

    def lengths_at(mu: float) -> np.ndarray:
        return np.clip(np.exp(mu + 0.6 * z).round(), 2, w.max_len).astype(int)

    low, high = 0.0, float(np.log(w.max_len))
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if lengths_at(mid).mean() < w.mean_len else (low, mid)
    rows = Rows()
    for n in lengths_at((low + high) / 2):
        ids = rng.integers(5, vocab, int(n)).tolist()
        row: dict[str, Any] = {"input_ids": ids, "attention_mask": [1] * len(ids)}
        if w.kind == "cls":
            row["labels"] = int(rng.integers(0, 2))
        elif w.kind == "chat":  # assistant-only loss: the first half (the prompt) is masked
            row["labels"] = [-100] * (len(ids) // 2) + ids[len(ids) // 2 :]
        else:
            row["labels"] = list(ids)
        row["length"] = len(ids)
        rows.append(row)
    return rows


def word_tokenizer(vocab: int) -> Any:
    """A WordLevel tokenizer over ids 0..vocab-1 (pad = 0): what the collators pad with."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "</s>": 4}
    words |= {f"t{i}": i for i in range(5, vocab)}
    tok = Tokenizer(models.WordLevel(vocab=words, unk_token="[UNK]"))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="</s>"
    )


def build_model(w: Workload, smoke: bool) -> Any:
    """Random init from a config, directly on the device."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
    )

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    if w.kind == "cls":
        size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, vocab_size=SMOKE_VOCAB) if smoke else {}  # fmt: skip
        with device:
            return BertForSequenceClassification(BertConfig(num_labels=2, **size))
    size = (
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=SMOKE_VOCAB)
        if smoke
        else dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                  num_attention_heads=32, num_key_value_heads=4, vocab_size=32000)
    )  # fmt: skip
    config = LlamaConfig(max_position_embeddings=2048, **size)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with device:
        model = LlamaForCausalLM(config).to(dtype)
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets,
                      task_type="CAUSAL_LM")  # fmt: skip
    return get_peft_model(model, lora)


class StepClock:
    """Optimizer-step timestamps (CUDA synchronised) as a TrainerCallback."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        clock = self
        self.stamps: list[float] = []

        class _Callback(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                clock.stamps.append(time.perf_counter())

        self.callback = _Callback()

    def samples_per_second(self, batch: int, warmup: int) -> float:
        stamps = self.stamps[warmup:]
        return batch * (len(stamps) - 1) / (stamps[-1] - stamps[0])


def train_once(
    w: Workload, recipe: str, env: dict[str, str], rows: Rows, tokenizer: Any, smoke: bool
) -> dict[str, float]:
    from transformers import Trainer, TrainingArguments

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        model = build_model(w, smoke)
        clock = StepClock()
        cuda = torch.cuda.is_available()
        common: dict[str, Any] = dict(
            output_dir=tempfile.mkdtemp(prefix=f"gpu-bench-{w.name}-"),
            per_device_train_batch_size=w.batch,
            max_steps=w.steps + w.warmup,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            logging_steps=10_000,
            bf16=cuda and recipe != "plain-fp32",
        )
        if recipe.startswith("plain"):
            args = TrainingArguments(**common)
            trainer = Trainer(model=model, args=args, train_dataset=rows,
                              data_collator=plain_collator(w, tokenizer),
                              callbacks=[clock.callback])  # fmt: skip
        else:
            trainer = ours_trainer(w, model, rows, tokenizer, common, clock)
        trainer.train()
        out = {"samples_per_s": clock.samples_per_second(w.batch, w.warmup)}
        out["tokens_per_s"] = out["samples_per_s"] * float(np.mean(rows["length"]))
        if cuda:
            out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            from finetune_trainer import throughput

            peak = throughput.peak_flops(torch.cuda.get_device_name())
            if peak:
                out["mfu"] = throughput.flops_per_token(model) * out["tokens_per_s"] / peak
        return out
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


def plain_collator(w: Workload, tokenizer: Any) -> Any:
    from transformers import DataCollatorForLanguageModeling, DataCollatorWithPadding

    if w.kind == "cls":
        return DataCollatorWithPadding(tokenizer)
    if w.kind == "chat":  # a plain SFT script: the masked labels as given, padded -100
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    lm = DataCollatorForLanguageModeling(tokenizer, mlm=False)  # labels = ids, pads -100

    def collate(features: list[dict[str, Any]]) -> Any:
        return lm([{"input_ids": f["input_ids"]} for f in features])

    return collate


def ours_trainer(
    w: Workload, model: Any, rows: Rows, tokenizer: Any, common: dict[str, Any], clock: StepClock
) -> Any:
    """The pieces of finetune_trainer.run's Trainer that matter for speed (its
    TrainingArguments need the pydantic spec; these are the same settings)."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding, TrainingArguments

    from finetune_trainer import lm_speed, speedups, throughput
    from finetune_trainer.batching import FastTrainer

    args = TrainingArguments(**common, **speedups.training_arguments())
    collator = (
        DataCollatorWithPadding(tokenizer)
        if w.kind == "cls"
        else DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
    )
    trainer = FastTrainer(model=model, args=args, train_dataset=rows, data_collator=collator,
                          processing_class=tokenizer, callbacks=[clock.callback])  # fmt: skip
    trainer.add_callback(throughput.Meter(rows))
    # chat SFT: packed (hyperparameters.packing: true), as the workload asks
    lm_speed.configure(
        trainer, causal_lm=w.kind in ("lora", "chat"), packing=True if w.kind == "chat" else None
    )
    return trainer


def parse_variants(items: list[str]) -> dict[str, dict[str, str]]:
    variants: dict[str, dict[str, str]] = {}
    for item in items:
        label, _, pairs = item.partition(":")
        variants[f"ours[{label}]"] = dict(p.split("=", 1) for p in filter(None, pairs.split(",")))
    return variants


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models, CPU is fine")
    parser.add_argument("--workloads", nargs="*", default=[w.name for w in FULL])
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:NAME=VALUE")
    parser.add_argument("--no-fp32", action="store_true", help="skip plain-fp32")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    workloads = [w for w in (SMOKE if args.smoke else FULL) if w.name in args.workloads]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"device {device}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    results: dict[str, Any] = {"device": device, "workloads": {}}
    for w in workloads:
        try:
            results["workloads"][w.name] = run_workload(w, args)
        except Exception as err:  # one device window: report it, measure the others
            if args.smoke:
                raise
            results.setdefault("errors", {})[w.name] = f"{type(err).__name__}: {err}"
            print(f"  {w.name} failed: {type(err).__name__}: {err}", flush=True)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


def run_workload(w: Workload, args: argparse.Namespace) -> dict[str, Any]:
    recipes: dict[str, dict[str, str]] = {"plain-bf16": {}, "ours": {}}
    if w.kind == "cls" and not args.no_fp32:
        recipes = {"plain-fp32": {}, **recipes}
    recipes |= parse_variants(args.variant)
    vocab = SMOKE_VOCAB if args.smoke else 30522 if w.kind == "cls" else 32000
    rows, tokenizer = synthetic_rows(w, vocab), word_tokenizer(vocab)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in recipes}
    start = time.perf_counter()
    for _ in range(args.repeats):
        for name, env in recipes.items():
            runs[name].append(train_once(w, name, env, rows, tokenizer, args.smoke))
            print(f"  {w.name} {name}: {runs[name][-1]}", flush=True)
    summary = {name: _median(values) for name, values in runs.items()}
    return {"runs": runs, "median": summary, "seconds": time.perf_counter() - start}


def _median(values: list[dict[str, float]]) -> dict[str, float]:
    keys = set().union(*values)
    return {k: statistics.median(v[k] for v in values if k in v) for k in keys}


def print_table(results: dict[str, Any]) -> None:
    print(f"\n{results['device']}")
    print("| workload | recipe | samples/s | tokens/s | MFU | peak GiB | / plain-bf16 |")
    print("|---|---|---|---|---|---|---|")
    fmt: Callable[[float | None, str], str] = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for name, error in results.get("errors", {}).items():
        print(f"| {name} | failed: {error[:120]} | | | | | |")
    for name, result in results["workloads"].items():
        base = result["median"]["plain-bf16"]["samples_per_s"]
        for recipe, m in result["median"].items():
            print(
                f"| {name} | {recipe} | {m['samples_per_s']:.0f} | {m['tokens_per_s']:.0f} | "
                f"{fmt(m.get('mfu'), '.1%')} | {fmt(m.get('peak_gib'), '.1f')} | "
                f"{m['samples_per_s'] / base:.2f}x |"
            )


if __name__ == "__main__":
    main()
