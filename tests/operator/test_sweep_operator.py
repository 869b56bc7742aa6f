"""HyperparameterSweep through the real operator (kopf, in-process, as the chart's
ServiceAccount) against the real control plane.

Trials are child FineTuneJobs; the FineTuneJob handler turns them into Jobs, the Job
controller makes their pods and the node agent runs them (the stub trainer, told by the
test `kubelet` how to end). The trainer's live status (history, metrics) is patched onto
the child like the trainer's sink would.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from operator_harness import (
    FTJ,
    JOB,
    NAMESPACE,
    SMALL_SPEC,
    STUB_IMAGE,
    SWEEP,
    ApiError,
    Cluster,
    Kubelet,
    OperatorRunner,
    create_under_laxer_crd,
    sample,
)

from finetune_operator.sweep_space import ANNOTATION_PARAMS, ANNOTATION_STATE, LABEL_SWEEP
from finetune_operator.sweep_study import (
    MEDIAN_STARTUP_TRIALS,
    TrialRecord,
    plan_sweep,
    record_from_child,
)

pytestmark = pytest.mark.operator

SPACE = {
    "hyperparameters.learningRate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    "hyperparameters.batchSize": {"type": "categorical", "choices": [8, 16, 32]},
    "lora.rank": {"type": "int", "low": 4, "high": 32, "step": 4},
}


def make_sweep(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "HyperparameterSweep",
        "metadata": {"name": name, "namespace": NAMESPACE},  # uid etc. are the apiserver's
        "spec": {
            "template": SMALL_SPEC,
            "searchSpace": SPACE,
            "sampler": {"type": "tpe", "seed": 0},
            "pruner": {"type": "median"},
            "maxTrials": 4,
            "parallelism": 2,
            "maxFailedTrials": 1,
            **spec,
        },
    }


def trials(cluster: Cluster, sweep: str) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: o
        for o in cluster.objects(FTJ, NAMESPACE)
        if (o["metadata"].get("labels") or {}).get(LABEL_SWEEP) == sweep
    }


def sweep_status(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.status(SWEEP, NAMESPACE, name)


async def wait_trials(cluster: Cluster, sweep: str, n: int, timeout: float = 15) -> None:
    await cluster.wait_for(
        lambda: len(trials(cluster, sweep)) == n,
        timeout,
        f"{n} trials of {sweep} (have {sorted(trials(cluster, sweep))})",
    )


async def report(cluster: Cluster, name: str, values: list[float]) -> None:
    """What the trainer's Kubernetes sink writes at each evaluation."""
    history = [{"epoch": i + 1, "step": 10 * (i + 1), "accuracy": v} for i, v in enumerate(values)]
    body = {
        "status": {
            "history": history,
            "metrics": {"accuracy": values[-1]},
            "progress": {"step": 10 * len(values), "epoch": len(values)},
        }
    }
    await cluster.patch(FTJ, NAMESPACE, name, body, status=True)


async def finish(cluster: Cluster, kubelet: Kubelet, name: str, values: list[float]) -> None:
    job = await cluster.wait_for_object(JOB, NAMESPACE, f"{name}-train")
    await kubelet.run_pod(job)
    await report(cluster, name, values)
    await kubelet.succeed(job, metrics={"accuracy": values[-1]})
    await cluster.wait_phase(NAMESPACE, name, "Succeeded")


