"""Running one sweep trial in this process with the trainer (`finetune sweep`).

Imported lazily by sweep_local (it pulls in transformers and the trainer). The
trial reports its objective at every evaluation to a `TrialReporter`, which asks
the shared pruning decision (`sweep_study.should_prune`) and raises
`optuna.TrialPruned` to stop the trial; the operator makes the same decision from
the child's status.history and suspends the child instead.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from finetune_api.models import FineTuneJob
from finetune_cli.sweep_records import TrialOutcome, TrialReporter, UnavoidableTrialError

PROGRESS_SECONDS = 10.0
SHOWN = ("trainLoss", "evalLoss", "accuracy", "f1Macro", "perplexity", "bleu")


class _ObjectiveSink:
    """A report sink (finetune_trainer.report.Sink) feeding evaluations to the reporter."""

    def __init__(self, reporter: TrialReporter) -> None:
        self.reporter = reporter
        self.steps = 0
        self.prune = False

    def emit(self, event: Any, state: Any) -> None:
        self.steps = int(state.progress.get("step") or self.steps)
        if event.kind != "evaluation" or not state.history:
            return
        value = state.history[-1].get(self.reporter.metric)
        if value is not None:
            self.prune = self.reporter.evaluation(float(value), steps=self.steps)


class _PruneCallback(TrainerCallback):
    """Stops training at once when the sink's last evaluation (or the runner) says prune."""

    def __init__(self, sink: _ObjectiveSink) -> None:
        self.sink = sink

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self.sink.prune:
            self.sink.reporter.pruned(steps=state.global_step)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if self.sink.reporter.prune_requested():
            self.sink.reporter.pruned(steps=state.global_step)


class _ProgressLines:
    """A report sink printing a trial's start, evaluations and (every `interval` seconds)
    its progress, so a long trial is not silent until its row in the table."""

    def __init__(self, name: str, interval: float = PROGRESS_SECONDS) -> None:
        self.name, self.interval = name, interval
        self.last = time.monotonic()

    def emit(self, event: Any, state: Any) -> None:
        now = time.monotonic()
        if event.kind == "progress" and now - self.last < self.interval:
            return
        if event.kind not in ("start", "progress", "evaluation"):
            return
        self.last = now
        p = state.progress
        where = f"step {int(p['step'])}/{int(p['totalSteps'])}"
        shown = {k: v for k, v in event.metrics.items() if k in SHOWN}
        values = " ".join(f"{k}={v:.4g}" for k, v in shown.items())
        print(f"        {self.name}: {event.kind} {where} {values}".rstrip(), flush=True)


def unavoidable(err: Exception, reporter: TrialReporter) -> bool:
    """Whether every trial would fail with `err`: data errors always (no searched path
    changes the data); model errors unless the search picks how the model is pruned."""
    from finetune_trainer.errors import DataError, ModelError

    if isinstance(err, DataError):
        return True
    shapes_model = any(p.startswith("pruning.") for p in reporter.sweep.spec.search_space)
    return isinstance(err, ModelError) and not shapes_model


def run_trial(
    job: FineTuneJob, spec_dir: Path | None, output_dir: Path, reporter: TrialReporter
) -> TrialOutcome:
    """The default trial executor: finetune_trainer.run.run with the pruning sink + callback."""
    from finetune_trainer.run import run

    sink = _ObjectiveSink(reporter)
    try:
        metrics = run(
            job,
            spec_dir=spec_dir,
            output_dir=output_dir,
            sinks=[sink, _ProgressLines(job.metadata.name)],
            callbacks=[_PruneCallback(sink)],
        )
    except Exception as err:
        if unavoidable(err, reporter):
            raise UnavoidableTrialError(str(err)) from None
        raise
    return TrialOutcome(metrics=metrics, steps=sink.steps)
