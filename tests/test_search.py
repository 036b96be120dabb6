"""The search, in process: the space's costs and validity rules, budgets, a tiny real study, reports,
and one-line errors (exit 2) for bad input that leave an existing study untouched."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

import spsearch.search.processes as processes
from spsearch.cli import run_cli
from spsearch.errors import ConfigError
from spsearch.search import SearchConfig, search
from spsearch.search import cli as search_cli
from spsearch.search.budgets import Costs, check_space_budgets, constraints, latency_bounds, latency_protocol
from spsearch.search.reports import pareto_front
from spsearch.search.samplers import InBudgetSampler
from spsearch.search.score import PROXY_SCORES
from spsearch.space import SearchSpace, StageChoice

from helpers import ROOT, sp_models

# a tiny proxy: CIFAR ResNet-20 (costs at 32x32 span 0.010-0.047 GMACs), synthetic data, 16px, one epoch
TINY = dict(model='sp_resnet20', dataset='synthetic', train_samples=64, val_samples=64, proxy_epochs=1,
            batch_size=32, proxy_img_size=16, workers=0, measure_latency=False, retrain_top=0, progress=False)
TINY_ARGS = ['--model', 'sp_resnet20', '--dataset', 'synthetic', '--train-samples', '64', '--val-samples', '64',
             '--proxy-epochs', '1', '--batch-size', '32', '--proxy-img-size', '16', '--workers', '0',
             '--no-measure-latency', '--retrain-top', '0', '--no-progress']


@pytest.fixture(scope='module')
def space20() -> SearchSpace:
    return SearchSpace.build('sp_resnet20')


@pytest.fixture(scope='module')
def space34() -> SearchSpace:
    return SearchSpace.build('sp_resnet34')


# -- the space ---------------------------------------------------------------------------------------------------


def test_table_costs_equal_a_fresh_count(space20):
    rng = random.Random(0)
    configs = [space20.paper_arch(), *(space20.sample(rng) for _ in range(6))]
    for config in configs:
        assert space20.cost(config) == space20.cost_direct(config), space20.format(config)


def test_bounds_are_the_exact_extremes_of_the_space():
    space = SearchSpace.build('sp_resnet20', alphas=['vanilla', '1/2', '1/4'], groups=[1, 2])
    assert space.size == 5 ** 3
    for metric in ('macs', 'params'):
        values = {config: getattr(space.cost(config), metric) for config in space}
        (low, low_config), (high, high_config) = space.bounds(metric)
        assert low == min(values.values()) and high == max(values.values())
        assert values[low_config] == low and values[high_config] == high
        assert getattr(space.cost_direct(low_config), metric) == low


def test_share_within_budget_is_exact_and_main_prints_the_space(capsys):
    from spsearch.space import main
    space = SearchSpace.build('sp_resnet20', alphas=['vanilla', '1/2', '1/4'], groups=[1, 2])
    budget = 0.02e9
    assert space.share_within('macs', budget) == sum(space.cost(c).macs <= budget for c in space) / space.size
    assert main(['--model', 'sp_resnet20', '--budget-gflops', '0.02']) == 0
    out = capsys.readouterr().out
    assert 'GMACs: min 0.0101' in out and 'of the 4,050 configurations' in out


def test_resnet34_space_spans_the_default_budget(space34):
    space = space34
    (low, _), (high, _) = space.bounds('macs')
    assert space.input_size == (3, 224, 224)
    assert low / 1e9 < 2.0 < high / 1e9  # the default budget is binding: configurations on both sides
    assert round(space.cost(space.paper_arch()).macs / 1e9, 3) == 1.459
    vanilla = tuple(StageChoice(None) for _ in range(4))
    assert round(space.cost(vanilla).macs / 1e9, 3) == 3.679


def test_only_exact_splits_and_vanilla_once(space34):
    space = space34
    # stage 1 has 64 input channels: 64/16 = 4 cannot be cut into 8 groups, so that pair is left out
    assert StageChoice(1 / 16, 4) in space.choices[0] and StageChoice(1 / 16, 8) not in space.choices[0]
    assert StageChoice(1 / 16, 8) in space.choices[3]
    for choices in space.choices:
        assert sum(c.is_vanilla for c in choices) == 1
        assert len(set(choices)) == len(choices)


def test_params_round_trip_and_model_kwargs(space20):
    config = (StageChoice(None), StageChoice(1 / 4, 2), StageChoice(1.0, 8))
    params = space20.optuna_params(config)
    assert params == {'stage1': 'vanilla', 'stage2': 'alpha=1/4,G=2', 'stage3': 'alpha=1,G=8'}
    assert space20.from_optuna_params(params) == config
    assert space20.model_kwargs(config) == {'sp_alpha': ('vanilla', 0.25, 1.0), 'sp_groups': (1, 2, 8)}
    with pytest.raises(ConfigError, match='not a choice'):
        space20.check((StageChoice(1 / 3, 2),) * 3)


@pytest.mark.parametrize('name', sp_models())
def test_space_builds_for_every_registered_family(name):
    """The space reads each family's stage description: one categorical per stage, exact table costs."""
    space = SearchSpace.build(name)
    assert space.num_stages == len(space.stages) == len(space.choices) >= 3
    rng = random.Random(0)
    for arch in (space.paper_arch(), space.vanilla_arch(), space.sample(rng)):
        if space.contains(arch):
            assert space.cost(arch) == space.cost_direct(arch), space.format(arch)


