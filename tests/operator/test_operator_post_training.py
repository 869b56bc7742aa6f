"""Chat SFT and DPO specs through the real operator and control plane: the Job carries
the new fields to the trainer unchanged (no new RBAC), reward metrics reach the status
and Prometheus, and a refused chat template fails the run with reason ChatTemplate."""

from __future__ import annotations

import json
from typing import Any

import pytest
from operator_harness import (
    FTJ,
    JOB,
    NAMESPACE,
    Cluster,
    Kubelet,
    OperatorRunner,
    make_ftj,
    sample,
)

pytestmark = pytest.mark.operator

DPO: dict[str, Any] = {
    "task": "causal-lm",
    "model": {"name": "Qwen/Qwen2.5-0.5B-Instruct"},
    "method": {"type": "dpo", "beta": 0.2},
    "dataset": {"train": {"path": "/data/pref.jsonl"}},
    "lora": {"rank": 16, "quantizeBase": "nf4"},
    "hyperparameters": {"gradientCheckpointing": True},
    "resources": {"gpus": 1, "cpu": "2", "memory": "8Gi"},
    "backoffLimit": 0,
}
CHAT: dict[str, Any] = DPO | {
    "method": {"type": "sft"},
    "dataset": {"train": {"path": "/data/chat.jsonl"}, "format": "messages"},
    "loss": "assistant",
}


async def test_a_dpo_job_reports_its_rewards(
    cluster: Cluster, operator: OperatorRunner, kubelet: Kubelet
) -> None:
    await cluster.create(FTJ, make_ftj("dpo", DPO))
    job = await cluster.wait_for_object(JOB, NAMESPACE, "dpo-train")
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    spec = json.loads(env["FINETUNE_JOB"]["value"])["spec"]
    assert spec["method"] == {"type": "dpo", "beta": 0.2}
    assert spec["lora"]["quantizeBase"] == "nf4"
    assert spec["hyperparameters"]["gradientCheckpointing"] is True

    await kubelet.run_pod(job)
    await cluster.wait_phase(NAMESPACE, "dpo", "Running")
    rewards = {"rewardMargin": 0.42, "rewardAccuracy": 0.75, "chosenLogps": -12.5}
    await kubelet.succeed(job, metrics={"evalLoss": 0.6, **rewards})
    status = await cluster.wait_phase(NAMESPACE, "dpo", "Succeeded")
    assert rewards.items() <= status["metrics"].items()
    text = await operator.metrics()
    for name, value in rewards.items():
        labels = {"namespace": NAMESPACE, "name": "dpo", "metric": name}
        assert sample(text, "finetune_job_metric", **labels) == value, name


async def test_a_refused_chat_template_fails_with_its_reason(
    cluster: Cluster, operator: OperatorRunner, kubelet: Kubelet
) -> None:
    await cluster.create(FTJ, make_ftj("chat", CHAT))
    job = await cluster.wait_for_object(JOB, NAMESPACE, "chat-train")
    message = "chat template of model Qwen/Qwen2.5-0.5B-Instruct has no {% generation %} markers"
    report = {"phase": "Failed", "reason": "ChatTemplate", "message": message}
    await kubelet.fail(job, exit_code=2, message=json.dumps(report))
    await cluster.wait_phase(NAMESPACE, "chat", "Failed")
    failed = cluster.condition(NAMESPACE, "chat", "Failed")
    assert failed["status"] == "True" and failed["reason"] == "ChatTemplate", failed
    assert "generation" in failed["message"]
