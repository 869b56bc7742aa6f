"""Nothing the trainer writes to a FineTuneJob's status may be lost to pruning.

Each routine runs the real trainer on tiny models with its Kubernetes status sink pointed
at the session's real kube-apiserver, authenticated as the chart's trainer ServiceAccount
(RBAC: patch finetunejobs/status only). Every status PATCH must be accepted: no error,
no warning (kube-apiserver answers a write that lost an unknown field with a `Warning`
header). And what the server then holds equals the trainer's metrics.json for every key
the sink writes, so metrics.json keeps holding exactly the status the trainer writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import DOMAIN, QA, MakeJob, write_rows

from finetune_cluster.install import service_account_token
from support.plane import Plane

pytestmark = pytest.mark.trainer

NAMESPACE = "team-a"
TASKS = str(Path(__file__).resolve().parents[2] / "examples" / "lm-eval-tasks")
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
    # lmEval.<task>.<metric> keys (dots) and artifacts.lmEval
    "causal-lm-lm-eval": (
        "causal-lm",
        "gpt2_dir",
        {"evaluation": {"lmEval": {"tasks": ["tiny_colors"], "includePath": TASKS, "limit": 8}}},
    ),
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


class RecordingSink:
    """The real KubernetesSink, with each PATCH's outcome kept: (HTTP status, warnings)."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.results: list[tuple[int, list[str], dict[str, Any]]] = []

    def emit(self, event: Any, state: Any) -> None:
        import urllib.request

        opener = urllib.request.urlopen
        results = self.results

        def recording(request: Any, **kw: Any) -> Any:
            resp = opener(request, **kw)
            warnings = resp.headers.get_all("Warning") or []
            results.append((resp.status, warnings, json.loads(request.data)["status"]))
            return resp

        urllib.request.urlopen = recording  # type: ignore[assignment]
        try:
            self.sink.emit(event, state)
        finally:
            urllib.request.urlopen = opener


@pytest.mark.parametrize("routine", sorted(ROUTINES))
def test_every_status_write_survives_the_apiserver(
    routine: str,
    request: pytest.FixtureRequest,
    make_job: MakeJob,
    sentiment_data: tuple[Path, Path],
    tmp_path: Path,
    control_plane: Plane,
) -> None:
    import ssl

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
    name = f"status-{routine}"
    manifest["metadata"]["name"] = name
    path = f"/apis/finetune.dev/v1alpha1/namespaces/{NAMESPACE}/finetunejobs/{name}"
    cp = control_plane.cp
    token = service_account_token(cp, NAMESPACE, "finetune-trainer", 600)
    context = ssl.create_default_context(cafile=str(cp.ca_file))
    with control_plane.client() as client:
        created = client.post(path.rsplit("/", 1)[0], json=manifest)
        assert created.status_code == 201, created.text
        try:
            sink = KubernetesSink(
                api_url=cp.server,
                namespace=NAMESPACE,
                name=name,
                token=token,
                ssl_context=context,
                interval=0,
            )
            recording = RecordingSink(sink)
            run(job, spec_dir=tmp_path, output_dir=out, sinks=[recording])  # type: ignore[list-item]
            stored = client.get(path).json()["status"]
        finally:
            client.delete(path)
    patches = [status for _, _, status in recording.results]
    refused = [(code, warn) for code, warn, _ in recording.results if code != 200 or warn]
    assert refused == [], f"{routine}: kube-apiserver refused or pruned {refused}"
    assert len(patches) >= 3, patches  # start, evaluations, end
    assert stored["artifacts"]["model"] and stored["history"], stored
    written = json.loads((out / "metrics.json").read_text())
    for key in patches[-1]:
        assert stored[key] == written[key], key
    if "evaluation" in overrides:  # the dotted lm-eval keys reached the server
        assert "lmEval.tiny_colors.acc" in stored["metrics"], stored["metrics"]
        assert stored["artifacts"]["lmEval"].endswith("lm_eval.json")


def test_the_check_catches_a_field_the_crd_does_not_know(control_plane: Plane) -> None:
    """kube-apiserver drops an unknown status field with a Warning header, and refuses a
    mistyped one: the two failures the test above guards against."""
    path = f"/apis/finetune.dev/v1alpha1/namespaces/{NAMESPACE}/finetunejobs/unknown-field"
    body = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "unknown-field", "namespace": NAMESPACE},
        "spec": {
            "task": "classification",
            "model": {"name": "m"},
            "dataset": {"train": {"path": "/t.csv"}},
        },
    }
    merge = {"Content-Type": "application/merge-patch+json"}
    with control_plane.client() as client:
        assert client.post(path.rsplit("/", 1)[0], json=body).status_code == 201
        try:
            status = {"progress": {"step": 1, "eta": "soon"}, "metrics": {"accuracy": 0.5}}
            resp = client.patch(f"{path}/status", json={"status": status}, headers=merge)
            assert resp.status_code == 200
            assert "unknown field" in resp.headers.get("Warning", "")
            assert "eta" not in client.get(path).json()["status"]["progress"]
            resp = client.patch(
                f"{path}/status", json={"status": {"progress": {"step": "one"}}}, headers=merge
            )
            assert resp.status_code == 422
            assert resp.json()["details"]["causes"][0]["field"] == "status.progress.step"
        finally:
            client.delete(path)
