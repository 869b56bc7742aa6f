"""`finetune sweep FILE.yaml`: a HyperparameterSweep run on this machine, no cluster.

The same pure core as the operator (sweep_study.plan_sweep / should_prune /
suggest); only the execution of a trial differs: here a trial is
`finetune_trainer.run.run` in this process (`--workers 1`) or in worker
processes, reporting its objective at each evaluation so the shared pruning
decision can stop it. Local parallelism is min(spec.parallelism, workers).

Writes under the output folder (default ./runs/NAME):

    trials/<sweep>-trial-<n>/     each trial's artifacts (metrics.json, model, ...)
    trials.csv                    one row per trial: state, value, steps, seconds, params
    best_params.json              the best trial's name, value and params
    optimization_history.png      objective per trial and the best so far
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import json
import math
import multiprocessing
import os
import shutil
import textwrap
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console

from finetune_api.manifest import SpecError, UserError
from finetune_api.models import FineTuneJob, HyperparameterSweep, Phase
from finetune_cli.sweep_records import (
    RecordStore,
    SweepFailed,
    TrialExecutor,
    TrialOutcome,
    TrialReporter,
    UnavoidableTrialError,
)
from finetune_operator.sweep_space import trial_job, trial_name
from finetune_operator.sweep_study import (
    Plan,
    TrialRecord,
    TrialStatus,
    plan_sweep,
)

TRIALS_CSV = "trials.csv"
BEST_PARAMS = "best_params.json"
HISTORY_PNG = "optimization_history.png"
MAX_MESSAGE = 4000
MESSAGE_INDENT = 7  # a trial's failure message, kept whole (trials.csv, the table)


def trainer_executor(
    job: FineTuneJob, spec_dir: Path | None, output_dir: Path, reporter: TrialReporter
) -> TrialOutcome:
    """The default executor: the trainer's `run` (imported here, so torch loads lazily)."""
    import finetune_trainer  # noqa: F401  first: it quiets torchao's and torch's import logs
    from finetune_cli.sweep_trial import run_trial

    return run_trial(job, spec_dir, output_dir, reporter)


def execute_trial(
    executor: TrialExecutor,
    sweep: HyperparameterSweep,
    number: int,
    spec_dir: Path | None,
    trials_dir: Path,
    store: RecordStore,
) -> tuple[TrialRecord, float]:
    """Run trial `number` (its record is in the store) and return its final record."""
    start = time.perf_counter()
    rec = store.get(number)
    reporter = TrialReporter(sweep, store, number)
    metric = sweep.spec.objective.metric
    try:
        job = trial_job(sweep, number, rec.params)
        out = trials_dir / rec.name
        shutil.rmtree(out, ignore_errors=True)  # never resume a stale run of the same name
        outcome = executor(job, spec_dir, out, reporter)
    except UnavoidableTrialError as err:  # recorded, then the sweep stops (no retries)
        store.put(replace(store.get(number), status=TrialStatus.failed, message=str(err)))
        raise
    except optuna.TrialPruned as err:
        rec = store.get(number)
        final = replace(
            rec,
            status=TrialStatus.pruned,
            value=rec.intermediate[-1] if rec.intermediate else None,
            message=str(err),
        )
    except Exception as err:  # a failing trial is recorded, never fatal for the sweep
        rec = store.get(number)
        text = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
        final = replace(rec, status=TrialStatus.failed, message=text.strip()[:MAX_MESSAGE])
    else:
        rec = store.get(number)
        value = outcome.metrics.get(metric)
        steps = max(rec.steps, outcome.steps)
        if value is None or not math.isfinite(value):
            final = replace(
                rec,
                status=TrialStatus.failed,
                steps=steps,
                message=f"objective metric {metric!r} is missing from the run's metrics "
                f"(has: {', '.join(sorted(outcome.metrics)) or 'nothing'})",
            )
        else:
            final = replace(rec, status=TrialStatus.succeeded, value=float(value), steps=steps)
    store.put(final)
    return final, time.perf_counter() - start


@dataclass
class SweepResult:
    plan: Plan
    records: list[TrialRecord]
    output: Path
    seconds: dict[int, float] = field(default_factory=dict)

    @property
    def total_steps(self) -> int:
        return sum(r.steps for r in self.records)


