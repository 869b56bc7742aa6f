"""The operator tests' emulator behaves like kube-apiserver for our CRDs (support/apiserver.py).

Each test writes over HTTP, as clients do, and checks the answer and what is stored.
"""

from __future__ import annotations

import copy
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from support.apiserver import JSON_PATCH, MERGE_PATCH, BackgroundApiServer

pytestmark = pytest.mark.operator

NS = "team-a"
FTJ = ("finetune.dev", "v1alpha1", "finetunejobs")
SPEC = {
    "task": "classification",
    "model": {"name": "bert-base-uncased"},
    "dataset": {"train": {"path": "/data/train.csv"}},
    "hyperparameters": {"learningRate": 1e-4},
}


def ftj(name: str = "demo", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": copy.deepcopy(SPEC) | spec,
    }


@pytest.fixture
def api() -> Iterator[BackgroundApiServer]:
    with BackgroundApiServer() as server:
        yield server


def call(
    api: BackgroundApiServer,
    method: str,
    path: str,
    body: Any = None,
    ctype: str = "application/json",
) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(api.url + path, data=data, method=method)
    req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def obj_path(api: BackgroundApiServer, name: str = "demo", status: bool = False) -> str:
    return api.path(NS, name) + ("/status" if status else "")


def create(api: BackgroundApiServer, body: dict[str, Any]) -> dict[str, Any]:
    code, out = call(api, "POST", api.path(NS), body)
    assert code == 201 or code == 200, out
    return out


def test_create_assigns_metadata_drops_status_prunes_and_defaults(
    api: BackgroundApiServer,
) -> None:
    body = ftj(extra="x")
    body["metadata"]["uid"] = "client-chosen"
    body["status"] = {"phase": "Succeeded"}
    out = create(api, body)
    meta = out["metadata"]
    assert meta["uid"] != "client-chosen" and len(meta["uid"]) == 36
    assert meta["generation"] == 1 and meta["resourceVersion"] and meta["creationTimestamp"]
    assert "status" not in out  # the status subresource owns it
    assert "extra" not in out["spec"]
    assert api.emulator.pruned == [(f"POST {api.path(NS)}", "spec.extra")]
    assert out["spec"]["model"]["revision"] == "main"  # schema default
    assert out["spec"]["hyperparameters"]["batchSize"] == 16
    code, again = call(api, "POST", api.path(NS), ftj())
    assert code == 409 and again["reason"] == "AlreadyExists"


def test_create_with_a_resource_version_is_refused(api: BackgroundApiServer) -> None:
    body = ftj()
    body["metadata"]["resourceVersion"] = "7"
    code, out = call(api, "POST", api.path(NS), body)
    assert code == 500 and "resourceVersion should not be set" in out["message"]


def test_invalid_objects_get_a_422_status_with_causes(api: BackgroundApiServer) -> None:
    body = ftj(task="bogus")
    body["spec"]["hyperparameters"]["learningRate"] = -1
    code, out = call(api, "POST", api.path(NS), body)
    assert code == 422
    assert out["kind"] == "Status" and out["status"] == "Failure" and out["reason"] == "Invalid"
    assert out["message"].startswith('FineTuneJob.finetune.dev "demo" is invalid: [')
    causes = {c["field"]: c for c in out["details"]["causes"]}
    assert set(causes) == {"spec.task", "spec.hyperparameters.learningRate"}
    assert causes["spec.task"]["reason"] == "FieldValueNotSupported"
    assert "should be greater than 0" in causes["spec.hyperparameters.learningRate"]["message"]
    assert out["details"]["kind"] == "FineTuneJob" and out["details"]["name"] == "demo"

    code, out = call(api, "POST", api.path(NS), ftj(model={"name": "m", "path": "/m"}))
    assert code == 422  # a CEL rule
    (cause,) = out["details"]["causes"]
    assert cause["field"] == "spec.model"
    assert "exactly one of model.name or model.path" in cause["message"]

    code, out = call(api, "POST", api.path(NS), {**ftj(), "spec": {"task": "classification"}})
    assert code == 422
    assert {c["field"] for c in out["details"]["causes"]} == {"spec.model", "spec.dataset"}
    assert {c["reason"] for c in out["details"]["causes"]} == {"FieldValueRequired"}
    assert api.emulator.objects == {} or all(o.deleted for o in api.emulator.objects.values())


def test_strict_field_validation_refuses_unknown_fields(api: BackgroundApiServer) -> None:
    code, out = call(api, "POST", api.path(NS) + "?fieldValidation=Strict", ftj(extra=1))
    assert code == 400 and 'unknown field "spec.extra"' in out["message"]


def test_main_resource_writes_ignore_status_and_bump_generation_on_spec(
    api: BackgroundApiServer,
) -> None:
    first = create(api, ftj())
    rv = first["metadata"]["resourceVersion"]
    patch = {"metadata": {"labels": {"a": "b"}}, "status": {"phase": "Failed"}}
    code, out = call(api, "PATCH", obj_path(api), patch, MERGE_PATCH)
    assert code == 200 and out["metadata"]["labels"] == {"a": "b"} and "status" not in out
    assert out["metadata"]["generation"] == 1  # metadata only
    assert out["metadata"]["resourceVersion"] != rv
    code, out = call(api, "PATCH", obj_path(api), {"spec": {"suspend": True}}, MERGE_PATCH)
    assert out["metadata"]["generation"] == 2 and out["spec"]["suspend"] is True
    ops = [{"op": "replace", "path": "/spec/backoffLimit", "value": 5}]
    code, out = call(api, "PATCH", obj_path(api), ops, JSON_PATCH)
    assert code == 200 and out["spec"]["backoffLimit"] == 5
    assert out["metadata"]["generation"] == 3
    ops = [{"op": "test", "path": "/spec/backoffLimit", "value": 1}]
    code, _ = call(api, "PATCH", obj_path(api), ops, JSON_PATCH)
    assert code == 422


