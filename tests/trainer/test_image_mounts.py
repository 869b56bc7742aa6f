"""The trainer image's entry point writes nothing outside the trainer pod's mounts.

The pod (operator `jobs.build_job`) has a read-only root filesystem; only its volumes are
writable: /tmp, the HF cache, the output directory (and the kubelet's termination log).
This test runs `python -m finetune_trainer --spec FILE` on a tiny model with the Job's own
environment (HOME, TMPDIR, MPLCONFIGDIR, HF_HOME), its mount paths moved to temporary
folders, and:

- where unprivileged user namespaces work (`unshare`), inside a sandbox: every mount of
  the machine bind-mounted read-only, the four mount folders writable, a
  fresh tmpfs at /dev/shm (the pod's memory emptyDir), so any other write
  fails with EROFS (the run would fail, or a library that swallows the error logs it);
- always: the working directory and the inputs (model, data, spec) are unchanged and
  nothing but the mount folders appeared next to them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeJob, sentiment_rows, write_rows

pytestmark = pytest.mark.trainer

# A read-only copy of / (every submount remounted read-only) with the writable folders
# bound in, then chroot into it. $1 = new root, $2 = working directory, $3.. = writable.
SANDBOX = r"""
set -eu
root=$1; cwd=$2; shift 2
mount --rbind / "$root"
awk -v r="$root" '$5 == r || index($5, r "/") == 1 {print $5}' /proc/self/mountinfo |
while read -r m; do
  case "$m" in "$root"/proc*|"$root"/sys*|"$root"/dev*) mount -o remount,bind,ro "$m" 2>/dev/null || true ;;
    *) mount -o remount,bind,ro "$m" || { echo "sandbox: cannot make $m read-only" >&2; exit 97; } ;;
  esac
done
for w in "$@"; do mount --bind "$w" "$root$w"; done
mount -t tmpfs -o size=64m shm "$root/dev/shm"  # the pod's /dev/shm emptyDir (Memory)
exec chroot "$root" /bin/sh -c 'cd "$1" && shift && exec "$@"' sh "$cwd" \
  "$PYTHON" -m finetune_trainer --spec "$SPEC"
"""
UNSHARE = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]


def _sandbox_available() -> bool:
    if not all(shutil.which(tool) for tool in ("unshare", "chroot", "mount", "awk", "bash")):
        return False
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True
    )
    return probe.returncode == 0


def _job_env(job: Any, mounts: dict[str, Path]) -> dict[str, str]:
    """The env the operator gives the trainer container, mount paths moved to folders."""
    from finetune_operator.config import OperatorConfig
    from finetune_operator.jobs import build_job

    manifest = build_job(job, "uid-1", OperatorConfig())
    env: dict[str, str] = {}
    for item in manifest["spec"]["template"]["spec"]["containers"][0]["env"]:
        value = item.get("value")
        if value is None or item["name"] in ("FINETUNE_JOB", "FINETUNE_STATUS_SINK"):
            continue  # the spec comes from --spec; no API server here
        for path, folder in mounts.items():
            if value == path or value.startswith(path + "/"):
                value = str(folder / value[len(path) :].lstrip("/"))
        env[item["name"]] = value
    return env


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under root: (size, mtime_ns)."""
    out = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_size if path.is_file() else 0, st.st_mtime_ns)
    return out


def test_entry_point_writes_only_into_its_mounts(
    bert_dir: Path, make_job: MakeJob, tmp_path: Path
) -> None:
    inputs = tmp_path / "inputs"
    model = inputs / "model"
    shutil.copytree(bert_dir, model)
    train = write_rows(inputs / "train.csv", sentiment_rows(48, seed=1))
    dev = write_rows(inputs / "dev.csv", sentiment_rows(16, seed=2))
    work = tmp_path / "workdir"  # the process's cwd, not a mount: must stay empty
    work.mkdir()
    folders = {name: tmp_path / "mounts" / name for name in ("tmp", "cache", "output", "term")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    job = make_job(
        task="classification",
        model_path=model,
        train=train,
        eval=dev,
        hyperparameters={"maxSteps": 4, "batchSize": 8, "evalSteps": 2},
        output={"path": str(folders["output"])},
    )
    spec = inputs / "job.json"
    spec.write_text(json.dumps(job.dump()))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",  # as the image's ENV
        **_job_env(job, {"/tmp": folders["tmp"], "/cache/huggingface": folders["cache"]}),
        # The kubelet mounts the termination log file.
        "FINETUNE_TERMINATION_LOG": str(folders["term"] / "termination-log"),
        "PYTHON": sys.executable,
        "SPEC": str(spec),
    }
    assert env["HOME"] == env["TMPDIR"] == str(folders["tmp"])
    assert env["HF_HOME"] == str(folders["cache"])
    assert env["MPLCONFIGDIR"] == str(folders["tmp"] / "matplotlib")
    before = _tree(inputs), _tree(work)

    sandboxed = _sandbox_available()
    if sandboxed:
        root = tmp_path / "root"
        root.mkdir()
        command = [*UNSHARE, "bash", "-c", SANDBOX, "sandbox", str(root), str(work)]
        command += [str(f) for f in folders.values()]
    else:
        command = [sys.executable, "-m", "finetune_trainer", "--spec", str(spec)]
    proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr

    assert proc.returncode == 0, output[-4000:]
    assert "[succeeded] step 4/4" in proc.stdout
    for sign in ("Read-only file system", "Errno 30", "EROFS", "not writable"):
        assert sign not in output, output[-4000:]
    assert (_tree(inputs), _tree(work)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["inputs", "workdir", "mounts", *(["root"] if sandboxed else [])]
    )
    assert (folders["output"] / "metrics.json").is_file()
    assert (folders["output"] / "confusion_matrix.png").is_file()
    message = json.loads((folders["term"] / "termination-log").read_text())
    assert message["phase"] == "Succeeded"


def test_the_sandbox_blocks_writes_outside_the_mounts(tmp_path: Path) -> None:
    """The premise of the test above: in the sandbox a write outside a mount fails."""
    if not _sandbox_available():
        pytest.skip("no unprivileged user namespaces here (the path check above still runs)")
    root, ok = tmp_path / "root", tmp_path / "ok"
    root.mkdir()
    ok.mkdir()
    script = SANDBOX.replace(
        '"$PYTHON" -m finetune_trainer --spec "$SPEC"',
        '/bin/sh -c "echo 1 > $OK/a && echo 1 > $BAD"',
    )
    proc = subprocess.run(
        [*UNSHARE, "bash", "-c", script, "sandbox", str(root), str(tmp_path), str(ok)],
        env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "OK": str(ok),
            "BAD": str(tmp_path / "bad"),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (ok / "a").read_text() == "1\n"
    assert proc.returncode != 0 and "Read-only file system" in proc.stderr
    assert not (tmp_path / "bad").exists()