@pytest.mark.parametrize('kwargs,match', [
    (dict(model='no_such_model'), 'unknown model'),
    (dict(model='resnet18'), 'no per-stage SPConv settings'),
    (dict(model='sp_resnet20', alphas=['1/16'], groups=[16]), 'search space is empty'),
    (dict(model='sp_resnet20', alphas=['2']), 'out of range'),
])
def test_space_errors_are_one_line(kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        SearchSpace.build(**kwargs)
    assert '\n' not in str(info.value)


# -- budgets -----------------------------------------------------------------------------------------------------


def test_budget_below_the_minimum_is_refused_with_the_minimum(space20):
    with pytest.raises(ConfigError, match=r'below the minimum of the search space, 0\.01015 GMACs'):
        check_space_budgets(space20, {'gmacs': 0.005})
    notes = check_space_budgets(space20, {'gmacs': 1.0})
    assert notes and 'every configuration meets --budget-gflops 1' in notes[0]
    assert check_space_budgets(space20, {'gmacs': 0.02}) == []


def test_constraints_are_relative_excess():
    c = constraints(Costs(gmacs=3.0, mparams=5.0, latency_ms=None), {'gmacs': 2.0, 'mparams': 10.0, 'latency_ms': 5})
    assert c == {'gmacs': pytest.approx(0.5), 'mparams': pytest.approx(-0.5)}


def test_ties_go_to_the_cheaper_architecture():
    """Equal proxy scores (the same count of correct images) rank by GMACs, then params; higher scores first."""
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import create_trial

    from spsearch.search.reports import best_trials

    def trial(number, top1, gmacs, mparams, stage='vanilla'):
        t = create_trial(state=TrialState.COMPLETE, values=[top1], params={'stage1': stage},
                         distributions={'stage1': CategoricalDistribution(['vanilla', 'a', 'b', 'c', 'd'])},
                         user_attrs={'gmacs': gmacs, 'mparams': mparams}, constraints={'gmacs': -0.1})
        t.number = number
        return t

    trials = [trial(0, 75.5, 1.9, 8.0, 'a'), trial(1, 75.5 + 1e-12, 1.4, 9.0, 'b'), trial(2, 75.5, 1.4, 7.0, 'c'),
              trial(3, 76.0, 1.95, 9.0, 'd')]
    assert [t.number for t in best_trials(trials, score=PROXY_SCORES['top1'])] == [3, 2, 1, 0]
    losses = [trial(0, 0.41, 1.9, 8.0, 'a'), trial(1, 0.41 + 1e-12, 1.4, 9.0, 'b'), trial(2, 0.41, 1.4, 7.0, 'c'),
              trial(3, 0.40, 1.95, 9.0, 'd')]
    assert [t.number for t in best_trials(losses, score=PROXY_SCORES['val_loss'])] == [3, 2, 1, 0]
    assert [t.number for t in best_trials(losses, 2, score=PROXY_SCORES['top1'])] == [2, 1]  # the other way round


def test_the_pruner_never_acts_before_epoch_2():
    """The fidelity study's epoch-1 rung did not rank: no pruner is built for 1-2 epochs, and from 3 on the
    rungs start at epoch 2."""
    from spsearch.search.study import PRUNE_FROM_EPOCH, _pruner
    assert PRUNE_FROM_EPOCH == 2
    for epochs in (1, 2):
        assert isinstance(_pruner(SearchConfig.from_dict({**TINY, 'proxy_epochs': epochs})), optuna.pruners.NopPruner)
    sh = _pruner(SearchConfig.from_dict({**TINY, 'proxy_epochs': 3}))
    assert isinstance(sh, optuna.pruners.SuccessiveHalvingPruner) and sh._min_resource == 2
    hb = _pruner(SearchConfig.from_dict({**TINY, 'proxy_epochs': 9, 'pruner': 'hyperband'}))
    assert isinstance(hb, optuna.pruners.HyperbandPruner) and hb._min_resource == 2
    median = _pruner(SearchConfig.from_dict({**TINY, 'proxy_epochs': 3, 'pruner': 'median'}))
    assert isinstance(median, optuna.pruners.MedianPruner) and median._n_warmup_steps == 1


def test_pareto_front():
    points = [(1.0, 50.0, 'a'), (2.0, 60.0, 'b'), (2.5, 55.0, 'c'), (3.0, 70.0, 'd'), (0.5, 40.0, 'e')]
    assert [p[2] for p in pareto_front(points)] == ['e', 'a', 'b', 'd']


# -- a tiny real study -------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def tiny_study(tmp_path_factory):
    """8 trials under a 0.016 GMACs budget (about 40% of the space; the paper's 0.018 is over it)."""
    out = tmp_path_factory.mktemp('tiny')
    calls: list[dict] = []
    real_train = processes.train

    def recording_train(cfg, **kwargs):
        calls.append(dict(cfg.model_kwargs, data=cfg.data))
        return real_train(cfg, **kwargs)

    processes.train = recording_train
    try:
        cfg = SearchConfig.from_dict({**TINY, 'budget_gflops': 0.016, 'n_trials': 8, 'sampler': 'random', 'seed': 1,
                                      'output': str(out)})
        run = search(cfg)
    finally:
        processes.train = real_train
    assert run is not None
    return run, calls, cfg


def test_tiny_study_completes_within_budget_and_skips_over_budget_training(tiny_study):
    run, calls, cfg = tiny_study
    trials = run.study.get_trials()
    assert len(trials) == 8 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    over = [t for t in trials if t.user_attrs.get('status', '').startswith('over budget')]
    assert complete and over
    for t in complete:
        assert t.user_attrs['gmacs'] <= 0.016 and t.constraints['gmacs'] <= 0 and t.user_attrs['epochs'] == 1
    trained = [tuple(c['sp_alpha']) + tuple(c['sp_groups']) for c in calls]
    for t in over:
        assert t.state == TrialState.PRUNED and t.constraints['gmacs'] > 0 and 'epochs' not in t.user_attrs
        kwargs = run.space.model_kwargs(run.space.from_optuna_params(t.params))
        assert tuple(kwargs['sp_alpha']) + tuple(kwargs['sp_groups']) not in trained
    assert len(calls) == sum(1 for t in trials if 'epochs' in t.user_attrs and 'duplicate_of' not in t.user_attrs)
    assert all(t.user_attrs.get('baseline') for t in over)  # the sampler proposes only in-budget architectures
    baseline = trials[0]
    assert baseline.user_attrs.get('baseline') and set(baseline.params.values()) == {'alpha=1/2,G=2'}
    assert baseline.user_attrs['status'].startswith('over budget: 0.01807 GMACs > 0.016')


def test_no_selection_touches_the_test_split(tiny_study):
    """Every proxy training is scored on training images held out; the retrain recipe (best.yaml) is judged on the
    test split; a search without a holdout is refused."""
    from spsearch.data import dataset_info
    run, calls, cfg = tiny_study
    assert calls and all(c['data'].holdout and dataset_info(c['data']).val_from.endswith('training images held out '
                                                                                          '(seed 0)') for c in calls)
    best = yaml.safe_load((Path(cfg.output_dir) / 'best.yaml').read_text())
    assert best['holdout'] is None
    with pytest.raises(ConfigError, match='--holdout is required'):
        SearchConfig.from_dict({**TINY, 'holdout': None})


def test_tiny_study_reports(tiny_study):
    run, _, cfg = tiny_study
    out = Path(cfg.output_dir)
    rows = list(csv.DictReader((out / 'trials.csv').open()))
    assert len(rows) == 8
    assert {'alpha1', 'groups3', 'gmacs', 'mparams', 'latency_ms', 'proxy_score', 'final_val_loss', 'final_top1',
            'epochs', 'trial_s'} <= set(rows[0])
    constrained = [t for t in run.study.get_trials() if t.constraints]
    assert constrained and all(t.user_attrs['feasible'] == all(v <= 0 for v in t.constraints.values())
                               for t in constrained)  # shown by optuna-dashboard and `optuna trials`
    front = list(csv.DictReader((out / 'pareto_gmacs.csv').open()))
    assert front and (out / 'pareto_gmacs.png').read_bytes()[:4] == b'\x89PNG'
    assert (out / 'optuna_history.png').read_bytes()[:4] == b'\x89PNG'
    best = yaml.safe_load((out / 'best.yaml').read_text())
    complete = [t for t in run.study.get_trials() if t.state == TrialState.COMPLETE]
    top = min(complete, key=lambda t: t.value)  # the default score, validation loss, is minimised
    assert run.study.direction == optuna.study.StudyDirection.MINIMIZE and cfg.proxy_score == 'val_loss'
    assert all(t.value == pytest.approx(t.user_attrs['final_val_loss']) for t in complete)
    assert best['model'] == 'sp_resnet20' and best['epochs'] == cfg.retrain_epochs
    assert best['model_kwargs'] == {k: list(v) for k, v in run.space.model_kwargs(
        run.space.from_optuna_params(top.params)).items()}
    summary = (out / 'summary.md').read_text()
    assert '1e9 multiply-accumulates' in summary and '| paper (alpha 1/2, G 2) |' in summary and 'Machine:' in summary
    assert yaml.safe_load((out / 'search.yaml').read_text())['budget_gflops'] == 0.016


def test_rerun_of_a_finished_study_trains_nothing(tiny_study, monkeypatch):
    run, _, cfg = tiny_study
    monkeypatch.setattr(processes, 'train', lambda *a, **k: pytest.fail('a finished study must not train again'))
    again = search(cfg.replace(resume=True))
    assert again is not None and len(again.study.get_trials()) == 8


def test_latency_budget_ends_slow_candidates_before_training(tmp_path, monkeypatch, one_thread):
    calls: list[dict] = []
    real_train = processes.train
    monkeypatch.setattr(processes, 'train', lambda cfg, **kw: calls.append(cfg.model_kwargs) or real_train(cfg, **kw))
    space = SearchSpace.build('sp_resnet20')
    protocol = latency_protocol('cpu', 1, 2, 5)
    low, high = latency_bounds(space, protocol)
    assert 0 < low < high
    budget = (low + high) / 2
    cfg = SearchConfig.from_dict({**TINY, 'measure_latency': True, 'budget_latency_ms': budget, 'latency_warmup': 2,
                                  'latency_repeats': 5, 'n_trials': 5, 'sampler': 'random', 'seed': 3,
                                  'output': str(tmp_path)})
    run = search(cfg)
    assert run is not None
    trials = run.study.get_trials()
    assert len(trials) == 5 and all(t.user_attrs.get('latency_ms') for t in trials)
    for t in trials:
        over = t.user_attrs['latency_ms'] > budget
        assert (t.constraints['latency_ms'] > 0) == over
        assert ('epochs' in t.user_attrs) == (not over), (t.number, t.user_attrs['latency_ms'], budget)
    assert len(calls) == sum('epochs' in t.user_attrs for t in trials)
    cache = json.loads((tmp_path / 'latency_cache.json').read_text())
    # stable measurements are cached, one per architecture (an unstable one, on a busy machine, is not)
    assert len(cache) == len({tuple(sorted(t.params.items())) for t in trials if t.user_attrs['latency']['stable']})
    assert (tmp_path / 'pareto_latency.csv').exists() or not calls


def test_unstable_latency_is_measured_again_flagged_and_never_cached(monkeypatch, tmp_path):
    """Repeats spread wider than a quarter of their median (another job on the machine) are measured again, up to
    three times; a value still unstable is used for its trial, flagged, and not cached."""
    import spsearch.cost.latency as latency
    from spsearch.search.budgets import measure_config_latency
    from spsearch.timing import LatencyStats
    calls: list[int] = []
    spreads = {'unstable': (5.0, 20.0), 'stable': (9.5, 10.5)}
    mode = ['unstable']

    def fake(*args, **kwargs):
        calls.append(1)
        p25, p75 = spreads[mode[0]]
        return LatencyStats(10.0, p25, p75, 4.0, 10, 1)

    monkeypatch.setattr(latency, 'measure_latency', fake)
    space = SearchSpace.build('sp_resnet20')
    out = measure_config_latency(space, space.paper_arch(), latency_protocol('cpu', 1, 0, 1))
    assert (len(calls), out['stable'], out['attempts'], out['min_ms']) == (3, False, 3, 4.0)
    mode[0] = 'stable'
    assert measure_config_latency(space, space.paper_arch(), latency_protocol('cpu', 1, 0, 1))['stable']
    assert len(calls) == 4
    mode[0] = 'unstable'
    cfg = SearchConfig.from_dict({**TINY, 'measure_latency': True, 'budget_gflops': 0.03, 'n_trials': 2,
                                  'output': str(tmp_path)})
    run = search(cfg)
    assert run is not None and all(t.user_attrs['latency']['stable'] is False for t in run.study.get_trials())
    cache = tmp_path / 'latency_cache.json'
    assert not cache.exists() or json.loads(cache.read_text()) == {}


def test_latency_bounds_time_stages_that_are_runs_of_layers(one_thread):
    """VGG's stages are runs of ``features`` layers, not modules: the stage description names them."""
    space = SearchSpace.build('sp_vgg16_cifar', alphas=['vanilla', '1/8'], groups=[1])
    low, high = latency_bounds(space, latency_protocol('cpu', 1, 1, 3))
    assert 0 < low < high


def test_multi_objective_nsga2_without_pruning(tmp_path):
    cfg = SearchConfig.from_dict({**TINY, 'proxy_epochs': 2, 'budget_gflops': 0.03, 'multi_objective': True,
                                  'n_trials': 4, 'output': str(tmp_path)})
    run = search(cfg)
    assert run is not None and isinstance(run.study.sampler, InBudgetSampler)
    assert isinstance(run.study.sampler.base, optuna.samplers.NSGAIISampler)
    assert isinstance(run.study.pruner, optuna.pruners.NopPruner)
    complete = [t for t in run.study.get_trials() if t.state == TrialState.COMPLETE]
    assert complete and all(len(t.values) == 2 and t.values[1] == pytest.approx(t.user_attrs['gmacs'])
                            and t.user_attrs['epochs'] == 2 for t in complete)
    assert run.study.metric_names == ['proxy_val_loss', 'gmacs']


def test_a_candidate_that_trained_every_epoch_is_never_pruned(tmp_path, monkeypatch):
    """The pruner is asked after the last epoch too (its rungs), but a fully trained candidate stays COMPLETE; and
    nothing is pruned at epoch 1 whatever the pruner says (the fidelity study's epoch-1 rung did not rank)."""
    monkeypatch.setattr(optuna.trial.Trial, 'should_prune', lambda self: True)
    cfg = SearchConfig.from_dict({**TINY, 'budget_gflops': 0.03, 'n_trials': 4, 'proxy_epochs': 3, 'sampler': 'random',
                                  'output': str(tmp_path)})
    run = search(cfg)
    assert run is not None
    trials = run.study.get_trials()
    trained = [t for t in trials if t.user_attrs.get('epochs') == cfg.proxy_epochs]
    assert trained and all(t.state == TrialState.COMPLETE for t in trained)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.user_attrs.get('epochs')]
    assert pruned and all(t.user_attrs['epochs'] == 2 for t in pruned)


