"""YAML -> operator -> Job -> trainer (a real local process) -> status.metrics and /metrics.

The test "kubelet" runs the created Job's container command (`python -m finetune_trainer`)
with the Job's env, FINETUNE_KUBE_API_URL pointing at the emulator, on a tiny random-weight
BERT and a toy dataset built here (nothing is downloaded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_harness import FTJ, JOB, NAMESPACE, Cluster, Kubelet, make_ftj, sample

from support.tiny_models import sentiment_rows, tiny_bert, write_rows

pytestmark = [pytest.mark.operator, pytest.mark.slow]


async def test_yaml_to_trainer_to_status_and_metrics(
    tmp_path: Path, cluster: Cluster, operator_factory: Any, kubelet: Kubelet
) -> None:
    from finetune_operator.config import OperatorConfig

    model = tiny_bert(tmp_path / "model")
    train = write_rows(tmp_path / "data" / "train.csv", sentiment_rows(64, seed=1))
    dev = write_rows(tmp_path / "data" / "dev.csv", sentiment_rows(16, seed=2))
    manifest = yaml.safe_load(
        f"""
apiVersion: finetune.dev/v1alpha1
kind: FineTuneJob
metadata:
  name: e2e
  namespace: {NAMESPACE}
spec:
  task: classification
  model: {{path: {model}}}
  dataset:
    train: {{path: {train}}}
    eval: {{path: {dev}}}
  hyperparameters: {{learningRate: 0.005, epochs: 1, batchSize: 8, maxLength: 32, maxSteps: 6,
                    evalSteps: 3, loggingSteps: 2}}
  output: {{path: {tmp_path / "out"}}}
  resources: {{gpus: 0, cpu: "1", memory: 2Gi}}
"""
    )
    operator = await operator_factory(
        config=OperatorConfig(trainer_image="finetune-trainer:test", status_interval_seconds=1)
    )
    body = make_ftj("e2e", manifest["spec"])
    await cluster.create(FTJ, body)
    job = await cluster.wait_for_object(JOB, NAMESPACE, "e2e-train")

    code, output = await kubelet.run_process(job, cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert code == 0, output[-3000:]

    status = await cluster.wait_phase(NAMESPACE, "e2e", "Succeeded", timeout=20)
    assert "accuracy" in status["metrics"] and "evalLoss" in status["metrics"]
    assert status["progress"]["step"] == 6
    assert status["history"], "the trainer's live sink patched the status history"
    assert status["artifacts"]["model"] == str(tmp_path / "out" / "model")
    assert (tmp_path / "out" / "metrics.json").is_file()
    # The trainer's live patches arrived through the status subresource (its Kubernetes sink).
    status_patches = [
        r
        for r in cluster.requests()
        if r.method.value == "PATCH"
        and r.resource is not None
        and r.resource.plural == "finetunejobs"
        and isinstance(r.data, dict)
        and "history" in json.dumps(r.data)
    ]
    assert status_patches

    text = await operator.metrics()
    accuracy = sample(
        text, "finetune_job_metric", namespace=NAMESPACE, name="e2e", metric="accuracy"
    )
    assert accuracy == pytest.approx(status["metrics"]["accuracy"])
    assert (
        sample(text, "finetune_job_phase", namespace=NAMESPACE, name="e2e", phase="Succeeded") == 1
    )
