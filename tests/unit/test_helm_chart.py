"""The Helm chart, rendered by the real Helm library (helm-python-sdk), inspected.

Pod security, least-privilege RBAC (no wildcards, nothing beyond what the
operator calls), CRDs identical to crds/, schema validation and lint.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is a dev dependency")

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "finetune"
RELEASE, NAMESPACE = "ft", "finetune-system"

# What the operator calls, per (apiGroup, resource): its kube.py requests and kopf's
# watches/indexes (handlers_job.py, handlers_sweep.py). This is the ceiling and the floor.
OPERATOR_NAMESPACED_NEEDS: dict[tuple[str, str], set[str]] = {
    ("finetune.dev", "finetunejobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("finetune.dev", "hyperparametersweeps"): {"get", "list", "watch"},
    ("finetune.dev", "finetunejobs/status"): {"patch"},
    ("finetune.dev", "hyperparametersweeps/status"): {"patch"},
    # Owner references with blockOwnerDeletion (Jobs -> FineTuneJob, trials -> sweep).
    ("finetune.dev", "finetunejobs/finalizers"): {"update"},
    ("finetune.dev", "hyperparametersweeps/finalizers"): {"update"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "services"): {"create"},  # multi-node: the headless Service (gang.py)
    ("", "events"): {"create"},
    # spec.promote: the InferenceService (promotion.py: create, get on 409 and for its URL)
    ("serving.kserve.io", "inferenceservices"): {"create", "get"},
}
# kopf watches CRDs cluster-wide only; with named namespaces the operator disables scanning.
KOPF_CRDS = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
PEERING_CLUSTER = {("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"}}
PEERING_NAMESPACED = {("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"}}
TRAINER_NEEDS = {("finetune.dev", "finetunejobs/status"): {"patch"}}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "cluster-default": {},
    "cluster-servicemonitor": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "trainer": {"namespaces": ["ml-a", "ml-b"]},
    },
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "namespaced-servicemonitor-peering": {
        "watchNamespaces": ["team-a"],
        "metrics": {"serviceMonitor": {"enabled": True}},
        "peering": {"enabled": True, "name": "finetune"},
        "replicaCount": 2,
    },
    "cluster-peering-digest": {
        "peering": {"enabled": True},
        "image": {"digest": "sha256:" + "a" * 64},
        "trainer": {
            "image": {
                "repository": "registry.local:5000/ft/trainer",
                "tag": "v1",
                "pullPolicy": "Always",
            },
            "imagePullSecrets": ["regcred", "other"],
            "statusIntervalSeconds": 10,
            "defaultNodeSelector": {"nvidia.com/gpu.present": "true"},
        },
    },
    "namespaced-networkpolicy": {
        "watchNamespaces": ["team-a"],
        "metrics": {"serviceMonitor": {"enabled": True}},
        "networkPolicy": {
            "enabled": True,
            "metricsFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mon"}}}
            ],
            "apiServer": {"cidrs": ["10.96.0.1/32", "172.18.0.2/32"], "ports": [6443]},
        },
    },
}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    chart = helm.Chart.load(CHART)
    try:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    finally:
        chart.close()
    docs = []
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    values = VALUE_SETS[request.param]
    return request.param, values, render(values)


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def the_deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = kinds(docs, "Deployment")
    return deployment


def expand_rules(rules: list[dict[str, Any]]) -> Iterator[tuple[str, str, str]]:
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule["verbs"]:
                    yield group, resource, verb


def grants(*needs: dict[tuple[str, str], set[str]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for need in needs for (g, r), verbs in need.items() for v in verbs}


def is_trainer(obj: dict[str, Any]) -> bool:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "trainer"


# --------------------------------------------------------------------------- pod security


def test_deployment_is_hardened(rendered: tuple[str, dict[str, Any], list[dict]]) -> None:
    _, _, docs = rendered
    pod = the_deployment(docs)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # A read-only root needs a writable /tmp, and nothing mounts a hostPath.
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert all("hostPath" not in v for v in pod["volumes"])


def test_probes_hit_the_health_port(rendered: tuple[str, dict[str, Any], list[dict]]) -> None:
    _, _, docs = rendered
    (container,) = the_deployment(docs)["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "--health-port=8081" in container["args"]
    assert "--metrics-port=8080" in container["args"]


def test_operator_args_and_env(rendered: tuple[str, dict[str, Any], list[dict]]) -> None:
    _, values, docs = rendered
    (container,) = the_deployment(docs)["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["finetune", "operator"]
    args = container["args"]
    watch = values.get("watchNamespaces", [])
    if watch:
        assert "--all-namespaces" not in args
        assert [a for a in args if a.startswith("--namespace=")] == [
            f"--namespace={n}" for n in watch
        ]
    else:
        assert "--all-namespaces" in args
        assert not [a for a in args if a.startswith("--namespace")]
    peering = values.get("peering", {}).get("enabled", False)
    assert ("--peering=finetune" in args) is peering
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["FINETUNE_TRAINER_IMAGE"]
    assert env["FINETUNE_TRAINER_SERVICE_ACCOUNT"] == "finetune-trainer"
    tolerations = json.loads(env["FINETUNE_DEFAULT_TOLERATIONS"])
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    selector = values.get("trainer", {}).get("defaultNodeSelector", {})
    assert json.loads(env["FINETUNE_DEFAULT_NODE_SELECTOR"]) == selector
    # Secrets never travel through the operator's environment.
    assert all("secretKeyRef" not in json.dumps(e) for e in container["env"])


def test_trainer_scratch_size_limits_reach_the_operator() -> None:
    from finetune_operator.config import DEFAULT_CACHE_SIZE_LIMIT, DEFAULT_TMP_SIZE_LIMIT

    def env(values: dict[str, Any]) -> dict[str, Any]:
        (c,) = the_deployment(render(values))["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e.get("value") for e in c["env"]}

    defaults = env({})
    assert defaults["FINETUNE_TRAINER_TMP_SIZE_LIMIT"] == DEFAULT_TMP_SIZE_LIMIT
    assert defaults["FINETUNE_TRAINER_CACHE_SIZE_LIMIT"] == DEFAULT_CACHE_SIZE_LIMIT
    custom = env({"trainer": {"scratch": {"tmpSizeLimit": "1Gi", "cacheSizeLimit": "200Gi"}}})
    assert custom["FINETUNE_TRAINER_TMP_SIZE_LIMIT"] == "1Gi"
    assert custom["FINETUNE_TRAINER_CACHE_SIZE_LIMIT"] == "200Gi"


def test_cost_and_oom_recovery_values_reach_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune_operator.config import OperatorConfig

    def env(values: dict[str, Any]) -> dict[str, Any]:
        (c,) = the_deployment(render(values))["spec"]["template"]["spec"]["containers"]
        return {e["name"]: e.get("value") for e in c["env"] if "value" in e}

    defaults = env({})
    assert "FINETUNE_GPU_HOUR_PRICE" not in defaults
    assert defaults["FINETUNE_OOM_MAX_RETRIES"] == "3"
    custom = env(
        {"cost": {"gpuHourPrice": 2.75, "currency": "EUR"}, "oomRecovery": {"maxRetries": 1}}
    )
    for name, value in custom.items():
        if name.startswith("FINETUNE_"):
            monkeypatch.setenv(name, value)
    config = OperatorConfig.from_env()
    assert (config.gpu_hour_price, config.cost_currency, config.oom_max_retries) == (2.75, "EUR", 1)


def test_images() -> None:
    (c,) = the_deployment(render({}))["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "ghcr.io/finetune-dev/finetune-operator:0.1.0"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FINETUNE_TRAINER_IMAGE"] == "ghcr.io/finetune-dev/finetune-trainer:0.1.0"
    docs = render(VALUE_SETS["cluster-peering-digest"])
    (c,) = the_deployment(docs)["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "ghcr.io/finetune-dev/finetune-operator@sha256:" + "a" * 64
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FINETUNE_TRAINER_IMAGE"] == "registry.local:5000/ft/trainer:v1"
    assert env["FINETUNE_TRAINER_PULL_POLICY"] == "Always"
    assert env["FINETUNE_IMAGE_PULL_SECRETS"] == "regcred,other"
    assert env["FINETUNE_TRAINER_STATUS_INTERVAL"] == "10"


def test_single_replica_uses_recreate() -> None:
    deployment = the_deployment(render({}))
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_two_replicas_need_peering() -> None:
    with pytest.raises(helm.HelmRenderError, match="peering"):
        render({"replicaCount": 2})


# --------------------------------------------------------------------------- services


def test_metrics_service_and_servicemonitor(rendered: tuple[str, dict, list[dict]]) -> None:
    _, values, docs = rendered
    (service,) = kinds(docs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = the_deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitors = kinds(docs, "ServiceMonitor")
    enabled = values.get("metrics", {}).get("serviceMonitor", {}).get("enabled", False)
    assert len(monitors) == (1 if enabled else 0)
    if enabled:
        (monitor,) = monitors
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
        assert (
            monitor["spec"]["selector"]["matchLabels"].items()
            <= service["metadata"]["labels"].items()
        )
        for key, value in values["metrics"]["serviceMonitor"].get("labels", {}).items():
            assert monitor["metadata"]["labels"][key] == value


# --------------------------------------------------------------------------- RBAC


def operator_rules(docs: list[dict[str, Any]]) -> dict[tuple[str, str | None], set[tuple]]:
    """(kind, namespace) -> granted (group, resource, verb) for the operator's roles."""
    out: dict[tuple[str, str | None], set[tuple]] = {}
    for doc in docs:
        if doc["kind"] in ("Role", "ClusterRole") and not is_trainer(doc):
            key = (doc["kind"], doc["metadata"].get("namespace"))
            out.setdefault(key, set()).update(expand_rules(doc["rules"]))
    return out


