"""The sweep's pure core: an Optuna study rebuilt from trial records.

One implementation for the operator (records come from child FineTuneJobs) and
for `finetune sweep` (records kept in memory); they differ only in how a trial
is executed. Nothing here imports torch or talks to Kubernetes.

No hidden state: every decision is a function of the sweep spec and the trial
records. The study is rebuilt (Optuna in-memory storage) on each call:

- params come from the trial annotation, intermediate values from
  status.history (one per evaluation; the *evaluation index* is the Optuna
  step, so trials with different batch sizes compare at the same point),
  the final value from status.metrics, the state from phase + annotation;
- the sampler for trial n is seeded with a seed derived from (sampler.seed, n).
  A rebuilt sampler starts from a fresh RNG: with one fixed seed, every
  rebuild would replay the same random draw and the random/startup phase
  would suggest the same point for every trial. Deriving the seed from the
  trial number makes trial n's suggestion a pure function of
  (seed, n, records of the other trials): the same after an operator restart,
  different between trials.
- cmaes keeps an evolving optimizer; it is rebuilt by replaying the records in
  number order (generations and tells), see `_cmaes_study`.
- grid is a deterministic, seeded permutation of the grid; the next trial
  takes the first grid point no earlier trial used.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from finetune_api.conditions import condition, now_rfc3339
from finetune_api.manifest import SpecError
from finetune_api.models import (
    BestTrial,
    Distribution,
    HyperparameterSweepSpec,
    HyperparameterSweepStatus,
    Phase,
    TrialCounts,
)
from finetune_operator import optuna_internals as internals
from finetune_operator import sweep_budget
from finetune_operator.sweep_space import (
    ANNOTATION_PARAMS,
    ANNOTATION_STATE,
    LABEL_TRIAL,
    STATE_PRUNED,
    decode_params,
    trial_name,
    trial_number,
)

# Fixed choices (not in the API yet); changing them changes suggestions, so they are constants.
TPE_STARTUP_TRIALS = 5
MEDIAN_STARTUP_TRIALS = 5  # Optuna's default; 3 pruned 25 of 30 trials in the benchmark
CMAES_STARTUP_TRIALS = 1
HYPERBAND_REDUCTION_FACTOR = 3

optuna.logging.set_verbosity(optuna.logging.WARNING)


class TrialStatus(StrEnum):
    running = "Running"  # created, pending or running: it holds a parallelism slot
    succeeded = "Succeeded"
    failed = "Failed"
    pruned = "Pruned"


@dataclass(frozen=True)
class TrialRecord:
    """What the sweep knows about one trial; rebuilt from a child FineTuneJob or kept locally."""

    number: int
    params: dict[str, Any]
    status: TrialStatus = TrialStatus.running
    intermediate: tuple[float, ...] = ()
    value: float | None = None
    steps: int = 0
    message: str = ""
    name: str = ""
    seconds: float = 0.0  # wall time so far (spec.budget sums it over trials)
    gpus: int = 0  # GPUs the trial runs on (resources.gpus x nodes)
    timed: bool = False  # seconds are final (the trial ended)

    @property
    def finished(self) -> bool:
        return self.status is not TrialStatus.running


# --------------------------------------------------------------------------- records


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def record_from_child(
    obj: Mapping[str, Any], metric: str, now: str | None = None
) -> TrialRecord | None:
    """A trial record from a child FineTuneJob (a dict as the API server returns it);
    `now` prices a running trial's time (sweep_budget.trial_seconds).

    Returns None for an object that is not a trial (no number in label or name).
    """
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    raw = labels.get(LABEL_TRIAL)
    number = int(raw) if isinstance(raw, str) and raw.isdigit() else trial_number(name)
    if number is None:
        return None
    status = obj.get("status") or {}
    history = status.get("history") or []
    intermediate = tuple(
        v for h in history if isinstance(h, Mapping) and (v := _finite(h.get(metric))) is not None
    )
    progress = status.get("progress") or {}
    steps = int(progress.get("step") or 0) if isinstance(progress, Mapping) else 0
    if not steps and history and isinstance(history[-1], Mapping):
        steps = int(history[-1].get("step") or 0)
    message = str(status.get("message") or "")
    seconds, timed = sweep_budget.trial_seconds(status, now)
    base = TrialRecord(
        number=number,
        params=decode_params(annotations.get(ANNOTATION_PARAMS)),
        intermediate=intermediate,
        steps=steps,
        message=message,
        name=name,
        seconds=seconds,
        gpus=sweep_budget.trial_gpus(obj.get("spec") or {}),
        timed=timed,
    )
    return _with_outcome(
        base, status, metric, pruned=annotations.get(ANNOTATION_STATE) == STATE_PRUNED
    )


def _with_outcome(
    base: TrialRecord, status: Mapping[str, Any], metric: str, *, pruned: bool
) -> TrialRecord:
    """The record's state and value from the child's phase (or the pruned annotation)."""
    if pruned:
        last = base.intermediate[-1] if base.intermediate else None
        return replace(base, status=TrialStatus.pruned, value=last)
    metrics = status.get("metrics") or {}
    phase = status.get("phase")
    if phase == Phase.succeeded:
        value = _finite(metrics.get(metric)) if isinstance(metrics, Mapping) else None
        if value is None:
            return replace(
                base,
                status=TrialStatus.failed,
                message=f"objective metric {metric!r} is missing from status.metrics "
                f"(has: {', '.join(sorted(metrics)) or 'nothing'})",
            )
        return replace(base, status=TrialStatus.succeeded, value=value)
    if phase == Phase.failed:
        return replace(base, status=TrialStatus.failed, message=base.message or "the trial failed")
    if phase == Phase.suspended and _own_budget_spent(status):
        # Stopped at its own spec.budget with a checkpoint: it ends early, as a pruned
        # trial does (its last reported value, never the best), and frees its slot.
        last = base.intermediate[-1] if base.intermediate else None
        return replace(base, status=TrialStatus.pruned, value=last)
    return base


def _own_budget_spent(status: Mapping[str, Any]) -> bool:
    return any(
        isinstance(c, Mapping)
        and c.get("reason") == sweep_budget.BUDGET_EXHAUSTED
        and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


# --------------------------------------------------------------------------- distributions


def distributions(space: Mapping[str, Distribution]) -> dict[str, BaseDistribution]:
    """searchSpace -> Optuna distributions, keyed by the dotted path."""
    out: dict[str, BaseDistribution] = {}
    with warnings.catch_warnings():  # a range not divisible by step: Optuna trims high
        warnings.simplefilter("ignore")
        for path, d in sorted(space.items()):
            out[path] = _distribution(d)
    return out


def _distribution(d: Distribution) -> BaseDistribution:
    if d.type == "categorical":
        return CategoricalDistribution(list(d.choices or []))
    assert d.low is not None and d.high is not None
    if d.type == "int":
        return IntDistribution(int(d.low), int(d.high), log=d.log, step=int(d.step or 1))
    return FloatDistribution(d.low, d.high, log=d.log, step=d.step)


def grid_points(space: Mapping[str, Distribution]) -> list[dict[str, Any]]:
    """Every grid point, in the order the grid sampler visits them (before shuffling)."""
    axes: dict[str, list[Any]] = {}
    for path, d in sorted(space.items()):
        if d.type == "categorical":
            axes[path] = list(d.choices or [])
        elif d.type == "int":
            assert d.low is not None and d.high is not None
            if d.log:
                raise SpecError(f"grid sampler: {path} is a log int; give step or use categorical")
            axes[path] = list(range(int(d.low), int(d.high) + 1, int(d.step or 1)))
        else:
            assert d.low is not None and d.high is not None
            if d.step is None:
                raise SpecError(
                    f"grid sampler: {path} is a continuous float; give it a step "
                    "or make it categorical"
                )
            n = math.floor((d.high - d.low) / d.step + 1e-9) + 1
            axes[path] = [round(d.low + i * d.step, 12) for i in range(n)]
    names = list(axes)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes.values())]


# --------------------------------------------------------------------------- study


def derived_seed(seed: int, number: int) -> int:
    """The sampler seed for trial `number`: stable across processes and restarts."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def make_pruner(spec: HyperparameterSweepSpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    if p.type == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=p.warmup_steps
        )
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, p.warmup_steps),
            max_resource="auto",
            reduction_factor=HYPERBAND_REDUCTION_FACTOR,
        )
    return optuna.pruners.NopPruner()


