"""Pure core: GPU time and cost of a FineTuneJob's trainer Job.

GPU-seconds = GPUs (spec.resources.gpus per pod x spec.resources.nodes) x the seconds
the Job has run (its status.startTime to its completionTime, or to now while it runs).
Cost = GPU-hours x the configured price per GPU-hour (chart value cost.gpuHourPrice).
The trainer reports its own `gpuHours` (its process's wall time); this is the Job's,
which is what a cluster bills, and it is known live, before the trainer ends.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from finetune_api.conditions import parse_rfc3339 as _parse
from finetune_api.models import FineTuneJobSpec


def gpus(spec: FineTuneJobSpec) -> int:
    return spec.resources.gpus * spec.resources.nodes


def gpu_seconds(spec: FineTuneJobSpec, job: dict[str, Any] | None, now: str) -> float:
    """GPUs x seconds the Job ran (0 without GPUs or before it started)."""
    status = (job or {}).get("status") or {}
    start = _parse(status.get("startTime"))
    end = _parse(status.get("completionTime")) or _finished_at(job) or _parse(now)
    if not gpus(spec) or start is None or end is None:
        return 0.0
    return gpus(spec) * max(0.0, (end - start).total_seconds())


def _finished_at(job: dict[str, Any] | None) -> datetime | None:
    """A failed Job has no completionTime: its Failed condition's transition time."""
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Failed", "Complete") and cond.get("status") == "True":
            return _parse(cond.get("lastTransitionTime"))
    return None


def cost(seconds: float, price_per_gpu_hour: float | None) -> float | None:
    if price_per_gpu_hour is None:
        return None
    return round(seconds / 3600.0 * price_per_gpu_hour, 6)
