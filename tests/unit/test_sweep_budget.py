"""A sweep's spec.budget: the arithmetic (sweep_budget), the plan (no new trials once
spent, running trials finish, then Suspended/BudgetExhausted with the best trial), the
child records' times, and the local runner with a clock-driven fake executor."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from rich.console import Console

from finetune_api.models import Budget, FineTuneJob, HyperparameterSweep, Phase
from finetune_cli.sweep_local import TrialOutcome, TrialReporter, run_sweep
from finetune_operator import sweep_budget
from finetune_operator.sweep_space import ANNOTATION_PARAMS, LABEL_TRIAL
from finetune_operator.sweep_study import (
    TrialRecord,
    TrialStatus,
    plan_sweep,
    record_from_child,
    status_patch,
    sweep_status,
)

pytestmark = pytest.mark.unit

T0 = "2026-01-01T00:00:00Z"


def at(seconds: int) -> str:
    return f"2026-01-01T00:{seconds // 60:02d}:{seconds % 60:02d}Z"


def make_sweep(budget: dict[str, Any] | None = None, **spec: Any) -> HyperparameterSweep:
    doc: dict[str, Any] = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "HyperparameterSweep",
        "metadata": {"name": "b"},
        "spec": {
            "template": {
                "task": "classification",
                "model": {"path": "/m"},
                "dataset": {"train": {"path": "t.tsv"}},
                "resources": {"gpus": 2},
            },
            "searchSpace": {
                "hyperparameters.learningRate": {"type": "float", "low": 1e-5, "high": 1e-1},
            },
            "sampler": {"type": "random", "seed": 1},
            "pruner": {"type": "none"},
            "maxTrials": 10,
            "parallelism": 2,
            **({"budget": budget} if budget else {}),
            **spec,
        },
    }
    return HyperparameterSweep.model_validate(doc)


def rec(n: int, status: TrialStatus, seconds: float, value: float | None = None) -> TrialRecord:
    return TrialRecord(
        n,
        {"hyperparameters.learningRate": 1e-3 * (n + 1)},
        status=status,
        value=value,
        name=f"b-trial-{n}",
        seconds=seconds,
        gpus=2,
        timed=status is not TrialStatus.running,
    )


# --------------------------------------------------------------------------- arithmetic


def test_spent_sums_seconds_gpu_hours_and_cost_over_trials() -> None:
    recs = [rec(0, TrialStatus.succeeded, 1800, 0.8), rec(1, TrialStatus.running, 900)]
    used = sweep_budget.spent(recs, price_per_gpu_hour=3.0)
    assert used.seconds == 2700
    assert used.gpu_hours == pytest.approx(2 * 2700 / 3600)  # 2 GPUs per trial
    assert used.cost == pytest.approx(1.5 * 3.0)
    # The status's figures: ended trials only (a running trial's time moves every second).
    final = sweep_budget.spent(recs, 3.0, final=True)
    assert (final.seconds, final.gpu_hours, final.cost) == (1800, 1.0, 3.0)
    assert sweep_budget.spent(recs, None).cost is None


def test_exhausted_names_the_first_limit_reached() -> None:
    used = sweep_budget.Spent(seconds=100, gpu_hours=0.5, cost=2.0)
    assert sweep_budget.exhausted(None, used) is None
    assert sweep_budget.exhausted(Budget(max_duration_seconds=101), used) is None
    assert (
        sweep_budget.exhausted(Budget(max_duration_seconds=100), used) == "maxDurationSeconds 100"
    )
    assert sweep_budget.exhausted(Budget(max_gpu_hours=0.5), used) == "maxGpuHours 0.5"
    assert sweep_budget.exhausted(Budget(max_gpu_hours=0.6), used) is None
    assert sweep_budget.exhausted(Budget(max_cost=2), used) == "maxCost 2"
    assert sweep_budget.exhausted(Budget(max_cost=2.5), used) is None
    # Without a price the cost is unknown: maxCost is not "reached" (the plan refuses it).
    assert sweep_budget.exhausted(Budget(max_cost=1), sweep_budget.Spent(100, 9.0)) is None
    assert sweep_budget.unpriced(Budget(max_cost=1), None)
    assert not sweep_budget.unpriced(Budget(max_cost=1), 2.0)


def test_an_empty_budget_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least one of maxCost"):
        Budget.model_validate({})
    doc = make_sweep().model_dump(by_alias=True, exclude_none=True)
    doc["spec"]["budget"] = {}
    with pytest.raises(ValidationError, match="at least one of maxCost"):
        HyperparameterSweep.model_validate(doc)


def test_trial_seconds_from_the_child_status() -> None:
    running = {"phase": "Running", "startTime": T0}
    assert sweep_budget.trial_seconds(running, at(90)) == (90.0, False)
    done = {"phase": "Succeeded", "startTime": T0, "completionTime": at(60)}
    assert sweep_budget.trial_seconds(done, at(600)) == (60.0, True)
    # Suspended (pruned, or stopped at its own budget): no completionTime; its last
    # condition change ends it.
    stopped = {
        "phase": "Suspended",
        "startTime": T0,
        "conditions": [
            {"type": "Ready", "lastTransitionTime": at(10)},
            {"type": "Suspended", "lastTransitionTime": at(45)},
        ],
    }
    assert sweep_budget.trial_seconds(stopped, at(600)) == (45.0, True)
    assert sweep_budget.trial_seconds({"phase": "Pending"}, at(5)) == (0.0, False)
    assert sweep_budget.trial_gpus({"resources": {"gpus": 4, "nodes": 2}}) == 8
    assert sweep_budget.trial_gpus({}) == 1  # the API's defaults
    assert sweep_budget.trial_gpus({"resources": {"gpus": 0}}) == 0


def child(n: int, status: dict[str, Any], gpus: int = 2) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"b-trial-{n}",
            "labels": {LABEL_TRIAL: str(n)},
            "annotations": {ANNOTATION_PARAMS: json.dumps({"hyperparameters.learningRate": 0.01})},
        },
        "spec": {"resources": {"gpus": gpus}},
        "status": status,
    }


def test_child_records_carry_their_time_and_a_trial_at_its_own_budget_ends() -> None:
    own_budget = {
        "phase": "Suspended",
        "startTime": T0,
        "history": [{"step": 10, "accuracy": 0.6}],
        "conditions": [
            {"type": "Suspended", "status": "True", "reason": "BudgetExhausted",
             "lastTransitionTime": at(30)},
        ],
    }  # fmt: skip
    r = record_from_child(child(0, own_budget), "accuracy", at(99))
    assert r is not None
    assert (r.status, r.value, r.seconds, r.gpus, r.timed) == (
        TrialStatus.pruned, 0.6, 30.0, 2, True
    )  # fmt: skip
    r = record_from_child(child(1, {"phase": "Running", "startTime": T0}), "accuracy", at(20))
    assert r is not None and (r.status, r.seconds, r.timed) == (TrialStatus.running, 20.0, False)


# --------------------------------------------------------------------------- the plan


def test_a_spent_budget_starts_no_trial_and_lets_running_ones_finish() -> None:
    sweep = make_sweep({"maxDurationSeconds": 100})
    recs = [rec(0, TrialStatus.succeeded, 70, 0.8), rec(1, TrialStatus.running, 40)]
    plan = plan_sweep(sweep.spec, recs, study_name="b")
    assert plan.create == []
    assert plan.phase is Phase.running and plan.reason == "BudgetExhausted"
    assert plan.message.startswith("budget exhausted: maxDurationSeconds 100; no new trials; ")
    assert "waiting for 1 running trial(s) to finish" in plan.message
    assert plan.spent is not None and plan.spent.seconds == 70  # ended trials only
    # The same records a second later give the same status: nothing moves between
    # reconciles while a trial runs (a moving number would patch the status every time).
    later = [recs[0], rec(1, TrialStatus.running, 41)]
    again = plan_sweep(sweep.spec, later, study_name="b")
    s1 = sweep_status(plan, sweep_name="b", generation=1, now=T0)
    s2 = sweep_status(again, sweep_name="b", generation=1, now=T0)
    assert status_patch(s1.dump(), s2) == []

    # The running trial finishes: Suspended, BudgetExhausted, the spending, the best trial.
    recs = [recs[0], rec(1, TrialStatus.succeeded, 45, 0.9)]
    plan = plan_sweep(sweep.spec, recs, study_name="b", price_per_gpu_hour=2.0)
    assert plan.create == []
    assert plan.phase is Phase.suspended and plan.reason == "BudgetExhausted"
    assert plan.best is not None and plan.best.name == "b-trial-1"
    assert "maxDurationSeconds 100 (spent 115.0 s of trials, 0.0639 GPU-hours, cost 0.1278)" in (
        plan.message
    )
    assert "raise spec.budget to continue" in plan.message
    assert "best accuracy=0.9 (b-trial-1)" in plan.message
    status = sweep_status(plan, sweep_name="b", generation=1, now=T0).dump()
    assert status["phase"] == "Suspended"
    assert status["conditions"][0]["reason"] == "BudgetExhausted"
    assert status["conditions"][0]["status"] == "False"
    assert status["bestTrial"]["name"] == "b-trial-1"
    assert status["spent"] == {"durationSeconds": 115.0, "gpuHours": 0.063889, "cost": 0.127778}

    # Raising the budget continues the sweep with the next trials.
    raised = make_sweep({"maxDurationSeconds": 1000})
    plan = plan_sweep(raised.spec, recs, study_name="b")
    assert [n for n, _ in plan.create] == [2, 3]
    assert plan.phase is Phase.running and plan.reason == "TrialsRunning"


def test_within_budget_the_sweep_runs_as_before_and_maxtrials_still_ends_it() -> None:
    sweep = make_sweep({"maxGpuHours": 1.0}, maxTrials=2)
    recs = [rec(0, TrialStatus.succeeded, 600, 0.7)]  # 2 GPUs x 600 s = 1/3 GPU-hour
    plan = plan_sweep(sweep.spec, recs, study_name="b")
    assert [n for n, _ in plan.create] == [1]
    recs = [recs[0], rec(1, TrialStatus.succeeded, 1200, 0.8)]  # 1.0 GPU-hour: spent
    plan = plan_sweep(sweep.spec, recs, study_name="b")
    # maxTrials reached as well: the sweep is complete, not suspended.
    assert plan.phase is Phase.succeeded and plan.reason == "Completed"


def test_max_cost_needs_a_price() -> None:
    sweep = make_sweep({"maxCost": 5})
    plan = plan_sweep(sweep.spec, [], study_name="b")
    assert plan.phase is Phase.failed and plan.reason == "InvalidBudget"
    assert plan.create == [] and "spec.budget.maxCost" in plan.message
    plan = plan_sweep(sweep.spec, [], study_name="b", price_per_gpu_hour=2.5)
    assert len(plan.create) == 2
    # 2 GPUs x 1800 s x 2.5/GPU-hour = 2.5 per trial; two ended trials spend the 5.
    recs = [rec(0, TrialStatus.succeeded, 1800, 0.5), rec(1, TrialStatus.failed, 1800)]
    plan = plan_sweep(sweep.spec, recs, study_name="b", price_per_gpu_hour=2.5)
    assert plan.phase is Phase.suspended and "maxCost 5 (spent" in plan.message


# --------------------------------------------------------------------------- local


def slow_executor(
    job: FineTuneJob, spec_dir: Path | None, output_dir: Path, reporter: TrialReporter
) -> TrialOutcome:
    time.sleep(0.3)
    reporter.evaluation(0.5, steps=10)
    output_dir.mkdir(parents=True, exist_ok=True)
    return TrialOutcome(metrics={"accuracy": job.spec.hyperparameters.learning_rate}, steps=10)


def test_local_sweep_stops_at_max_duration_seconds(tmp_path: Path) -> None:
    sweep = make_sweep({"maxDurationSeconds": 1}, parallelism=1)
    con = Console(record=True, width=200)
    result = run_sweep(
        sweep, spec_dir=tmp_path, output=tmp_path / "out", executor=slow_executor, console=con
    )
    # 0.3 s per trial: the 4th ends past 1 s of trials, and no 5th starts.
    assert 3 <= len(result.records) <= 5 < sweep.spec.max_trials
    assert result.plan.phase is Phase.suspended and result.plan.reason == "BudgetExhausted"
    assert result.plan.best is not None
    text = con.export_text()
    assert "finetune sweep: Suspended: budget exhausted: maxDurationSeconds 1 (spent" in text
    best = json.loads((tmp_path / "out" / "best_params.json").read_text())
    assert best["phase"] == "Suspended" and best["trial"] == result.plan.best.name
