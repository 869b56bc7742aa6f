"""Out-of-memory recovery: the real operator replaces an OOM'd Job by one at half the
batch and twice the accumulation (oom.py), on the real control plane: the node agent
OOM-kills the pod at its memory limit, the Job controller fails Jobs at their backoffLimit."""

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
    Cluster,
    Kubelet,
    OperatorRunner,
    make_ftj,
    sample,
)

pytestmark = pytest.mark.operator


def spec(
    *, backoff_limit: int | None = None, memory: str | None = None, **hp: Any
) -> dict[str, Any]:
    out = copy.deepcopy(SMALL_SPEC)
    out["hyperparameters"] = hp
    if backoff_limit is not None:
        out["backoffLimit"] = backoff_limit
    if memory is not None:
        out["resources"] = {**out["resources"], "cpu": "1", "memory": memory}
    return out


def trainer_hyperparameters(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    return dict(json.loads(env["FINETUNE_JOB"])["spec"]["hyperparameters"])


async def test_oomkilled_pod_gets_a_retry_job_with_half_the_batch(
    cluster: Cluster, operator: OperatorRunner, kubelet: Kubelet
) -> None:
    # 256Mi: the stub trainer's allocations reach the container's limit in a moment.
    big = spec(batchSize=16, gradientAccumulationSteps=2, memory="256Mi")
    await cluster.create(FTJ, make_ftj("big", big))
    first = await cluster.wait_for_object(JOB, NAMESPACE, "big-train")
    assert trainer_hyperparameters(first)["batchSize"] == 16
    await kubelet.run_pod(first)
    await cluster.wait_phase(NAMESPACE, "big", "Running")
    killed = await kubelet.oom_kill(first)  # host memory: the node agent kills it at 256Mi
    # The operator may delete the first Job, and its pod, before this read; the retry
    # below and the OOMKilled condition show what the operator read from the pod.
    for cs in killed["status"].get("containerStatuses") or []:
        assert cs["state"]["terminated"]["reason"] == "OOMKilled"
        assert cs["state"]["terminated"]["exitCode"] == 137

    retry = await cluster.wait_for_object(JOB, NAMESPACE, "big-r1-train")
    hp = trainer_hyperparameters(retry)
    assert (hp["batchSize"], hp["gradientAccumulationSteps"]) == (8, 4)
    spec_hash = "finetune.dev/spec-hash"  # the FineTuneJob's spec did not change
    assert (
        retry["metadata"]["annotations"][spec_hash] == (first["metadata"]["annotations"][spec_hash])
    )
    await cluster.wait_for(lambda: cluster.get_object(JOB, NAMESPACE, "big-train") is None)
    await cluster.wait_for(
        lambda: cluster.status(FTJ, NAMESPACE, "big").get("jobName") == "big-r1-train"
    )
    status = cluster.status(FTJ, NAMESPACE, "big")
    assert "retry 1 of 3" in status["message"].lower()
    recovery = cluster.condition(NAMESPACE, "big", "OOMRecovery")
    assert recovery["status"] == "True" and recovery["reason"] == "RetriedAfterOOM"
    assert "batchSize 8 x gradientAccumulationSteps 4" in recovery["message"]
    await cluster.wait_for(
        lambda: any(e["reason"] == "OOMRetry" for e in cluster.events(NAMESPACE, "big"))
    )
    event = next(e for e in cluster.events(NAMESPACE, "big") if e["reason"] == "OOMRetry")
    assert event["type"] == "Warning" and "OOMKilled" in event["message"]
    assert "batchSize 16 x gradientAccumulationSteps 2" in event["message"]

    await kubelet.run_pod(retry)
    await cluster.wait_phase(NAMESPACE, "big", "Running")
    await kubelet.succeed(retry, {"accuracy": 0.9, "batchSize": 8.0})
    await cluster.wait_phase(NAMESPACE, "big", "Succeeded")
    assert cluster.condition(NAMESPACE, "big", "OOMRecovery")["status"] == "True"
    assert cluster.count_creates(JOB) == 2
    text = await operator.metrics()
    assert sample(text, "finetune_job_oom_retries", namespace=NAMESPACE, name="big") == 1.0
    gpu_seconds = sample(text, "finetune_job_gpu_seconds_total", namespace=NAMESPACE, name="big")
    assert gpu_seconds is not None and gpu_seconds >= 0


async def test_a_reported_gpu_oom_retries_up_to_the_bound_then_fails(
    cluster: Cluster,
    operator_factory: Callable[..., Awaitable[OperatorRunner]],
    kubelet: Kubelet,
) -> None:
    from finetune_operator.config import OperatorConfig

    config = OperatorConfig(trainer_image=STUB_IMAGE, oom_max_retries=1,
                            gpu_hour_price=2.0, cost_currency="EUR")  # fmt: skip
    await operator_factory(config=config)
    # backoffLimit 0: the Job controller fails each Job at its first failed pod.
    await cluster.create(FTJ, make_ftj("gpu", spec(batchSize="auto", backoff_limit=0)))
    report = {"phase": "Failed", "message": "OutOfMemoryError: CUDA out of memory. Tried 4 GiB"}
    first = await cluster.wait_for_object(JOB, NAMESPACE, "gpu-train")
    await kubelet.run_pod(first)
    ended = await kubelet.terminate(first, exit_code=1, message=json.dumps(report))
    # The operator may delete the first Job (and its pod) before this read: then the pod's
    # last state is not to be had, and the retry below shows what the operator read.
    for cs in ended["status"].get("containerStatuses") or []:
        assert cs["state"]["terminated"]["reason"] == "Error"  # not OOMKilled: reported
    retry = await cluster.wait_for_object(JOB, NAMESPACE, "gpu-r1-train")
    hp = trainer_hyperparameters(retry)  # auto: its effective batch 16, halved
    assert (hp["batchSize"], hp["gradientAccumulationSteps"]) == (8, 2)

    await kubelet.run_pod(retry)
    await kubelet.fail(retry, exit_code=1, message=json.dumps(report))
    assert kubelet.job_condition(retry, "Failed")["reason"] == "BackoffLimitExceeded"
    status = await cluster.wait_phase(NAMESPACE, "gpu", "Failed")
    assert "CUDA out of memory" in status["message"]
    assert cluster.get_object(JOB, NAMESPACE, "gpu-r2-train") is None  # bound: 1 retry
    assert cluster.count_creates(JOB) == 2
    assert "cost" in status.get("metrics", {})