def test_status_writes_change_only_status(api: BackgroundApiServer) -> None:
    create(api, ftj())
    patch = {
        "spec": {"suspend": True},
        "metadata": {"labels": {"x": "y"}},
        "status": {"phase": "Running", "progress": {"step": 3}, "bogus": 1},
    }
    code, out = call(api, "PATCH", obj_path(api, status=True), patch, MERGE_PATCH)
    assert code == 200
    assert out["status"]["phase"] == "Running" and "bogus" not in out["status"]
    assert out["status"]["progress"] == {"epoch": 0, "step": 3, "totalSteps": 0}  # defaults
    assert out["spec"]["suspend"] is False and not out["metadata"].get("labels")
    assert out["metadata"]["generation"] == 1
    assert api.emulator.pruned[-1][1] == "status.bogus"
    ops = [{"op": "add", "path": "/status/message", "value": "hi"}]
    code, out = call(api, "PATCH", obj_path(api, status=True), ops, JSON_PATCH)
    assert code == 200 and out["status"]["message"] == "hi"
    code, out = call(
        api, "PATCH", obj_path(api, status=True), {"status": {"phase": "Done"}}, MERGE_PATCH
    )
    assert code == 422 and out["details"]["causes"][0]["field"] == "status.phase"


def test_a_no_op_write_stores_nothing(api: BackgroundApiServer) -> None:
    create(api, ftj())
    _, before = call(api, "GET", obj_path(api))
    history = len(next(iter(api.emulator.objects.values())).history)
    code, out = call(api, "PATCH", obj_path(api), {"spec": {"task": "classification"}}, MERGE_PATCH)
    assert code == 200 and out["metadata"] == before["metadata"]
    assert len(next(iter(api.emulator.objects.values())).history) == history  # no event


def test_stale_resource_version_is_a_conflict(api: BackgroundApiServer) -> None:
    first = create(api, ftj())
    stale = copy.deepcopy(first)
    code, current = call(api, "PATCH", obj_path(api), {"spec": {"suspend": True}}, MERGE_PATCH)
    assert code == 200
    stale["spec"]["backoffLimit"] = 7
    code, out = call(api, "PUT", obj_path(api), stale)
    assert code == 409 and out["reason"] == "Conflict"
    assert "the object has been modified" in out["message"]
    patch = {"metadata": {"resourceVersion": first["metadata"]["resourceVersion"]}}
    code, _ = call(api, "PATCH", obj_path(api), patch | {"spec": {"seed": 1}}, MERGE_PATCH)
    assert code == 409
    fresh = copy.deepcopy(current)
    fresh["spec"]["backoffLimit"] = 7
    code, out = call(api, "PUT", obj_path(api), fresh)
    assert code == 200 and out["spec"]["backoffLimit"] == 7
    assert out["metadata"]["generation"] == current["metadata"]["generation"] + 1
    del fresh["metadata"]["resourceVersion"]  # an unconditional update is allowed
    fresh["spec"]["backoffLimit"] = 8
    code, out = call(api, "PUT", obj_path(api), fresh)
    assert code == 200 and out["spec"]["backoffLimit"] == 8


def test_unsupported_patch_types_and_missing_objects(api: BackgroundApiServer) -> None:
    create(api, ftj())
    ctype = "application/strategic-merge-patch+json"
    code, out = call(api, "PATCH", obj_path(api), {"spec": {}}, ctype)
    assert code == 415 and out["reason"] == "UnsupportedMediaType"
    code, out = call(api, "PATCH", obj_path(api, "nope"), {"spec": {}}, MERGE_PATCH)
    assert code == 404 and out["reason"] == "NotFound"


def test_validation_ratchets_over_unchanged_invalid_values(api: BackgroundApiServer) -> None:
    """An object stored under an older CRD that today's refuses can still get its status
    written and unrelated fields changed; changing the invalid value itself is refused."""
    api.store_unchecked(FTJ, ftj(model={"name": "m", "path": "/m"}))
    code, out = call(
        api, "PATCH", obj_path(api, status=True), {"status": {"phase": "Failed"}}, MERGE_PATCH
    )
    assert code == 200, out
    code, _ = call(api, "PATCH", obj_path(api), {"spec": {"model": {"path": "/n"}}}, MERGE_PATCH)
    assert code == 422


def test_sweeps_are_checked_and_keep_preserved_fields(api: BackgroundApiServer) -> None:
    sweep = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "HyperparameterSweep",
        "metadata": {"name": "hps", "namespace": NS},
        "spec": {
            "template": SPEC,
            "searchSpace": {"nope": {"type": "int", "low": 1, "high": 2}},
        },
    }
    path = api.path(NS, plural="hyperparametersweeps")
    code, out = call(api, "POST", path, sweep)
    assert code == 422 and "searchSpace keys must be tunable" in out["message"]
    sweep["spec"]["searchSpace"] = {"lora.rank": {"type": "categorical", "choices": [4, "8"]}}
    code, out = call(api, "POST", path, sweep)
    assert code == 201 or code == 200, out
    best = {"name": "hps-trial-0", "value": 0.9, "params": {"lora.rank": 4, "odd": {"x": 1}}}
    status = {"status": {"bestTrial": best, "trials": {"total": 1}}}
    code, out = call(api, "PATCH", path + "/hps/status", status, MERGE_PATCH)
    assert code == 200 and out["status"]["bestTrial"]["params"] == best["params"]
    assert out["spec"]["searchSpace"]["lora.rank"]["choices"] == [4, "8"]
    assert api.emulator.pruned == []