async def test_sweep_runs_trials_up_to_parallelism_and_completes(
    cluster: Cluster, operator: OperatorRunner, kubelet: Kubelet
) -> None:
    body = await cluster.create(SWEEP, make_sweep("hps"))
    await wait_trials(cluster, "hps", 2)
    kids = trials(cluster, "hps")
    assert sorted(kids) == ["hps-trial-0", "hps-trial-1"]
    t0 = kids["hps-trial-0"]
    meta = t0["metadata"]
    assert meta["labels"]["finetune.dev/trial"] == "0"
    assert meta["ownerReferences"][0]["uid"] == body["metadata"]["uid"]
    params = json.loads(meta["annotations"][ANNOTATION_PARAMS])
    assert t0["spec"]["hyperparameters"]["learningRate"] == params["hyperparameters.learningRate"]
    assert t0["spec"]["lora"]["rank"] == params["lora.rank"]
    await cluster.wait_for_object(JOB, NAMESPACE, "hps-trial-0-train")
    await cluster.wait_for(lambda: sweep_status(cluster, "hps").get("phase") == "Running")

    await finish(cluster, kubelet, "hps-trial-0", [0.6, 0.7])
    await wait_trials(cluster, "hps", 3)  # the freed slot is refilled, never more than 2 run
    await finish(cluster, kubelet, "hps-trial-1", [0.65, 0.8])
    await wait_trials(cluster, "hps", 4)
    await finish(cluster, kubelet, "hps-trial-2", [0.5, 0.6])
    await finish(cluster, kubelet, "hps-trial-3", [0.55, 0.75])
    st = await cluster.wait_for(
        lambda: (s := sweep_status(cluster, "hps")).get("phase") == "Succeeded" and s,
        15,
        "sweep Succeeded",
    )
    assert len(trials(cluster, "hps")) == 4
    assert st["trials"] == {"total": 4, "running": 0, "succeeded": 4, "failed": 0, "pruned": 0}
    best = st["bestTrial"]
    assert best["name"] == "hps-trial-1" and best["value"] == 0.8
    assert best["params"] == json.loads(
        trials(cluster, "hps")["hps-trial-1"]["metadata"]["annotations"][ANNOTATION_PARAMS]
    )
    (ready,) = [c for c in st["conditions"] if c["type"] == "Ready"]
    assert ready["status"] == "True" and ready["observedGeneration"] == 1
    assert st["observedGeneration"] == 1
    text = await operator.metrics()
    labels = {"namespace": NAMESPACE, "name": "hps"}
    assert sample(text, "finetune_sweep_best_value", **labels, metric="accuracy") == 0.8
    assert sample(text, "finetune_sweep_trials", **labels, state="succeeded") == 4.0

    # Deleting the sweep deletes its trials.
    await cluster.delete(SWEEP, NAMESPACE, "hps")
    await cluster.wait_for(lambda: not trials(cluster, "hps"), 15, "trials deleted")


async def test_pruning_suspends_the_trial_and_refills_the_slot(
    cluster: Cluster, operator: OperatorRunner, kubelet: Kubelet
) -> None:
    await cluster.create(
        SWEEP, make_sweep("pr", maxTrials=8, parallelism=1, sampler={"type": "random", "seed": 1})
    )
    k = MEDIAN_STARTUP_TRIALS  # the median pruner waits for this many finished trials
    for n in range(k):
        await wait_trials(cluster, "pr", n + 1)
        await finish(cluster, kubelet, f"pr-trial-{n}", [0.6, 0.7, 0.8])
    await wait_trials(cluster, "pr", k + 1)
    job = await cluster.wait_for_object(JOB, NAMESPACE, f"pr-trial-{k}-train")
    await kubelet.run_pod(job)
    await report(cluster, f"pr-trial-{k}", [0.3])  # far below the median at evaluation 0
    await cluster.wait_for(
        lambda: (
            (
                trials(cluster, "pr")
                .get(f"pr-trial-{k}", {})
                .get("metadata", {})
                .get("annotations", {})
                .get(ANNOTATION_STATE)
            )
            == "pruned"
        ),
        30,
        "trial pruned",
    )
    child = trials(cluster, "pr")[f"pr-trial-{k}"]
    assert child["spec"]["suspend"] is True
    await cluster.wait_for(
        lambda: (
            (cluster.get_object(JOB, NAMESPACE, f"pr-trial-{k}-train") or {})
            .get("spec", {})
            .get("suspend")
            is True
        ),
        15,
        "Job suspended",
    )
    await wait_trials(cluster, "pr", k + 2)  # the slot is refilled
    await cluster.wait_for(
        lambda: (sweep_status(cluster, "pr").get("trials") or {}).get("pruned") == 1, 15
    )


