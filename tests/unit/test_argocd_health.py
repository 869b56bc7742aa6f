"""Argo CD health checks: the Lua shipped in deploy/argocd/argocd-cm-health.yaml, run.

The scripts are read from the very argocd-cm snippet users apply and executed
with lupa's Lua 5.1 (Argo CD embeds gopher-lua, a Lua 5.1 implementation) and
Lua 5.4, against sample objects for every phase.
"""

from __future__ import annotations

import copy
import importlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("lupa", reason="lupa is a dev dependency")


pytestmark = pytest.mark.unit

# The real kube-apiserver's dry-run create (tests/conftest.py server_validate).
Validate = Callable[[dict[str, Any]], list[str]]

ROOT = Path(__file__).resolve().parents[2]
SNIPPET = ROOT / "deploy" / "argocd" / "argocd-cm-health.yaml"
KINDS = ("FineTuneJob", "HyperparameterSweep")
RUNTIMES = ("lua51", "lua54")
_JOB_SPEC = {
    "task": "classification",
    "model": {"name": "m"},
    "dataset": {"train": {"path": "/data/t.csv"}},
}
SPECS: dict[str, dict[str, Any]] = {
    "FineTuneJob": _JOB_SPEC,
    "HyperparameterSweep": {
        "template": _JOB_SPEC,
        "searchSpace": {
            "hyperparameters.learningRate": {"type": "float", "low": 1e-5, "high": 1e-3}
        },
    },
}


def health_scripts() -> dict[str, str]:
    cm = yaml.safe_load(SNIPPET.read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    prefix = "resource.customizations.health."
    return {key.removeprefix(prefix): value for key, value in cm["data"].items()}


def run_health(kind: str, obj: dict[str, Any], runtime: str = "lua51") -> dict[str, Any]:
    lupa = importlib.import_module(f"lupa.{runtime}")
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(health_scripts()[f"finetune.dev_{kind}"])
    return dict(result.items())


def sample(kind: str, phase: str | None, *, generation: int = 1, observed: int | None = 1) -> dict:
    obj: dict[str, Any] = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "demo", "namespace": "ml", "generation": generation, "uid": "u-1"},
        "spec": {},
    }
    if phase is None:
        return obj
    status: dict[str, Any] = {"phase": phase}
    if observed is not None:
        status["observedGeneration"] = observed
    condition_type = {"Running": "Ready", "Pending": "Ready"}.get(phase, phase)
    status["conditions"] = [
        {
            "type": condition_type,
            "status": "True" if phase in ("Succeeded", "Failed", "Suspended") else "False",
            "reason": phase,
            "message": f"the job is {phase.lower()}",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
            "observedGeneration": observed or 1,
        }
    ]
    if kind == "FineTuneJob":
        status["progress"] = {"epoch": 1.0, "step": 40, "totalSteps": 100}
        if phase == "Succeeded":
            status["metrics"] = {"accuracy": 0.87, "evalLoss": 0.31}
    else:
        status["trials"] = {"total": 4, "running": 2, "succeeded": 1, "failed": 1, "pruned": 0}
        if phase == "Succeeded":
            status["bestTrial"] = {"name": "demo-trial-2", "value": 0.88, "params": {"lr": 1e-4}}
    if phase == "Failed":
        status["message"] = "OOMKilled: the trainer ran out of memory; raise spec.resources.memory"
    obj["status"] = status
    return obj


EXPECTED = {
    "Pending": "Progressing",
    "Running": "Progressing",
    "Succeeded": "Healthy",
    "Failed": "Degraded",
    "Suspended": "Suspended",
}