def make_sampler(spec: HyperparameterSweepSpec, number: int) -> optuna.samplers.BaseSampler:
    s = spec.sampler
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=derived_seed(s.seed, number))
    if s.type == "tpe":
        return optuna.samplers.TPESampler(
            seed=derived_seed(s.seed, number),
            n_startup_trials=TPE_STARTUP_TRIALS,
            constant_liar=True,
        )
    if s.type == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise SpecError("sampler cmaes needs the 'cmaes' package (pip install cmaes)") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.samplers.CmaEsSampler(
                seed=s.seed,
                n_startup_trials=CMAES_STARTUP_TRIALS,
                independent_sampler=optuna.samplers.RandomSampler(seed=s.seed),
                warn_independent_sampling=False,
            )
    raise SpecError(f"sampler {s.type} cannot be built into a study")  # grid is not a study


def _frozen(
    r: TrialRecord,
    dists: Mapping[str, BaseDistribution],
    system_attrs: dict[str, Any] | None = None,
) -> FrozenTrial:
    params = {k: v for k, v in r.params.items() if k in dists and internals.contains(dists[k], v)}
    trial_dists = {k: dists[k] for k in params}
    inter = dict(enumerate(r.intermediate))
    state = {
        TrialStatus.running: TrialState.RUNNING,
        TrialStatus.succeeded: TrialState.COMPLETE,
        TrialStatus.failed: TrialState.FAIL,
        TrialStatus.pruned: TrialState.PRUNED,
    }[r.status]
    value = r.value if r.status is TrialStatus.succeeded else None
    if r.status is TrialStatus.succeeded and value is None:
        state = TrialState.FAIL
    return optuna.trial.create_trial(
        state=state,
        value=value,
        params=params,
        distributions=trial_dists,
        intermediate_values=inter,
        system_attrs=system_attrs,
    )


