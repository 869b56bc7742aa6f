"""The session's real control plane: etcd, kube-apiserver, controller manager, scheduler and
the node agent (finetune_cluster), with the CRDs and the chart's RBAC installed.

`start_plane(root)` is what the `control_plane` session fixture (tests/conftest.py) calls.
It installs, as `helm install` would (the chart rendered by the real Helm library,
helm-python-sdk, and applied with the real kubectl):

- the CRDs from crds/, waited on until Established;
- the chart in namespace `finetune-system`, cluster-wide mode, with the trainer
  ServiceAccount and Role in every test namespace, but without the operator Deployment:
  tests run the operator in-process, authenticated as the chart's ServiceAccount
  (`plane.operator_kubeconfig`), so every call it makes goes through the real RBAC
  authorizer. `tests/cluster/test_make_cluster.py` runs the Deployment itself;
- the test namespaces, each enforcing `pod-security.kubernetes.io/enforce: restricted`.

Images: the node agent maps `finetune-trainer:test` to this Python environment (the real
trainer) and `finetune-stub-trainer:test` to `tests/support/stub_trainer.py`, a stand-in
workload that does what a test tells it through files in `plane.stub_dir`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from finetune_cluster.controlplane import (
    ControlPlane,
    start,
    start_node_agent,
    stop,
)
from finetune_cluster.install import (
    SYSTEM_NAMESPACE,
    apply,
    install_crds,
    namespace_doc,
    render_chart,
    service_account_kubeconfig,
)

REPO = Path(__file__).resolve().parents[2]
TEST_NAMESPACES = ("team-a", "team-b")
OPERATOR_SA = "finetune"  # the chart's fullname for release "finetune"
TRAINER_IMAGE = "finetune-trainer:test"
STUB_IMAGE = "finetune-stub-trainer:test"
STUB_TRAINER = REPO / "tests" / "support" / "stub_trainer.py"


@dataclass
class Plane:
    """A started plane plus what the tests need to drive it."""

    cp: ControlPlane
    stub_dir: Path
    operator_kubeconfig: Path
    operator_user: str

    @property
    def kubeconfig(self) -> Path:
        return self.cp.kubeconfig

    @property
    def server(self) -> str:
        return self.cp.server

    @property
    def audit_log(self) -> Path:
        return self.cp.dir / "logs" / "audit.log"

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.cp.kubectl(*args, input=input, check=check)

    def client(self) -> httpx.Client:
        """A sync client as admin (reads in tests are plain GETs)."""
        return httpx.Client(
            base_url=self.server,
            verify=str(self.cp.ca_file),
            headers={"Authorization": f"Bearer {self.cp.admin_token}"},
            timeout=30,
        )

    def async_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.server,
            verify=str(self.cp.ca_file),
            headers={"Authorization": f"Bearer {self.cp.admin_token}"},
            timeout=30,
        )

    def audit(self, since: int = 0) -> list[dict[str, Any]]:
        """Audit events written after byte offset `since`: each request once, at
        ResponseComplete (a watch at ResponseStarted, since it may never complete)."""
        if not self.audit_log.exists():
            return []
        with self.audit_log.open("rb") as f:
            f.seek(since)
            lines = f.read().splitlines()
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:  # a line being written
                continue
            stage = event.get("stage")
            if (stage == "ResponseComplete" and event.get("verb") != "watch") or (
                stage == "ResponseStarted" and event.get("verb") == "watch"
            ):
                events.append(event)
        return events

    def audit_offset(self) -> int:
        return self.audit_log.stat().st_size if self.audit_log.exists() else 0


def chart_values() -> dict[str, Any]:
    return {
        "trainer": {"namespaces": list(TEST_NAMESPACES)},
        "image": {"repository": "finetune-operator", "tag": "test"},
    }


def image_map(stub_dir: Path) -> dict[str, Any]:
    return {
        STUB_IMAGE: {
            "python": sys.executable,
            "command": ["python", str(STUB_TRAINER)],
            "env": {"STUB_DIR": str(stub_dir)},
        },
    }


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports on 127.0.0.1 (the nodes' kubelet ports)."""
    import socket

    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count > 65535:
            continue
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range for the node agent")


def start_plane(root: Path, *, nodes: int = 2, gpus: int = 8) -> Plane:
    started = time.monotonic()
    cp = start(root / "cp", before_controllers=install_crds)
    try:
        # Outside /tmp: pods see an emptyDir at /tmp, and pytest's folders are 0700 while
        # trainer pods run as uid 10001. Readable by all, written by the tests (root).
        stub_dir = Path(tempfile.mkdtemp(prefix="finetune-stub-", dir="/var/tmp"))
        stub_dir.chmod(0o755)
        images = root / "images.json"
        images.write_text(json.dumps(image_map(stub_dir)))
        agent_args = [f"--images={images}", f"--gpus={gpus}", "--cpu=64", "--memory=256Gi"]
        agent_args.append(f"--port-base={free_ports(nodes)}")
        agent_args += [f"--node=node-{i}" for i in range(nodes)]
        start_node_agent(cp, agent_args)
        apply(cp, [namespace_doc(n) for n in (SYSTEM_NAMESPACE, *TEST_NAMESPACES)])
        docs = [
            d
            for d in render_chart(chart_values())
            if d["kind"] not in ("Deployment", "ServiceMonitor")
        ]
        apply(cp, docs)
        kubeconfig, _ = service_account_kubeconfig(
            cp, root / "operator.kubeconfig", SYSTEM_NAMESPACE, OPERATOR_SA
        )
    except BaseException:
        stop(cp.dir)
        raise
    print(f"control plane ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return Plane(
        cp, stub_dir, kubeconfig, f"system:serviceaccount:{SYSTEM_NAMESPACE}:{OPERATOR_SA}"
    )


PLURALS = {"FineTuneJob": "finetunejobs", "HyperparameterSweep": "hyperparametersweeps"}


def dry_run_create(
    client: httpx.Client, doc: dict[str, Any], namespace: str = "team-a"
) -> list[str]:
    """The apiserver's refusal of a create with dryRun=All and fieldValidation=Strict, as
    `field: message` lines (the 422's causes), or [] when it would be stored."""
    group, version = doc["apiVersion"].split("/")
    ns = doc.get("metadata", {}).get("namespace") or namespace
    path = f"/apis/{group}/{version}/namespaces/{ns}/{PLURALS[doc['kind']]}"
    resp = client.post(path, params={"dryRun": "All", "fieldValidation": "Strict"}, json=doc)
    if resp.status_code in (200, 201):
        return []
    body = resp.json()
    causes = (body.get("details") or {}).get("causes") or []
    lines = [f"{c.get('field', '')}: {c.get('message', '')}" for c in causes]
    return lines or [str(body.get("message", resp.text))]