async def test_restart_continues_without_duplicates_with_the_same_suggestion(
    cluster: Cluster, operator: OperatorRunner, kubelet: Kubelet
) -> None:
    body = make_sweep("rs", maxTrials=5, parallelism=2)
    await cluster.create(SWEEP, body)
    await wait_trials(cluster, "rs", 2)
    job = await cluster.wait_for_object(JOB, NAMESPACE, "rs-trial-0-train")
    await kubelet.run_pod(job)
    await report(cluster, "rs-trial-0", [0.7])
    await operator.restart()  # a fresh process: nothing in memory, the children are the state
    await cluster.wait_for(
        lambda: sweep_status(cluster, "rs").get("trials", {}).get("running") == 2
    )
    assert len(trials(cluster, "rs")) == 2  # no duplicates after the restart

    await kubelet.succeed(job, metrics={"accuracy": 0.7})
    await operator.stop()  # killed right as the trial finished
    # What the core says trial 2 must be, from the children as they are now.
    from finetune_operator.handlers_sweep import parse_sweep

    sweep = parse_sweep(body)
    children = list(trials(cluster, "rs").values())
    records: list[TrialRecord] = [
        r for c in children if (r := record_from_child(c, "accuracy")) is not None
    ]
    await operator.start()
    await wait_trials(cluster, "rs", 3)
    await cluster.wait_for(lambda: sweep_status(cluster, "rs").get("trials", {}).get("total") == 3)
    kids = trials(cluster, "rs")
    assert sorted(kids) == ["rs-trial-0", "rs-trial-1", "rs-trial-2"]
    done = [record_from_child(c, "accuracy") for c in kids.values()]
    records = [r for r in done if r is not None and r.number < 2]
    expected = plan_sweep(sweep.spec, records, study_name="rs").create
    assert [n for n, _ in expected] == [2]
    got = json.loads(kids["rs-trial-2"]["metadata"]["annotations"][ANNOTATION_PARAMS])
    assert got == expected[0][1]
    await operator.restart()  # another restart with nothing to do creates nothing
    await cluster.wait_for(
        lambda: sweep_status(cluster, "rs").get("trials", {}).get("running") == 2
    )
    assert len(trials(cluster, "rs")) == 3


async def test_raising_max_trials_continues_a_finished_sweep(
    cluster: Cluster, operator: OperatorRunner, kubelet: Kubelet
) -> None:
    await cluster.create(SWEEP, make_sweep("mt", maxTrials=1, parallelism=1))
    await wait_trials(cluster, "mt", 1)
    await finish(cluster, kubelet, "mt-trial-0", [0.7])
    await cluster.wait_for(lambda: sweep_status(cluster, "mt").get("phase") == "Succeeded", 15)
    await cluster.patch(
        SWEEP,
        NAMESPACE,
        "mt",
        {"spec": {"maxTrials": 2}},  # the apiserver bumps generation
    )
    await wait_trials(cluster, "mt", 2)
    st = await cluster.wait_for(
        lambda: (s := sweep_status(cluster, "mt")).get("observedGeneration") == 2 and s, 15
    )
    assert st["phase"] == "Running" and st["trials"]["total"] == 2
    await finish(cluster, kubelet, "mt-trial-1", [0.9])
    st = await cluster.wait_for(
        lambda: (s := sweep_status(cluster, "mt")).get("phase") == "Succeeded" and s, 15
    )
    assert st["bestTrial"]["name"] == "mt-trial-1"


