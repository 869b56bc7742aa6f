"""spec.promote through the real operator on the real control plane, with KServe's real
InferenceService CRD (from KServe's Go module, tests/support/kserve.py): a run whose
gate fails stays Succeeded with Promoted=False and the gap; one that meets it gets an
InferenceService the apiserver stores under KServe's schema, owned by the FineTuneJob,
and once the test sets its Ready status (KServe's controller does not run) the URL lands
in the FineTuneJob's status; without the CRD, Promoted=False says KServe is missing. A
sweep promotes its best trial only. The operator runs as the chart's ServiceAccount, so
the real RBAC authorizer checks the chart grants what promotion calls."""

from __future__ import annotations

import copy
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from operator_harness import (
    FTJ,
    JOB,
    NAMESPACE,
    SMALL_SPEC,
    STUB_IMAGE,
    SWEEP,
    Cluster,
    Kubelet,
    OperatorRunner,
    make_ftj,
    sample,
)

from finetune_operator.config import OperatorConfig
from support import kserve

pytestmark = pytest.mark.operator

ISVC = ("serving.kserve.io", "v1beta1", "inferenceservices")
CRDS = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")
MODEL_URI = "s3://models/runs/{name}/model"


def promoting(when: dict[str, Any], **isvc: Any) -> dict[str, Any]:
    return copy.deepcopy(SMALL_SPEC) | {
        "backoffLimit": 0,
        "promote": {"when": when, "inferenceService": isvc},
    }


@pytest.fixture()
async def operator(
    operator_factory: Callable[..., Awaitable[OperatorRunner]],
) -> OperatorRunner:
    config = OperatorConfig(
        trainer_image=STUB_IMAGE, promote_poll_seconds=0.3, promote_recheck_seconds=600
    )
    return await operator_factory(config=config)


async def train(
    cluster: Cluster, kubelet: Kubelet, name: str, metrics: dict[str, float]
) -> dict[str, Any]:
    """The stub trainer succeeds with these metrics and its model at an object-store URI."""
    job = await cluster.wait_for_object(JOB, NAMESPACE, f"{name}-train")
    await kubelet.run_pod(job)
    report = {
        "phase": "Succeeded",
        "metrics": metrics,
        "artifacts": {"model": MODEL_URI.format(name=name)},
    }
    await kubelet.terminate(job, exit_code=0, message=json.dumps(report))
    return await cluster.wait_phase(NAMESPACE, name, "Succeeded")


async def promoted(cluster: Cluster, name: str, reason: str) -> dict[str, Any]:
    got: dict[str, Any] = await cluster.wait_for(
        lambda: (
            cluster.condition(NAMESPACE, name, "Promoted").get("reason") == reason
            and cluster.condition(NAMESPACE, name, "Promoted")
        ),
        20,
        lambda: f"{name} Promoted {reason}: {cluster.status(FTJ, NAMESPACE, name)}",
    )
    return got


async def test_without_kserve_the_run_succeeds_and_promoted_says_so(
    cluster: Cluster, operator: OperatorRunner, kubelet: Kubelet
) -> None:
    if cluster.get_object(CRDS, None, kserve.CRD_NAME) is not None:  # another module's
        await cluster.delete(CRDS, None, kserve.CRD_NAME)
        await cluster.wait_for(
            lambda: cluster.get_object(CRDS, None, kserve.CRD_NAME) is None, 60, "CRD gone"
        )
    await cluster.create(
        FTJ, make_ftj("nokserve", promoting({"metric": "accuracy", "minimum": 0.5}))
    )
    await train(cluster, kubelet, "nokserve", {"accuracy": 0.9})
    cond = await promoted(cluster, "nokserve", "KServeNotInstalled")
    assert cond["status"] == "False"
    assert "not installed" in cond["message"] and "inferenceservices" in cond["message"]
    status = cluster.status(FTJ, NAMESPACE, "nokserve")
    assert status["phase"] == "Succeeded" and "inferenceService" not in status
    assert (
        sample(
            await operator.metrics(), "finetune_job_promoted", namespace=NAMESPACE, name="nokserve"
        )
        == 0.0
    )


@pytest.fixture(scope="module")
def kserve_crd() -> dict[str, Any]:
    return kserve.inference_service_crd()


@pytest.fixture()
def with_kserve(cluster: Cluster, kserve_crd: dict[str, Any]) -> None:
    kserve.install(cluster.sync, kserve_crd)


async def test_a_gate_it_cannot_meet_leaves_it_succeeded_with_the_gap(
    cluster: Cluster, with_kserve: None, operator: OperatorRunner, kubelet: Kubelet
) -> None:
    await cluster.create(FTJ, make_ftj("low", promoting({"metric": "accuracy", "minimum": 0.9})))
    await train(cluster, kubelet, "low", {"accuracy": 0.75})
    cond = await promoted(cluster, "low", "GateNotMet")
    assert cond["status"] == "False"
    assert cond["message"] == "accuracy 0.75 against minimum 0.9: gap -0.15"
    # beatsBase: the base model's value the trainer reported beside the run's
    spec = promoting({"metric": "accuracy", "beatsBase": {"by": 0.05}})
    await cluster.create(FTJ, make_ftj("base", spec))
    await train(cluster, kubelet, "base", {"accuracy": 0.72, "base.accuracy": 0.7})
    cond = await promoted(cluster, "base", "GateNotMet")
    assert "at least base 0.7 + 0.05: gap -0.03" in cond["message"]
    assert cluster.get_object(ISVC, NAMESPACE, "low") is None
    assert cluster.get_object(ISVC, NAMESPACE, "base") is None
    assert cluster.status(FTJ, NAMESPACE, "low")["phase"] == "Succeeded"


