"""`finetune run` with `spec.resources.nodes > 1`: that many worker processes on this machine.

The workers are started by torchrun in standalone mode (`python -m finetune_trainer.torchrun
--standalone --nproc-per-node=<nodes>`), each running the trainer image's entry point
(`python -m finetune_trainer --spec FILE`), so a local multi-process run takes the same
path as the pods of a multi-node Job: the same rendezvous, ranks and reporting (rank 0
prints progress and writes metrics.json). On CPU the processes talk over gloo; on a GPU
machine each takes GPU LOCAL_RANK over nccl, so nodes must not exceed the GPUs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from finetune_api.manifest import UserError
from finetune_api.models import FineTuneJob

METRICS_FILE = "metrics.json"  # = finetune_trainer.run.METRICS_FILE (no trainer import here)


class WorkersFailed(UserError):
    """A worker process failed; its own message is already on stderr."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the training workers failed (exit code {code}); see the output above")
        self.code = code


def torchrun_command(nodes: int, spec_file: Path, spec_dir: Path, output: Path) -> list[str]:
    """torchrun standalone with one process per node, running the trainer image's entry."""
    return [
        sys.executable,
        "-m",
        "finetune_trainer.torchrun",  # torchrun, one error line when a worker fails
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={nodes}",
        "--max-restarts=0",
        "-m",
        "finetune_trainer",
        "--spec",
        str(spec_file),
        "--spec-dir",
        str(spec_dir),
        "--output",
        str(output),
    ]


def _check_gpus(nodes: int) -> None:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if 0 < gpus < nodes:
        raise UserError(
            f"spec.resources.nodes is {nodes} but this machine has {gpus} GPU(s): each local "
            "worker takes one GPU; lower nodes (--set spec.resources.nodes=N)"
        )


def default_output(job: FineTuneJob) -> Path:
    """spec.output.path, else ./runs/NAME (finetune_trainer.run.default_output, without
    loading the trainer into this parent process)."""
    if job.spec.output.path:
        return Path(job.spec.output.path).expanduser()
    return Path("runs") / job.metadata.name


def worker_env(nodes: int, output_dir: Path) -> dict[str, str]:
    """This environment, plus: the run lock is held here; OMP threads per worker set (so
    torchrun prints no OMP_NUM_THREADS banner: the cores are shared out between workers)."""
    from finetune_trainer.rundir import LOCK_HELD_ENV

    env = dict(os.environ)
    env[LOCK_HELD_ENV] = str(output_dir)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nodes)))
    return env


def _wait(process: subprocess.Popen[bytes]) -> int:
    """The workers' exit code; on Ctrl-C or SIGTERM here, torchrun gets SIGTERM (it stops
    its workers, which record the stop in metrics.json) before this process goes on."""
    try:
        return process.wait()
    except BaseException:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        raise


def run_workers(
    job: FineTuneJob, *, spec_dir: Path, output: Path | None = None
) -> dict[str, float]:
    """Train with spec.resources.nodes local worker processes; returns rank 0's metrics."""
    from finetune_trainer import rundir  # light: no torch

    nodes = job.spec.resources.nodes
    _check_gpus(nodes)
    output_dir = (output or default_output(job)).resolve()
    rundir.prepare(output_dir)
    print(f"finetune: {job.metadata.name} -> {output_dir} ({nodes} worker processes)", flush=True)
    # This process holds the directory's run lock for its workers (rundir.LOCK_HELD_ENV).
    with rundir.locked(output_dir), tempfile.TemporaryDirectory(prefix="finetune-") as tmp:
        spec_file = Path(tmp) / "job.json"
        spec_file.write_text(json.dumps(job.dump()))
        command = torchrun_command(nodes, spec_file, spec_dir, output_dir)
        code = _wait(subprocess.Popen(command, env=worker_env(nodes, output_dir)))
    if code != 0:
        raise WorkersFailed(code)
    state = json.loads((output_dir / METRICS_FILE).read_text())
    metrics: dict[str, float] = state.get("metrics", {})
    headline = {
        k: metrics[k]
        for k in ("accuracy", "f1Macro", "perplexity", "bleu", "worldSize")
        if k in metrics
    }
    summary = ", ".join(f"{k} {v:.4g}" for k, v in headline.items())
    print(f"finetune: done: {summary}; artifacts in {output_dir}", flush=True)
    return metrics
