"""The chart and the operator agree: settings reach the operator, secrets stay references.

The chart's operator environment is fed to the operator's own OperatorConfig.from_env,
and the Job the operator would build for a FineTuneJob with spec.secrets is checked for
plaintext: only valueFrom.secretKeyRef travels, and nobody is granted Secret reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_api.models import FineTuneJob
from finetune_operator import jobs
from finetune_operator.config import DEFAULT_SERVICE_ACCOUNT, OperatorConfig

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is a dev dependency")

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "finetune"
SENTINEL = "hf_s3cr3t-value-never-anywhere"


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    chart = helm.Chart.load(CHART)
    try:
        out = chart.render(values, name="finetune", namespace="finetune-system")
    finally:
        chart.close()
    return [
        d for k, v in out.items() if not k.endswith("NOTES.txt") for d in yaml.safe_load_all(v) if d
    ]


def operator_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_chart_settings_reach_the_operator_config(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "trainer": {
            "image": {
                "repository": "reg.example/ft/trainer",
                "tag": "1.2.3",
                "pullPolicy": "Always",
            },
            "imagePullSecrets": ["regcred"],
            "statusIntervalSeconds": 7,
            "serviceAccount": {"name": "ft-trainer"},
        }
    }
    env = operator_env(render(values))
    for key in list(os.environ):
        if key.startswith("FINETUNE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = OperatorConfig.from_env()
    assert config.trainer_image == "reg.example/ft/trainer:1.2.3"
    assert config.image_pull_policy == "Always"
    assert config.image_pull_secrets == ("regcred",)
    assert config.status_interval_seconds == 7
    assert config.service_account == "ft-trainer"


def test_default_trainer_service_account_matches_the_operator() -> None:
    docs = render({})
    env = operator_env(docs)
    assert env["FINETUNE_TRAINER_SERVICE_ACCOUNT"] == DEFAULT_SERVICE_ACCOUNT
    trainer_accounts = [
        d["metadata"]["name"]
        for d in docs
        if d["kind"] == "ServiceAccount"
        and d["metadata"]["labels"].get("app.kubernetes.io/component") == "trainer"
    ]
    assert trainer_accounts == [DEFAULT_SERVICE_ACCOUNT]


def test_job_carries_secret_references_only() -> None:
    manifest = yaml.safe_load((ROOT / "tests/e2e/manifests/finetunejob.yaml").read_text())
    ftj = FineTuneJob.model_validate(manifest)
    assert ftj.spec.secrets, "the sample must reference a Secret"
    job = jobs.build_job(ftj, "uid-1", OperatorConfig())
    (container,) = job["spec"]["template"]["spec"]["containers"]
    by_name = {e["name"]: e for e in container["env"]}
    for ref in ftj.spec.secrets:
        entry = by_name[ref.env]
        assert "value" not in entry
        assert entry["valueFrom"] == {
            "secretKeyRef": {"name": ref.secret_ref.name, "key": ref.secret_ref.key}
        }
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == DEFAULT_SERVICE_ACCOUNT
    assert "envFrom" not in container  # no whole-Secret dumps into the environment


def test_no_value_can_leak_through_the_job() -> None:
    """A Secret's value is unknown to the operator: nothing it builds can contain it."""
    manifest = yaml.safe_load((ROOT / "tests/e2e/manifests/finetunejob.yaml").read_text())
    ftj = FineTuneJob.model_validate(manifest)
    job = json.dumps(jobs.build_job(ftj, "uid-1", OperatorConfig()))
    assert SENTINEL not in job
    # And the spec has no field where a value could be pasted next to a reference.
    with pytest.raises(ValueError):
        FineTuneJob.model_validate(
            {
                **manifest,
                "spec": {
                    **manifest["spec"],
                    "secrets": [
                        {
                            "env": "HF_TOKEN",
                            "secretRef": {"name": "t", "key": "k"},
                            "value": SENTINEL,
                        }
                    ],
                },
            }
        )


@pytest.mark.parametrize(
    "values", [{}, {"watchNamespaces": ["a", "b"]}, {"peering": {"enabled": True}}]
)
def test_nothing_in_the_chart_reads_secrets(values: dict[str, Any]) -> None:
    for doc in render(values):
        if doc["kind"] in ("Role", "ClusterRole"):
            for rule in doc["rules"]:
                assert "secrets" not in rule.get("resources", []), doc["metadata"]["name"]
        if doc["kind"] == "Deployment":
            text = json.dumps(doc)
            assert "secretKeyRef" not in text and "secretRef" not in text
