"""Start and stop etcd, kube-apiserver, kube-controller-manager and kube-scheduler on 127.0.0.1.

    python -m finetune_cluster.controlplane up --dir .cluster     # returns once ready
    python -m finetune_cluster.controlplane down --dir .cluster

Everything lives under the state dir: the PKI, etcd's data, each component's log and a
`state.json` with the ports and the process ids that `down` stops. Ports are free ports
picked at start, so a test run and a contributor's `make cluster` can run side by side.

What is configured, and why:
- authentication: static tokens (admin in system:masters; the controller manager and the
  scheduler as their bootstrap RBAC users), ServiceAccount tokens signed with sa.key;
- authorization: RBAC only (no Node authorizer: the node agent runs as admin);
- admission: kube-apiserver's default plugins, PodSecurity and ServiceAccount included;
- controllers: Job, garbage collector, namespace, ServiceAccount and its tokens, the
  root CA publisher (the projected token volume needs kube-root-ca.crt), Deployment and
  ReplicaSet (the chart's operator), TTL-after-finished and pod GC.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from finetune_cluster.build import bin_dir, build

CONTROLLERS = (
    "job-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "deployment-controller",
    "replicaset-controller",
    "ttl-after-finished-controller",
    "pod-garbage-collector-controller",
)
SERVICE_CIDR = "10.0.0.0/24"
# Metadata (verb, resource, user, response code) of every write and of refused reads;
# health probes and the components' own leases stay out of it.
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    nonResourceURLs: ["/healthz*", "/readyz*", "/livez*", "/version", "/openapi*", "/api*"]
  - level: None
    resources: [{group: coordination.k8s.io, resources: [leases]}]
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: Metadata
    userGroups: [system:serviceaccounts]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ControlPlane:
    """A started control plane, as recorded in `<dir>/state.json`."""

    dir: Path
    apiserver_port: int
    etcd_port: int
    etcd_peer_port: int
    admin_token: str
    pids: dict[str, int] = field(default_factory=dict)
    # Each process's start time (clock ticks since boot), so a pid reused by another
    # process after ours ended is never signalled.
    starts: dict[str, int] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def ca_file(self) -> Path:
        return self.dir / "pki" / "ca.crt"

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "admin.kubeconfig"

    @property
    def bin_dir(self) -> Path:
        return bin_dir()

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this plane as admin."""
        return subprocess.run(
            [str(bin_dir() / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def save(self) -> None:
        data = asdict(self) | {"dir": str(self.dir)}
        (self.dir / "state.json").write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, root: Path) -> ControlPlane:
        data = json.loads((root / "state.json").read_text())
        data["dir"] = Path(data["dir"])
        return cls(**data)

    def get(self, path: str, timeout: float = 5) -> tuple[int, str]:
        """GET path as admin: (HTTP status, body)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        req = urllib.request.Request(
            self.server + path, headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()


# --------------------------------------------------------------------------- PKI


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(pki: Path) -> None:
    """A CA, the apiserver's serving cert (127.0.0.1, localhost, the service IP) and the
    ServiceAccount signing key."""
    pki.mkdir(parents=True, exist_ok=True)
    if (pki / "apiserver.crt").exists():
        return
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365",
        "-subj", "/CN=finetune-local-ca", "-keyout", "ca.key", "-out", "ca.crt", cwd=pki,
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=kube-apiserver",
        "-keyout", "apiserver.key", "-out", "apiserver.csr", cwd=pki,
    )  # fmt: skip
    (pki / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
    )
    _openssl(
        "x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "365", "-extfile", "san.ext", "-out", "apiserver.crt", cwd=pki,
    )  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    for key in pki.glob("*.key"):
        key.chmod(0o600)


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str, user: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "finetune-local",
                "cluster": {"server": server, "certificate-authority": str(ca_file)},
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {"name": "finetune-local", "context": {"cluster": "finetune-local", "user": user}}
        ],
        "current-context": "finetune-local",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- processes


def _spawn(cp: ControlPlane, name: str, argv: list[str]) -> None:
    log = (cp.dir / "logs" / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    cp.pids[name] = proc.pid
    cp.starts[name] = start_time(proc.pid)
    cp.save()


def start_time(pid: int) -> int:
    """The process's start time from /proc (0 when it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as gone.
    with contextlib.suppress(OSError, ValueError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def _wait(what: str, ok: Any, cp: ControlPlane, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(cp.pids[name]):
            tail = (cp.dir / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited while waiting for {what}:\n{tail}")
        with contextlib.suppress(OSError):
            if ok():
                return
        time.sleep(0.2)
    raise RuntimeError(
        f"timed out after {timeout:.0f} s waiting for {what} (see {cp.dir}/logs/{name}.log)"
    )


def start(
    root: Path,
    *,
    timeout: float = 120,
    before_controllers: Callable[[ControlPlane], None] | None = None,
) -> ControlPlane:
    """Start etcd, kube-apiserver, kube-controller-manager and kube-scheduler under root.

    `before_controllers(cp)` runs once the apiserver is ready, before the controllers
    start: CRDs installed there are known to the garbage collector from its first
    discovery, rather than after its 30 s resync (a FineTuneJob deleted in between would
    keep its Job that long)."""
    root = root.resolve()
    if (root / "state.json").exists():
        old = ControlPlane.load(root)
        if any(_alive(p) for p in old.pids.values()):
            raise RuntimeError(
                f"a control plane is already running from {root} (stop it: down --dir {root})"
            )
    build()
    bins = bin_dir()
    for sub in ("logs", "etcd"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    make_pki(root / "pki")
    pki = root / "pki"
    tokens = {name: secrets.token_hex(16) for name in ("admin", "kcm", "scheduler")}
    (root / "tokens.csv").write_text(
        f'{tokens["admin"]},admin,uid-admin,"system:masters"\n'
        f"{tokens['kcm']},system:kube-controller-manager,uid-kcm\n"
        f"{tokens['scheduler']},system:kube-scheduler,uid-scheduler\n"
    )
    (root / "tokens.csv").chmod(0o600)
    cp = ControlPlane(root, free_port(), free_port(), free_port(), tokens["admin"])
    cp.save()

    etcd_url = f"http://127.0.0.1:{cp.etcd_port}"
    _spawn(cp, "etcd", [
        str(bins / "etcd"), f"--data-dir={root / 'etcd'}", "--name=local",
        f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls=http://127.0.0.1:{cp.etcd_peer_port}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{cp.etcd_peer_port}",
        f"--initial-cluster=local=http://127.0.0.1:{cp.etcd_peer_port}",
        "--unsafe-no-fsync", "--quota-backend-bytes=2147483648", "--log-level=warn",
    ])  # fmt: skip
    _wait(
        "etcd /health",
        lambda: b"true" in urllib.request.urlopen(etcd_url + "/health", timeout=2).read(),
        cp,
        "etcd",
        30,
    )
    (root / "audit-policy.yaml").write_text(AUDIT_POLICY)
    _spawn(cp, "kube-apiserver", apiserver_args(cp, etcd_url))
    _wait(
        "kube-apiserver /readyz", lambda: cp.get("/readyz")[0] == 200, cp, "kube-apiserver", timeout
    )

    if before_controllers is not None:
        write_kubeconfig(cp.kubeconfig, cp.server, cp.ca_file, tokens["admin"], "admin")
        try:
            before_controllers(cp)
        except BaseException:
            stop(root)
            raise
    kcm = write_kubeconfig(root / "kcm.kubeconfig", cp.server, cp.ca_file, tokens["kcm"], "kcm")
    _spawn(cp, "kube-controller-manager", [
        str(bins / "kube-controller-manager"), f"--kubeconfig={kcm}",
        f"--authentication-kubeconfig={kcm}", f"--authorization-kubeconfig={kcm}",
        "--leader-elect=false", "--secure-port=0", "--use-service-account-credentials",
        f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={cp.ca_file}",
        f"--controllers={','.join(CONTROLLERS)}", "--concurrent-job-syncs=10",
        "--kube-api-qps=200", "--kube-api-burst=400", "-v=1",
    ])  # fmt: skip
    sched_kubeconfig = write_kubeconfig(
        root / "scheduler.kubeconfig", cp.server, cp.ca_file, tokens["scheduler"], "scheduler"
    )
    (root / "scheduler.yaml").write_text(
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n"
        f"clientConnection:\n  kubeconfig: {sched_kubeconfig}\n  qps: 200\n  burst: 400\n"
        "leaderElection:\n  leaderElect: false\n"
    )
    _spawn(cp, "kube-scheduler", [
        str(bins / "kube-scheduler"), f"--config={root / 'scheduler.yaml'}",
        f"--authentication-kubeconfig={sched_kubeconfig}", f"--authorization-kubeconfig={sched_kubeconfig}",
        "--secure-port=0", "-v=1",
    ])  # fmt: skip
    write_kubeconfig(cp.kubeconfig, cp.server, cp.ca_file, tokens["admin"], "admin")
    # The ServiceAccount controller has run once the default namespace's `default` exists.
    _wait(
        "the ServiceAccount controller (default/default)",
        lambda: cp.get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
        cp,
        "kube-controller-manager",
        timeout,
    )
    return cp


def apiserver_args(cp: ControlPlane, etcd_url: str) -> list[str]:
    pki = cp.dir / "pki"
    return [
        str(bin_dir() / "kube-apiserver"),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={cp.apiserver_port}",
        f"--cert-dir={cp.dir / 'certs'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={cp.ca_file}",
        f"--token-auth-file={cp.dir / 'tokens.csv'}",
        "--authorization-mode=RBAC",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # The node agent serves pods/log on 127.0.0.1 with a self-signed certificate.
        "--kubelet-preferred-address-types=InternalIP",
        "--endpoint-reconciler-type=none",
        # Every request's verb, resource and user, for tests that count or check calls.
        f"--audit-policy-file={cp.dir / 'audit-policy.yaml'}",
        f"--audit-log-path={cp.dir / 'logs' / 'audit.log'}",
        "--audit-log-format=json",
        "--audit-log-maxsize=0",
        "--max-requests-inflight=800",
        "--max-mutating-requests-inflight=400",
        "-v=1",
    ]


def start_node_agent(cp: ControlPlane, args: list[str], timeout: float = 60) -> None:
    """Start the node agent (node_agent.py) as admin; returns once its first Node is Ready."""
    argv = [sys.executable, "-m", "finetune_cluster.node_agent", f"--kubeconfig={cp.kubeconfig}"]
    argv += [f"--state-dir={cp.dir / 'node'}", *args]
    _spawn(cp, "node-agent", argv)

    def ready() -> bool:
        code, body = cp.get("/api/v1/nodes")
        nodes = json.loads(body).get("items", []) if code == 200 else []
        return any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for n in nodes
            for c in n.get("status", {}).get("conditions", [])
        )

    _wait("a Ready node", ready, cp, "node-agent", timeout)


def restart_apiserver(cp: ControlPlane, timeout: float = 120) -> None:
    """Stop kube-apiserver and start it again on the same port and etcd (a fault test)."""
    _stop_pid(cp.pids["kube-apiserver"], started=cp.starts.get("kube-apiserver"))
    _spawn(cp, "kube-apiserver", apiserver_args(cp, f"http://127.0.0.1:{cp.etcd_port}"))
    _wait(
        "kube-apiserver /readyz", lambda: cp.get("/readyz")[0] == 200, cp, "kube-apiserver", timeout
    )


def _stop_pid(pid: int, grace: float = 10, started: int | None = None) -> None:
    """SIGTERM the process group led by pid, SIGKILL after `grace`; nothing when the pid
    now belongs to another process (its start time differs from `started`)."""
    if started is not None and start_time(pid) != started:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop(root: Path) -> None:
    """Stop every process recorded in root's state.json, newest first."""
    state = root / "state.json"
    if not state.exists():
        return
    cp = ControlPlane.load(root)
    for name in reversed(list(cp.pids)):
        _stop_pid(cp.pids[name], started=cp.starts.get(name))
    cp.pids, cp.starts = {}, {}
    cp.save()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m finetune_cluster.controlplane")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=Path(".cluster"))
    args = parser.parse_args(argv)
    if args.action == "down":
        stop(args.dir)
        return
    started = time.monotonic()
    try:
        cp = start(args.dir)
    except (RuntimeError, subprocess.CalledProcessError) as err:
        stop(args.dir)
        sys.exit(f"error: {err}")
    print(
        f"control plane up in {time.monotonic() - started:.1f} s: {cp.server}; KUBECONFIG={cp.kubeconfig}"
    )


if __name__ == "__main__":
    main()
