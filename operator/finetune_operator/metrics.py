"""Prometheus metrics the operator exports (names are an API contract, see DESIGN.md).

One registry, owned here, so the Grafana dashboard test can check every name it
uses against what the operator really registers.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Gauge, Histogram

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
    return names


# --------------------------------------------------------------------------- job gauges

# Which finetune_job_metric label sets exist per (namespace, name), so a deleted
# job's series can be removed. Rebuilt from the cluster's statuses after a restart.
_JOB_METRIC_KEYS: dict[tuple[str, str], set[str]] = {}


def publish_job(
    namespace: str,
    name: str,
    phase: str | None,
    metrics: dict[str, object] | None = None,
    progress: dict[str, object] | None = None,
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
    old = _JOB_METRIC_KEYS.get(key, set())
    for metric in old - values.keys():
        _remove(JOB_METRIC, namespace, name, metric)
    for metric, value in values.items():
        JOB_METRIC.labels(namespace, name, metric).set(value)
    _JOB_METRIC_KEYS[key] = set(values)
    if progress:
        step, total = progress.get("step"), progress.get("totalSteps")
        if isinstance(step, int | float) and isinstance(total, int | float) and total > 0:
            JOB_PROGRESS.labels(namespace, name).set(min(1.0, float(step) / float(total)))


def forget_job(namespace: str, name: str) -> None:
    """Remove every series of a deleted FineTuneJob."""
    for p in PHASES:
        _remove(JOB_PHASE, namespace, name, p)
    for metric in _JOB_METRIC_KEYS.pop((namespace, name), set()):
        _remove(JOB_METRIC, namespace, name, metric)
    _remove(JOB_PROGRESS, namespace, name)


def clear_jobs() -> None:
    """Drop all job series (tests simulate a restarted process with this)."""
    JOB_PHASE.clear()
    JOB_METRIC.clear()
    JOB_PROGRESS.clear()
    _JOB_METRIC_KEYS.clear()


def _remove(gauge: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)