def run_sweep(
    sweep: HyperparameterSweep,
    *,
    spec_dir: Path | None,
    output: Path | None = None,
    workers: int = 1,
    executor: TrialExecutor | None = None,
    console: Console | None = None,
    write_outputs: bool = True,
) -> SweepResult:
    """Run the sweep to the end; returns the records and final plan. Raises SweepFailed
    (after writing the outputs) when the sweep ends Failed."""
    if workers < 1:
        raise UserError("--workers must be at least 1")
    if sweep.spec.template.resources.nodes > 1:  # trials here are single processes
        raise UserError(
            f"spec.template.resources.nodes is {sweep.spec.template.resources.nodes}: the local "
            "sweep runs each trial as one process, which would change the global batch; "
            "add --set spec.template.resources.nodes=1 (on a cluster, trials run multi-node)"
        )
    con = console or Console(highlight=False, soft_wrap=True)
    name = sweep.metadata.name
    out = (output or Path("runs") / name).resolve()
    (out / "trials").mkdir(parents=True, exist_ok=True)
    # Locally, parallelism is bounded by the worker count; everything else is the spec's.
    spec = sweep.spec.model_copy(update={"parallelism": min(sweep.spec.parallelism, workers)})
    local = sweep.model_copy(update={"spec": spec})
    con.print(
        f"finetune sweep: {name}: {spec.sampler.type} sampler (seed {spec.sampler.seed}), "
        f"{spec.pruner.type} pruner, maxTrials {spec.max_trials}, "
        f"{spec.parallelism} at a time -> {out}"
    )
    loop = _SweepLoop(local, executor or trainer_executor, spec_dir, out / "trials", con)
    records = loop.serial() if spec.parallelism == 1 else loop.parallel()
    records = loop.timed(records)
    plan = plan_sweep(
        spec, records, study_name=name, sweep_name=name, price_per_gpu_hour=gpu_hour_price()
    )
    if loop.fatal is not None:
        plan = replace(plan, phase=Phase.failed, message=loop.fatal, reason="TrialError")
    result = SweepResult(plan=plan, records=records, output=out, seconds=loop.seconds)
    if write_outputs:
        write_results(local, result)
    con.print(f"finetune sweep: {plan.phase.value}: {plan.message}")
    if plan.best is not None:
        con.print(f"best params: {json.dumps(plan.best.params, sort_keys=True)}")
    if write_outputs:
        con.print(f"results: {out / TRIALS_CSV}, {out / BEST_PARAMS}, {out / HISTORY_PNG}")
    if plan.phase is Phase.failed:
        raise SweepFailed(f"sweep {name} failed: {plan.message}")
    return result


