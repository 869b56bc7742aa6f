"""Every API call the operator makes is allowed by the minimal RBAC in deploy/rbac/."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_harness import FTJ, JOB, NAMESPACE, SMALL_SPEC, Cluster, Kubelet, make_ftj

pytestmark = pytest.mark.operator

RBAC = Path(__file__).resolve().parents[2] / "deploy" / "rbac"
VERBS = {"LIST": "list", "WATCH": "watch", "FETCH": "get", "CREATE": "create", "DELETE": "delete"}


def rules(kind: str, name: str = "finetune-operator") -> set[tuple[str, str, str]]:
    out: set[tuple[str, str, str]] = set()
    for path in RBAC.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == kind and doc["metadata"]["name"] == name:
                for rule in doc["rules"]:
                    for g in rule["apiGroups"]:
                        for r in rule["resources"]:
                            for v in rule["verbs"]:
                                out.add((g, r, v))
    assert out, f"no {kind} {name} in deploy/rbac"
    return out


def operator_calls(cluster: Cluster) -> set[tuple[str, str, str]]:
    calls: set[tuple[str, str, str]] = set()
    for r in cluster.requests():
        agent = r.headers.get("User-Agent", "")
        if r.resource is None or r.resource.plural is None:  # discovery: nonResourceURLs
            continue
        if not agent.startswith(("kopf/", "finetune-operator/")):
            continue
        action = r.action.name if r.action is not None else ""
        verb = VERBS.get(action) or {"PATCH": "patch", "PUT": "update"}[r.method.value]
        resource = r.resource.plural + (f"/{r.subresource}" if r.subresource else "")
        calls.add((r.resource.group, resource, verb))
    return calls


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
    await cluster.wait_phase(NAMESPACE, "b", "Pending")
    # Invalid under today's CRD (stored under an older one): the operator reports it.
    await cluster.emulator.store_unchecked(FTJ, make_ftj("c", SMALL_SPEC | {"model": {}}))
    await cluster.wait_phase(NAMESPACE, "c", "Failed")
    await cluster.delete(FTJ, NAMESPACE, "a")
    await cluster.wait_for(lambda: cluster.get_object(JOB, NAMESPACE, "a-train") is None)


@pytest.mark.parametrize(("namespaces", "kind"), [([NAMESPACE], "Role"), ([], "ClusterRole")])
async def test_operator_calls_are_within_deploy_rbac(
    cluster: Cluster, operator_factory: Any, kubelet: Kubelet, namespaces: list[str], kind: str
) -> None:
    await operator_factory(namespaces=namespaces)
    await scenario(cluster, kubelet)
    calls = operator_calls(cluster)
    assert ("batch", "jobs", "create") in calls and ("", "events", "create") in calls
    assert calls <= rules(kind), sorted(calls - rules(kind))


def test_trainer_role_is_status_patch_only() -> None:
    assert rules("Role", "finetune-trainer") == {("finetune.dev", "finetunejobs/status", "patch")}
