"""finetune_operator.optuna_internals against the installed Optuna: every private
attribute the sweep core relies on still means what the adapter says."""

from __future__ import annotations

import pickle

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.pruners import HyperbandPruner
from optuna.samplers import CmaEsSampler
from optuna.study import StudyDirection

from finetune_operator import optuna_internals as internals

pytestmark = pytest.mark.unit


def test_contains_checks_bounds_steps_and_choices() -> None:
    ints = IntDistribution(4, 32, step=4)
    assert internals.contains(ints, 8) and not internals.contains(ints, 10)
    assert not internals.contains(ints, 36)
    floats = FloatDistribution(1e-5, 1e-3, log=True)
    assert internals.contains(floats, 1e-4) and not internals.contains(floats, 1e-2)
    choices = CategoricalDistribution([8, 16, 32])
    assert internals.contains(choices, 16) and not internals.contains(choices, 12)
    assert not internals.contains(ints, "eight")  # not representable: False, no exception


def _study_with(n: int, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    study = optuna.create_study(sampler=sampler, direction="maximize")
    for i in range(n):
        x = (i + 1) / (n + 1)
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": x},
                distributions={"x": FloatDistribution(0.0, 1.0)},
                value=x,
            )
        )
    return study


def test_cmaes_optimizer_round_trips_through_the_attrs_the_sampler_reads() -> None:
    pytest.importorskip("cmaes")
    sampler = CmaEsSampler(seed=0, n_startup_trials=1)
    space = {"x": FloatDistribution(0.0, 1.0)}
    transform = internals.search_space_transform(space)
    assert transform.transform({"x": 0.25}).tolist() == [0.25]  # [0, 1] already
    optimizer = internals.cmaes_optimizer(sampler, transform, StudyDirection.MAXIMIZE)
    assert optimizer.generation == 0 and optimizer.population_size >= 2
    key = internals.cmaes_generation_key(sampler)
    assert key.endswith(":generation")
    attrs = internals.cmaes_optimizer_attrs(sampler, optimizer)
    assert attrs and all(k.startswith(key.rsplit(":", 1)[0]) for k in attrs)
    restored = pickle.loads(bytes.fromhex("".join(attrs[k] for k in sorted(attrs))))
    assert restored.generation == optimizer.generation
    assert restored.population_size == optimizer.population_size


def test_hyperband_brackets_and_rungs() -> None:
    pruner = HyperbandPruner(min_resource=1, max_resource=9, reduction_factor=3)
    study = _study_with(0)
    study.pruner = pruner
    brackets = internals.hyperband_brackets(pruner, study)
    assert len(brackets) == 3  # log3(9) + 1
    assert [internals.rung_step(b, 0) for b in brackets] == [1.0, 3.0, 9.0]
    assert [internals.rung_step(brackets[0], r) for r in range(3)] == [1.0, 3.0, 9.0]
    trial = study.ask()
    frozen = study.get_trials(deepcopy=False)[trial.number]
    assert internals.hyperband_bracket(pruner, study, frozen) in brackets
    # The bracket is a pure function of (study name, trial number).
    assert internals.hyperband_bracket(pruner, study, frozen) is internals.hyperband_bracket(
        pruner, study, frozen
    )


def test_hyperband_brackets_wait_for_an_auto_max_resource() -> None:
    """With max_resource="auto" the brackets are sized from a finished trial's steps."""
    pruner = HyperbandPruner(min_resource=1, max_resource="auto", reduction_factor=3)
    study = optuna.create_study(pruner=pruner)
    assert internals.hyperband_brackets(pruner, study) == []
    study.add_trial(
        optuna.trial.create_trial(
            params={},
            distributions={},
            value=0.5,
            intermediate_values={i: 0.5 for i in range(9)},
        )
    )
    assert len(internals.hyperband_brackets(pruner, study)) == 3
