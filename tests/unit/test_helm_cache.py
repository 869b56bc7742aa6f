"""The chart's shared Hugging Face cache (trainer.cache) reaches the operator, which mounts
it on every trainer pod whose FineTuneJob sets no spec.cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_api.models import FineTuneJob
from finetune_operator.config import OperatorConfig
from finetune_operator.jobs import build_job

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is a dev dependency")

pytestmark = pytest.mark.unit

CHART = Path(__file__).resolve().parents[2] / "helm" / "finetune"


def operator_env(values: dict[str, Any]) -> dict[str, str]:
    chart = helm.Chart.load(CHART)
    try:
        manifests = chart.render(values, name="ft", namespace="finetune-system")
    finally:
        chart.close()
    docs = [d for p, t in manifests.items() if p.endswith(".yaml") for d in yaml.safe_load_all(t)]
    (deployment,) = [d for d in docs if d and d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"] if "value" in e}


def test_no_cache_by_default() -> None:
    env = operator_env({})
    assert "FINETUNE_TRAINER_CACHE_PVC" not in env


def test_chart_cache_becomes_the_trainer_pods_hf_home(monkeypatch: pytest.MonkeyPatch) -> None:
    env = operator_env({"trainer": {"cache": {"pvc": "hf-models", "readOnly": True}}})
    assert env["FINETUNE_TRAINER_CACHE_PVC"] == "hf-models"
    assert env["FINETUNE_TRAINER_CACHE_READ_ONLY"] == "true"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = OperatorConfig.from_env()
    assert (config.cache_pvc, config.cache_read_only) == ("hf-models", True)
    ftj = FineTuneJob.model_validate(
        {
            "metadata": {"name": "demo", "namespace": "team-a"},
            "spec": {
                "task": "classification",
                "model": {"name": "bert-base-uncased"},
                "dataset": {"train": {"path": "/data/t.tsv"}},
            },
        }
    )
    pod = build_job(ftj, "uid", config)["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "hf-cache"]
    assert volume["persistentVolumeClaim"] == {"claimName": "hf-models", "readOnly": True}


@pytest.mark.parametrize("cache", [{"pvc": "Not_A_Name"}, {"readOnly": "yes"}, {"size": 1}])
def test_schema_rejects_bad_cache_values(cache: dict[str, Any]) -> None:
    chart = helm.Chart.load(CHART)
    try:
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema({"trainer": {"cache": cache}})
    finally:
        chart.close()