def _placeholder() -> FrozenTrial:
    return optuna.trial.create_trial(state=TrialState.FAIL)


def _sorted(records: Iterable[TrialRecord]) -> list[TrialRecord]:
    out = sorted(records, key=lambda r: r.number)
    numbers = [r.number for r in out]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"duplicate trial numbers in {numbers}")
    return out


def build_study(
    spec: HyperparameterSweepSpec,
    records: Iterable[TrialRecord],
    *,
    study_name: str,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    system_attrs: Mapping[int, dict[str, Any]] | None = None,
) -> optuna.Study:
    """An in-memory study holding the records as trials, Optuna number == trial number.

    A number no record has (a child deleted by hand) becomes a failed placeholder,
    so numbers stay aligned; placeholders carry no params and count for nothing.
    """
    dists = distributions(spec.search_space)
    attrs = system_attrs or {}
    study = optuna.create_study(
        storage=optuna.storages.InMemoryStorage(),
        sampler=sampler or optuna.samplers.RandomSampler(seed=0),
        pruner=pruner or make_pruner(spec),
        study_name=study_name,
        direction=spec.objective.direction,
    )
    expected = 0
    for r in _sorted(records):
        while expected < r.number:
            study.add_trial(_placeholder())
            expected += 1
        study.add_trial(_frozen(r, dists, attrs.get(r.number)))
        expected += 1
    return study