def test_timeout_stops_starting_trials_and_the_summary_says_the_study_is_short(tmp_path):
    cfg = SearchConfig.from_dict({**TINY, 'budget_gflops': 0.03, 'n_trials': 50, 'timeout': 0.01,
                                  'output': str(tmp_path)})
    run = search(cfg)
    assert run is not None
    trials = run.study.get_trials()
    assert len(trials) < 50 and not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.FAIL)]
    summary = (tmp_path / 'summary.md').read_text()
    assert 'Trials:' in summary and 'of the 50 finished trials asked for' in summary and '--resume' in summary


def test_the_summary_names_the_proxy_s_stage_map_sizes():
    space = SearchSpace.build('sp_resnet34', alphas=['vanilla', '1/2'], groups=[2])
    assert space.stage_map_sizes(32) == [(8, 8), (4, 4), (2, 2), (1, 1)]
    assert space.stage_map_sizes(224) == [(56, 56), (28, 28), (14, 14), (7, 7)]
    from spsearch.search.reports import _map_sizes
    assert 'act almost as 1x1' in _map_sizes(space, 32) and 'act almost' not in _map_sizes(space, 224)


# -- bad input: one line, exit code 2, the existing study untouched --------------------------------------------


def _cli(argv, capsys):
    code = run_cli(lambda: search_cli.main(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def test_an_output_that_is_a_file_or_under_one_is_one_line(tmp_path, capsys):
    (tmp_path / 'afile').write_text('keep me')
    for output, match in ((tmp_path / 'afile', 'is a file, not a folder'), (tmp_path / 'afile' / 'run', 'lies under')):
        code, err = _cli([*TINY_ARGS, '--output', str(output)], capsys)
        assert code == 2 and match in err and '\n' not in err, err
    assert (tmp_path / 'afile').read_text() == 'keep me'


@pytest.mark.parametrize('extra,match', [
    (['--budget-gflops', '0'], 'invalid: it must be a number > 0 (leave it out for no budget)'),
    (['--budget-gflops', '-1'], 'invalid: it must be a number > 0 (leave it out for no budget)'),
    (['--budget-params', '0'], 'invalid: it must be a number > 0 (leave it out for no budget)'),
    (['--budget-latency-ms', '-5'], 'invalid: it must be a number > 0 (leave it out for no budget)'),
    (['--budget-gflops', '0.005'], 'below the minimum of the search space, 0.01015 GMACs'),
    (['--budget-gflops', '0.016', '--model', 'sp_resnet_nope'], 'unknown model'),
    (['--budget-gflops', '0.016', '--alphas', '1/16', '--groups', '16'], 'search space is empty'),
    (['--budget-gflops', '0.016', '--dataset', 'cifar10', '--data-dir', '/nonexistent/cifar'], 'cifar'),
    (['--budget-gflops', '0.016', '--storage', 'postgresql://nobody:pw@127.0.0.1:9/none'], 'cannot reach storage'),
    (['--budget-gflops', '0.016', '--storage', 'mystudy.txt'], 'neither a database URL'),
    (['--budget-gflops', '0.020', '--resume'], 'no study'),
    (['--budget-latency-ms', '0.0001', '--latency-warmup', '1', '--latency-repeats', '3'],
     'below the minimum latency of the search space, about'),
])
def test_bad_input_is_one_line_and_exit_2_and_harms_no_study(tiny_study, capsys, one_thread, extra, match):
    run, _, cfg = tiny_study
    before = [(t.number, t.state, t.params) for t in run.study.get_trials()]
    files = sorted(p.name for p in Path(cfg.output_dir).iterdir())
    code, err = _cli([*TINY_ARGS, '--output', cfg.output_dir, '--n-trials', '9', *extra], capsys)
    assert code == 2, err
    assert err.startswith('error: ') and '\n' not in err and 'Traceback' not in err
    assert match in err, err
    assert [(t.number, t.state, t.params) for t in run.study.get_trials()] == before
    assert sorted(p.name for p in Path(cfg.output_dir).iterdir()) == files


def test_resume_with_other_settings_is_refused(tiny_study, capsys):
    run, _, cfg = tiny_study
    before = len(run.study.get_trials())
    # same study name and storage, but another proxy recipe
    code, err = _cli([*TINY_ARGS, '--budget-gflops', '0.016', '--output', cfg.output_dir, '--study',
                      run.study.study_name, '--proxy-epochs', '2', '--n-trials', '9'], capsys)
    assert code == 2 and 'was created with other settings' in err and 'proxy.epochs: 1 -> 2' in err
    assert len(optuna.load_study(study_name=run.study.study_name, storage=run.study._storage).get_trials()) == before


def test_report_and_retrain_take_the_study_s_own_settings(tiny_study, capsys, tmp_path):
    """``report`` needs only where the study is: the space, budgets and recipes are the ones stored with it."""
    run, _, cfg = tiny_study
    code, err = _cli(['report', '--output', cfg.output_dir, '--study', run.study.study_name], capsys)
    assert code == 0, err
    summary = (Path(cfg.output_dir) / 'summary.md').read_text()
    assert '- Budgets: 0.016 GMACs' in summary and 'sp_resnet20' in summary
    code, err = _cli(['report', '--output', str(tmp_path / 'none')], capsys)
    assert code == 2 and 'no study at' in err and 'resume' not in err.split(';')[0]


def test_a_study_with_trials_but_no_stored_settings_is_refused(tmp_path, capsys):
    """A study an earlier version made (other attribute names) is not continued unchecked."""
    study = optuna.create_study(storage=f'sqlite:///{tmp_path}/study.db', study_name='old', direction='maximize')
    study.add_trial(optuna.trial.create_trial(value=50.0, params={}, distributions={}))
    code, err = _cli([*TINY_ARGS, '--budget-gflops', '0.016', '--output', str(tmp_path), '--study', 'old'], capsys)
    assert code == 2 and 'no stored settings' in err


def test_a_config_file_cannot_set_the_mode(tmp_path, capsys):
    (tmp_path / 'c.yaml').write_text('mode: report\nbudget_gflops: 0.016\n')
    code, err = _cli(['-c', str(tmp_path / 'c.yaml'), *TINY_ARGS], capsys)
    assert code == 2 and 'unknown key(s) mode' in err


def test_help_names_the_mac_convention(capsys):
    with pytest.raises(SystemExit) as info:
        search_cli.build_parser().parse_args(['--help'])
    assert info.value.code == 0
    assert '1e9 multiply-accumulates' in capsys.readouterr().out


@pytest.mark.slow
def test_verify_retrains_finalists_and_baselines_on_paired_seeds(tiny_study, capsys):
    """``verify``: the best finalist, the paper's, the best uniform and a random in-budget architecture, each on the
    same seeds, judged on the test split; per-candidate intervals, paired comparisons with verdicts, the plot."""
    run, _, cfg = tiny_study
    out = Path(cfg.output_dir)
    code, err = _cli(['verify', '--output', str(out), '--study', run.study.study_name, '--retrain-top', '1',
                      '--retrain-seeds', '2', '--retrain-epochs', '1', '--retrain-train-samples', '64',
                      '--retrain-val-samples', '64'], capsys)
    assert code == 0, err
    best = yaml.safe_load((out / 'best.yaml').read_text())
    run_dir = Path(best['output'])
    assert run_dir.parent.parent == out / 'retrain' and run_dir.name == f'seed-{cfg.seed}'
    assert (run_dir / 'model.safetensors').stat().st_size > 0 and (run_dir / 'last.pth').exists()
    assert yaml.safe_load((run_dir / 'args.yaml').read_text()) == best  # trained from exactly best.yaml's recipe
    assert best['holdout'] is None  # judged on the test split
    rows = list(csv.DictReader((out / 'retrain.csv').open()))
    assert all(r['status'] == 'trained' for r in rows)
    roles = {r['name']: r['role'] for r in rows}
    assert roles[run_dir.parent.name] == 'finalist' and roles['paper'] == 'paper' and 'random' in roles.values()
    assert {r['seed'] for r in rows} == {str(cfg.seed), str(cfg.seed + 1)}
    paper_rows = [r for r in rows if r['name'] == 'paper']
    assert len(paper_rows) == 2 and paper_rows[0]['config'] == 'alpha (1/2, 1/2, 1/2) G (2, 2, 2)'
    verify = list(csv.DictReader((out / 'verify.csv').open()))
    assert {v['name'] for v in verify} == set(roles) and all(v['seeds'] == '2' for v in verify)
    comparisons = list(csv.DictReader((out / 'comparisons.csv').open()))
    assert [c['baseline'] for c in comparisons] == [n for n in roles if roles[n] != 'finalist']
    assert all(c['verdict'] in ('beats', 'matches', 'loses') for c in comparisons)
    summary = (out / 'summary.md').read_text()
    assert '## Verification: retrained on paired seeds, judged on the test split' in summary
    assert '| verdict |' in summary
    assert (out / 'verify.png').read_bytes()[:4] == b'\x89PNG'
    lines = search_cli.verdict_lines(out)  # what the command prints last
    assert len(lines) == len(comparisons) and all(line.startswith('verdict: ') for line in lines)
    assert len(run.study.get_trials()) == 8  # verification adds no trial


def test_default_preset_is_the_embedded_default():
    assert search_cli.resolve_config(['-c', str(ROOT / 'configs/search/default.yaml')]) == \
        search_cli.resolve_config(['--budget-gflops', '2.0'])
    assert set(yaml.safe_load((ROOT / 'configs/search/default.yaml').read_text())) == set(SearchConfig.field_names())
    for preset in sorted((ROOT / 'configs/search').glob('*.yaml')):
        cfg = search_cli.resolve_config(['-c', str(preset)])
        assert cfg.budgets, preset.name
        assert all(key.replace('-', '_') in SearchConfig.field_names()
                   for key in yaml.safe_load(preset.read_text())), preset.name


def test_storage_passwords_are_masked_in_everything_written():
    from spsearch.provenance import mask_secrets
    assert mask_secrets('postgresql://u:p%40ss@host:5432/db') == 'postgresql://u:***@host:5432/db'
    assert mask_secrets('mysql+pymysql://root:x@h/db?charset=utf8') == 'mysql+pymysql://root:***@h/db?charset=utf8'
    assert mask_secrets('postgresql://h/db?user=u&password=pw&port=1') == 'postgresql://h/db?user=u&password=***&port=1'
    assert mask_secrets('sqlite:///runs/x/study.db') == 'sqlite:///runs/x/study.db'
    assert mask_secrets('python search.py --storage postgresql://a:b@c/d --n-trials 2') == \
        'python search.py --storage postgresql://a:***@c/d --n-trials 2'


def test_resume_from_a_masked_search_yaml_asks_for_the_storage_again(tmp_path, capsys):
    (tmp_path / 'search.yaml').write_text('budget_gflops: 2.0\nstorage: postgresql://u:***@h/db\n')
    code, err = _cli(['--resume', '--output', str(tmp_path)], capsys)
    assert code == 2 and 'give --storage with the password again' in err


def test_a_journal_file_that_is_not_a_journal_is_one_line(tmp_path, capsys):
    (tmp_path / 'bad.log').write_text('garbage{\n')
    code, err = _cli(['--budget-gflops', '2', '--storage', str(tmp_path / 'bad.log'), '--output',
                      str(tmp_path / 'out')], capsys)
    assert code == 2 and 'is not an Optuna journal file' in err and '\n' not in err
    assert not (tmp_path / 'out').exists()


def test_a_proxy_resolution_the_model_cannot_take_is_refused_before_anything_is_written(tmp_path, capsys):
    code, err = _cli(['--model', 'sp_vgg16_cifar', '--budget-gflops', '0.3', '--proxy-img-size', '8', '--output',
                      str(tmp_path / 'out')], capsys)
    assert code == 2 and 'cannot take 8x8 inputs' in err and '--proxy-img-size' in err
    assert not (tmp_path / 'out').exists()


def test_a_study_killed_before_its_settings_and_baselines_gets_them_on_the_next_run(tmp_path):
    """Created, then killed before the settings guard and the baselines were stored: the next run sets both up
    (and a run with other settings is then refused)."""
    from spsearch.search.study import open_search
    cfg = SearchConfig.from_dict({**TINY, 'budget_gflops': 0.03, 'n_trials': 2, 'output': str(tmp_path)})
    optuna.create_study(storage=f'sqlite:///{tmp_path}/study.db', study_name=cfg.study_name)  # the kill's leftover
    opened = open_search(cfg, log=lambda s: None)
    waiting = [t for t in opened.study.get_trials() if t.state == TrialState.WAITING]
    assert [t.user_attrs['baseline'] for t in waiting] == ['paper', 'uniform']
    assert 'spsearch:settings' in _system_attrs(opened.study) and 'settings_sha' in opened.study.user_attrs
    with pytest.raises(ConfigError, match='was created with other settings'):
        open_search(cfg.replace(proxy_epochs=2), log=lambda s: None)


def test_a_failed_baseline_is_queued_again_on_the_next_run(tmp_path):
    """The paper's trial failed (bad input, say): re-running with the input fixed queues it again, once."""
    from spsearch.search.study import open_search
    cfg = SearchConfig.from_dict({**TINY, 'budget_gflops': 0.03, 'n_trials': 2, 'output': str(tmp_path)})
    study = open_search(cfg, log=lambda s: None).study
    paper = next(t for t in study.get_trials() if t.user_attrs.get('baseline') == 'paper')
    study._storage.set_trial_state_values(paper._trial_id, state=TrialState.FAIL)
    notes = open_search(cfg, log=lambda s: None).notes
    assert any('baseline(s) paper' in n and 'queued again' in n for n in notes)
    again = open_search(cfg, log=lambda s: None).study.get_trials()
    assert [t.user_attrs.get('baseline') for t in again if t.state == TrialState.WAITING] == ['uniform', 'paper']


def _system_attrs(study: optuna.Study) -> dict:
    return study._storage.get_study_system_attrs(study._study_id)


def test_study_user_attributes_are_short_and_the_settings_live_in_the_storage(tiny_study):
    """``optuna studies`` prints every user attribute: each is one short value; the full settings and configuration
    are system attributes of the study (in the storage, so a worker on another machine checks against them)."""
    from spsearch.search.study import settings_hash
    run, _, cfg = tiny_study
    study = optuna.load_study(study_name=run.study.study_name, storage=run.study._storage)
    attrs = study.user_attrs
    assert set(attrs) == {'model', 'budgets', 'score', 'settings_sha', 'spsearch'}
    assert all(len(json.dumps(v)) <= 60 for v in attrs.values()), attrs
    assert attrs['model'] == 'sp_resnet20' and attrs['budgets'] == '0.016 GMACs'
    settings = _system_attrs(study)['spsearch:settings']
    assert attrs['settings_sha'] == settings_hash(settings) and settings['proxy']['epochs'] == 1
    assert _system_attrs(study)['spsearch:config']['budget_gflops'] == 0.016


def test_a_study_with_the_old_large_attributes_is_still_guarded_and_reported(tmp_path):
    """Studies made before the settings moved to system attributes kept them as user attributes ``identity`` and
    ``config``: resume still checks them (naming what differs) and ``report`` still reads them."""
    from spsearch.search import report
    from spsearch.search.study import open_search
    cfg = SearchConfig.from_dict({**TINY, 'budget_gflops': 0.03, 'n_trials': 2, 'output': str(tmp_path)})
    new = open_search(cfg, log=lambda s: None).study
    old = optuna.create_study(storage=new._storage, study_name='old')
    old.set_user_attr('identity', _system_attrs(new)['spsearch:settings'])
    old.set_user_attr('config', {**_system_attrs(new)['spsearch:config'], 'study': 'old'})
    with pytest.raises(ConfigError, match=r'other settings \(proxy.epochs: 1 -> 2\)'):
        open_search(cfg.replace(study='old', proxy_epochs=2), log=lambda s: None)
    assert open_search(cfg.replace(study='old'), log=lambda s: None).study.study_name == 'old'
    opened = report(SearchConfig.from_dict({'output': str(tmp_path), 'study': 'old'}))
    assert opened.cfg.budget_gflops == 0.03 and opened.cfg.model == 'sp_resnet20'


def _fake_study(tmp_path: Path, n_complete: int, vary: bool = True):
    """An in-memory study of ``sp_resnet20`` with ``n_complete`` complete trials, one pruned after training and one
    over budget, and its ``OpenStudy`` (nothing trained)."""
    from spsearch.search.storage import StorageSpec
    from spsearch.search.study import OpenStudy
    cfg = SearchConfig.from_dict({**TINY, 'budget_gflops': 0.03, 'n_trials': n_complete + 2, 'output': str(tmp_path)})
    space = SearchSpace.build('sp_resnet20')
    dists = {space.param_name(i): optuna.distributions.CategoricalDistribution([c.label for c in choices])
             for i, choices in enumerate(space.choices)}
    rng = random.Random(0)
    study = optuna.create_study(study_name='fake')

    def add(state, arch, value=None, intermediate=None):
        gmacs = space.cost(arch).macs / 1e9
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value, params=space.optuna_params(arch), distributions=dists,
            intermediate_values=intermediate, constraints={'gmacs': (gmacs - 0.03) / 0.03},
            user_attrs={'gmacs': gmacs, 'mparams': space.cost(arch).params / 1e6, 'feasible': gmacs <= 0.03,
                        'status': 'complete' if gmacs <= 0.03 else 'over budget'}))

    archs = [space.sample(rng) if vary else space.paper_arch() for _ in range(n_complete)]
    for arch in archs:
        add(TrialState.COMPLETE, arch, value=rng.uniform(1.0, 2.0))
    add(TrialState.PRUNED, space.sample(rng), intermediate={1: 2.5, 2: 2.4})
    add(TrialState.PRUNED, space.bounds('macs')[1][1])  # the most expensive architecture: over 0.03 GMACs
    return OpenStudy(cfg, space, StorageSpec(None, tmp_path), study, tmp_path)


