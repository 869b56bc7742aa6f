"""Pure cores of out-of-memory recovery (oom.py) and GPU time / cost (usage.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from finetune_api.models import FineTuneJobSpec
from finetune_operator import metrics, oom, usage
from finetune_operator.config import ConfigError, OperatorConfig

pytestmark = pytest.mark.unit


def spec(**hp: Any) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "task": "classification",
            "model": {"name": "m"},
            "dataset": {"train": {"path": "/d.csv"}},
            "hyperparameters": hp,
            "resources": {"gpus": 2},
        }
    )


def pod(terminated: dict[str, Any]) -> dict[str, Any]:
    status = {"name": "trainer", "state": {"terminated": terminated}}
    return {"metadata": {"name": "p"}, "status": {"containerStatuses": [status]}}


OOM_KILLED = pod({"reason": "OOMKilled", "exitCode": 137})
GPU_OOM = pod(
    {
        "reason": "Error",
        "exitCode": 1,
        "message": json.dumps(
            {"phase": "Failed", "message": "OutOfMemoryError: CUDA out of memory. Tried 2 GiB"}
        ),
    }
)
OTHER = pod({"reason": "Error", "exitCode": 1, "message": json.dumps({"message": "KeyError"})})


def test_causes_from_pod_status_and_termination_message() -> None:
    assert "OOMKilled" in (oom.oom_cause([OOM_KILLED]) or "")
    assert "CUDA out of memory" in (oom.oom_cause([GPU_OOM]) or "")
    assert oom.oom_cause([OTHER]) is None
    assert oom.oom_cause([pod({"reason": "Completed", "exitCode": 0})]) is None


def test_plan_halves_the_batch_doubles_accumulation_up_to_the_bound() -> None:
    s = spec(batchSize=32, gradientAccumulationSteps=2)
    first = oom.plan(s, "run", 0, [OOM_KILLED], max_retries=3)
    assert first == oom.Retry(1, first.cause, 16, 4, "run-r1-train") if first else False
    second = oom.plan(s, "run", 1, [GPU_OOM], max_retries=3)
    assert second is not None and (second.batch_size, second.accumulation) == (8, 8)
    assert second.job_name == "run-r2-train"
    assert oom.plan(s, "run", 3, [OOM_KILLED], max_retries=3) is None  # bound reached
    assert oom.plan(s, "run", 0, [OTHER], max_retries=3) is None  # not out of memory
    assert oom.plan(spec(batchSize=1), "run", 0, [OOM_KILLED], max_retries=3) is None
    assert oom.plan(s, "run", 0, [OOM_KILLED], max_retries=0) is None  # recovery off
    multi = spec(batchSize=32)
    multi.resources.nodes = 2  # torchrun cannot halve in process: the retry Job does
    assert oom.plan(multi, "run", 0, [OOM_KILLED], max_retries=3) is not None


def test_auto_starts_from_its_effective_batch() -> None:
    s = spec(batchSize="auto", gradientAccumulationSteps=4)  # effective 64
    retry = oom.plan(s, "run", 0, [OOM_KILLED], max_retries=3)
    assert retry is not None and (retry.batch_size, retry.accumulation) == (32, 2)


def test_retry_names_are_deterministic_and_read_back() -> None:
    assert oom.retry_job_name("run", 0) == "run-train"
    assert oom.attempt_of("run", "run-r2-train") == 2
    assert oom.attempt_of("run", "run-train") == 0
    assert oom.attempt_of("run", None) == 0
    assert oom.current_job_name("run", "run-r1-train") == "run-r1-train"
    assert oom.current_job_name("run", "something-else") == "run-train"
    long = "x" * 70
    assert len(oom.retry_job_name(long, 3)) <= 63
    assert oom.attempt_of(long, oom.retry_job_name(long, 3)) == 3


def test_retry_spec_and_condition() -> None:
    s = spec(batchSize=32)
    hp = oom.retry_spec(s, 2).hyperparameters
    assert (hp.batch_size, hp.gradient_accumulation_steps) == (8, 4)
    assert oom.retry_spec(s, 0) is s
    assert oom.condition(s, 0, 3) is None
    reason, message = oom.condition(s, 1, 3) or ("", "")
    assert reason == "RetriedAfterOOM" and "batchSize 16 x gradientAccumulationSteps 2" in message
    retry = oom.plan(s, "run", 0, [OOM_KILLED], 3)
    assert retry is not None
    text = oom.retry_message(retry, s, 3)
    assert "batchSize 32 x gradientAccumulationSteps 1" in text and "run-r1-train" in text


def test_gpu_seconds_and_cost() -> None:
    s = spec()
    running = {"status": {"startTime": "2026-01-01T00:00:00Z"}}
    assert usage.gpu_seconds(s, running, now="2026-01-01T00:30:00Z") == 2 * 1800
    done = {"status": {"startTime": "2026-01-01T00:00:00Z",
                       "completionTime": "2026-01-01T01:00:00Z"}}  # fmt: skip
    assert usage.gpu_seconds(s, done, now="2026-01-01T05:00:00Z") == 2 * 3600
    failed = {"status": {"startTime": "2026-01-01T00:00:00Z", "conditions": [
        {"type": "Failed", "status": "True", "lastTransitionTime": "2026-01-01T00:10:00Z"}]}}  # fmt: skip
    assert usage.gpu_seconds(s, failed, now="2026-01-01T05:00:00Z") == 2 * 600
    assert usage.gpu_seconds(s, {"status": {}}, now="2026-01-01T00:00:00Z") == 0.0
    cpu = spec()
    cpu.resources.gpus = 0
    assert usage.gpu_seconds(cpu, done, now="x") == 0.0
    assert usage.cost(7200, 2.5) == 5.0 and usage.cost(7200, None) is None


def test_usage_counters_only_grow_and_are_forgotten() -> None:
    pub = metrics.Publisher()  # its own registry: nothing left over from other tests
    pub.publish_usage("ns", "a", "a-train", 100.0, price=3.6, currency="EUR")
    pub.publish_usage("ns", "a", "a-train", 160.0, price=3.6, currency="EUR")
    pub.publish_usage("ns", "a", "a-train", 150.0, price=3.6, currency="EUR")  # never back
    pub.publish_usage("ns", "a", "a-r1-train", 40.0, price=3.6, currency="EUR", oom_retries=1)
    value = pub.instruments.registry.get_sample_value
    assert value("finetune_job_gpu_seconds_total", {"namespace": "ns", "name": "a"}) == 200.0
    cost = value("finetune_job_cost_total", {"namespace": "ns", "name": "a", "currency": "EUR"})
    assert cost == pytest.approx(0.2)
    assert value("finetune_job_oom_retries", {"namespace": "ns", "name": "a"}) == 1.0
    pub.forget_job("ns", "a")
    assert value("finetune_job_gpu_seconds_total", {"namespace": "ns", "name": "a"}) is None
    assert (
        value("finetune_job_cost_total", {"namespace": "ns", "name": "a", "currency": "EUR"})
        is None
    )


def test_cost_and_retry_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    assert OperatorConfig.from_env().gpu_hour_price is None
    monkeypatch.setenv("FINETUNE_GPU_HOUR_PRICE", "2.5")
    monkeypatch.setenv("FINETUNE_COST_CURRENCY", "EUR")
    monkeypatch.setenv("FINETUNE_OOM_MAX_RETRIES", "2")
    config = OperatorConfig.from_env()
    assert (config.gpu_hour_price, config.cost_currency, config.oom_max_retries) == (2.5, "EUR", 2)
    monkeypatch.setenv("FINETUNE_GPU_HOUR_PRICE", "cheap")
    with pytest.raises(ConfigError, match="FINETUNE_GPU_HOUR_PRICE"):
        OperatorConfig.from_env()