def _cmaes_study(
    spec: HyperparameterSweepSpec, records: Sequence[TrialRecord], study_name: str
) -> optuna.Study:
    """cmaes keeps an evolving optimizer (Optuna pickles it into trial system attrs). Rebuild
    it deterministically from the records instead: replay them in number order, giving each
    trial after the start-up phase the generation in force when it would have been asked, and
    telling the optimizer each generation as soon as `popsize` of its trials are complete. The
    result (generations + optimizer state, built here, never read from the cluster) is
    attached to the rebuilt trials exactly where CmaEsSampler looks for it."""
    sampler = make_sampler(spec, 0)
    assert isinstance(sampler, optuna.samplers.CmaEsSampler)
    recs = _sorted(records)
    plain = build_study(spec, recs, study_name=study_name)
    trials = plain.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if len(complete) < CMAES_STARTUP_TRIALS:
        return build_study(spec, recs, study_name=study_name, sampler=sampler)
    space = sampler.infer_relative_search_space(plain, complete[-1])
    if not space:
        return build_study(spec, recs, study_name=study_name, sampler=sampler)
    trans = internals.search_space_transform(space)
    optimizer = internals.cmaes_optimizer(sampler, trans, plain.direction)
    maximize = plain.direction == optuna.study.StudyDirection.MAXIMIZE
    key_gen = internals.cmaes_generation_key(sampler)
    attrs: dict[int, dict[str, Any]] = {}
    done: list[FrozenTrial] = []
    for t in trials:
        if len(done) >= CMAES_STARTUP_TRIALS and set(space) <= set(t.params):
            attrs[t.number] = {key_gen: optimizer.generation}
        if t.state != TrialState.COMPLETE:
            continue
        done.append(t)
        gen = [x for x in done if attrs.get(x.number, {}).get(key_gen) == optimizer.generation]
        if len(gen) >= optimizer.population_size:
            optimizer.tell(
                [
                    (
                        trans.transform({k: x.params[k] for k in space}),
                        -float(x.value or 0.0) if maximize else float(x.value or 0.0),
                    )
                    for x in gen[: optimizer.population_size]
                ]
            )
    last = complete[-1].number
    attrs.setdefault(last, {}).update(internals.cmaes_optimizer_attrs(sampler, optimizer))
    return build_study(spec, recs, study_name=study_name, sampler=sampler, system_attrs=attrs)


def suggest(
    spec: HyperparameterSweepSpec,
    records: Iterable[TrialRecord],
    number: int,
    *,
    study_name: str,
) -> dict[str, Any] | None:
    """The params of trial `number`, given every other trial's record.

    None when the sampler has nothing left (grid exhausted).
    """
    recs = [r for r in _sorted(records) if r.number != number]
    if spec.sampler.type == "grid":
        return _next_grid_point(spec, recs)
    dists = distributions(spec.search_space)
    if spec.sampler.type == "cmaes":
        study = _cmaes_study(spec, [r for r in recs if r.number < number], study_name)
    else:
        study = build_study(
            spec,
            [r for r in recs if r.number < number],
            study_name=study_name,
            sampler=make_sampler(spec, number),
        )
    while len(study.trials) < number:
        study.add_trial(_placeholder())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trial = study.ask(fixed_distributions=dists)
    assert trial.number == number, (trial.number, number)
    return {k: _plain(v) for k, v in trial.params.items()}


