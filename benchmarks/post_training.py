"""Chat SFT and DPO on the CPU: `finetune run` (ours) against a plain TRL script with the
same model, data, LoRA and steps.

    python benchmarks/post_training.py setup  --dir /var/tmp/pt-bench
    python benchmarks/post_training.py ours   --dir /var/tmp/pt-bench --method sft|dpo
    python benchmarks/post_training.py trl    --dir /var/tmp/pt-bench --method sft|dpo

`setup` writes a random-weight Llama (hidden 256, 4 layers, the tests' word-level
tokenizer with ChatML tokens) and 512 generated conversations / preference pairs. Each
run prints one JSON line: train samples/s on the same clock for both (our
`throughput.Meter` callback, optimizer steps only) and tokens/s (samples/s x the mean
tokens per training row). Ours also evaluates before and after and saves its records; the whole-
process ratio (time both commands in turn) includes that, the in-process one does not.

The TRL script is what TRL's docs show: SFTTrainer(SFTConfig(assistant_only_loss=True))
or DPOTrainer(DPOConfig(beta)), peft_config LoRA r8 on q_proj/v_proj, the jsonl read with
`datasets.load_dataset("json")`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

ROWS = 512
STEPS = 24
BATCH = 8
MAX_LENGTH = 128
LR = 1e-3
BETA = 0.1


def setup(directory: Path) -> None:
    from support.tiny_models import chat_rows, preference_rows, tiny_llama, write_rows

    tiny_llama(directory / "model", hidden=256)
    write_rows(directory / "chat.jsonl", chat_rows(ROWS))
    write_rows(directory / "pref.jsonl", preference_rows(ROWS))


def ours(directory: Path, method: str) -> dict[str, Any]:
    from finetune_api.models import FineTuneJob
    from finetune_trainer.run import run

    spec: dict[str, Any] = {
        "task": "causal-lm",
        "model": {"path": str(directory / "model")},
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
        "hyperparameters": {
            "maxSteps": STEPS,
            "batchSize": BATCH,
            "maxLength": MAX_LENGTH,
            "learningRate": LR,
            "loggingSteps": 8,
        },
    }
    if method == "sft":
        spec["dataset"] = {"format": "messages", "train": {"path": str(directory / "chat.jsonl")}}
    else:
        spec["dataset"] = {"train": {"path": str(directory / "pref.jsonl")}}
        spec["method"] = {"type": "dpo", "beta": BETA}
    spec["dataset"] |= {"maxEvalSamples": 32}
    job = FineTuneJob.model_validate(
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": f"ours-{method}"},
            "spec": spec,
        }
    )
    out = directory / f"ours-{method}"
    metrics = run(job, spec_dir=None, output_dir=out, callbacks=[])
    return {
        "samples_per_s": metrics["samplesPerSecond"],
        "tokens_per_s": metrics["tokensPerSecond"],
    }


def trl(directory: Path, method: str) -> dict[str, Any]:
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory / "model")
    model = AutoModelForCausalLM.from_pretrained(directory / "model")
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                      task_type="CAUSAL_LM")  # fmt: skip
    common: dict[str, Any] = dict(
        output_dir=str(directory / f"trl-{method}"), max_steps=STEPS,
        per_device_train_batch_size=BATCH, learning_rate=LR, logging_steps=8, report_to="none",
        save_strategy="no", bf16=False, gradient_checkpointing=False, max_length=MAX_LENGTH,
        dataloader_pin_memory=False,
    )  # fmt: skip
    if method == "sft":
        from trl import SFTConfig, SFTTrainer

        data = datasets.load_dataset("json", data_files=str(directory / "chat.jsonl"))["train"]
        trainer: Any = SFTTrainer(model=model, args=SFTConfig(**common, assistant_only_loss=True),
                                  train_dataset=data, processing_class=tokenizer, peft_config=lora)  # fmt: skip
        lengths = [len(r) for r in trainer.train_dataset["input_ids"]]
    else:
        from trl import DPOConfig, DPOTrainer

        data = datasets.load_dataset("json", data_files=str(directory / "pref.jsonl"))["train"]
        trainer = DPOTrainer(model=model, args=DPOConfig(**common, beta=BETA),
                             train_dataset=data, processing_class=tokenizer, peft_config=lora)  # fmt: skip
        lengths = [len(p) + len(c) for p, c in zip(trainer.train_dataset["prompt_ids"],
                                                   trainer.train_dataset["chosen_ids"], strict=True)]  # fmt: skip
    from finetune_trainer import throughput

    trainer.add_callback(throughput.Meter(trainer.train_dataset))  # ours' clock, on theirs
    trainer.train()
    samples = throughput.metrics(trainer)["samplesPerSecond"]
    return {"samples_per_s": samples, "tokens_per_s": samples * sum(lengths) / len(lengths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["setup", "ours", "trl"])
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/pt-bench"))
    parser.add_argument("--method", choices=["sft", "dpo"], default="sft")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    if args.mode == "setup":
        setup(args.dir)
        return
    result = (ours if args.mode == "ours" else trl)(args.dir, args.method)
    print(json.dumps({"recipe": args.mode, "method": args.method, **result}), flush=True)


if __name__ == "__main__":
    main()