def test_optuna_s_plots_and_the_pareto_of_every_trial_are_written_next_to_the_summary(tmp_path):
    from spsearch.search.reports import write_reports
    written = write_reports(_fake_study(tmp_path, 4))
    for name in ('optuna_history.png', 'optuna_importances.png', 'pareto_gmacs.png'):
        assert (tmp_path / name).read_bytes()[:4] == b'\x89PNG', name
    summary = (tmp_path / 'summary.md').read_text()
    assert '![parameter importances](optuna_importances.png)' in summary and 'No parameter-importance' not in summary
    assert written['pareto_gmacs']['front']


def test_parameter_importances_are_skipped_with_a_note_below_two_varying_trials(tmp_path):
    from spsearch.search.reports import write_reports
    for n, vary, why in ((1, True, '1 complete trial(s); parameter importances need 2'),
                         (3, False, 'every complete trial has the same parameters')):
        out = tmp_path / f'{n}-{vary}'
        out.mkdir()
        write_reports(_fake_study(out, n, vary))
        assert not (out / 'optuna_importances.png').exists() and (out / 'optuna_history.png').exists()
        assert f'No parameter-importance plot: {why}' in (out / 'summary.md').read_text()


def test_the_pareto_plot_shows_every_trial_numbered_and_greys_pruned_and_over_budget_ones(tmp_path, monkeypatch):
    from spsearch.search import reports
    seen = {}

    def capture(fig, ax, path, xlabel, ylabel, title):
        seen['labels'] = ax.get_legend_handles_labels()[1]
        seen['numbers'] = sorted(int(t.get_text()) for t in ax.texts)
        real_save(fig, ax, path, xlabel, ylabel, title)

    real_save = reports._save
    monkeypatch.setattr(reports, '_save', capture)
    opened = _fake_study(tmp_path, 3)
    reports.write_reports(opened)
    assert seen['numbers'] == [t.number for t in opened.study.get_trials()]
    assert 'pruned (last reported score)' in seen['labels'] and 'over budget / not trained (no score)' in seen['labels']