def _plain(v: Any) -> Any:
    """numpy scalars -> Python, so params are JSON and compare equal after a round trip."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def _next_grid_point(
    spec: HyperparameterSweepSpec, records: Sequence[TrialRecord]
) -> dict[str, Any] | None:
    points = grid_points(spec.search_space)
    order = np.random.RandomState(spec.sampler.seed).permutation(len(points))
    used = {json.dumps(r.params, sort_keys=True) for r in records}
    for i in order:
        p = points[int(i)]
        if json.dumps(p, sort_keys=True) not in used:
            return p
    return None


def should_prune(
    spec: HyperparameterSweepSpec,
    records: Iterable[TrialRecord],
    number: int,
    *,
    study_name: str,
) -> bool:
    """The configured pruner's verdict on running trial `number` after its latest evaluation."""
    if spec.pruner.type == "none":
        return False
    recs = _sorted(records)
    target = next((r for r in recs if r.number == number), None)
    if target is None or target.status is not TrialStatus.running or not target.intermediate:
        return False
    study = build_study(spec, recs, study_name=study_name)
    if isinstance(study.pruner, optuna.pruners.HyperbandPruner):
        study = _with_rungs(spec, recs, study, number, study_name)
    frozen = study.get_trials(deepcopy=False)[number]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bool(study.pruner.prune(study, frozen))


def _with_rungs(
    spec: HyperparameterSweepSpec,
    recs: list[TrialRecord],
    study: optuna.Study,
    number: int,
    study_name: str,
) -> optuna.Study:
    """Hyperband (successive halving) compares trials by `completed_rung_<k>` system attrs,
    written while trials report. Rebuilt trials have none, so derive them from each other
    trial's intermediate values: the value at the first step at or past each rung."""
    pruner = study.pruner
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    if not internals.hyperband_brackets(pruner, study):
        return study
    attrs: dict[int, dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False):
        if t.number == number or not t.intermediate_values:
            continue
        bracket = internals.hyperband_bracket(pruner, study, t)
        steps = sorted(t.intermediate_values)
        rung_attrs: dict[str, Any] = {}
        for rung in itertools.count():
            promotion = internals.rung_step(bracket, rung)
            at = next((s for s in steps if s >= promotion), None)
            if at is None:
                break
            rung_attrs[f"completed_rung_{rung}"] = t.intermediate_values[at]
        attrs[t.number] = rung_attrs
    return build_study(spec, recs, study_name=study_name, pruner=pruner, system_attrs=attrs)


# --------------------------------------------------------------------------- budgets and plan


@dataclass
class Plan:
    """What one reconcile does: trials to create, trials to prune, and the resulting status."""

    create: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    prune: list[int] = field(default_factory=list)
    phase: Phase = Phase.pending
    message: str = ""
    reason: str = "Pending"
    counts: TrialCounts = field(default_factory=TrialCounts)
    best: TrialRecord | None = None
    records: list[TrialRecord] = field(default_factory=list)
    spent: sweep_budget.Spent | None = None  # with spec.budget: what the trials used

    @property
    def done(self) -> bool:
        return self.phase in (Phase.succeeded, Phase.failed)


def counts(records: Iterable[TrialRecord]) -> TrialCounts:
    recs = list(records)
    by = {s: sum(1 for r in recs if r.status is s) for s in TrialStatus}
    return TrialCounts(
        total=len(recs),
        running=by[TrialStatus.running],
        succeeded=by[TrialStatus.succeeded],
        failed=by[TrialStatus.failed],
        pruned=by[TrialStatus.pruned],
    )


def best_record(
    spec: HyperparameterSweepSpec, records: Iterable[TrialRecord]
) -> TrialRecord | None:
    """The best succeeded trial (ties: the earliest); pruned trials never count as best."""
    done = [r for r in records if r.status is TrialStatus.succeeded and r.value is not None]
    if not done:
        return None
    sign = -1.0 if spec.objective.direction == "maximize" else 1.0
    return min(done, key=lambda r: (sign * (r.value or 0.0), r.number))