def test_rbac_has_no_wildcards_and_no_secrets(rendered: tuple[str, dict, list[dict]]) -> None:
    _, _, docs = rendered
    for doc in docs:
        if doc["kind"] not in ("Role", "ClusterRole"):
            continue
        assert "aggregationRule" not in doc
        for rule in doc["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), (doc["metadata"]["name"], rule)
            assert "nonResourceURLs" not in rule
            verbs = set(rule["verbs"])
            if all(r.endswith("/finalizers") for r in rule.get("resources", [])):
                assert verbs == {"update"}, rule
            else:
                assert verbs <= {"get", "list", "watch", "create", "patch", "delete"}, rule
            assert not {"secrets", "configmaps", "pods/exec", "pods/log", "serviceaccounts"} & set(
                rule.get("resources", [])
            )
            assert not {"escalate", "bind", "impersonate", "deletecollection"} & verbs


def test_operator_rbac_is_exactly_what_it_calls(rendered: tuple[str, dict, list[dict]]) -> None:
    _, values, docs = rendered
    rules = operator_rules(docs)
    peering = values.get("peering", {}).get("enabled", False)
    watch = values.get("watchNamespaces", [])
    if not watch:
        expected = grants(OPERATOR_NAMESPACED_NEEDS, KOPF_CRDS, PEERING_CLUSTER if peering else {})
        assert rules == {("ClusterRole", None): expected}
        assert not kinds(docs, "RoleBinding") or all(
            is_trainer(b) for b in kinds(docs, "RoleBinding")
        )
    else:
        # Namespaced mode: a Role per watched namespace and nothing cluster-scoped at all.
        expected_ns = grants(OPERATOR_NAMESPACED_NEEDS, PEERING_NAMESPACED if peering else {})
        assert rules == {("Role", ns): expected_ns for ns in watch}
        assert not kinds(docs, "ClusterRole") and not kinds(docs, "ClusterRoleBinding")


def test_bindings_point_at_the_right_subjects(rendered: tuple[str, dict, list[dict]]) -> None:
    _, _, docs = rendered
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]) for d in docs}
    (sa,) = [d for d in kinds(docs, "ServiceAccount") if not is_trainer(d)]
    assert sa["metadata"]["namespace"] == NAMESPACE
    deployment = the_deployment(docs)
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    for binding in kinds(docs, "RoleBinding") + kinds(docs, "ClusterRoleBinding"):
        ref = binding["roleRef"]
        ns = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        assert (ref["kind"], ns, ref["name"]) in roles, binding["metadata"]["name"]
        (subject,) = binding["subjects"]
        assert subject["kind"] == "ServiceAccount"
        if is_trainer(binding):
            assert subject["name"] == "finetune-trainer"
            assert subject["namespace"] == binding["metadata"]["namespace"]
        else:
            assert (subject["name"], subject["namespace"]) == (sa["metadata"]["name"], NAMESPACE)


