"""Prometheus metrics the operator exports (names are an API contract, docs/design.md).

One registry, owned here, so the Grafana dashboard test can check every name it
uses against what the operator really registers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from finetune_api.models import TrialCounts

REGISTRY = CollectorRegistry(auto_describe=True)

JOB_PHASE = Gauge(
    "finetune_job_phase",
    "1 for the FineTuneJob's current phase, 0 for the others.",
    ["namespace", "name", "phase"],
    registry=REGISTRY,
)
JOB_METRIC = Gauge(
    "finetune_job_metric",
    "Latest value of a trainer metric (accuracy, evalLoss, trainLoss, ...) for a FineTuneJob.",
    ["namespace", "name", "metric"],
    registry=REGISTRY,
)
JOB_PROGRESS = Gauge(
    "finetune_job_progress_ratio",
    "Training progress of a FineTuneJob: step / totalSteps.",
    ["namespace", "name"],
    registry=REGISTRY,
)
JOB_GPU_SECONDS = Counter(
    "finetune_job_gpu_seconds_total",
    "GPU-seconds of a FineTuneJob's trainer Jobs: GPUs x seconds each Job ran (usage.py).",
    ["namespace", "name"],
    registry=REGISTRY,
)
JOB_COST = Counter(
    "finetune_job_cost_total",
    "Cost of a FineTuneJob's GPU time at the configured price per GPU-hour.",
    ["namespace", "name", "currency"],
    registry=REGISTRY,
)
JOB_OOM_RETRIES = Gauge(
    "finetune_job_oom_retries",
    "Out-of-memory retries of a FineTuneJob (Jobs replaced at half the batch size).",
    ["namespace", "name"],
    registry=REGISTRY,
)
SWEEP_BEST = Gauge(
    "finetune_sweep_best_value",
    "Best objective value reached by a HyperparameterSweep.",
    ["namespace", "name", "metric"],
    registry=REGISTRY,
)
SWEEP_TRIALS = Gauge(
    "finetune_sweep_trials",
    "Trials of a HyperparameterSweep by state (running, succeeded, failed, pruned, total).",
    ["namespace", "name", "state"],
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "finetune_reconcile_seconds",
    "Time spent in one reconcile of a resource, by kind.",
    ["kind"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")
SWEEP_STATES = ("total", "running", "succeeded", "failed", "pruned")


def metric_names() -> set[str]:
    """Every sample name the registry can produce (histograms add _bucket/_sum/_count)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        if family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "sum", "count")}
        if family.type == "counter":  # the family is named without _total, samples with it
            names |= {f"{family.name}_total", f"{family.name}_created"}
    return names


# --------------------------------------------------------------------------- publishing


@dataclass
class Publisher:
    """Sets the gauges from statuses and removes a deleted object's series.

    It remembers which label sets it created (finetune_job_metric keys per job, the
    objective metric per sweep) so they can be removed; one per operator, created at
    start-up, rebuilt from the cluster's statuses after a restart.
    """

    job_metric_keys: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    sweep_metric: dict[tuple[str, str], str] = field(default_factory=dict)
    # Per FineTuneJob and trainer Job: the GPU-seconds already counted (counters only grow).
    gpu_counted: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    cost_currency: dict[tuple[str, str], str] = field(default_factory=dict)

    def publish_usage(
        self,
        namespace: str,
        name: str,
        job: str,
        gpu_seconds: float,
        *,
        price: float | None = None,
        currency: str = "USD",
        oom_retries: int = 0,
    ) -> None:
        """Count a trainer Job's GPU-seconds (and their cost) since the last call."""
        key = (namespace, name)
        counted = self.gpu_counted.setdefault(key, {})
        delta = gpu_seconds - counted.get(job, 0.0)
        series = JOB_GPU_SECONDS.labels(namespace, name)  # present from the first reconcile
        if delta > 0:
            counted[job] = gpu_seconds
            series.inc(delta)
            if price is not None:
                self.cost_currency[key] = currency
                JOB_COST.labels(namespace, name, currency).inc(delta / 3600.0 * price)
        JOB_OOM_RETRIES.labels(namespace, name).set(float(oom_retries))

    def publish_job(
        self,
        namespace: str,
        name: str,
        phase: str | None,
        metrics: Mapping[str, object] | None = None,
        progress: Mapping[str, object] | None = None,
    ) -> None:
        """Set a FineTuneJob's gauges from its status (phase one-hot, metrics, progress)."""
        if phase in PHASES:
            for p in PHASES:
                JOB_PHASE.labels(namespace, name, p).set(1.0 if p == phase else 0.0)
        values = {
            k: float(v)
            for k, v in (metrics or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        key = (namespace, name)
        for metric in self.job_metric_keys.get(key, set()) - values.keys():
            _remove(JOB_METRIC, namespace, name, metric)
        for metric, value in values.items():
            JOB_METRIC.labels(namespace, name, metric).set(value)
        self.job_metric_keys[key] = set(values)
        if progress:
            step, total = progress.get("step"), progress.get("totalSteps")
            if isinstance(step, int | float) and isinstance(total, int | float) and total > 0:
                JOB_PROGRESS.labels(namespace, name).set(min(1.0, float(step) / float(total)))

    def forget_job(self, namespace: str, name: str) -> None:
        """Remove every series of a deleted FineTuneJob."""
        for p in PHASES:
            _remove(JOB_PHASE, namespace, name, p)
        for metric in self.job_metric_keys.pop((namespace, name), set()):
            _remove(JOB_METRIC, namespace, name, metric)
        _remove(JOB_PROGRESS, namespace, name)
        if self.gpu_counted.pop((namespace, name), None) is not None:
            _remove(JOB_GPU_SECONDS, namespace, name)
            _remove(JOB_OOM_RETRIES, namespace, name)
        currency = self.cost_currency.pop((namespace, name), None)
        if currency is not None:
            _remove(JOB_COST, namespace, name, currency)

    def publish_sweep(
        self, namespace: str, name: str, metric: str, best: float | None, counts: TrialCounts
    ) -> None:
        """finetune_sweep_best_value and finetune_sweep_trials{state} for one sweep."""
        old = self.sweep_metric.get((namespace, name))
        if old is not None and old != metric:
            _remove(SWEEP_BEST, namespace, name, old)
        self.sweep_metric[(namespace, name)] = metric
        if best is not None:
            SWEEP_BEST.labels(namespace, name, metric).set(best)
        for state in SWEEP_STATES:
            SWEEP_TRIALS.labels(namespace, name, state).set(float(getattr(counts, state)))

    def forget_sweep(self, namespace: str, name: str) -> None:
        metric = self.sweep_metric.pop((namespace, name), None)
        if metric is not None:
            _remove(SWEEP_BEST, namespace, name, metric)
        for state in SWEEP_STATES:
            _remove(SWEEP_TRIALS, namespace, name, state)


def clear() -> None:
    """Drop every series (tests simulate a restarted process with this)."""
    for gauge in (JOB_PHASE, JOB_METRIC, JOB_PROGRESS, SWEEP_BEST, SWEEP_TRIALS):
        gauge.clear()
    for series in (JOB_GPU_SECONDS, JOB_COST, JOB_OOM_RETRIES):
        series.clear()


def _remove(gauge: Gauge | Counter, *labels: str) -> None:
    """Remove one series (absent already: nothing to do)."""
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)