def plan_sweep(
    spec: HyperparameterSweepSpec,
    records: Iterable[TrialRecord],
    *,
    study_name: str,
    sweep_name: str | None = None,
    price_per_gpu_hour: float | None = None,
) -> Plan:
    """Budgets, pruning and suggestions for one reconcile; a pure function of spec and records.

    - running trials the pruner rejects are pruned (their slots free at once);
    - more than maxFailedTrials failures fail the sweep (no new trials);
    - once spec.budget is spent (sweep_budget, over the records' seconds and GPUs), no
      new trials; running ones finish, then the sweep is Suspended (BudgetExhausted);
    - new trials fill min(parallelism - running, maxTrials - total) slots, numbered
      after the highest existing number (a raised maxTrials continues a finished sweep);
    - the sweep succeeds when maxTrials trials (or the whole grid) finished and one
      succeeded.
    """
    name = sweep_name or study_name
    plan = Plan()
    recs = _prune_running(spec, _sorted(records), plan, study_name)
    failures = [r for r in recs if r.status is TrialStatus.failed]
    exhausted = False
    budget_spent: str | None = None
    if spec.budget is not None:  # decided on live times; the status shows ended trials'
        live = sweep_budget.spent(recs, price_per_gpu_hour)
        budget_spent = sweep_budget.exhausted(spec.budget, live)
        plan.spent = sweep_budget.spent(recs, price_per_gpu_hour, final=True)
    if sweep_budget.unpriced(spec.budget, price_per_gpu_hour):
        plan.phase, plan.reason, plan.message = Phase.failed, "InvalidBudget", sweep_budget.NO_PRICE
    elif len(failures) > spec.max_failed_trials:
        last = failures[-1]
        plan.phase, plan.reason = Phase.failed, "TooManyFailedTrials"
        plan.message = (
            f"{len(failures)} trials failed, more than maxFailedTrials={spec.max_failed_trials}; "
            f"last failure: {last.name or trial_name(name, last.number)}: "
            f"{last.message or 'no message'}"
        )
    elif budget_spent is None:
        recs, exhausted = _fill_slots(spec, recs, plan, study_name, name)
    plan.counts = counts(recs)
    plan.records = recs
    plan.best = best_record(spec, recs)
    if plan.phase is not Phase.failed:
        _set_phase(spec, plan, exhausted)
        plan.message = _summary(spec, plan.counts, plan.best, name, exhausted)
        if budget_spent is not None and not plan.done:
            _budget_phase(plan, budget_spent)
    return plan


def _budget_phase(plan: Plan, which: str) -> None:
    """spec.budget is spent and the sweep is not done: running trials finish, no new
    ones; with none left running the sweep is Suspended (raising the budget continues)."""
    running = plan.counts.running
    plan.reason = sweep_budget.BUDGET_EXHAUSTED
    if running:
        plan.phase = Phase.running
        then = f"no new trials; waiting for {running} running trial(s) to finish"
    else:  # every trial ended: the spent figures are final
        plan.phase = Phase.suspended
        spent = f" (spent {plan.spent.words()})" if plan.spent is not None else ""
        which, then = which + spent, "no new trials; raise spec.budget to continue"
    plan.message = f"budget exhausted: {which}; {then}; {plan.message}"


def _prune_running(
    spec: HyperparameterSweepSpec, recs: list[TrialRecord], plan: Plan, study_name: str
) -> list[TrialRecord]:
    """Running trials the pruner rejects go into plan.prune and count as pruned (at their
    last intermediate value) from here on, so their slots free at once."""
    for r in list(recs):
        if r.status is TrialStatus.running and should_prune(
            spec, recs, r.number, study_name=study_name
        ):
            plan.prune.append(r.number)
            recs = [
                replace(x, status=TrialStatus.pruned, value=x.intermediate[-1])
                if x.number == r.number
                else x
                for x in recs
            ]
    return recs


