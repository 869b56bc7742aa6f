"""Pure core: what a sweep's trials have spent, and whether the sweep's spec.budget is.

Priced as a FineTuneJob's cost (usage.py): a trial's seconds are its wall time from its
start to its end (or to now while it runs); GPU-hours = the trial's GPUs (resources.gpus x
nodes) x its hours; cost = GPU-hours x the price per GPU-hour (the operator's
cost.gpuHourPrice, FINETUNE_GPU_HOUR_PRICE locally). The sweep sums them over its trials.
`maxDurationSeconds` is the summed trial seconds, so it works without GPUs too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from finetune_api.conditions import BUDGET_EXHAUSTED, parse_rfc3339
from finetune_api.models import Budget, SweepSpent

__all__ = ("BUDGET_EXHAUSTED", "Spent", "exhausted", "spent", "trial_gpus", "trial_seconds")
NO_PRICE = (
    "spec.budget.maxCost: no price per GPU-hour is configured (the chart's "
    "cost.gpuHourPrice, or FINETUNE_GPU_HOUR_PRICE for a local sweep); set one, or use "
    "maxGpuHours / maxDurationSeconds"
)


class Usage(Protocol):
    @property
    def seconds(self) -> float: ...

    @property
    def gpus(self) -> int: ...

    @property
    def timed(self) -> bool: ...


@dataclass(frozen=True)
class Spent:
    seconds: float = 0.0
    gpu_hours: float = 0.0
    cost: float | None = None

    def status(self) -> SweepSpent:
        return SweepSpent(
            duration_seconds=round(self.seconds, 3),
            gpu_hours=round(self.gpu_hours, 6),
            cost=None if self.cost is None else round(self.cost, 6),
        )

    def words(self) -> str:
        out = f"{self.seconds:.1f} s of trials, {self.gpu_hours:.4f} GPU-hours"
        return out + (f", cost {self.cost:.4f}" if self.cost is not None else "")


def spent(
    trials: Iterable[Usage], price_per_gpu_hour: float | None, *, final: bool = False
) -> Spent:
    """The trials' summed seconds, GPU-hours and (with a price) cost; `final`: only the
    trials whose time is final (ended), which does not move between two reconciles (the
    status holds it: a number that moved would patch the status on every reconcile)."""
    seconds = gpu_seconds = 0.0
    for t in trials:
        if final and not t.timed:
            continue
        seconds += max(0.0, t.seconds)
        gpu_seconds += max(0, t.gpus) * max(0.0, t.seconds)
    gpu_hours = gpu_seconds / 3600.0
    cost = None if price_per_gpu_hour is None else gpu_hours * price_per_gpu_hour
    return Spent(seconds, gpu_hours, cost)


def exhausted(budget: Budget | None, used: Spent) -> str | None:
    """Which limit the spending reached, e.g. "maxDurationSeconds 60" (None: within
    budget, or no budget)."""
    if budget is None:
        return None
    if budget.max_duration_seconds is not None and used.seconds >= budget.max_duration_seconds:
        return f"maxDurationSeconds {budget.max_duration_seconds}"
    if budget.max_gpu_hours is not None and used.gpu_hours >= budget.max_gpu_hours:
        return f"maxGpuHours {budget.max_gpu_hours:g}"
    if budget.max_cost is not None and used.cost is not None and used.cost >= budget.max_cost:
        return f"maxCost {budget.max_cost:g}"
    return None


def unpriced(budget: Budget | None, price_per_gpu_hour: float | None) -> bool:
    """maxCost without a price per GPU-hour cannot be counted: the sweep refuses it."""
    return budget is not None and budget.max_cost is not None and price_per_gpu_hour is None


def trial_seconds(status: Mapping[str, Any], now: str | None) -> tuple[float, bool]:
    """A child FineTuneJob's wall time from its status, and whether it is final:
    startTime to completionTime; one that stopped without a completionTime (suspended,
    pruned, failed) to its last condition change; one still running to now (not final).
    0 (final only once it ended) before it started."""
    start = parse_rfc3339(status.get("startTime"))
    end = parse_rfc3339(status.get("completionTime"))
    if end is None and status.get("phase") in ("Succeeded", "Failed", "Suspended"):
        end = _last_transition(status)
    if start is None:
        return 0.0, status.get("phase") in ("Succeeded", "Failed", "Suspended")
    final = end is not None
    end = end or parse_rfc3339(now)
    if end is None:
        return 0.0, False
    return max(0.0, (end - start).total_seconds()), final


def _last_transition(status: Mapping[str, Any]) -> datetime | None:
    times = [
        t
        for c in status.get("conditions") or []
        if isinstance(c, Mapping) and (t := parse_rfc3339(c.get("lastTransitionTime")))
    ]
    return max(times) if times else None


def trial_gpus(spec: Mapping[str, Any]) -> int:
    """GPUs of a child's raw spec (resources.gpus, default 1, x nodes, default 1)."""
    resources = spec.get("resources") or {}
    gpus, nodes = resources.get("gpus", 1), resources.get("nodes", 1)
    if not isinstance(gpus, int) or not isinstance(nodes, int):
        return 0
    return max(0, gpus) * max(1, nodes)
