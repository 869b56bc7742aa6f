"""The operator runs as the chart's ServiceAccount and the real RBAC authorizer decides
each of its calls: a scenario through the main paths gets no 403, exercises the verbs it
needs (read back from the apiserver's audit log) and stays within deploy/rbac/, which
grants what the chart's rendered roles grant. The trainer's ServiceAccount may patch
FineTuneJob status and nothing else."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from operator_harness import (
    FTJ,
    JOB,
    NAMESPACE,
    SMALL_SPEC,
    Cluster,
    Kubelet,
    api_path,
    create_under_laxer_crd,
    make_ftj,
)

from finetune_cluster.install import render_chart, service_account_token
from support.plane import TEST_NAMESPACES, chart_values

pytestmark = pytest.mark.operator

RBAC = Path(__file__).resolve().parents[2] / "deploy" / "rbac"
Rule = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)


def rule_set(docs: list[dict[str, Any]], kind: str, name: str) -> set[Rule]:
    out: set[Rule] = set()
    for doc in docs:
        if doc and doc["kind"] == kind and doc["metadata"]["name"] == name:
            for rule in doc["rules"]:
                for g in rule["apiGroups"]:
                    for r in rule["resources"]:
                        for v in rule["verbs"]:
                            out.add((g, r, v))
    assert out, f"no {kind} {name}"
    return out


def deploy_docs() -> list[dict[str, Any]]:
    return [d for p in sorted(RBAC.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def rules(kind: str, name: str = "finetune-operator") -> set[Rule]:
    """What deploy/rbac/*.yaml grants."""
    return rule_set(deploy_docs(), kind, name)


def operator_requests(cluster: Cluster) -> list[dict[str, Any]]:
    who = cluster.plane.operator_user
    return [e for e in cluster.audit() if e.get("user", {}).get("username") == who]


def call(event: dict[str, Any]) -> Rule | None:
    ref = event.get("objectRef") or {}
    if not ref.get("resource"):  # discovery (/api, /apis): nonResourceURLs
        return None
    resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return (ref.get("apiGroup", ""), resource, event["verb"])


# --------------------------------------------------------------------------- laxer CRD


async def scenario(cluster: Cluster, kubelet: Kubelet) -> None:
    await cluster.create(FTJ, make_ftj("a", SMALL_SPEC))
    job = await cluster.wait_for_object(JOB, NAMESPACE, "a-train")
    await kubelet.run_pod(job)
    await kubelet.succeed(job, metrics={"accuracy": 0.5})
    await cluster.wait_phase(NAMESPACE, "a", "Succeeded")
    suspended = copy.deepcopy(SMALL_SPEC) | {"suspend": True}
    await cluster.create(FTJ, make_ftj("b", suspended))
    await cluster.wait_phase(NAMESPACE, "b", "Suspended")
    await cluster.patch(
        FTJ, NAMESPACE, "b", {"spec": {"suspend": False}}
    )  # the apiserver bumps metadata.generation
    # Resumed: Pending until the node agent runs its pod, which takes a moment here.
    await cluster.wait_for(
        lambda: (
            (st := cluster.status(FTJ, NAMESPACE, "b")).get("observedGeneration") == 2
            and st.get("phase") in ("Pending", "Running")
        ),
        30,
        "b resumed",
    )
    await cluster.wait_for(
        lambda: "Resumed" in [e["reason"] for e in cluster.events(NAMESPACE, "b")]
    )
    # Invalid under today's CRD (stored under an older one): the operator reports it.
    await create_under_laxer_crd(cluster, FTJ, make_ftj("c", SMALL_SPEC | {"model": {}}))
    await cluster.wait_phase(NAMESPACE, "c", "Failed")
    await cluster.delete(FTJ, NAMESPACE, "a")
    await cluster.wait_for(lambda: cluster.get_object(JOB, NAMESPACE, "a-train") is None)


# Each needed by the scenario: the watches behind every reconcile, the Job it creates and
# resumes, the status it writes, the Events of its milestones.
NEEDED: set[Rule] = {
    ("finetune.dev", "finetunejobs", "list"),
    ("finetune.dev", "finetunejobs", "watch"),
    ("finetune.dev", "hyperparametersweeps", "list"),
    ("finetune.dev", "hyperparametersweeps", "watch"),
    ("batch", "jobs", "list"),
    ("batch", "jobs", "watch"),
    ("", "pods", "list"),
    ("", "pods", "watch"),
    ("batch", "jobs", "create"),
    ("batch", "jobs", "patch"),
    ("finetune.dev", "finetunejobs/status", "patch"),
    ("", "events", "create"),
}


@pytest.mark.parametrize(("namespaces", "kind"), [([NAMESPACE], "Role"), ([], "ClusterRole")])
async def test_operator_calls_are_allowed_and_within_deploy_rbac(
    cluster: Cluster, operator_factory: Any, kubelet: Kubelet, namespaces: list[str], kind: str
) -> None:
    await operator_factory(namespaces=namespaces)
    await scenario(cluster, kubelet)
    requests = operator_requests(cluster)
    refused = [(e["verb"], e["requestURI"]) for e in requests if e["responseStatus"]["code"] == 403]
    assert not refused, refused  # the real RBAC authorizer allowed every call
    allowed = {c for e in requests if (c := call(e)) and e["responseStatus"]["code"] < 400}
    needed = NEEDED | ({("apiextensions.k8s.io", "customresourcedefinitions", "list")}
                       if kind == "ClusterRole" else set())  # fmt: skip
    assert needed <= allowed, sorted(needed - allowed)
    calls = {c for e in requests if (c := call(e))}
    assert calls <= rules(kind), sorted(calls - rules(kind))
    if kind == "Role":  # a Role grants nothing cluster-scoped: every call is in team-a
        outside = {
            (e["verb"], e["requestURI"])
            for e in requests
            if call(e) and (e["objectRef"].get("namespace") or "") != NAMESPACE
        }
        assert not outside, sorted(outside)
    else:  # the watches are cluster-wide, as the ClusterRole allows
        watches = {e["requestURI"].split("?")[0] for e in requests if e["verb"] == "watch"}
        assert "/apis/finetune.dev/v1alpha1/finetunejobs" in watches


def test_deploy_rbac_grants_what_the_chart_grants() -> None:
    """deploy/rbac/ (for kubectl users) and the chart's rendered roles (what the session's
    plane installed and the authorizer above enforced) grant the same rules."""
    cluster_wide = render_chart(chart_values())
    assert rule_set(cluster_wide, "ClusterRole", "finetune") == rules("ClusterRole")
    namespaced = render_chart({**chart_values(), "watchNamespaces": [NAMESPACE]})
    assert rule_set(namespaced, "Role", "finetune") == rules("Role")
    assert not [d for d in namespaced if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    trainer = rules("Role", "finetune-trainer")
    assert rule_set(cluster_wide, "Role", "finetune-trainer") == trainer


# --------------------------------------------------------------------------- trainer


async def test_trainer_role_is_status_patch_only(cluster: Cluster) -> None:
    assert rules("Role", "finetune-trainer") == {("finetune.dev", "finetunejobs/status", "patch")}
    for ns in TEST_NAMESPACES:
        await cluster.create(FTJ, make_ftj("t", SMALL_SPEC, namespace=ns))  # no operator: no Job
    token = service_account_token(cluster.plane.cp, NAMESPACE, "finetune-trainer")
    trainer = httpx.Client(
        base_url=cluster.url,
        verify=str(cluster.plane.cp.ca_file),
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    with trainer:
        patch = {"status": {"progress": {"step": 3, "totalSteps": 10}}}
        merge = {"Content-Type": "application/merge-patch+json"}
        ok = trainer.patch(api_path(FTJ, NAMESPACE, "t") + "/status", json=patch, headers=merge)
        assert ok.status_code == 200, ok.text  # what its Kubernetes status sink does
        progress = cluster.status(FTJ, NAMESPACE, "t")["progress"]
        assert (progress["step"], progress["totalSteps"]) == (3, 10)

        refused = {
            "get finetunejobs": trainer.get(api_path(FTJ, NAMESPACE, "t")),
            "list finetunejobs": trainer.get(api_path(FTJ, NAMESPACE)),
            "patch finetunejobs": trainer.patch(
                api_path(FTJ, NAMESPACE, "t"), json={"spec": {"suspend": True}}, headers=merge
            ),
            "get secrets": trainer.get(api_path(("", "v1", "secrets"), NAMESPACE, "hf")),
            "list secrets": trainer.get(api_path(("", "v1", "secrets"), NAMESPACE)),
            "list pods": trainer.get(api_path(("", "v1", "pods"), NAMESPACE)),
            "get pods": trainer.get(api_path(("", "v1", "pods"), NAMESPACE, "t-train-x")),
            "patch another namespace's status": trainer.patch(
                api_path(FTJ, "team-b", "t") + "/status", json=patch, headers=merge
            ),
        }
        codes = {what: r.status_code for what, r in refused.items()}
        assert codes == dict.fromkeys(refused, 403), codes
    assert "progress" not in cluster.status(FTJ, "team-b", "t")
