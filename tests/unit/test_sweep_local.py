"""The local sweep runner with a fake trial executor (no torch): loop, pruning, outputs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from finetune_api.models import FineTuneJob, HyperparameterSweep
from finetune_cli.sweep_local import (
    BEST_PARAMS,
    HISTORY_PNG,
    MESSAGE_INDENT,
    TRIALS_CSV,
    SweepFailed,
    TrialOutcome,
    TrialReporter,
    run_sweep,
)
from finetune_cli.sweep_records import UnavoidableTrialError
from finetune_operator.sweep_study import TrialStatus

pytestmark = pytest.mark.unit


def make_sweep(**spec: Any) -> HyperparameterSweep:
    doc: dict[str, Any] = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "HyperparameterSweep",
        "metadata": {"name": "fake"},
        "spec": {
            "template": {
                "task": "classification",
                "model": {"path": "/m"},
                "dataset": {"train": {"path": "t.tsv"}},
                "hyperparameters": {"epochs": 5},
            },
            "searchSpace": {
                "hyperparameters.learningRate": {
                    "type": "float",
                    "low": 1e-5,
                    "high": 1e-1,
                    "log": True,
                },
                "hyperparameters.batchSize": {"type": "categorical", "choices": [8, 16]},
            },
            "sampler": {"type": "tpe", "seed": 3},
            "pruner": {"type": "median"},
            "maxTrials": 10,
            "parallelism": 2,
            "maxFailedTrials": 2,
            **spec,
        },
    }
    return HyperparameterSweep.model_validate(doc)


def fake_executor(
    job: FineTuneJob, spec_dir: Path | None, output_dir: Path, reporter: TrialReporter
) -> TrialOutcome:
    """A learning curve peaking at lr=1e-3; 10 steps per evaluation, 5 evaluations."""
    hp = job.spec.hyperparameters
    if hp.learning_rate > 5e-2:
        raise RuntimeError("diverged (loss is nan)")
    quality = 1.0 / (1.0 + abs(math.log10(hp.learning_rate) + 3))
    value = 0.0
    for k in range(1, 6):
        value = 0.5 + 0.4 * quality * k / 5
        if reporter.evaluation(value, steps=10 * k):
            reporter.pruned(steps=10 * k)
    output_dir.mkdir(parents=True, exist_ok=True)
    return TrialOutcome(metrics={"accuracy": value, "evalLoss": 1 - value}, steps=50)


def test_local_sweep_runs_prunes_and_writes_results(tmp_path: Path) -> None:
    sweep = make_sweep()
    con = Console(record=True, width=200)
    result = run_sweep(
        sweep, spec_dir=tmp_path, output=tmp_path / "out", executor=fake_executor, console=con
    )
    recs = result.records
    assert [r.number for r in recs] == list(range(10))
    assert result.plan.phase.value == "Succeeded"
    states = {r.status for r in recs}
    assert TrialStatus.succeeded in states and TrialStatus.pruned in states
    pruned = [r for r in recs if r.status is TrialStatus.pruned]
    assert all(r.steps < 50 for r in pruned)
    assert result.total_steps < 10 * 50
    best = result.plan.best
    assert best is not None
    assert best.value == max(
        r.value for r in recs if r.status is TrialStatus.succeeded and r.value is not None
    )
    out = tmp_path / "out"
    rows = list(csv.DictReader((out / TRIALS_CSV).open()))
    assert len(rows) == 10 and rows[0]["name"] == "fake-trial-0"
    assert "hyperparameters.learningRate" in rows[0]
    payload = json.loads((out / BEST_PARAMS).read_text())
    assert payload["trial"] == best.name and payload["params"] == best.params
    assert (out / HISTORY_PNG).stat().st_size > 1000
    text = con.export_text()
    assert "trial  state" in text and "Succeeded" in text and "best params" in text


def test_local_sweep_is_reproducible(tmp_path: Path) -> None:
    a = run_sweep(
        make_sweep(),
        spec_dir=None,
        output=tmp_path / "a",
        executor=fake_executor,
        console=Console(quiet=True),
        write_outputs=False,
    )
    b = run_sweep(
        make_sweep(),
        spec_dir=None,
        output=tmp_path / "b",
        executor=fake_executor,
        console=Console(quiet=True),
        write_outputs=False,
    )
    assert [r.params for r in a.records] == [r.params for r in b.records]
    assert [r.status for r in a.records] == [r.status for r in b.records]


def test_failed_trials_fail_the_sweep_with_a_clear_message(tmp_path: Path) -> None:
    sweep = make_sweep(
        searchSpace={"hyperparameters.learningRate": {"type": "float", "low": 0.06, "high": 0.1}},
        maxFailedTrials=1,
    )
    with pytest.raises(
        SweepFailed,
        match=r"2 trials failed, more than maxFailedTrials=1.*"
        r"diverged",
    ):
        run_sweep(
            sweep,
            spec_dir=None,
            output=tmp_path,
            executor=fake_executor,
            console=Console(quiet=True),
        )
    rows = list(csv.DictReader((tmp_path / TRIALS_CSV).open()))
    assert [r["state"] for r in rows] == ["Failed", "Failed"]
    assert json.loads((tmp_path / BEST_PARAMS).read_text())["phase"] == "Failed"


def test_worker_processes_give_a_complete_sweep(tmp_path: Path) -> None:
    sweep = make_sweep(maxTrials=6, parallelism=2)
    result = run_sweep(
        sweep,
        spec_dir=None,
        output=tmp_path,
        executor=fake_executor,
        workers=2,
        console=Console(quiet=True),
    )
    assert [r.number for r in result.records] == list(range(6))
    assert all(r.finished for r in result.records)
    assert result.plan.phase.value == "Succeeded"


def test_search_space_outside_the_template_rules_fails_the_sweep(tmp_path: Path) -> None:
    sweep = make_sweep(
        searchSpace={"hyperparameters.learningRate": {"type": "float", "low": 2.0, "high": 3.0}}
    )
    with pytest.raises(SweepFailed, match=r"invalid trial fake-trial-0: .*learningRate"):
        run_sweep(
            sweep,
            spec_dir=None,
            output=tmp_path,
            executor=fake_executor,
            console=Console(quiet=True),
        )


LONG = (
    "model /m: cannot load it for task classification: the config names an architecture this "
    "version of transformers does not know (BertForSomethingNew); upgrade transformers or "
    "point model.path at a checkpoint saved with a compatible version, then run the sweep again"
)


def long_failure(
    job: FineTuneJob, spec_dir: Path | None, output_dir: Path, reporter: TrialReporter
) -> TrialOutcome:
    raise RuntimeError(LONG)


def same_data_error(
    job: FineTuneJob, spec_dir: Path | None, output_dir: Path, reporter: TrialReporter
) -> TrialOutcome:
    raise UnavoidableTrialError("dataset.train file t.tsv: the file has no rows (it is empty)")


def test_failure_messages_are_whole_and_wrapped(tmp_path: Path) -> None:
    con = Console(record=True, width=80)
    with pytest.raises(SweepFailed):
        run_sweep(
            make_sweep(maxTrials=2, maxFailedTrials=0),
            spec_dir=None,
            output=tmp_path,
            executor=long_failure,
            console=con,
        )
    lines = con.export_text().splitlines()
    start = next(
        i for i, line in enumerate(lines) if "Failed" in line and "RuntimeError" not in line
    )
    wrapped = [line for line in lines[start + 1 :] if line.startswith(" " * MESSAGE_INDENT)]
    assert all(len(line) <= 80 for line in lines)
    joined = " ".join(line.strip() for line in wrapped)
    assert f"RuntimeError: {LONG}" in joined  # nothing cut mid-sentence
    assert LONG in next(csv.DictReader((tmp_path / TRIALS_CSV).open()))["message"]


@pytest.mark.parametrize("workers", [1, 2])
def test_an_error_every_trial_would_hit_stops_the_sweep(tmp_path: Path, workers: int) -> None:
    sweep = make_sweep(maxTrials=8, maxFailedTrials=5, parallelism=2)
    with pytest.raises(SweepFailed, match=r"every trial would hit.*has no rows"):
        run_sweep(
            sweep,
            spec_dir=None,
            output=tmp_path,
            executor=same_data_error,
            workers=workers,
            console=Console(quiet=True),
        )
    rows = list(csv.DictReader((tmp_path / TRIALS_CSV).open()))
    assert len(rows) == workers  # the first error stops it (with 2 workers, 2 had started)
    assert {r["state"] for r in rows} == {"Failed"}
    assert json.loads((tmp_path / BEST_PARAMS).read_text())["phase"] == "Failed"
