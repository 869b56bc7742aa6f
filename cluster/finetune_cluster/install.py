"""Install the project into a running control plane, as a user would: the CRDs, then the
Helm chart rendered by the real Helm library (helm-python-sdk) and applied by kubectl.

helm-python-sdk renders; it does not talk to a cluster, so "install" here is render +
`kubectl apply --server-side`, with no Helm release record (no `helm list`/`rollback`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from finetune_cluster.controlplane import ControlPlane, write_kubeconfig

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "finetune"
CRDS = REPO / "crds"
RELEASE = "finetune"
SYSTEM_NAMESPACE = "finetune-system"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def render_chart(values: dict[str, Any], namespace: str = SYSTEM_NAMESPACE) -> list[dict[str, Any]]:
    """The chart's manifests, rendered by the real Helm library (helm-python-sdk)."""
    import helm_python as helm

    chart = helm.Chart.load(str(CHART))
    try:
        manifests = chart.render(values, name=RELEASE, namespace=namespace)
    finally:
        chart.close()
    docs: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if not path.endswith("NOTES.txt"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def apply(cp: ControlPlane, docs: list[dict[str, Any]]) -> None:
    """`kubectl apply --server-side` of docs; raises with kubectl's message on a refusal."""
    out = cp.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=finetune-install",
        "-f", "-", input=yaml.safe_dump_all(docs), check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"kubectl apply failed: {out.stderr.strip()}")


def namespace_doc(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta = {"name": name, "labels": dict(RESTRICTED if labels is None else labels)}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def crd_docs() -> list[dict[str, Any]]:
    return [d for p in sorted(CRDS.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def install_crds(cp: ControlPlane, timeout: float = 60) -> None:
    """Create the CRDs and wait until the server has Established them."""
    docs = crd_docs()
    apply(cp, docs)
    names = [f"crd/{d['metadata']['name']}" for d in docs]
    out = cp.kubectl(
        "wait", "--for=condition=Established", f"--timeout={int(timeout)}s", *names, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"CRDs not Established: {out.stderr.strip()}")


def service_account_token(cp: ControlPlane, namespace: str, name: str, seconds: int = 86400) -> str:
    """A TokenRequest token for a ServiceAccount (what a pod's projected volume holds)."""
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": seconds},
    }
    out = cp.kubectl(
        "create", "--raw", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
        "-f", "-", input=json.dumps(body),
    )  # fmt: skip
    return str(json.loads(out.stdout)["status"]["token"])


def service_account_kubeconfig(
    cp: ControlPlane, path: Path, namespace: str, name: str
) -> tuple[Path, str]:
    """A kubeconfig that acts as a ServiceAccount (the operator's, as its pod would), and
    its token."""
    token = service_account_token(cp, namespace, name)
    return write_kubeconfig(path, cp.server, cp.ca_file, token, name), token
