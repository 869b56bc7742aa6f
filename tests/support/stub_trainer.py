"""A stand-in trainer workload for operator tests: the pod is real (created by the Job
controller, scheduled, run by the node agent as a process), only its program is a stub.

It prints `stub: env {json}` (the pod's FINETUNE_*, PET_* and rank variables), then waits
for its orders in `$STUB_DIR/<namespace>/<pod name>.json`, written by the test's Kubelet
helper (tests/operator/operator_harness.py):

    {"exit": 0, "message": "<termination message>", "log": ["line", ...]}
    {"oom": true}          allocate memory until the node agent kills it (OOMKilled)

On SIGTERM it exits 143, as the trainer would. Standard library only: it starts in ~30 ms.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    namespace = os.environ.get("POD_NAMESPACE") or _namespace()
    pod = os.environ.get("HOSTNAME", "")
    keep = ("FINETUNE_", "PET_", "JOB_COMPLETION_INDEX", "HOME", "TMPDIR", "HF_HOME", "KUBERNETES_")
    env = {k: v for k, v in os.environ.items() if k.startswith(keep)}
    env.pop("FINETUNE_JOB", None)  # large; tests read the Job's env from the API
    print("stub: env " + json.dumps(env, sort_keys=True), flush=True)
    orders = Path(os.environ["STUB_DIR"]) / namespace / f"{pod}.json"
    while not orders.exists():
        time.sleep(0.05)
    time.sleep(0.02)  # the writer renames into place; a partial file is never seen
    order = json.loads(orders.read_text())
    for line in order.get("log", []):
        print(line, flush=True)
    if order.get("oom"):
        hog = []
        while True:
            hog.append(bytearray(64 << 20))
            time.sleep(0.01)
    message = order.get("message")
    if message:
        path = os.environ.get("FINETUNE_TERMINATION_LOG", "/dev/termination-log")
        Path(path).write_text(message)
    return int(order.get("exit", 0))


def _namespace() -> str:
    sa = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return sa.read_text().strip() if sa.exists() else "default"


if __name__ == "__main__":
    sys.exit(main())