class _SweepLoop:
    """Plan, start trials, record them as they finish, until the plan creates none."""

    def __init__(
        self,
        sweep: HyperparameterSweep,
        run: TrialExecutor,
        spec_dir: Path | None,
        trials_dir: Path,
        console: Console,
    ) -> None:
        self.sweep, self.run, self.spec_dir, self.trials_dir = sweep, run, spec_dir, trials_dir
        self.name = sweep.metadata.name
        self.seconds: dict[int, float] = {}
        self.started: dict[int, float] = {}
        self.fatal: str | None = None  # an error every trial would hit: stop
        self.gpus: int | None = None  # GPUs a local trial runs on (spec.budget)
        self.table = _ProgressTable(console, sweep)
        self.table.header()

    def plan(self, store: RecordStore) -> Plan:
        return plan_sweep(
            self.sweep.spec,
            self.timed(store.records()),
            study_name=self.name,
            sweep_name=self.name,
            price_per_gpu_hour=gpu_hour_price(),
        )

    def timed(self, records: list[TrialRecord]) -> list[TrialRecord]:
        """The records with their wall time (a running trial's so far) and GPUs, which
        spec.budget sums (sweep_budget)."""
        if self.sweep.spec.budget is None:
            return records
        if self.gpus is None:
            self.gpus = local_gpus()
        at = time.perf_counter()
        return [
            replace(r, seconds=self.seconds.get(r.number, 0.0), gpus=self.gpus, timed=True)
            if r.finished
            else replace(r, seconds=at - self.started.get(r.number, at), gpus=self.gpus)
            for r in records
        ]

    def start(self, store: RecordStore, number: int, params: dict[str, Any]) -> None:
        _check_trial(self.sweep, number, params)
        store.put(TrialRecord(number, params, name=trial_name(self.name, number)))
        self.started[number] = time.perf_counter()

    def stop(self, store: RecordStore, number: int, err: UnavoidableTrialError) -> None:
        """Trial `number` failed in a way every trial would: record it, start no more."""
        rec = store.get(number)
        self.finished(store, rec, time.perf_counter() - self.started.get(number, 0.0))
        if self.fatal is None:
            self.fatal = (
                f"{rec.name} failed with an error every trial would hit (the data and the "
                f"model are the same for all), so the sweep stops: {err}"
            )

    def finished(self, store: RecordStore, rec: TrialRecord, secs: float) -> None:
        self.seconds[rec.number] = secs
        self.table.row(rec, secs, store.records())

    def serial(self) -> list[TrialRecord]:
        """One trial at a time, in this process."""
        store = RecordStore({})
        while self.fatal is None and (plan := self.plan(store)).create:
            for n, params in plan.create:
                self.start(store, n, params)
                args = (self.run, self.sweep, n, self.spec_dir, self.trials_dir, store)
                try:
                    self.finished(store, *execute_trial(*args))
                except UnavoidableTrialError as err:
                    self.stop(store, n, err)
                    break
        return store.records()

    def parallel(self) -> list[TrialRecord]:
        """Trials in spawned worker processes sharing one record store (pruning requests
        travel through it)."""
        ctx = multiprocessing.get_context("spawn")
        with (
            ctx.Manager() as manager,
            cf.ProcessPoolExecutor(self.sweep.spec.parallelism, mp_context=ctx) as pool,
        ):
            store = RecordStore(manager.dict())
            running: dict[cf.Future[tuple[TrialRecord, float]], int] = {}
            while True:
                plan = self.plan(store)
                for n in plan.prune:
                    store.request_prune(n)
                for n, params in plan.create if self.fatal is None else []:
                    self.start(store, n, params)
                    args = (self.run, self.sweep, n, self.spec_dir, self.trials_dir, store)
                    running[pool.submit(execute_trial, *args)] = n
                if not running:
                    return store.records()
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    self.collect(store, fut, running.pop(fut))

    def collect(
        self, store: RecordStore, fut: cf.Future[tuple[TrialRecord, float]], number: int
    ) -> None:
        try:
            self.finished(store, *fut.result())
        except UnavoidableTrialError as err:
            self.stop(store, number, err)
        except Exception as err:  # the worker itself died
            message = f"worker failed: {type(err).__name__}: {err}"
            rec = replace(store.get(number), status=TrialStatus.failed, message=message)
            store.put(rec)
            self.finished(store, rec, 0.0)


def gpu_hour_price() -> float | None:
    """FINETUNE_GPU_HOUR_PRICE prices a local sweep's spec.budget.maxCost (as a run's)."""
    value = os.environ.get("FINETUNE_GPU_HOUR_PRICE")
    return float(value) if value else None


def local_gpus() -> int:
    """A local trial is one process on at most one GPU: 1 with CUDA, else 0."""
    try:
        import torch
    except ImportError:
        return 0
    return 1 if torch.cuda.is_available() else 0


def _check_trial(sweep: HyperparameterSweep, number: int, params: dict[str, Any]) -> None:
    """A suggestion that makes an invalid trial spec fails the sweep, as in the operator
    (which cannot create such a child): the searchSpace bounds are wrong, not the trial."""
    try:
        trial_job(sweep, number, params)
    except SpecError as err:
        raise SweepFailed(
            f"sweep {sweep.metadata.name} failed: searchSpace gives an invalid trial "
            f"{trial_name(sweep.metadata.name, number)}: {err}"
        ) from None


