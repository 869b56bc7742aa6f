"""Every use of Optuna's private API, in one place (tested in tests/unit/test_optuna_internals.py
against the installed Optuna; pyproject pins optuna>=4.0,<6).

The sweep core rebuilds a study from trial records on every reconcile. Two samplers and
one pruner keep state Optuna only writes while trials run in-process, so the rebuild must
recreate it the way Optuna would have:

- CmaEsSampler: the evolving optimizer (pickled into trial system attrs) and the
  generation each trial belongs to;
- HyperbandPruner: its successive-halving brackets and their rungs (`completed_rung_<k>`
  attrs);
- distributions: whether a value lies in a distribution (`_contains`), for records whose
  params may predate a changed searchSpace.

If a new Optuna release moves one of these, this module and its tests are what change.
"""

from __future__ import annotations

import pickle
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.pruners import HyperbandPruner, SuccessiveHalvingPruner
from optuna.samplers import CmaEsSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial


def contains(dist: BaseDistribution, value: Any) -> bool:
    """Whether `value` (external representation) is a point of `dist`."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


# --------------------------------------------------------------------------- CMA-ES


def search_space_transform(space: dict[str, BaseDistribution]) -> Any:
    """The [0, 1] transform CmaEsSampler applies to its search space."""
    from optuna._transform import _SearchSpaceTransform

    return _SearchSpaceTransform(space, transform_step=True, transform_0_1=True)


def cmaes_optimizer(sampler: CmaEsSampler, transform: Any, direction: StudyDirection) -> Any:
    """A fresh optimizer, as the sampler creates one for a new study."""
    return sampler._init_optimizer(transform, direction)


def cmaes_generation_key(sampler: CmaEsSampler) -> str:
    """The system attr that records a trial's CMA-ES generation."""
    return str(sampler._attr_key_generation)


def cmaes_optimizer_attrs(sampler: CmaEsSampler, optimizer: Any) -> dict[str, str]:
    """The system attrs that carry a pickled optimizer, where the sampler reads it back."""
    return dict(sampler._split_optimizer_str(pickle.dumps(optimizer).hex()))


# --------------------------------------------------------------------------- Hyperband


def hyperband_brackets(
    pruner: HyperbandPruner, study: optuna.Study
) -> list[SuccessiveHalvingPruner]:
    """The pruner's brackets (initialised from the study, as its first prune() would);
    empty while the study cannot size them yet."""
    if not pruner._pruners:
        pruner._try_initialization(study)
    return list(pruner._pruners)


def hyperband_bracket(
    pruner: HyperbandPruner, study: optuna.Study, trial: FrozenTrial
) -> SuccessiveHalvingPruner:
    """The bracket a trial belongs to (a hash of the study name and trial number)."""
    return pruner._pruners[pruner._get_bracket_id(study, trial)]


def rung_step(bracket: SuccessiveHalvingPruner, rung: int) -> float:
    """The step a trial must reach to complete rung `rung` of a bracket."""
    min_resource = bracket._min_resource
    assert min_resource is not None  # set once the bracket is initialised
    return float(
        min_resource * bracket._reduction_factor ** (bracket._min_early_stopping_rate + rung)
    )
