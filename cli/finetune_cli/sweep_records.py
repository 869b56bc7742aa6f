"""What a sweep trial and its runner share: the trial records store, the reporter a
trial executor reports each evaluation to, and the executor's outcome.

Both `sweep_local` (the runner) and `sweep_trial` (the trainer executor) import this
module downward; neither imports the other's internals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, MutableMapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import optuna

from finetune_api.manifest import UserError
from finetune_api.models import FineTuneJob, HyperparameterSweep
from finetune_operator.sweep_study import TrialRecord, TrialStatus, should_prune


class SweepFailed(UserError):
    """The sweep ended Failed (too many failed trials, or none succeeded)."""


class UnavoidableTrialError(SweepFailed):
    """A trial error every other trial would hit as well (the data or the model, which no
    searched parameter changes): the sweep stops at the first one instead of retrying."""


@dataclass
class TrialOutcome:
    """What a trial executor returns: the run's status metrics and training steps spent."""

    metrics: dict[str, float]
    steps: int = 0


class RecordStore:
    """Trial records shared by the runner and its trials (a dict, or a Manager dict
    across worker processes), so in-trial pruning sees every other trial's progress."""

    def __init__(self, backing: MutableMapping[Any, Any]) -> None:
        self._data = backing

    def put(self, record: TrialRecord) -> None:
        d = asdict(record)
        d["status"] = record.status.value
        self._data[record.number] = d

    def get(self, number: int) -> TrialRecord:
        return _record(self._data[number])

    def records(self) -> list[TrialRecord]:
        items = list(self._data.items())
        return sorted((_record(v) for k, v in items if isinstance(k, int)), key=lambda r: r.number)

    def request_prune(self, number: int) -> None:
        self._data[f"prune-{number}"] = True

    def prune_requested(self, number: int) -> bool:
        return bool(self._data.get(f"prune-{number}"))


def _record(d: Any) -> TrialRecord:
    d = dict(d)
    d["status"] = TrialStatus(d["status"])
    d["intermediate"] = tuple(d["intermediate"])
    return TrialRecord(**d)


class TrialReporter:
    """Handed to a trial executor: report the objective at each evaluation.

    `evaluation()` records the value and returns the shared pruning verdict;
    `pruned()` ends the trial (raises optuna.TrialPruned).
    """

    def __init__(self, sweep: HyperparameterSweep, store: RecordStore, number: int) -> None:
        self.sweep = sweep
        self.store = store
        self.number = number
        self.metric = sweep.spec.objective.metric

    @property
    def study_name(self) -> str:
        return self.sweep.metadata.name

    def evaluation(self, value: float, *, steps: int = 0) -> bool:
        rec = self.store.get(self.number)
        if math.isfinite(value):
            rec = replace(rec, intermediate=(*rec.intermediate, float(value)))
        rec = replace(rec, steps=max(rec.steps, steps))
        self.store.put(rec)
        others = [r for r in self.store.records() if r.number != self.number]
        return should_prune(
            self.sweep.spec, [*others, rec], self.number, study_name=self.study_name
        )

    def prune_requested(self) -> bool:
        return self.store.prune_requested(self.number)

    def pruned(self, *, steps: int = 0) -> NoReturn:
        rec = self.store.get(self.number)
        self.store.put(replace(rec, steps=max(rec.steps, steps)))
        last = f" ({self.metric}={rec.intermediate[-1]:.4g})" if rec.intermediate else ""
        raise optuna.TrialPruned(f"pruned after evaluation {len(rec.intermediate)}{last}")


TrialExecutor = Callable[[FineTuneJob, Path | None, Path, TrialReporter], TrialOutcome]