def test_snippet_holds_exactly_both_kinds() -> None:
    assert sorted(health_scripts()) == sorted(f"finetune.dev_{k}" for k in KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_scripts_use_only_what_argocd_allows(kind: str) -> None:
    script = health_scripts()[f"finetune.dev_{kind}"]
    for forbidden in ("os.", "io.", "require", "goto", "//", "loadstring", "dofile"):
        assert forbidden not in script, forbidden
    assert re.search(r"^return hs\s*$", script.strip().splitlines()[-1])


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("phase", sorted(EXPECTED))
@pytest.mark.parametrize("kind", KINDS)
def test_every_phase(kind: str, phase: str, runtime: str) -> None:
    health = run_health(kind, sample(kind, phase), runtime)
    assert health["status"] == EXPECTED[phase]
    assert isinstance(health.get("message"), str) and health["message"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.cluster
def test_samples_are_valid_resources(kind: str, control_plane: Any) -> None:
    """The status shapes used here are the real API's: written to kube-apiserver's status
    subresource with strict field validation, read back unchanged, and the health script
    gives the same answer on the object the server returns."""
    plural = {"FineTuneJob": "finetunejobs", "HyperparameterSweep": "hyperparametersweeps"}[kind]
    base = f"/apis/finetune.dev/v1alpha1/namespaces/team-a/{plural}"
    name = f"argocd-{kind.lower()}"
    body = sample(kind, "Running") | {"metadata": {"name": name, "namespace": "team-a"}}
    body["spec"] = SPECS[kind]
    with control_plane.client() as client:
        created = client.post(base, json={k: v for k, v in body.items() if k != "status"})
        assert created.status_code == 201, created.text
        try:
            for phase in EXPECTED:
                status = sample(kind, phase)["status"]
                resp = client.patch(
                    f"{base}/{name}/status",
                    params={"fieldValidation": "Strict"},
                    json={"status": status},
                    headers={"Content-Type": "application/merge-patch+json"},
                )
                assert resp.status_code == 200, (phase, resp.text)
                stored = client.get(f"{base}/{name}").json()
                for key, value in status.items():
                    assert stored["status"][key] == value, (phase, key)
                assert run_health(kind, stored)["status"] == EXPECTED[phase]
                # the next phase's patch replaces, not merges, the status
                client.patch(
                    f"{base}/{name}/status",
                    json={"status": None},
                    headers={"Content-Type": "application/merge-patch+json"},
                )
        finally:
            client.delete(f"{base}/{name}")


@pytest.mark.parametrize("phase", sorted(EXPECTED))
@pytest.mark.parametrize("kind", KINDS)
def test_observed_generation_lag_is_progressing(kind: str, phase: str) -> None:
    health = run_health(kind, sample(kind, phase, generation=3, observed=2))
    assert health["status"] == "Progressing"
    assert "generation 3" in health["message"]


@pytest.mark.parametrize("kind", KINDS)
def test_caught_up_generation_uses_the_phase(kind: str) -> None:
    assert run_health(kind, sample(kind, "Succeeded", generation=5, observed=5))["status"] == (
        "Healthy"
    )
    # Without observedGeneration the phase decides (nothing to compare against).
    assert run_health(kind, sample(kind, "Failed", observed=None))["status"] == "Degraded"


@pytest.mark.parametrize("kind", KINDS)
def test_no_status_yet_is_progressing(kind: str) -> None:
    assert run_health(kind, sample(kind, None))["status"] == "Progressing"
    obj = sample(kind, None)
    obj["status"] = {}
    assert run_health(kind, obj)["status"] == "Progressing"


@pytest.mark.parametrize("kind", KINDS)
def test_failed_message_reaches_argocd(kind: str) -> None:
    health = run_health(kind, sample(kind, "Failed"))
    assert "OOMKilled" in health["message"]
    obj = sample(kind, "Failed")
    del obj["status"]["message"]
    assert run_health(kind, obj)["message"] == "the job is failed"


@pytest.mark.parametrize(
    ("ctype", "expected"),
    [("Succeeded", "Healthy"), ("Failed", "Degraded"), ("Suspended", "Suspended")],
)
@pytest.mark.parametrize("kind", KINDS)
def test_conditions_decide_without_a_phase(kind: str, ctype: str, expected: str) -> None:
    obj = sample(kind, ctype)
    del obj["status"]["phase"]
    assert run_health(kind, obj)["status"] == expected


@pytest.mark.parametrize("kind", KINDS)
def test_spec_suspend_without_a_phase_is_suspended(kind: str) -> None:
    obj = sample(kind, None)
    obj["spec"]["suspend"] = True
    obj["status"] = {"observedGeneration": 1}
    assert run_health(kind, obj)["status"] == "Suspended"


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_phase_is_unknown(kind: str) -> None:
    obj = sample(kind, "Running")
    obj["status"]["phase"] = "Exploded"
    assert run_health(kind, obj)["status"] == "Unknown"


def test_messages_carry_progress_and_best_trial() -> None:
    assert "step 40/100" in run_health("FineTuneJob", sample("FineTuneJob", "Running"))["message"]
    assert "0.87" in run_health("FineTuneJob", sample("FineTuneJob", "Succeeded"))["message"]
    sweep = run_health("HyperparameterSweep", sample("HyperparameterSweep", "Succeeded"))
    assert "0.88" in sweep["message"] and "demo-trial-2" in sweep["message"]
    running = run_health("HyperparameterSweep", sample("HyperparameterSweep", "Running"))
    assert "2 running" in running["message"]


def test_input_is_not_mutated() -> None:
    obj = sample("FineTuneJob", "Running")
    before = copy.deepcopy(obj)
    run_health("FineTuneJob", obj)
    assert obj == before


# --------------------------------------------------------------------------- Application


def test_application_example() -> None:
    apps = [d for d in yaml.safe_load_all((ROOT / "deploy/argocd/application.yaml").read_text())]
    by_name = {a["metadata"]["name"]: a for a in apps}
    assert set(by_name) == {"finetune-operator", "finetune-jobs"}
    for app in apps:
        assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
    chart = by_name["finetune-operator"]["spec"]["source"]
    assert (ROOT / chart["path"] / "Chart.yaml").exists()
    jobs = by_name["finetune-jobs"]["spec"]["source"]
    assert (ROOT / jobs["path"]).is_dir()
    waves = [int(a["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"]) for a in apps]
    assert waves == sorted(waves), "the operator (and CRDs) must sync before the jobs"

    # The chart values in the Application pass the chart's schema.
    helm = pytest.importorskip("helm_python")
    loaded = helm.Chart.load(ROOT / chart["path"])
    try:
        loaded.validate_schema(chart["helm"]["valuesObject"])
    finally:
        loaded.close()


@pytest.mark.cluster
def test_gitops_folder_holds_valid_resources(server_validate: Validate) -> None:
    files = sorted((ROOT / "deploy/argocd/jobs").glob("*.yaml"))
    assert files
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] in KINDS
            assert server_validate(doc) == [], path.name
            # Secrets are referenced, never inlined.
            for ref in doc["spec"].get("secrets", []):
                assert set(ref) == {"env", "secretRef"}
