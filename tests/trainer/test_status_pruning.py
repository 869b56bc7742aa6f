"""Nothing the trainer writes to a FineTuneJob's status may be lost to pruning.

Each routine runs the real trainer on tiny models with its Kubernetes status sink pointed
at `ApiServerEmulator` (kube-apiserver's write path over the committed CRD: pruning,
defaults, schema, CEL). Every status PATCH must be accepted whole: no field pruned, no
422. And what the cluster then holds equals the trainer's metrics.json for every key the
sink writes, so metrics.json keeps holding exactly the status the trainer writes.

The operator's FineTuneJob and sweep status writes are checked the same way by every
operator test: its `cluster` fixture fails a test whose writes lost a field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import DOMAIN, QA, MakeJob, write_rows

from support import crdcheck
from support.apiserver import BackgroundApiServer

pytestmark = pytest.mark.trainer

NAMESPACE = "team-a"
FAST = {"epochs": 2, "batchSize": 8, "evalSteps": 4, "loggingSteps": 2}


def _lm_data(tmp_path: Path, task: str) -> tuple[Path, Path, dict[str, Any]]:
    if task == "masked-lm":
        train = write_rows(tmp_path / "corpus.jsonl", [{"text": t} for t in DOMAIN * 8])
        return train, write_rows(tmp_path / "dev.jsonl", [{"text": t} for t in DOMAIN]), {}
    rows = [{"text": q, "reference": a} for q, a in QA]
    train = write_rows(tmp_path / "train.jsonl", rows * 6)
    return train, write_rows(tmp_path / "dev.jsonl", rows), {"targetColumn": "reference"}


# routine -> (task, model fixture, spec overrides)
ROUTINES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "classification": ("classification", "bert_dir", {}),
    "lora": ("classification", "bert_dir", {"lora": {"rank": 4, "alpha": 8}}),
    "qat": ("classification", "bert_dir", {"quantization": {"mode": "qat"}}),
    "masked-lm": ("masked-lm", "bert_dir", {}),
    "causal-lm-lora-merge": ("causal-lm", "gpt2_dir", {"lora": {"rank": 4, "merge": True}}),
    "early-stopping": (
        "classification",
        "bert_dir",
        {
            "hyperparameters": {
                "learningRate": 1e-9,
                "maxSteps": 40,
                "evalSteps": 2,
                "earlyStoppingPatience": 1,
            }
        },
    ),
}


def _status_patches(api: BackgroundApiServer) -> list[dict[str, Any]]:
    return [
        r.data["status"]
        for r in api.emulator
        if r.method.value == "PATCH" and r.subresource == "status" and isinstance(r.data, dict)
    ]


@pytest.mark.parametrize("routine", sorted(ROUTINES))
def test_every_status_write_survives_the_apiserver(
    routine: str,
    request: pytest.FixtureRequest,
    make_job: MakeJob,
    sentiment_data: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    from finetune_trainer.report import KubernetesSink
    from finetune_trainer.run import run

    task, model_fixture, overrides = ROUTINES[routine]
    if task == "classification":
        (train, dev), dataset = sentiment_data, {}
    else:
        train, dev, dataset = _lm_data(tmp_path, task)
    spec = dict(overrides)
    hyperparameters = FAST | spec.pop("hyperparameters", {})
    job = make_job(
        task=task,
        model_path=request.getfixturevalue(model_fixture),
        train=train,
        eval=dev,
        name="status",
        hyperparameters=hyperparameters,
        dataset=dataset,
        **spec,
    )
    out = tmp_path / "out"
    manifest = job.dump()
    manifest["metadata"]["namespace"] = NAMESPACE
    with BackgroundApiServer() as api:
        api.request("POST", api.path(NAMESPACE), manifest)
        sink = KubernetesSink(api_url=api.url, namespace=NAMESPACE, name="status", interval=0)
        run(job, spec_dir=tmp_path, output_dir=out, sinks=[sink])
        patches = _status_patches(api)
        failures = api.failures()
        stored = api.request("GET", api.path(NAMESPACE, "status"))["status"]
        pruned = list(api.emulator.pruned)

    assert failures == [], failures  # e.g. a 422: the sink would only log it
    assert pruned == [], f"{routine}: the apiserver would drop {pruned}"
    assert len(patches) >= 3, patches  # start, evaluations, end
    assert stored["artifacts"]["model"] and stored["history"], stored
    written = json.loads((out / "metrics.json").read_text())
    for key in patches[-1]:
        assert stored[key] == written[key], key


def test_the_check_catches_a_field_the_crd_does_not_know() -> None:
    """status_loss/admit report an unknown field (the failure the test above guards)."""
    dropped, causes = crdcheck.status_loss(
        "FineTuneJob", {"progress": {"step": 1, "eta": "soon"}, "metrics": {"accuracy": 0.5}}
    )
    assert dropped == ["status.progress.eta"] and causes == []
    dropped, causes = crdcheck.status_loss("FineTuneJob", {"progress": {"step": "one"}})
    assert dropped == [] and causes[0].field == "status.progress.step"
