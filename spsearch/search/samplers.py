"""Samplers that propose only architectures within the MAC and parameter budgets.

A configuration's GMACs and parameters are exact table look-ups (``SearchSpace.cost``), known before
anything is trained, so spending a trial on an over-budget proposal wastes it: with the independent
TPE of earlier versions, 6 of 30 trials of the default search were over budget. ``InBudgetSampler``
wraps any Optuna sampler and asks it for a *joint* proposal of all stages (``sample_relative``; the
stages not covered, e.g. during TPE's random start-up, come from its ``sample_independent``) until
one fits the budgets; after ``max_tries`` rejections it falls back to a uniformly random in-budget
architecture. Rejection keeps the base sampler's model: TPE's l(x)/g(x) ranking restricted to the
feasible set, NSGA-II's children restricted to feasible ones, random search uniform over the
in-budget set. Latency budgets still need a measurement and stay with the objective.

The default TPE is multivariate (``multivariate=True``): one Parzen estimator over the joint
per-stage choice, which models interactions between stages (Falkner et al., BOHB, 2018; Optuna's
``TPESampler`` docs), instead of one per stage.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from ..space import SearchSpace
from .budgets import random_in_budget, within_budgets

__all__ = ['InBudgetSampler']


class InBudgetSampler(BaseSampler):
    """Proposes only architectures of ``space`` within the MAC and parameter ``budgets``.

    Args:
        base: The sampler whose proposals are filtered (TPE, random, NSGA-II, ...).
        space: The search space (its ``stage<i>`` categorical parameters).
        budgets: ``{'gmacs': G, 'mparams': M}`` (others are ignored here).
        seed: Seed of the fallback draw.
        max_tries: Proposals asked of ``base`` per trial before the fallback.

    Raises:
        ValueError: ``max_tries`` < 1.
    """

    def __init__(self, base: BaseSampler, space: SearchSpace, budgets: dict[str, float], seed: int | None = None,
                 max_tries: int = 64) -> None:
        if max_tries < 1:
            raise ValueError(f'max_tries must be >= 1, got {max_tries}')
        self.base = base
        self.space = space
        self.budgets = {k: v for k, v in budgets.items() if k in ('gmacs', 'mparams')}
        self.max_tries = max_tries
        self._rng = random.Random(seed)
        self._distributions: dict[str, BaseDistribution] = {
            space.param_name(i): CategoricalDistribution([c.label for c in choices])
            for i, choices in enumerate(space.choices)}
        self.rejected = 0
        """Proposals of ``base`` rejected as over budget so far (diagnostics)."""
        self.fallbacks = 0
        """Trials that got the random in-budget fallback."""

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self._rng = random.Random()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._distributions)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        base_space = self.base.infer_relative_search_space(study, trial)
        for _ in range(self.max_tries):
            params = self.base.sample_relative(study, trial, base_space) if base_space else {}
            for name, distribution in search_space.items():
                if name not in params:
                    params[name] = self.base.sample_independent(study, trial, name, distribution)
            if within_budgets(self.space, self.space.from_optuna_params(params), self.budgets):
                return {name: params[name] for name in search_space}
            self.rejected += 1
        self.fallbacks += 1
        arch = random_in_budget(self.space, self.budgets, self._rng)
        return self.space.optuna_params(arch) if arch is not None else {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.base.after_trial(study, trial, state, values)