def test_an_interrupted_search_writes_its_text_reports_even_when_a_plot_fails(tmp_path, monkeypatch):
    """Ctrl-C can leave matplotlib half-way through a figure: the interruption's reports then come without plots
    rather than without summary.md."""
    import spsearch.search.reports as reports
    import spsearch.search.run as run_module
    calls = []

    def broken_plot(*args, **kwargs):
        calls.append(1)
        raise RuntimeError('figure left half-drawn')

    cfg = SearchConfig.from_dict({**TINY, 'output': str(tmp_path), 'n_trials': 1, 'retrain_top': 0})
    opened = search(cfg)
    assert opened is not None
    (tmp_path / 'summary.md').unlink()
    monkeypatch.setattr(reports, '_optuna_history', broken_plot)
    error = run_module._interrupted(opened, 'during the search')
    assert calls and (tmp_path / 'summary.md').exists() and (tmp_path / 'trials.csv').exists()
    assert '--resume' in str(error)


def test_the_summary_is_the_studys_optuna_dashboard_note(tiny_study):
    """optuna-dashboard shows summary.md (verdicts, Pareto front, plots' captions) as the study's note, read from
    the storage itself."""
    optuna_dashboard = pytest.importorskip('optuna_dashboard')
    run, _, cfg = tiny_study
    study = optuna.load_study(study_name=run.study.study_name, storage=f'sqlite:///{cfg.output_dir}/study.db')
    note = optuna_dashboard.get_note(study)
    summary = (Path(cfg.output_dir) / 'summary.md').read_text()  # (other tests may rewrite it by `report`)
    assert note.startswith(f'# Search {run.study.study_name}\n') and '| trial |' in note
    assert [line for line in note.splitlines() if line.startswith('- Command:')] == [
        line for line in summary.splitlines() if line.startswith('- Command:')]