class _ProgressTable:
    """One aligned row per finished trial, printed as trials finish."""

    def __init__(self, console: Console, sweep: HyperparameterSweep) -> None:
        self.con = console
        self.sweep = sweep
        self.paths = sorted(sweep.spec.search_space)

    def header(self) -> None:
        cols = ["trial", "state", self.sweep.spec.objective.metric[:10], "best", "steps", "time"]
        head = f"{cols[0]:>5}  {cols[1]:<9}  {cols[2]:>10}  {cols[3]:>10}  {cols[4]:>6}  "
        head += f"{cols[5]:>7}  params"
        self.con.print(head, style="bold")

    def row(self, rec: TrialRecord, secs: float, records: list[TrialRecord]) -> None:
        sign = 1.0 if self.sweep.spec.objective.direction == "maximize" else -1.0
        done = [
            r.value for r in records if r.status is TrialStatus.succeeded and r.value is not None
        ]
        best = max(done, key=lambda v: sign * v) if done else None
        value = f"{rec.value:.4f}" if rec.value is not None else "-"
        best_s = f"{best:.4f}" if best is not None else "-"
        params = ", ".join(
            f"{p.rsplit('.', 1)[-1]}={_short(rec.params.get(p))}" for p in self.paths
        )
        style = {
            TrialStatus.succeeded: "green",
            TrialStatus.pruned: "yellow",
            TrialStatus.failed: "red",
        }.get(rec.status)
        line = (
            f"{rec.number:>5}  {rec.status.value:<9}  {value:>10}  {best_s:>10}  "
            f"{rec.steps:>6}  {secs:>6.1f}s  {params}"
        )
        self.con.print(line, style=style)
        if rec.status is TrialStatus.failed and rec.message:  # whole, wrapped under the row
            width = max(40, self.con.width - MESSAGE_INDENT)
            for part in textwrap.wrap(rec.message, width) or [""]:
                self.con.print(" " * MESSAGE_INDENT + part, style=style)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


# --------------------------------------------------------------------------- outputs


def write_results(sweep: HyperparameterSweep, result: SweepResult) -> None:
    out = result.output
    out.mkdir(parents=True, exist_ok=True)
    paths = sorted(sweep.spec.search_space)
    with (out / TRIALS_CSV).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "number",
                "name",
                "state",
                "value",
                "steps",
                "seconds",
                *paths,
                "intermediate",
                "message",
            ]
        )
        for r in result.records:
            w.writerow(
                [
                    r.number,
                    r.name,
                    r.status.value,
                    "" if r.value is None else repr(r.value),
                    r.steps,
                    f"{result.seconds.get(r.number, 0.0):.2f}",
                    *[_csv_value(r.params.get(p)) for p in paths],
                    json.dumps(list(r.intermediate)),
                    r.message,
                ]
            )
    best = result.plan.best
    payload: dict[str, Any] = {
        "sweep": sweep.metadata.name,
        "metric": sweep.spec.objective.metric,
        "direction": sweep.spec.objective.direction,
        "phase": result.plan.phase.value,
        "trial": best.name if best else None,
        "value": best.value if best else None,
        "params": best.params if best else None,
    }
    (out / BEST_PARAMS).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    plot_history(
        result.records,
        out / HISTORY_PNG,
        metric=sweep.spec.objective.metric,
        maximize=sweep.spec.objective.direction == "maximize",
        title=f"{sweep.metadata.name}: {sweep.spec.sampler.type} + {sweep.spec.pruner.type}",
    )


def _csv_value(v: Any) -> Any:
    return "" if v is None else v


def plot_history(
    records: list[TrialRecord],
    path: Path,
    *,
    metric: str,
    maximize: bool,
    title: str = "",
) -> Path:
    """Objective per trial (pruned ones at their last report) and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    styles = {
        TrialStatus.succeeded: ("tab:blue", "o", "succeeded"),
        TrialStatus.pruned: ("tab:orange", "x", "pruned (last report)"),
    }
    for status, (color, marker, label) in styles.items():
        pts = [(r.number, r.value) for r in records if r.status is status and r.value is not None]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.scatter(xs, ys, c=color, marker=marker, label=label, zorder=3)
    failed = [r.number for r in records if r.status is TrialStatus.failed]
    if failed:
        ax.scatter([], [], c="tab:red", marker="v", label=f"failed ({len(failed)})")
    best_x, best_y, cur = [], [], None
    for r in records:
        better = cur is None or (r.value is not None and (r.value > cur) == maximize)
        if r.status is TrialStatus.succeeded and r.value is not None and better:
            cur = r.value
        if cur is not None:
            best_x.append(r.number)
            best_y.append(cur)
    if best_x:
        ax.step(best_x, best_y, where="post", c="tab:green", label="best so far")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trial numbers, never 2.5
    ax.set_ylabel(metric)
    ax.set_title(title or "optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
