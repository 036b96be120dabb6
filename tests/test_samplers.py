"""``InBudgetSampler``: only in-budget proposals, whatever the base sampler (Optuna sampler contract)."""
from __future__ import annotations

import optuna
import pytest

from spsearch.search.budgets import within_budgets
from spsearch.search.samplers import InBudgetSampler
from spsearch.space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope='module')
def space() -> SearchSpace:
    return SearchSpace.build('sp_resnet34')


def _bases(seed: int) -> dict[str, optuna.samplers.BaseSampler]:
    return {
        'tpe': optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, multivariate=True),
        'random': optuna.samplers.RandomSampler(seed=seed),
        'nsga2': optuna.samplers.NSGAIISampler(population_size=6, seed=seed),
    }


def _run(space: SearchSpace, base: optuna.samplers.BaseSampler, budgets: dict[str, float], n: int,
         multi: bool = False, enqueue: dict | None = None) -> tuple[optuna.Study, InBudgetSampler]:
    sampler = InBudgetSampler(base, space, budgets, seed=0)
    study = optuna.create_study(sampler=sampler, directions=['maximize', 'minimize'] if multi else ['maximize'])
    if enqueue:
        study.enqueue_trial(enqueue)

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        arch = space.suggest(trial)
        gmacs = space.cost(arch).macs / 1e9
        score = gmacs + 0.1 * sum(c.is_vanilla for c in arch)  # a made-up accuracy that likes MACs
        return (score, gmacs) if multi else score

    study.optimize(objective, n_trials=n)
    return study, sampler


@pytest.mark.parametrize('kind', ['tpe', 'random', 'nsga2'])
def test_every_proposal_is_within_the_budget(space, kind):
    budgets = {'gmacs': 1.2}
    study, sampler = _run(space, _bases(0)[kind], budgets, 24, multi=kind == 'nsga2')
    archs = [space.from_optuna_params(t.params) for t in study.trials]
    assert all(within_budgets(space, a, budgets) for a in archs)
    assert space.share_within('macs', 1.2e9) < 0.5 and sampler.rejected > 0  # the base did propose over budget


def test_a_tight_budget_falls_back_to_random_in_budget_architectures(space):
    budgets = {'gmacs': 0.7}  # a sliver of the space
    share = space.share_within('macs', 0.7e9)
    assert 0 < share < 0.02
    study, sampler = _run(space, optuna.samplers.RandomSampler(seed=1), budgets, 8)
    assert all(within_budgets(space, space.from_optuna_params(t.params), budgets) for t in study.trials)
    assert sampler.rejected > 0


def test_seeded_and_enqueued_trials_are_respected(space):
    budgets = {'gmacs': 1.2}
    paper = space.optuna_params(space.paper_arch())  # 1.459 GMACs: over budget, but enqueued trials run as given
    a, _ = _run(space, _bases(3)['tpe'], budgets, 12, enqueue=paper)
    b, _ = _run(space, _bases(3)['tpe'], budgets, 12, enqueue=paper)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert a.trials[0].params == paper


def test_tpe_improves_on_random_after_start_up(space):
    """The made-up objective rewards MACs: TPE's joint proposals after start-up use more of the budget."""
    budgets = {'gmacs': 1.2}
    tpe, _ = _run(space, optuna.samplers.TPESampler(seed=0, n_startup_trials=5, multivariate=True), budgets, 30)
    rnd, _ = _run(space, optuna.samplers.RandomSampler(seed=0), budgets, 30)
    assert sorted(t.value for t in tpe.trials)[-5:][0] >= sorted(t.value for t in rnd.trials)[-5:][0]


def test_max_tries_must_be_positive(space):
    with pytest.raises(ValueError, match='max_tries'):
        InBudgetSampler(optuna.samplers.RandomSampler(), space, {'gmacs': 1.0}, max_tries=0)
