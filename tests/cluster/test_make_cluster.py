"""`make cluster` end to end, as a contributor (or a reviewer with held-out manifests) uses
it: `python -m finetune_cluster up` builds nothing new (binaries cached), starts the control
plane and the node agent, installs the chart with the operator as its Deployment; then the
real kubectl applies a FineTuneJob that the real trainer runs to Succeeded; deleting it
removes its Job and pods; `down` leaves no process behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from finetune_cluster.build import bin_dir
from support.tiny_models import sentiment_rows, tiny_bert, write_rows

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def cluster_dir() -> Iterator[Path]:
    # World-readable and outside /tmp: trainer pods run as uid 10001 with /tmp an emptyDir.
    root = Path(tempfile.mkdtemp(prefix="finetune-make-cluster-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        subprocess.run([sys.executable, "-m", "finetune_cluster", "down", "--dir", str(root / "c")])
        shutil.rmtree(root, ignore_errors=True)


def kubectl(root: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir() / "kubectl"), f"--kubeconfig={root / 'c' / 'kubeconfig'}", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )


def wait(what: str, check: object, timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def processes_of(root: Path) -> list[str]:
    """Command lines of live processes that mention the cluster dir."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(root) in cmd and state != "Z":
            found.append(f"{proc.name}: {cmd[:200]}")
    return found


def test_make_cluster_runs_a_finetunejob_and_cluster_down_leaves_nothing(cluster_dir: Path) -> None:
    up = subprocess.run(
        [sys.executable, "-m", "finetune_cluster", "up", "--dir", str(cluster_dir / "c")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert up.returncode == 0, up.stdout + up.stderr
    assert "export KUBECONFIG=" in up.stdout

    nodes = kubectl(cluster_dir, "get", "nodes").stdout
    assert " Ready " in nodes, nodes
    deploy = json.loads(
        kubectl(cluster_dir, "get", "deploy", "-n", "finetune-system", "-o", "json").stdout
    )
    (operator,) = deploy["items"]
    assert operator["status"].get("availableReplicas") == 1

    data = cluster_dir / "data"
    model = tiny_bert(data / "model")
    train = write_rows(data / "train.csv", sentiment_rows(48, seed=1))
    dev = write_rows(data / "dev.csv", sentiment_rows(16, seed=2))
    for path in [data, *data.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    ftj = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "held-out"},
        "spec": {
            "task": "classification",
            "model": {"path": str(model)},
            "dataset": {"train": {"path": str(train)}, "eval": {"path": str(dev)}},
            "hyperparameters": {"learningRate": 0.005, "epochs": 1, "batchSize": 8,
                                "maxLength": 32, "maxSteps": 4, "evalSteps": 2, "loggingSteps": 2},
            "resources": {"gpus": 1, "cpu": "1", "memory": "3Gi"},
        },
    }  # fmt: skip
    applied = kubectl(cluster_dir, "apply", "-f", "-", input=yaml.safe_dump(ftj))
    assert applied.returncode == 0, applied.stderr

    def succeeded() -> dict[str, object] | None:
        out = kubectl(cluster_dir, "get", "ftj", "held-out", "-o", "json")
        status = json.loads(out.stdout).get("status", {}) if out.returncode == 0 else {}
        assert status.get("phase") != "Failed", status
        return status if status.get("phase") == "Succeeded" else None

    status = wait("the FineTuneJob to succeed", succeeded, 300)
    assert isinstance(status, dict)
    assert "accuracy" in status["metrics"] and status["progress"]["step"] == 4  # type: ignore[index,operator]
    table = kubectl(cluster_dir, "get", "ftj").stdout
    assert "held-out" in table and "Succeeded" in table
    env = dict(os.environ, KUBECONFIG=str(cluster_dir / "c" / "kubeconfig"))
    get = subprocess.run(
        [sys.executable, "-c", "from finetune_cli.app import main; main()", "get"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert "held-out" in get.stdout and "Succeeded" in get.stdout, get.stdout + get.stderr
    logs = kubectl(cluster_dir, "logs", "job/held-out-train")
    assert "[succeeded]" in logs.stdout, logs.stdout[-2000:] + logs.stderr

    assert kubectl(cluster_dir, "delete", "ftj", "held-out").returncode == 0
    wait("the garbage collector to remove the Job",
         lambda: "NotFound" in kubectl(cluster_dir, "get", "job", "held-out-train").stderr, 60)  # fmt: skip
    wait("the pods to go",
         lambda: not json.loads(kubectl(cluster_dir, "get", "pods", "-o", "json").stdout)["items"], 60)  # fmt: skip

    down = subprocess.run(
        [sys.executable, "-m", "finetune_cluster", "down", "--dir", str(cluster_dir / "c")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 30
    while processes_of(cluster_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_of(cluster_dir) == []
