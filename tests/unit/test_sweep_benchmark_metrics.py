"""The sweep benchmark's reach metrics, for both objective directions (pure functions)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from finetune_operator.sweep_study import TrialRecord, TrialStatus

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "sweep_efficiency", ROOT / "benchmarks" / "sweep_efficiency.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "sweep_efficiency", module)
    spec.loader.exec_module(module)
    return module


def rec(
    n: int, value: float | None, steps: int, status: TrialStatus = TrialStatus.succeeded
) -> TrialRecord:
    return TrialRecord(number=n, params={}, status=status, value=value, steps=steps)


def test_reach_when_maximizing(bench: ModuleType) -> None:
    records = [
        rec(0, 0.70, 100),
        rec(1, None, 20, TrialStatus.pruned),
        rec(2, 0.80, 100),
        rec(3, 0.75, 100),
    ]
    assert bench.curve(records) == ([100, 120, 220, 320], [0.70, 0.70, 0.80, 0.80])
    assert bench.steps_to_reach(records, 0.80) == (220, True)
    assert bench.steps_to_reach(records, 0.81) == (320, False)


def test_reach_when_minimizing(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "SIGN", -1.0)
    monkeypatch.setattr(bench, "WORST", 0.69)
    records = [rec(0, 0.50, 100), rec(1, 0.45, 100), rec(2, 0.47, 100)]
    assert bench.curve(records)[1] == [0.50, 0.45, 0.45]
    assert bench.steps_to_reach(records, 0.46) == (200, True)
    assert bench.steps_to_reach(records, 0.40) == (300, False)
    # Seed-averaged: seed 0 reaches 0.45 at half of random's 400 steps, seed 1 never gets
    # below 0.47; their mean (0.46) first reaches the target 0.46 at f = 0.5.
    tpe = {0: records[:2], 1: [rec(0, 0.47, 200)]}
    assert bench.averaged_reach(tpe, {0: 400, 1: 400}, 0.46) == 0.5
    assert bench.averaged_reach(tpe, {0: 400, 1: 400}, 0.40) is None


def test_seed_without_a_finished_trial_counts_as_chance(bench: ModuleType) -> None:
    tpe = {0: [rec(0, 0.9, 100)], 1: [rec(0, None, 100, TrialStatus.failed), rec(1, 0.9, 100)]}
    # At f = 0.25 seed 1 has nothing finished (chance, 0.5): mean 0.7; at f = 0.5 both 0.9.
    assert bench.averaged_reach(tpe, {0: 400, 1: 400}, 0.8) == 0.5