def test_trainer_gets_status_patch_only(rendered: tuple[str, dict, list[dict]]) -> None:
    _, values, docs = rendered
    watch = values.get("watchNamespaces", [])
    expected_ns = watch or values.get("trainer", {}).get("namespaces") or [NAMESPACE]
    trainer_roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole") and is_trainer(d)]
    assert sorted(r["metadata"]["namespace"] for r in trainer_roles) == sorted(expected_ns)
    for role in trainer_roles:
        assert role["kind"] == "Role"
        assert set(expand_rules(role["rules"])) == grants(TRAINER_NEEDS)
    accounts = [d for d in kinds(docs, "ServiceAccount") if is_trainer(d)]
    assert sorted(a["metadata"]["namespace"] for a in accounts) == sorted(expected_ns)
    assert all(a["metadata"]["name"] == "finetune-trainer" for a in accounts)


def test_rbac_can_be_turned_off() -> None:
    docs = render({"rbac": {"create": False}, "trainer": {"serviceAccount": {"create": False}}})
    assert not [d for d in docs if "Role" in d["kind"]]
    assert not [d for d in kinds(docs, "ServiceAccount") if is_trainer(d)]


def test_chart_rbac_within_deploy_rbac() -> None:
    """The chart grants nothing beyond the operator's own minimal RBAC in deploy/rbac/."""
    files = sorted((ROOT / "deploy" / "rbac").glob("*.y*ml"))
    if not files:
        pytest.skip("deploy/rbac/ has no RBAC YAML yet (written by the operator issue)")
    reference: set[tuple] = set()
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") in ("Role", "ClusterRole") and not is_trainer(doc):
                if "trainer" in doc["metadata"]["name"]:
                    continue
                reference |= set(expand_rules(doc["rules"]))
    assert reference, "no operator Role/ClusterRole found in deploy/rbac/"
    for name in ("cluster-default", "namespaced"):
        granted = set().union(*operator_rules(render(VALUE_SETS[name])).values())
        assert granted <= reference, f"{name}: beyond deploy/rbac: {sorted(granted - reference)}"