async def test_failed_trials_fail_the_sweep_with_a_clear_message(
    cluster: Cluster, operator: OperatorRunner, kubelet: Kubelet
) -> None:
    # backoffLimit 0: the Job controller fails the trial's Job at its first failed pod.
    template = {**SMALL_SPEC, "backoffLimit": 0}
    sweep = make_sweep("fl", maxTrials=4, parallelism=1, maxFailedTrials=0, template=template)
    await cluster.create(SWEEP, sweep)
    await wait_trials(cluster, "fl", 1)
    job = await cluster.wait_for_object(JOB, NAMESPACE, "fl-trial-0-train")
    await kubelet.run_pod(job)
    # A crash, not an OOMKill: an out-of-memory trial is first retried at half the batch
    # (tests/operator/test_operator_oom.py).
    await kubelet.fail(job, exit_code=1, message='{"message": "boom"}')
    assert kubelet.job_condition(job, "Failed")["reason"] == "BackoffLimitExceeded"
    await cluster.wait_phase(NAMESPACE, "fl-trial-0", "Failed")
    st = await cluster.wait_for(
        lambda: (s := sweep_status(cluster, "fl")).get("phase") == "Failed" and s,
        15,
        "sweep Failed",
    )
    assert "1 trials failed, more than maxFailedTrials=0" in st["message"]
    assert "fl-trial-0" in st["message"]
    (ready,) = [c for c in st["conditions"] if c["type"] == "Ready"]
    assert ready["status"] == "False" and ready["reason"] == "TooManyFailedTrials"
    assert len(trials(cluster, "fl")) == 1  # no further trials


async def test_invalid_specs_fail_the_sweep_without_trials(
    cluster: Cluster, operator: OperatorRunner
) -> None:
    space = {"hyperparameters.learningRate": {"type": "float", "low": 2.0, "high": 3.0}}
    await cluster.create(SWEEP, make_sweep("bad-space", searchSpace=space))
    bad = make_sweep("bad-spec")
    bad["spec"]["searchSpace"] = {"hyperparameters.nope": {"type": "int", "low": 1, "high": 2}}
    with pytest.raises(ApiError, match=r"422.*spec: .*searchSpace keys must be tunable"):
        await cluster.create(SWEEP, bad)  # the CRD's CEL rule refuses it
    # One stored under an older, laxer CRD still reaches a Failed status.
    await create_under_laxer_crd(cluster, SWEEP, bad)
    # A misspelt objective: no CEL rule knows the task's metrics, the operator does
    # (finetune_api.task_metrics, the rule `finetune sweep` applies too).
    misspelt = make_sweep("bad-metric")
    misspelt["spec"]["objective"] = {"metric": "acuracy", "direction": "maximize"}
    await cluster.create(SWEEP, misspelt)
    st = await cluster.wait_for(
        lambda: (s := sweep_status(cluster, "bad-space")).get("phase") == "Failed" and s, 15
    )
    assert "invalid trial" in st["message"] and "learningRate" in st["message"]
    assert st["conditions"][0]["reason"] == "InvalidSearchSpace"
    st = await cluster.wait_for(
        lambda: (s := sweep_status(cluster, "bad-spec")).get("phase") == "Failed" and s, 15
    )
    assert "hyperparameters.nope" in st["message"]
    assert st["conditions"][0]["reason"] == "InvalidSpec"
    st = await cluster.wait_for(
        lambda: (s := sweep_status(cluster, "bad-metric")).get("phase") == "Failed" and s, 15
    )
    assert "spec.objective: metric 'acuracy' is not reported" in st["message"]
    assert "did you mean 'accuracy'" in st["message"]
    assert st["conditions"][0]["reason"] == "InvalidSpec"
    assert not trials(cluster, "bad-metric")
    assert not trials(cluster, "bad-space") and not trials(cluster, "bad-spec")


