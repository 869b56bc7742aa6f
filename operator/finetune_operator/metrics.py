"""Prometheus metrics the operator exports (names are an API contract, see DESIGN.md).

One registry, owned here, so the Grafana dashboard test can check every name it
uses against what the operator really registers.
"""

from __future__ import annotations

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