def _fill_slots(
    spec: HyperparameterSweepSpec,
    recs: list[TrialRecord],
    plan: Plan,
    study_name: str,
    name: str,
) -> tuple[list[TrialRecord], bool]:
    """New trials for min(parallelism - running, maxTrials - total) free slots, numbered
    after the highest existing number; also whether the search space is exhausted."""
    c = counts(recs)
    free = min(spec.parallelism - c.running, spec.max_trials - c.total)
    nxt = (recs[-1].number + 1) if recs else 0
    pending: list[TrialRecord] = []
    exhausted = False
    for _ in range(max(0, free)):
        params = suggest(spec, recs + pending, nxt, study_name=study_name)
        if params is None:
            exhausted = True
            break
        plan.create.append((nxt, params))
        pending.append(TrialRecord(number=nxt, params=params, name=trial_name(name, nxt)))
        nxt += 1
    if spec.sampler.type == "grid" and not exhausted:
        exhausted = suggest(spec, recs + pending, nxt, study_name=study_name) is None
    return recs + pending, exhausted


def _set_phase(spec: HyperparameterSweepSpec, plan: Plan, exhausted: bool) -> None:
    """Succeeded when maxTrials trials (or the whole grid) finished and one succeeded."""
    c = plan.counts
    finished = c.running == 0 and (c.total >= spec.max_trials or exhausted)
    if finished and plan.best is not None:
        plan.phase, plan.reason = Phase.succeeded, "Completed"
    elif finished:
        plan.phase, plan.reason = Phase.failed, "NoTrialSucceeded"
    elif c.running:
        plan.phase, plan.reason = Phase.running, "TrialsRunning"
    else:
        plan.phase, plan.reason = Phase.pending, "Pending"


def _summary(
    spec: HyperparameterSweepSpec,
    c: TrialCounts,
    best: TrialRecord | None,
    name: str,
    exhausted: bool,
) -> str:
    parts = [f"{c.total}/{spec.max_trials} trials"]
    states = [
        (c.running, "running"),
        (c.succeeded, "succeeded"),
        (c.pruned, "pruned"),
        (c.failed, "failed"),
    ]
    detail = ", ".join(f"{n} {s}" for n, s in states if n)
    if detail:
        parts.append(detail)
    if best is not None:
        parts.append(
            f"best {spec.objective.metric}={best.value:.6g} "
            f"({best.name or trial_name(name, best.number)})"
        )
    elif c.total and not c.running:
        parts.append(f"no trial reported {spec.objective.metric}")
    if exhausted:
        parts.append("grid exhausted")
    return "; ".join(parts)


# --------------------------------------------------------------------------- status


def sweep_status(
    plan: Plan,
    *,
    sweep_name: str,
    generation: int | None,
    previous: Mapping[str, Any] | None = None,
    now: str | None = None,
) -> HyperparameterSweepStatus:
    """status from a plan: phase, Ready condition (metav1.Condition), counts, bestTrial."""
    cond = condition(
        "Ready",
        plan.phase is Phase.succeeded,
        plan.reason,
        plan.message,
        generation=generation,
        now=now or now_rfc3339(),
        previous=(previous or {}).get("conditions") or [],
    )
    best = None
    if plan.best is not None and plan.best.value is not None:
        best = BestTrial(
            name=plan.best.name or trial_name(sweep_name, plan.best.number),
            value=plan.best.value,
            params=plan.best.params,
        )
    return HyperparameterSweepStatus(
        phase=plan.phase,
        conditions=[cond],
        observed_generation=generation,
        trials=plan.counts,
        best_trial=best,
        spent=plan.spent.status() if plan.spent is not None else None,
        message=plan.message,
    )


def status_patch(
    previous: Mapping[str, Any], status: HyperparameterSweepStatus
) -> list[dict[str, Any]]:
    """The merge patches that take the stored status to `status` (none when equal).

    bestTrial is replaced, not merged: a merge patch would keep params of the previous
    best that the new one lacks, so a changed bestTrial is first set to null.
    """
    desired = status.dump()
    if not desired.get("bestTrial") and previous.get("bestTrial"):
        desired["bestTrial"] = None
    changed = {k: v for k, v in desired.items() if previous.get(k) != v}
    if not changed:
        return []
    if "bestTrial" in changed and previous.get("bestTrial") and desired.get("bestTrial"):
        return [{"bestTrial": None}, changed]
    return [changed]