async def test_a_met_gate_creates_the_inference_service_and_reports_its_url(
    cluster: Cluster, with_kserve: None, operator: OperatorRunner, kubelet: Kubelet
) -> None:
    spec = promoting({"metric": "accuracy", "beatsBase": {"by": 0.05}}, memory="2Gi")
    ftj = await cluster.create(FTJ, make_ftj("good", spec))
    await train(cluster, kubelet, "good", {"accuracy": 0.8, "base.accuracy": 0.7})
    cond = await promoted(cluster, "good", "InferenceServiceCreated")
    assert cond["status"] == "True" and "gap +0.05" in cond["message"]
    isvc = await cluster.wait_for_object(ISVC, NAMESPACE, "good")
    # stored under KServe's schema (the apiserver pruned nothing we sent)
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"] == MODEL_URI.format(name="good")
    assert model["modelFormat"] == {"name": "huggingface"}
    assert "--backend=huggingface" in model["args"]
    assert model["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    (owner,) = isvc["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("FineTuneJob", ftj["metadata"]["uid"])
    served = cluster.status(FTJ, NAMESPACE, "good")["inferenceService"]
    assert served == {"name": "good", "storageUri": MODEL_URI.format(name="good")}

    url = f"http://good.{NAMESPACE}.example.com"
    ready = {
        "status": {
            "url": url,
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-02T00:00:00Z"}
            ],
        }
    }
    await cluster.patch(ISVC, NAMESPACE, "good", ready, status=True)
    cond = await promoted(cluster, "good", "Serving")
    assert cond["message"].endswith(f"serving at {url}")
    assert cluster.status(FTJ, NAMESPACE, "good")["inferenceService"]["url"] == url
    assert (
        sample(await operator.metrics(), "finetune_job_promoted", namespace=NAMESPACE, name="good")
        == 1.0
    )
    assert "Promoted" in [e["reason"] for e in cluster.events(NAMESPACE, "good")]
    # idempotent: a restarted operator adopts it, creates nothing more
    await operator.restart()
    await cluster.patch(FTJ, NAMESPACE, "good", {"metadata": {"labels": {"poke": "1"}}})
    await promoted(cluster, "good", "Serving")
    creates = [
        e
        for e in cluster.audit()
        if e["verb"] == "create"
        and (e.get("objectRef") or {}).get("resource") == "inferenceservices"
    ]
    assert [e["responseStatus"]["code"] for e in creates] == [201], creates
    # the chart's RBAC (create, get) is all promotion uses, and the authorizer allowed it
    who = cluster.plane.operator_user
    calls = {
        (e["verb"], e["responseStatus"]["code"])
        for e in cluster.audit()
        if e.get("user", {}).get("username") == who
        and (e.get("objectRef") or {}).get("resource") == "inferenceservices"
    }
    assert {verb for verb, _ in calls} == {"create", "get"}, calls
    assert all(code < 400 for _, code in calls), calls


async def test_a_sweep_promotes_only_its_best_trial(
    cluster: Cluster, with_kserve: None, operator: OperatorRunner, kubelet: Kubelet
) -> None:
    template = copy.deepcopy(SMALL_SPEC) | {"backoffLimit": 0}
    sweep = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "HyperparameterSweep",
        "metadata": {"name": "hp", "namespace": NAMESPACE},
        "spec": {
            "template": template,
            "searchSpace": {
                "hyperparameters.learningRate": {"type": "float", "low": 1e-5, "high": 1e-3}
            },
            "objective": {"metric": "accuracy", "direction": "maximize"},
            "pruner": {"type": "none"},
            "maxTrials": 2,
            "parallelism": 2,
            "promote": {"when": {"metric": "accuracy", "minimum": 0.5}},
        },
    }
    await cluster.create(SWEEP, sweep)
    await train(cluster, kubelet, "hp-trial-0", {"accuracy": 0.6})
    await train(cluster, kubelet, "hp-trial-1", {"accuracy": 0.8})
    # both meet the gate; only the best is promoted, once the sweep succeeded
    await promoted(cluster, "hp-trial-1", "InferenceServiceCreated")
    st = await cluster.wait_for(
        lambda: (s := cluster.status(SWEEP, NAMESPACE, "hp")).get("inferenceService") and s,
        20,
        "the sweep's status names the InferenceService",
    )
    assert st["phase"] == "Succeeded" and st["bestTrial"]["name"] == "hp-trial-1"
    assert st["inferenceService"]["name"] == "hp-trial-1"
    assert st["inferenceService"]["trial"] == "hp-trial-1"
    sweep_cond = next(c for c in st["conditions"] if c["type"] == "Promoted")
    assert sweep_cond["status"] == "True" and sweep_cond["message"].startswith("trial hp-trial-1")
    assert cluster.get_object(ISVC, NAMESPACE, "hp-trial-1") is not None
    assert cluster.get_object(ISVC, NAMESPACE, "hp-trial-0") is None
    assert not cluster.condition(NAMESPACE, "hp-trial-0", "Promoted")