# --------------------------------------------------------------------------- CRDs


def test_chart_ships_exactly_the_repo_crds() -> None:
    repo = {p.name: p.read_text() for p in sorted((ROOT / "crds").glob("*.yaml"))}
    assert repo, "crds/*.yaml missing"
    shipped = {p.name: p.read_text() for p in sorted((CHART / "crds").glob("*"))}
    hint = "run: cp crds/*.yaml helm/finetune/crds/"
    assert shipped.keys() == repo.keys(), hint
    for name, text in repo.items():
        assert shipped[name] == text, f"helm/finetune/crds/{name} drifted from crds/; {hint}"
    chart = helm.Chart.load(CHART)
    try:
        loaded = {Path(c["filename"]).name: c["data"] for c in chart.crds}
    finally:
        chart.close()
    assert loaded.keys() == repo.keys()
    for name, text in repo.items():
        assert yaml.safe_load(loaded[name]) == yaml.safe_load(text)


def test_no_crds_in_templates(rendered: tuple[str, dict, list[dict]]) -> None:
    _, _, docs = rendered
    assert not kinds(docs, "CustomResourceDefinition")


# --------------------------------------------------------------------------- network policy


def the_policy(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (policy,) = kinds(docs, "NetworkPolicy")
    return policy


def port_set(rule: dict[str, Any]) -> set[tuple[int, str]]:
    return {(p["port"], p["protocol"]) for p in rule["ports"]}


def test_network_policy_is_opt_in(rendered: tuple[str, dict, list[dict]]) -> None:
    _, values, docs = rendered
    enabled = values.get("networkPolicy", {}).get("enabled", False)
    assert len(kinds(docs, "NetworkPolicy")) == (1 if enabled else 0)


def test_network_policy_admits_metrics_and_allows_dns_and_api_server_only(
    rendered: tuple[str, dict, list[dict]],
) -> None:
    _, values, docs = rendered
    if not values.get("networkPolicy", {}).get("enabled", False):
        return
    policy = the_policy(docs)
    deployment = the_deployment(docs)
    spec = policy["spec"]
    assert policy["metadata"]["namespace"] == NAMESPACE
    # It selects exactly the operator's pods.
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert spec["podSelector"] == deployment["spec"]["selector"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    # Ingress: the metrics port only (probes come from the kubelet, always allowed).
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (ingress,) = spec["ingress"]
    assert port_set(ingress) == {(ports["metrics"], "TCP")}
    assert ingress["from"] == values["networkPolicy"]["metricsFrom"]
    # Egress: DNS to kube-dns, and the API server's ports at its addresses.
    dns, api = spec["egress"]
    assert port_set(dns) == {(53, "UDP"), (53, "TCP")}
    assert dns["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ]
    api_values = values["networkPolicy"]["apiServer"]
    assert port_set(api) == {(p, "TCP") for p in api_values["ports"]}
    assert api["to"] == [{"ipBlock": {"cidr": c}} for c in api_values["cidrs"]]


def test_network_policy_defaults_when_enabled() -> None:
    spec = the_policy(render({"networkPolicy": {"enabled": True}}))["spec"]
    (ingress,) = spec["ingress"]
    assert "from" not in ingress and port_set(ingress) == {(8080, "TCP")}
    dns, api = spec["egress"]
    assert port_set(dns) == {(53, "UDP"), (53, "TCP")} and dns["to"]
    assert port_set(api) == {(443, "TCP"), (6443, "TCP")} and "to" not in api
    extra = {"to": [{"ipBlock": {"cidr": "10.1.0.0/16"}}], "ports": [{"port": 3128}]}
    spec = the_policy(render({"networkPolicy": {"enabled": True, "extraEgress": [extra]}}))["spec"]
    assert spec["egress"][2:] == [extra]
    spec = the_policy(render({"networkPolicy": {"enabled": True, "dns": {"to": []}}}))["spec"]
    assert "to" not in spec["egress"][0]


# --------------------------------------------------------------------------- schema and lint


@pytest.mark.parametrize(
    "values",
    [
        {"watchNamespaces": ["Team_A"]},
        {"watchNamespaces": ["a", "a"]},
        {"watchNamespaces": "team-a"},
        {"logLevel": "trace"},
        {"replicaCount": -1},
        {"metrics": {"port": 80}},
        {"metrics": {"serviceMonitor": {"enabled": "yes"}}},
        {"metrics": {"serviceMonitor": {"interval": "often"}}},
        {"image": {"repository": "x", "digest": "latest"}},
        {"image": {"repository": "x", "tag": "has space"}},
        {"image": {"repository": "", "tag": "v1"}},
        {"trainer": {"defaultTolerations": [{"key": "k", "operator": "Maybe"}]}},
        {"trainer": {"defaultNodeSelector": {"gpu": True}}},
        {"trainer": {"serviceAccount": {"name": "Not A Name"}}},
        {"podSecurityContext": {"runAsUser": 0, "runAsGroup": 1, "fsGroup": 1}},
        {"resources": {"limits": {"memory": "lots"}}},
        {"peering": {"enabled": True, "name": "UPPER"}},
        {"rbac": {"create": "true"}},
        {"trainer": {"statusIntervalSeconds": 0}},
        {"trainer": {"imagePullSecrets": [{"name": "regcred"}]}},
        {"trainer": {"scratch": {"tmpSizeLimit": "lots"}}},
        {"networkPolicy": {"enabled": "yes"}},
        {"networkPolicy": {"apiServer": {"cidrs": ["10.0.0.1"]}}},
        {"networkPolicy": {"apiServer": {"ports": []}}},
        {"networkPolicy": {"metricsFrom": [{"namespace": "mon"}]}},
        {"networkPolicy": {"ingress": []}},
        {"typo": 1},
    ],
    ids=repr,
)
def test_schema_rejects_bad_values(values: dict[str, Any]) -> None:
    chart = helm.Chart.load(CHART)
    try:
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(values)
        with pytest.raises(helm.HelmValuesError):
            chart.render(values, name=RELEASE, namespace=NAMESPACE)
    finally:
        chart.close()


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_schema_accepts_good_values(name: str) -> None:
    chart = helm.Chart.load(CHART)
    try:
        chart.validate_schema(VALUE_SETS[name])
        chart.validate_schema(yaml.safe_load((CHART / "values.yaml").read_text()))
    finally:
        chart.close()


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_strict_per_value_set(name: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE)
    errors = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not errors, errors


def test_lint_with_helm_sdkpy() -> None:
    sdk = pytest.importorskip("helm_sdkpy", reason="helm-sdkpy (pip --ignore-requires-python)")
    result = asyncio.run(sdk.Lint(sdk.Configuration(namespace=NAMESPACE)).run(str(CHART)))
    assert result["TotalChartsLinted"] == 1
    assert not result.get("Errors"), result
    assert not [m for m in result["Messages"] or [] if m["Severity"] >= 2], result


def test_notes_render_for_both_modes() -> None:
    chart = helm.Chart.load(CHART)
    try:
        cluster = chart.render({}, name=RELEASE, namespace=NAMESPACE)
        namespaced = chart.render(
            {"watchNamespaces": ["team-a"]}, name=RELEASE, namespace=NAMESPACE
        )
    finally:
        chart.close()
    notes = next(v for k, v in cluster.items() if k.endswith("NOTES.txt"))
    assert "every namespace" in notes and "finetune-trainer" in notes
    notes = next(v for k, v in namespaced.items() if k.endswith("NOTES.txt"))
    assert "team-a" in notes