def test_a_failed_retrain_ends_the_search_in_one_line_exit_1_after_its_reports(tmp_path, monkeypatch, capsys):
    """A retrain whose training fails (here: its launcher exits 2) leaves the verification without verdicts: the
    search says so in one line and exits 1, its reports written, instead of ending as a success."""
    import spsearch.search.retraining as retraining
    launched = []
    monkeypatch.setattr(retraining, 'run_child', lambda cmd, env=None: launched.append(cmd) or 2)
    out = tmp_path / 's'
    args = [*TINY_ARGS, '--n-trials', '2', '--budget-gflops', '0.03', '--retrain-top', '1', '--retrain-seeds', '1',
            '--output', str(out)]
    code = run_cli(lambda: search_cli.main(args))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and launched and len(err) == 1, err
    assert err[0].startswith('error: ') and ' retrains failed (first: ' in err[0] and '--resume' in err[0]
    assert (out / 'summary.md').exists() and (out / 'retrain.csv').exists()


def test_report_with_output_alone_opens_the_one_study_there(tiny_study, capsys):
    """``search.py report --output DIR`` without --study: the storage holds one study, so that one (its default name
    comes from other options, e.g. another --model)."""
    run, _, cfg = tiny_study
    code = run_cli(lambda: search_cli.main(['report', '--output', cfg.output_dir]))
    out = capsys.readouterr().out
    assert code == 0 and f"study {run.study.study_name!r}" in out, out