async def test_a_spent_budget_stops_new_trials_then_suspends_and_a_raised_one_continues(
    cluster: Cluster, operator_factory: Any, kubelet: Kubelet
) -> None:
    """spec.budget summed over trials, priced from the children's start and completion
    times as the operator prices cost: once spent, no new trial; the running ones finish;
    then Suspended / BudgetExhausted with the spending and the best trial."""
    from finetune_operator.config import OperatorConfig

    # The CRD's CEL rule (and the model) refuse a budget without any limit.
    with pytest.raises(ApiError) as refused:
        await cluster.create(SWEEP, make_sweep("nob", budget={}))
    assert refused.value.status == 422
    assert "at least one of maxCost, maxGpuHours, maxDurationSeconds" in str(refused.value)

    await operator_factory(config=OperatorConfig(trainer_image=STUB_IMAGE, gpu_hour_price=3.6))
    budget = {"maxDurationSeconds": 3}
    await cluster.create(SWEEP, make_sweep("bud", maxTrials=6, budget=budget))
    await wait_trials(cluster, "bud", 2)
    jobs = [await cluster.wait_for_object(JOB, NAMESPACE, f"bud-trial-{n}-train") for n in (0, 1)]
    for job in jobs:
        await kubelet.run_pod(job)
    # Both trials run past the 3 s between them (the Job times have whole seconds).
    await cluster.wait_for(
        lambda: all(cluster.status(FTJ, NAMESPACE, f"bud-trial-{n}").get("startTime")
                    for n in (0, 1)), 15, "both trials started",
    )  # fmt: skip
    await asyncio.sleep(3.5)
    await report(cluster, "bud-trial-0", [0.6, 0.7])
    await kubelet.succeed(jobs[0], metrics={"accuracy": 0.7})
    await cluster.wait_phase(NAMESPACE, "bud-trial-0", "Succeeded")
    st = await cluster.wait_for(
        lambda: (
            (s := sweep_status(cluster, "bud")).get("conditions")
            and s["conditions"][0]["reason"] == "BudgetExhausted"
            and s
        ),
        15,
        "the sweep seeing its budget spent",
    )
    assert st["phase"] == "Running", st  # trial 1 still runs and may finish
    assert "budget exhausted: maxDurationSeconds 3; no new trials; waiting for 1" in st["message"]
    await asyncio.sleep(1.0)  # a reconcile would have created trial 2 by now
    assert sorted(trials(cluster, "bud")) == ["bud-trial-0", "bud-trial-1"]

    await report(cluster, "bud-trial-1", [0.8, 0.9])
    await kubelet.succeed(jobs[1], metrics={"accuracy": 0.9})
    st = await cluster.wait_for(
        lambda: (s := sweep_status(cluster, "bud")).get("phase") == "Suspended" and s, 15
    )
    (ready,) = st["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == (
        "Ready",
        "False",
        "BudgetExhausted",
    )
    assert st["bestTrial"]["name"] == "bud-trial-1" and st["bestTrial"]["value"] == 0.9
    spent = st["spent"]
    assert spent["durationSeconds"] >= 3
    # 1 GPU per trial (SMALL_SPEC), priced at 3.6 per GPU-hour: cost = seconds / 1000.
    assert spent["gpuHours"] == pytest.approx(spent["durationSeconds"] / 3600, abs=1e-6)
    assert spent["cost"] == pytest.approx(spent["durationSeconds"] / 1000, abs=1e-5)
    assert f"(spent {spent['durationSeconds']:.1f} s of trials" in st["message"]
    assert "raise spec.budget to continue" in st["message"]
    assert st["trials"] == {"total": 2, "running": 0, "succeeded": 2, "failed": 0, "pruned": 0}
    # kopf posts Events from a queue of its own, after the status patch: wait for it.
    await cluster.wait_for(
        lambda: "SweepSuspended" in [e["reason"] for e in cluster.events(NAMESPACE, "bud")],
        15,
        lambda: (
            f"a SweepSuspended Event (have {[e['reason'] for e in cluster.events(NAMESPACE, 'bud')]})"
        ),
    )

    # A raised budget continues the sweep with the next trials.
    await cluster.patch(SWEEP, NAMESPACE, "bud", {"spec": {"budget": {"maxDurationSeconds": 3600}}})
    await wait_trials(cluster, "bud", 4)
    st = await cluster.wait_for(
        lambda: (s := sweep_status(cluster, "bud")).get("phase") == "Running" and s, 15
    )
    assert st["conditions"][0]["reason"] == "TrialsRunning"
