"""The sweep's pure core: study reconstruction, determinism, pruning, budgets, status."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from finetune_api.manifest import SpecError
from finetune_api.models import HyperparameterSweepSpec, Phase
from finetune_operator.sweep_space import ANNOTATION_PARAMS, ANNOTATION_STATE, LABEL_TRIAL
from finetune_operator.sweep_study import (
    MEDIAN_STARTUP_TRIALS,
    TrialRecord,
    TrialStatus,
    best_record,
    build_study,
    derived_seed,
    grid_points,
    make_sampler,
    plan_sweep,
    record_from_child,
    should_prune,
    suggest,
    sweep_status,
)

pytestmark = pytest.mark.unit

SPACE: dict[str, dict[str, Any]] = {
    "hyperparameters.learningRate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    "hyperparameters.batchSize": {"type": "categorical", "choices": [8, 16, 32]},
    "lora.rank": {"type": "int", "low": 4, "high": 32, "step": 4},
}


def make_spec(**over: Any) -> HyperparameterSweepSpec:
    doc: dict[str, Any] = {
        "template": {
            "task": "classification",
            "model": {"path": "/m"},
            "dataset": {"train": {"path": "t.tsv"}},
        },
        "searchSpace": SPACE,
        "maxTrials": 10,
        "parallelism": 2,
        "maxFailedTrials": 1,
    }
    doc.update(over)
    return HyperparameterSweepSpec.model_validate(doc)


def child(
    n: int,
    params: dict[str, Any],
    *,
    phase: str | None = "Running",
    history: list[float] = (),  # type: ignore[assignment]
    metrics: dict[str, float] | None = None,
    pruned: bool = False,
    message: str | None = None,
) -> dict[str, Any]:
    ann = {ANNOTATION_PARAMS: json.dumps(params)}
    if pruned:
        ann[ANNOTATION_STATE] = "pruned"
    status: dict[str, Any] = {
        "phase": phase,
        "history": [
            {"epoch": i + 1, "step": 10 * (i + 1), "accuracy": v} for i, v in enumerate(history)
        ],
        "metrics": metrics or {},
        "progress": {"step": 10 * len(history)},
    }
    if message:
        status["message"] = message
    return {
        "metadata": {"name": f"s-trial-{n}", "labels": {LABEL_TRIAL: str(n)}, "annotations": ann},
        "status": status,
    }


def finished(spec: HyperparameterSweepSpec, n: int, value: float, curve: int = 3) -> TrialRecord:
    params = suggest(spec, [], n, study_name="s")
    assert params is not None
    return TrialRecord(
        number=n,
        params=params,
        status=TrialStatus.succeeded,
        value=value,
        intermediate=tuple(value * (i + 1) / curve for i in range(curve)),
        name=f"s-trial-{n}",
    )


# --------------------------------------------------------------------------- records


def test_record_from_child_states_values_and_history() -> None:
    p = {"hyperparameters.learningRate": 1e-4}
    r = record_from_child(child(0, p, history=[0.6, 0.7]), "accuracy")
    assert r is not None
    assert (r.number, r.status, r.intermediate, r.params, r.steps) == (
        0,
        TrialStatus.running,
        (0.6, 0.7),
        p,
        20,
    )
    ok = record_from_child(
        child(1, p, phase="Succeeded", history=[0.7], metrics={"accuracy": 0.8}), "accuracy"
    )
    assert ok is not None and ok.status is TrialStatus.succeeded and ok.value == 0.8
    pr = record_from_child(
        child(2, p, phase="Suspended", history=[0.5, 0.4], pruned=True), "accuracy"
    )
    assert pr is not None and pr.status is TrialStatus.pruned and pr.value == 0.4
    bad = record_from_child(child(3, p, phase="Failed", message="OOM"), "accuracy")
    assert bad is not None and bad.status is TrialStatus.failed and bad.message == "OOM"
    pending = record_from_child(child(4, p, phase=None), "accuracy")
    assert pending is not None and pending.status is TrialStatus.running
    assert record_from_child({"metadata": {"name": "unrelated"}}, "accuracy") is None


def test_succeeded_without_objective_metric_is_a_failure() -> None:
    r = record_from_child(child(0, {}, phase="Succeeded", metrics={"evalLoss": 0.3}), "accuracy")
    assert r is not None and r.status is TrialStatus.failed
    assert "objective metric 'accuracy' is missing" in r.message and "evalLoss" in r.message


def test_study_reconstruction_maps_states_values_and_steps() -> None:
    spec = make_spec()
    recs = [
        finished(spec, 0, 0.8),
        TrialRecord(1, {"lora.rank": 8}, TrialStatus.failed, message="x"),
        TrialRecord(2, {"lora.rank": 8}, TrialStatus.pruned, intermediate=(0.3,), value=0.3),
        TrialRecord(4, {"lora.rank": 12}, TrialStatus.running, intermediate=(0.5, 0.6)),
    ]
    study = build_study(spec, recs, study_name="s")
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "PRUNED", "FAIL", "RUNNING"]
    assert trials[0].value == 0.8 and trials[0].params == recs[0].params
    assert trials[4].intermediate_values == {0: 0.5, 1: 0.6}  # step = evaluation index
    assert study.best_trial.number == 0


def test_params_outside_a_changed_space_are_dropped_not_fatal() -> None:
    spec = make_spec()
    r = TrialRecord(
        0,
        {"lora.rank": 999, "hyperparameters.batchSize": 16, "gone": 1},
        TrialStatus.succeeded,
        value=0.5,
    )
    (t,) = build_study(spec, [r], study_name="s").get_trials()
    assert t.params == {"hyperparameters.batchSize": 16}


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes"])
def test_same_seed_and_records_give_the_same_suggestion(sampler: str) -> None:
    if sampler == "cmaes":
        pytest.importorskip("cmaes")
    spec = make_spec(
        sampler={"type": sampler, "seed": 7},
        searchSpace={k: v for k, v in SPACE.items() if v["type"] != "categorical"},
    )
    recs: list[TrialRecord] = []
    for n in range(8):  # beyond TPE's startup trials, so the model is used too
        a = suggest(spec, recs, n, study_name="s")
        b = suggest(spec, list(reversed(recs)), n, study_name="s")  # record order is irrelevant
        assert a == b and a is not None
        lr = a["hyperparameters.learningRate"]
        recs.append(TrialRecord(n, a, TrialStatus.succeeded, value=-abs(lr - 1e-3), name=str(n)))
    assert suggest(spec, recs, 8, study_name="s") == suggest(spec, recs, 8, study_name="s")
    other = make_spec(
        sampler={"type": sampler, "seed": 8},
        searchSpace=spec.model_dump(by_alias=True)["searchSpace"],
    )
    assert suggest(other, [], 0, study_name="s") != suggest(spec, [], 0, study_name="s")


def test_rebuilt_tpe_does_not_repeat_its_startup_draw() -> None:
    """A rebuilt sampler starts from a fresh RNG: with one fixed seed every trial of the
    random start-up phase would get the same point. Per-trial derived seeds avoid that."""
    import optuna

    spec = make_spec(sampler={"type": "tpe", "seed": 0})
    naive = []
    for n in range(3):
        study = build_study(
            spec,
            [TrialRecord(i, {}, TrialStatus.running) for i in range(n)],
            study_name="s",
            sampler=optuna.samplers.TPESampler(seed=0),
        )
        naive.append(
            study.ask(
                fixed_distributions={"x": optuna.distributions.FloatDistribution(0, 1)}
            ).params["x"]
        )
    assert len(set(naive)) == 1  # the pitfall, demonstrated
    recs: list[TrialRecord] = []
    for n in range(TPE_N := 5):
        p = suggest(spec, recs, n, study_name="s")
        assert p is not None
        recs.append(TrialRecord(n, p, TrialStatus.running))
    assert len({json.dumps(r.params, sort_keys=True) for r in recs}) == TPE_N
    assert derived_seed(0, 1) == derived_seed(0, 1) != derived_seed(0, 2)


def test_tpe_moves_towards_good_region() -> None:
    spec = make_spec(
        sampler={"type": "tpe", "seed": 1},
        searchSpace={
            "hyperparameters.learningRate": {
                "type": "float",
                "low": 1e-5,
                "high": 1e-1,
                "log": True,
            }
        },
        maxTrials=30,
    )
    import math

    recs: list[TrialRecord] = []
    for n in range(25):
        p = suggest(spec, recs, n, study_name="s")
        assert p is not None
        v = -abs(math.log10(p["hyperparameters.learningRate"]) + 3)  # best at 1e-3
        recs.append(TrialRecord(n, p, TrialStatus.succeeded, value=v))
    late = [abs(math.log10(r.params["hyperparameters.learningRate"]) + 3) for r in recs[15:]]
    early = [abs(math.log10(r.params["hyperparameters.learningRate"]) + 3) for r in recs[:5]]
    assert sum(late) / len(late) < sum(early) / len(early)


def test_grid_visits_every_point_once_then_stops() -> None:
    space = {
        "hyperparameters.batchSize": {"type": "categorical", "choices": [8, 16]},
        "lora.rank": {"type": "int", "low": 4, "high": 12, "step": 4},
    }
    spec = make_spec(
        sampler={"type": "grid", "seed": 3}, searchSpace=space, maxTrials=20, parallelism=4
    )
    assert len(grid_points(spec.search_space)) == 6
    recs: list[TrialRecord] = []
    while (plan := plan_sweep(spec, recs, study_name="s")).create:
        recs = [
            replace(r, status=TrialStatus.succeeded, value=float(r.number)) for r in plan.records
        ]
    assert len(recs) == 6
    assert len({json.dumps(r.params, sort_keys=True) for r in recs}) == 6
    assert plan.phase is Phase.succeeded and "grid exhausted" in plan.message


def test_grid_rejects_continuous_floats() -> None:
    spec = make_spec(sampler={"type": "grid"})
    with pytest.raises(SpecError, match="continuous float"):
        suggest(spec, [], 0, study_name="s")


def test_cmaes_without_package_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "cmaes", None)
    with pytest.raises(SpecError, match="cmaes"):
        make_sampler(make_spec(sampler={"type": "cmaes"}), 0)


# --------------------------------------------------------------------------- pruning


def curve_records(spec: HyperparameterSweepSpec) -> list[TrialRecord]:
    return [
        TrialRecord(
            n,
            {},
            TrialStatus.succeeded,
            value=0.8 + n / 100,
            intermediate=(0.6, 0.7, 0.8 + n / 100),
        )
        for n in range(MEDIAN_STARTUP_TRIALS + 1)
    ]


def test_median_pruner_prunes_a_bad_curve_and_keeps_a_good_one() -> None:
    spec = make_spec(pruner={"type": "median"})
    recs = curve_records(spec)
    n = len(recs)
    bad = TrialRecord(n, {}, TrialStatus.running, intermediate=(0.5, 0.52))
    good = TrialRecord(n + 1, {}, TrialStatus.running, intermediate=(0.65, 0.75))
    assert should_prune(spec, [*recs, bad, good], n, study_name="s")
    assert not should_prune(spec, [*recs, bad, good], n + 1, study_name="s")
    none = make_spec(pruner={"type": "none"})
    assert not should_prune(none, [*recs, bad], n, study_name="s")


def test_median_pruner_waits_for_startup_trials_and_warmup() -> None:
    spec = make_spec(pruner={"type": "median"})
    few = curve_records(spec)[: MEDIAN_STARTUP_TRIALS - 1]
    bad = TrialRecord(len(few), {}, TrialStatus.running, intermediate=(0.1,))
    assert not should_prune(spec, [*few, bad], len(few), study_name="s")
    warm = make_spec(pruner={"type": "median", "warmupSteps": 2})
    recs = curve_records(spec)
    n = len(recs)
    late = TrialRecord(n, {}, TrialStatus.running, intermediate=(0.1, 0.1))
    assert not should_prune(warm, [*recs, late], n, study_name="s")
    late = replace(late, intermediate=(0.1, 0.1, 0.1))
    assert should_prune(warm, [*recs, late], n, study_name="s")


def test_hyperband_prunes_deterministically() -> None:
    """Six finished trials ran 9 evaluations from 0.5 up; a running trial that scored 0.1 at
    its 3 evaluations is pruned exactly when its bracket's first rung lies within them.
    Hyperband (reduction factor 3, max resource 9) makes 3 brackets with first rungs at
    steps 1, 3 and 9; a trial's bracket is a hash of (study name, number), so the verdicts
    are fixed: trials 6, 10 and 13 fall in the first bracket."""
    spec = make_spec(pruner={"type": "hyperband"})
    recs = [
        TrialRecord(
            n,
            {},
            TrialStatus.succeeded,
            value=0.9,
            intermediate=tuple(0.5 + 0.05 * i for i in range(9)),
        )
        for n in range(6)
    ]

    def verdict(n: int, values: tuple[float, ...]) -> bool:
        trial = TrialRecord(n, {}, TrialStatus.running, intermediate=values)
        return should_prune(spec, [*recs, trial], n, study_name="s")

    low = (0.1, 0.1, 0.1)
    verdicts = {n: verdict(n, low) for n in range(6, 14)}
    assert verdicts == {n: n in (6, 10, 13) for n in range(6, 14)}
    assert {n: verdict(n, low) for n in range(6, 14)} == verdicts  # same again
    # Trial 11's bracket has its first rung at step 3: a fourth low evaluation reaches it.
    assert verdict(11, (*low, 0.1)) is True
    assert verdict(11, (0.95,) * 4) is False  # ... and a good trial passes it


def test_plan_prunes_and_refills_the_slot() -> None:
    spec = make_spec(parallelism=1, pruner={"type": "median"})
    n = MEDIAN_STARTUP_TRIALS + 1
    recs = [*curve_records(spec), TrialRecord(n, {}, TrialStatus.running, intermediate=(0.2,))]
    plan = plan_sweep(spec, recs, study_name="s")
    assert plan.prune == [n]
    assert [k for k, _ in plan.create] == [n + 1]
    assert plan.counts.pruned == 1 and plan.counts.running == 1


# --------------------------------------------------------------------------- budgets


def test_plan_respects_parallelism_and_max_trials() -> None:
    spec = make_spec(maxTrials=3, parallelism=2)
    plan = plan_sweep(spec, [], study_name="s")
    assert [n for n, _ in plan.create] == [0, 1] and plan.phase is Phase.running
    recs = [
        replace(r, status=TrialStatus.succeeded, value=0.5) if r.number == 0 else r
        for r in plan.records
    ]
    plan = plan_sweep(spec, recs, study_name="s")
    assert [n for n, _ in plan.create] == [2]
    recs = [replace(r, status=TrialStatus.succeeded, value=0.6) for r in plan.records]
    plan = plan_sweep(spec, recs, study_name="s")
    assert plan.create == [] and plan.phase is Phase.succeeded
    assert plan.best is not None and plan.best.value == 0.6
    assert (plan.counts.total, plan.counts.succeeded) == (3, 3)


def test_raising_max_trials_continues_a_finished_sweep() -> None:
    spec = make_spec(maxTrials=2, parallelism=2)
    recs = [finished(spec, 0, 0.5), finished(spec, 1, 0.6)]
    assert plan_sweep(spec, recs, study_name="s").phase is Phase.succeeded
    more = make_spec(maxTrials=5, parallelism=2)
    plan = plan_sweep(more, recs, study_name="s")
    assert [n for n, _ in plan.create] == [2, 3] and plan.phase is Phase.running


def test_failed_trials_are_told_and_budget_fails_the_sweep() -> None:
    spec = make_spec(maxFailedTrials=1, parallelism=2)
    f0 = TrialRecord(0, {"lora.rank": 8}, TrialStatus.failed, message="CUDA OOM", name="s-trial-0")
    plan = plan_sweep(spec, [f0], study_name="s")
    assert plan.phase is Phase.running and [n for n, _ in plan.create] == [1, 2]
    f1 = TrialRecord(1, {"lora.rank": 4}, TrialStatus.failed, message="bad data", name="s-trial-1")
    plan = plan_sweep(spec, [f0, f1], study_name="s")
    assert plan.phase is Phase.failed and plan.create == []
    assert plan.reason == "TooManyFailedTrials"
    assert "2 trials failed, more than maxFailedTrials=1" in plan.message
    assert "s-trial-1: bad data" in plan.message
    study = build_study(spec, [f0, f1], study_name="s")
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "FAIL"]


def test_all_trials_failed_within_budget_is_a_failed_sweep() -> None:
    spec = make_spec(maxTrials=1, parallelism=1, maxFailedTrials=3)
    plan = plan_sweep(spec, [TrialRecord(0, {}, TrialStatus.failed)], study_name="s")
    assert plan.phase is Phase.failed and plan.reason == "NoTrialSucceeded"


def test_numbers_continue_after_the_highest_existing_trial() -> None:
    spec = make_spec(parallelism=2)
    recs = [finished(spec, 0, 0.5), finished(spec, 3, 0.6)]  # 1 and 2 deleted by hand
    plan = plan_sweep(spec, recs, study_name="s")
    assert [n for n, _ in plan.create] == [4, 5]


def test_best_record_direction_and_ties() -> None:
    spec = make_spec()
    recs = [
        TrialRecord(0, {}, TrialStatus.succeeded, value=0.5),
        TrialRecord(1, {}, TrialStatus.succeeded, value=0.7),
        TrialRecord(2, {}, TrialStatus.succeeded, value=0.7),
        TrialRecord(3, {}, TrialStatus.pruned, value=0.99),
    ]
    best = best_record(spec, recs)
    assert best is not None and best.number == 1
    low = make_spec(objective={"metric": "evalLoss", "direction": "minimize"})
    best = best_record(low, recs)
    assert best is not None and best.number == 0


# --------------------------------------------------------------------------- status


def test_status_ready_condition_and_best_trial() -> None:
    spec = make_spec(maxTrials=1, parallelism=1)
    rec = TrialRecord(0, {"lora.rank": 8}, TrialStatus.succeeded, value=0.9, name="s-trial-0")
    plan = plan_sweep(spec, [rec], study_name="ns/s", sweep_name="s")
    st = sweep_status(plan, sweep_name="s", generation=4, now="2026-01-01T00:00:00Z").dump()
    assert st["phase"] == "Succeeded" and st["observedGeneration"] == 4
    (cond,) = st["conditions"]
    assert cond == {
        "type": "Ready",
        "status": "True",
        "reason": "Completed",
        "message": plan.message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": 4,
    }
    assert st["trials"] == {"total": 1, "running": 0, "succeeded": 1, "failed": 0, "pruned": 0}
    assert st["bestTrial"] == {"name": "s-trial-0", "value": 0.9, "params": {"lora.rank": 8}}
    again = sweep_status(
        plan, sweep_name="s", generation=5, previous=st, now="2026-02-02T00:00:00Z"
    ).dump()
    assert again["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    running = plan_sweep(make_spec(), [], study_name="s")
    st2 = sweep_status(running, sweep_name="s", generation=1, previous=st).dump()
    assert st2["conditions"][0]["status"] == "False"
    assert st2["conditions"][0]["lastTransitionTime"] != "2026-01-01T00:00:00Z"


def test_cmaes_rebuilt_from_records_advances_generations() -> None:
    """CMA-ES state is rebuilt from the records alone; it must evolve, not restart."""
    import math

    pytest.importorskip("cmaes")
    from finetune_operator.sweep_study import _cmaes_study

    space = {k: v for k, v in SPACE.items() if v["type"] != "categorical"}
    spec = make_spec(sampler={"type": "cmaes", "seed": 1}, searchSpace=space, maxTrials=60)
    recs: list[TrialRecord] = []
    for n in range(31):
        p = suggest(spec, recs, n, study_name="s")
        assert p is not None
        v = -abs(math.log10(p["hyperparameters.learningRate"]) + 3) - abs(p["lora.rank"] - 20) / 10
        recs.append(TrialRecord(n, p, TrialStatus.succeeded, value=v))
    gens = [t.system_attrs.get("cma:generation") for t in _cmaes_study(spec, recs, "s").trials]
    assert gens[0] is None and max(g for g in gens if g is not None) >= 4
    early = sum(r.value or 0 for r in recs[1:11]) / 10
    late = sum(r.value or 0 for r in recs[21:31]) / 10
    assert late > early
