"""Prometheus metrics the operator exports (names are an API contract, docs/design.md).

`Instruments` builds the registry and its series; the operator's one `Publisher` (in its
ReconcileState) owns one, and /metrics serves it, so no metric lives in module globals.
The Grafana dashboard test checks every name it uses against a fresh `Instruments`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from finetune_api.models import TrialCounts


class Instruments:
    """The registry and its series: one per operator process (created with its
    ReconcileState), so nothing the operator measures lives in module globals."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        job, sweep = ["namespace", "name"], ["namespace", "name"]
        self.job_phase = self._gauge(
            "finetune_job_phase",
            "1 for the FineTuneJob's current phase, 0 for the others.",
            [*job, "phase"],
        )
        self.job_metric = self._gauge(
            "finetune_job_metric",
            "Latest value of a trainer metric (accuracy, evalLoss, trainLoss, ...) for a "
            "FineTuneJob.",
            [*job, "metric"],
        )
        self.job_progress = self._gauge(
            "finetune_job_progress_ratio",
            "Training progress of a FineTuneJob: step / totalSteps.",
            job,
        )
        self.job_gpu_seconds = Counter(
            "finetune_job_gpu_seconds_total",
            "GPU-seconds of a FineTuneJob's trainer Jobs: GPUs x seconds each Job ran (usage.py).",
            job,
            registry=self.registry,
        )
        self.job_cost = Counter(
            "finetune_job_cost_total",
            "Cost of a FineTuneJob's GPU time at the configured price per GPU-hour.",
            [*job, "currency"],
            registry=self.registry,
        )
        self.job_oom_retries = self._gauge(
            "finetune_job_oom_retries",
            "Out-of-memory retries of a FineTuneJob (Jobs replaced at half the batch size).",
            job,
        )
        self.job_promoted = self._gauge(
            "finetune_job_promoted",
            "spec.promote: 1 when the FineTuneJob's model was promoted to a KServe "
            "InferenceService (Promoted=True), 0 when it was not (gate not met, no KServe).",
            job,
        )
        self.sweep_best = self._gauge(
            "finetune_sweep_best_value",
            "Best objective value reached by a HyperparameterSweep.",
            [*sweep, "metric"],
        )
        self.sweep_trials = self._gauge(
            "finetune_sweep_trials",
            "Trials of a HyperparameterSweep by state (running, succeeded, failed, pruned, total).",
            [*sweep, "state"],
        )
        self.reconcile_seconds = Histogram(
            "finetune_reconcile_seconds",
            "Time spent in one reconcile of a resource, by kind.",
            ["kind"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )

    def _gauge(self, name: str, documentation: str, labels: list[str]) -> Gauge:
        return Gauge(name, documentation, labels, registry=self.registry)


PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")
SWEEP_STATES = ("total", "running", "succeeded", "failed", "pruned")


def metric_names() -> set[str]:
    """Every sample name the registry can produce (histograms add _bucket/_sum/_count)."""
    names: set[str] = set()
    for family in Instruments().registry.collect():
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
    instruments: Instruments = field(default_factory=Instruments)

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
        m = self.instruments
        key = (namespace, name)
        counted = self.gpu_counted.setdefault(key, {})
        delta = gpu_seconds - counted.get(job, 0.0)
        series = m.job_gpu_seconds.labels(namespace, name)  # present from the first reconcile
        if delta > 0:
            counted[job] = gpu_seconds
            series.inc(delta)
            if price is not None:
                self.cost_currency[key] = currency
                m.job_cost.labels(namespace, name, currency).inc(delta / 3600.0 * price)
        m.job_oom_retries.labels(namespace, name).set(float(oom_retries))

    def publish_job(
        self,
        namespace: str,
        name: str,
        phase: str | None,
        metrics: Mapping[str, object] | None = None,
        progress: Mapping[str, object] | None = None,
    ) -> None:
        """Set a FineTuneJob's gauges from its status (phase one-hot, metrics, progress)."""
        m = self.instruments
        if phase in PHASES:
            for p in PHASES:
                m.job_phase.labels(namespace, name, p).set(1.0 if p == phase else 0.0)
        values = {
            k: float(v)
            for k, v in (metrics or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        key = (namespace, name)
        for metric in self.job_metric_keys.get(key, set()) - values.keys():
            _remove(m.job_metric, namespace, name, metric)
        for metric, value in values.items():
            m.job_metric.labels(namespace, name, metric).set(value)
        self.job_metric_keys[key] = set(values)
        if progress:
            step, total = progress.get("step"), progress.get("totalSteps")
            if isinstance(step, int | float) and isinstance(total, int | float) and total > 0:
                m.job_progress.labels(namespace, name).set(min(1.0, float(step) / float(total)))

    def publish_promotion(self, namespace: str, name: str, promoted: bool) -> None:
        self.instruments.job_promoted.labels(namespace, name).set(1.0 if promoted else 0.0)

    def forget_job(self, namespace: str, name: str) -> None:
        """Remove every series of a deleted FineTuneJob."""
        m = self.instruments
        _remove(m.job_promoted, namespace, name)
        for p in PHASES:
            _remove(m.job_phase, namespace, name, p)
        for metric in self.job_metric_keys.pop((namespace, name), set()):
            _remove(m.job_metric, namespace, name, metric)
        _remove(m.job_progress, namespace, name)
        if self.gpu_counted.pop((namespace, name), None) is not None:
            _remove(m.job_gpu_seconds, namespace, name)
            _remove(m.job_oom_retries, namespace, name)
        currency = self.cost_currency.pop((namespace, name), None)
        if currency is not None:
            _remove(m.job_cost, namespace, name, currency)

    def publish_sweep(
        self, namespace: str, name: str, metric: str, best: float | None, counts: TrialCounts
    ) -> None:
        """finetune_sweep_best_value and finetune_sweep_trials{state} for one sweep."""
        m = self.instruments
        old = self.sweep_metric.get((namespace, name))
        if old is not None and old != metric:
            _remove(m.sweep_best, namespace, name, old)
        self.sweep_metric[(namespace, name)] = metric
        if best is not None:
            m.sweep_best.labels(namespace, name, metric).set(best)
        for state in SWEEP_STATES:
            m.sweep_trials.labels(namespace, name, state).set(float(getattr(counts, state)))

    def forget_sweep(self, namespace: str, name: str) -> None:
        m = self.instruments
        metric = self.sweep_metric.pop((namespace, name), None)
        if metric is not None:
            _remove(m.sweep_best, namespace, name, metric)
        for state in SWEEP_STATES:
            _remove(m.sweep_trials, namespace, name, state)


def _remove(gauge: Gauge | Counter, *labels: str) -> None:
    """Remove one series (absent already: nothing to do)."""
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)
