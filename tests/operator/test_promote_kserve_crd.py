"""The InferenceService promote.py builds, against KServe's real CRD on the real control
plane: the apiserver stores it under strict field validation, a Ready status set by the
test (KServe's controller does not run) yields the URL."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_api.models import FineTuneJob, Promote
from finetune_operator import promote
from support import kserve
from support.plane import Plane

pytestmark = pytest.mark.operator

NS = "team-a"
BASE = "/apis/serving.kserve.io/v1beta1/namespaces/team-a/inferenceservices"


def _job(name: str, **spec: Any) -> FineTuneJob:
    return FineTuneJob.model_validate(
        {
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "task": "causal-lm",
                "model": {"name": "org/base-1b"},
                "dataset": {"train": {"path": "/data/train.jsonl"}},
                "output": {"path": "/output", "pvc": "runs"},
                **spec,
            },
        }
    )


@pytest.fixture(scope="module")
def plane(control_plane: Plane) -> Plane:
    with control_plane.client() as client:
        kserve.install(client, kserve.inference_service_crd())
    return control_plane


@pytest.mark.parametrize(
    ("name", "spec", "artifacts", "gpus"),
    [
        ("full-cpu", {}, {"model": "/output/model"}, 0),
        ("lora-gpu", {"lora": {"rank": 8}}, {"model": "/output/adapter"}, 1),
        (
            "merged-gpu",
            {"lora": {"rank": 8, "merge": True}},
            {"model": "/output/adapter", "mergedModel": "/output/merged"},
            1,
        ),
    ],
)
def test_built_inference_service_is_stored_under_kserves_crd(
    plane: Plane, name: str, spec: dict[str, Any], artifacts: dict[str, str], gpus: int
) -> None:
    ftj = _job(name, **spec)
    config = Promote.model_validate(
        {"when": {"metric": "perplexity", "maximum": 20}, "inferenceService": {"gpus": gpus}}
    )
    uri, kind = promote.storage_uri(ftj, config, artifacts)
    assert uri is not None, kind
    doc = promote.build_inference_service(
        ftj, "0b5c0f0e-1111-4222-8333-444455556666", config, uri, kind
    )
    # no owner in the plane: drop the reference (its uid would dangle and be collected)
    doc["metadata"].pop("ownerReferences")
    with plane.client() as client:
        resp = client.post(BASE, params={"fieldValidation": "Strict"}, json=doc)
        assert resp.status_code == 201, resp.text[:2000]
        stored = resp.json()
        assert stored["spec"]["predictor"]["model"]["storageUri"] == uri
        assert promote.served_url(stored) is None  # not Ready yet
        ready = {
            "status": {
                "url": f"http://{name}.{NS}.example.com",
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "lastTransitionTime": "2026-12-02T00:00:00Z",
                    }
                ],
            }
        }
        resp = client.patch(
            f"{BASE}/{name}/status",
            json=ready,
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert resp.status_code == 200, resp.text[:2000]
        got = client.get(f"{BASE}/{name}").json()
        assert promote.served_url(got) == f"http://{name}.{NS}.example.com"
        client.delete(f"{BASE}/{name}")


def test_kserves_schema_is_really_enforced(plane: Plane) -> None:
    """A manifest KServe's schema refuses is refused: the check above can fail."""
    ftj = _job("bad")
    config = Promote.model_validate({"when": {"metric": "perplexity", "maximum": 20}})
    doc = promote.build_inference_service(ftj, "uid", config, "pvc://runs/model", "model")
    doc["metadata"].pop("ownerReferences")
    typo = {**doc["spec"]["predictor"]["model"], "storageUrl": "typo"}
    wrong_type = {**doc["spec"]["predictor"]["model"], "args": "--backend=vllm"}
    with plane.client() as client:
        for model, code, phrase in ((typo, 400, "storageUrl"), (wrong_type, 422, "args")):
            bad = {**doc, "spec": {"predictor": {"model": model}}}
            params = {"fieldValidation": "Strict", "dryRun": "All"}
            resp = client.post(BASE, params=params, json=bad)
            assert resp.status_code == code, resp.text[:500]
            assert phrase in resp.text
