"""`make cluster` / `make cluster-down`: a local cluster with the project installed.

    python -m finetune_cluster up [--dir .cluster] [--nodes 2] [--gpus 4]
    python -m finetune_cluster down [--dir .cluster]

`up` builds the binaries (once per machine), starts the control plane and the node agent,
installs the CRDs and the Helm chart (operator Deployment included, trainer ServiceAccount
in `default`), writes the admin kubeconfig to `<dir>/kubeconfig`, and returns once a node
is Ready and the operator's Deployment is available. `down` stops every process `up`
started (the node agent kills its pods' processes first).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from finetune_cluster.controlplane import start, start_node_agent, stop
from finetune_cluster.install import (
    RELEASE,
    SYSTEM_NAMESPACE,
    apply,
    install_crds,
    namespace_doc,
    render_chart,
)

USER_NAMESPACES = ("default",)


def up(root: Path, nodes: int, gpus: int) -> None:
    started = time.monotonic()
    cp = start(root, before_controllers=install_crds)
    try:
        args = [f"--gpus={gpus}", *(f"--node=node-{i}" for i in range(nodes))]
        start_node_agent(cp, args)
        apply(cp, [namespace_doc(SYSTEM_NAMESPACE)])
        values = {
            "trainer": {"namespaces": list(USER_NAMESPACES)},
            "image": {"repository": "finetune-operator", "tag": "local"},
        }
        apply(cp, render_chart(values))
        out = cp.kubectl(
            "rollout", "status", f"deployment/{RELEASE}", "-n", SYSTEM_NAMESPACE,
            "--timeout=100s", check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"the operator Deployment is not available: {out.stderr.strip()}")
        shutil.copy(cp.kubeconfig, root / "kubeconfig")
    except BaseException:
        stop(cp.dir)
        raise
    took = time.monotonic() - started
    print(f"cluster up in {took:.0f} s: {cp.server}")
    print(f"  export KUBECONFIG={(root / 'kubeconfig').resolve()}")
    print(f"  logs: {root.resolve() / 'logs'}; stop: make cluster-down")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m finetune_cluster")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=Path(".cluster"))
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--gpus", type=int, default=4, help="nvidia.com/gpu per node")
    args = parser.parse_args(argv)
    if args.action == "down":
        stop(args.dir)
        print(f"cluster in {args.dir} stopped")
        return
    try:
        up(args.dir, args.nodes, args.gpus)
    except (RuntimeError, OSError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