def test_a_cancelled_trial_leaves_one_line_not_optunas_traceback():
    """A worker that loses the race for the last slot cancels its trial (``catch=(Cancelled,)``); Optuna would log a
    traceback and "failed with value None" for it. The search's log filter drops both, and only those: another
    caught failure still gets Optuna's full report."""
    import io
    import logging

    import spsearch.search.run as run_module
    from spsearch.search.objective import Cancelled

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_module._quiet_trial_failures()
    handlers = [h for h in logging.getLogger('optuna').handlers if isinstance(h, logging.StreamHandler)]
    assert handlers, "Optuna's own handler is where the filter goes"
    stream = io.StringIO()
    old = [h.setStream(stream) for h in handlers]

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_int('x', 0, 3)
        if trial.number == 1:
            raise Cancelled
        if trial.number == 2:
            raise ValueError('a real failure')
        return 1.0

    try:
        optuna.create_study().optimize(objective, n_trials=3, catch=(Cancelled, ValueError))
    finally:
        for h, s in zip(handlers, old, strict=True):
            h.setStream(s)
    text = stream.getvalue()
    assert 'Trial 1 ' not in text and 'Cancelled' not in text, text
    assert 'Trial 2 failed' in text and "ValueError('a real failure')" in text and 'Traceback' in text, text
