"""Build etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl from the
Go modules pinned in cluster/k8s/go.mod and cluster/etcd/go.mod, once per machine.

The binaries go to `bin_dir()` (~/.cache/finetune/cluster/<version>/bin, outside the clone),
and a stamp file records the go.mod/go.sum they were built from, so a clone reuses them
until the pins change. Go's own build and module caches make a rebuild after a pin bump
incremental.

    python -m finetune_cluster.build          # build what is missing or stale; print bin dir
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

KUBERNETES_VERSION = "v1.37.2"
ETCD_VERSION = "v3.7.3"
HERE = Path(__file__).resolve().parent.parent  # cluster/
K8S_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
BINARIES = (*K8S_COMMANDS, "etcd")


def cache_dir() -> Path:
    root = os.environ.get("FINETUNE_CLUSTER_CACHE") or Path.home() / ".cache/finetune/cluster"
    return Path(root) / KUBERNETES_VERSION


def bin_dir() -> Path:
    return cache_dir() / "bin"


def _pins() -> str:
    digest = hashlib.sha256()
    for name in ("k8s/go.mod", "k8s/go.sum", "etcd/go.mod", "etcd/go.sum"):
        digest.update((HERE / name).read_bytes())
    return digest.hexdigest()


def is_built() -> bool:
    stamp = cache_dir() / "pins.sha256"
    return (
        all((bin_dir() / b).exists() for b in BINARIES)
        and stamp.exists()
        and stamp.read_text().strip() == _pins()
    )


def _go(args: list[str], cwd: Path) -> None:
    go = shutil.which("go")
    if go is None:
        raise SystemExit("error: `go` is not on PATH: the control plane is built from Go modules")
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=readonly")
    print(f"build: go {' '.join(args[:2])} ... (in {cwd.name}/)", file=sys.stderr, flush=True)
    subprocess.run([go, *args], cwd=cwd, env=env, check=True)


def build() -> Path:
    """Build every binary unless the cache already holds them for these pins. One build at
    a time per cache: a second caller (another test session, `make cluster-build`) waits
    on the lock and then finds the binaries built."""
    out = bin_dir()
    if is_built():
        return out
    out.mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "build.lock", "w") as lock:
        if not _try_lock(lock):
            print("build: waiting for another build of the control plane", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_built():
            _build(out)
    return out


def _try_lock(lock: IO[str]) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _build(out: Path) -> None:
    started = time.monotonic()
    minor = KUBERNETES_VERSION.split(".")[1]
    version = "k8s.io/component-base/version"
    ldflags = (
        f"-s -w -X {version}.gitVersion={KUBERNETES_VERSION} -X {version}.gitMajor=1"
        f" -X {version}.gitMinor={minor} -X {version}.gitTreeState=clean"
    )
    pkgs = [f"k8s.io/kubernetes/cmd/{c}" for c in K8S_COMMANDS]
    _go(["build", "-trimpath", "-ldflags", ldflags, "-o", f"{out}/", *pkgs], HERE / "k8s")
    # The module root of go.etcd.io/etcd/server/v3 is etcd's `main` package.
    _go(
        [
            "build",
            "-trimpath",
            "-ldflags",
            "-s -w",
            "-o",
            str(out / "etcd"),
            "go.etcd.io/etcd/server/v3",
        ],
        HERE / "etcd",
    )
    (cache_dir() / "pins.sha256").write_text(_pins() + "\n")
    print(f"build: done in {time.monotonic() - started:.0f} s -> {out}", file=sys.stderr)


if __name__ == "__main__":
    print(build())
