"""The proxy fidelity study: its plan, resume, statistics and report (``spsearch.search.fidelity``)."""
from __future__ import annotations

import json
import math

import pytest

from spsearch.errors import ConfigError
from spsearch.search import fidelity
from spsearch.search.config import SearchConfig
from spsearch.search.fidelity import FidelityPlan, Protocol, analyze, plan_study, render, unit_key
from spsearch.space import SearchSpace

PROXY = Protocol('proxy', 32, 64, 2)
TARGET = Protocol('target', 32, 128, 3, target=True)


@pytest.fixture(scope='module')
def setup() -> tuple[SearchConfig, SearchSpace]:
    cfg = SearchConfig(budget_gflops=2.0)
    return cfg, SearchSpace.build(cfg.model, cfg.alphas, cfg.groups)


def test_kendall_tau_on_constructed_orders():
    assert fidelity.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert fidelity.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert fidelity.kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)  # 5 concordant, 1 discordant pair
    assert math.isnan(fidelity.kendall_tau([1, 1, 1], [1, 2, 3]))


def test_bootstrap_tau_interval():
    target = [float(i) for i in range(12)]
    assert fidelity.bootstrap_tau([target, target], target, resamples=200) == pytest.approx((1, 1, 1))
    noisy = [t + (3 if i % 2 else -3) for i, t in enumerate(target)]
    tau, low, high = fidelity.bootstrap_tau([noisy], target, resamples=300)
    assert low <= tau <= high and low < 0.9 and tau < 1
    assert fidelity.bootstrap_tau([noisy], target, resamples=300) == (tau, low, high)  # seeded


def test_plan_starts_with_the_paper_and_draws_distinct_in_budget_architectures(setup):
    cfg, space = setup
    plan = plan_study(cfg, space, 8, [PROXY, TARGET], [0, 1])
    assert plan.roles[0] == 'paper = best uniform'  # at 2.0 GMACs uniform alpha 1/2 G 2 uses the most of it
    assert plan.architectures[0] == [c.label for c in space.paper_arch()]
    assert all(space.cost(tuple(space.paper_arch()[0].from_label(x) for x in a)).macs <= 2e9
               for a in plan.architectures)
    assert len({tuple(a) for a in plan.architectures}) == 8
    assert plan_study(cfg, space, 8, [PROXY, TARGET], [0, 1]).to_dict() == plan.to_dict()  # deterministic
    assert len(plan.units()) == 8 * 2 * 2
    with pytest.raises(ConfigError, match='exactly one target'):
        plan_study(cfg, space, 8, [PROXY], [0, 1])
    with pytest.raises(ConfigError, match='>= 2 seeds'):
        plan_study(cfg, space, 8, [PROXY, TARGET], [0])


def _fake_units(plan: FidelityPlan, score) -> dict[str, dict]:
    """Units whose top-1 is ``score(protocol, arch, seed, epoch)``; stale columns rank in reverse."""
    units = {}
    for protocol, i, seed in plan.units():
        history = [{'epoch': e, 'top1': score(protocol, i, seed, e), 'val_loss': -score(protocol, i, seed, e) / 10,
                    'stale_top1': -score(protocol, i, seed, e), 'stale_val_loss': score(protocol, i, seed, e)}
                   for e in range(1, protocol.epochs + 1)]
        units[unit_key(protocol, i, seed)] = {'history': history, 'wall_s': 1.0, 'commit': 'abc'}
    return units


def test_analyze_on_constructed_scores(setup):
    cfg, space = setup
    plan = plan_study(cfg, space, 6, [PROXY, TARGET], [0, 1])
    # the proxy ranks like the target at the last epoch, at random at epoch 1; seeds add a small noise
    shuffled = [3, 0, 5, 1, 4, 2]
    units = _fake_units(plan, lambda p, i, s, e: (50 + 5 * i + 0.1 * s) if (e == p.epochs) else shuffled[i] + s)
    result = analyze(plan, units, resamples=200)
    assert result['complete'] == list(range(6))
    t = result['target']
    assert t['seed_tau'] == pytest.approx(1) and t['seed_sd'] == pytest.approx(math.sqrt(0.005))
    rows = {(r.protocol, r.epoch, r.score): r for r in result['rows']}
    assert rows['proxy', 2, 'top-1, precise BN'].tau == pytest.approx(1)
    assert rows['proxy', 2, 'val. loss, precise BN'].tau == pytest.approx(1)  # lower loss is better
    assert rows['proxy', 2, 'top-1, running BN stats'].tau == pytest.approx(-1)
    assert rows['proxy', 1, 'top-1, precise BN'].tau < 0.5
    assert rows['proxy', 1, 'top-1, running BN stats'].tau > -1
    assert ('proxy', 1, 'val. loss, running BN stats') not in rows
    assert -1 <= rows['cost only', 0, 'GMACs (no training)'].tau <= 1
    # an architecture missing one training is left out of every statistic
    del units[unit_key(PROXY, 3, 1)]
    assert analyze(plan, units, resamples=50)['complete'] == [0, 1, 2, 4, 5]


def test_render_reports_the_numbers_and_what_they_say(setup):
    cfg, space = setup
    plan = plan_study(cfg, space, 5, [PROXY, TARGET], [0, 1])
    units = _fake_units(plan, lambda p, i, s, e: 50 + 5 * i + s)
    text = render(plan, units, '# Proxy fidelity', 'python tools/proxy_fidelity.py', resamples=100)
    assert '20 of 20 trainings done; 5 of 5 architectures complete' in text
    assert '| proxy | 2 | top-1, precise BN | 1.00 [1.00, 1.00] |' in text
    assert 'beyond GMACs' in text
    assert 'precise BN tau 1.00 vs running statistics -1.00' in text
    assert 'rung at epoch 1: tau 1.00 [1.00, 1.00]: ranks (interval above 0); with the running statistics tau -1.00' \
        in text
    assert 'commit(s) abc' in text
    assert 'Ranking by GMACs alone, without training: tau' in text
    partial = render(plan, {k: v for k, v in list(units.items())[:6]}, '# h', 'cmd', resamples=10)
    assert 'Too few complete architectures' in partial


def test_run_study_resumes_from_its_folder_and_refuses_another_plan(setup, tmp_path):
    cfg, space = setup
    plan = plan_study(cfg, space, 4, [PROXY, TARGET], [0, 1])
    (tmp_path / 'units').mkdir()
    for key, unit in _fake_units(plan, lambda p, i, s, e: float(i)).items():
        (tmp_path / 'units' / f'{key}.json').write_text(json.dumps(unit))
    lines: list[str] = []
    done = fidelity.run_study(plan, tmp_path, jobs=2, log=lines.append)  # everything done: nothing trains
    assert len(done) == 16 and '16 of 16 trainings done, 0 to go' in lines[0]
    assert json.loads((tmp_path / 'plan.json').read_text()) == json.loads(json.dumps(plan.to_dict()))
    other = plan_study(cfg, space, 4, [PROXY, TARGET], [0, 2])
    with pytest.raises(ConfigError, match='holds another fidelity plan'):
        fidelity.run_study(other, tmp_path)
    (tmp_path / 'units' / f'{unit_key(PROXY, 0, 0)}.json').write_text('{"history": [')
    with pytest.raises(ConfigError, match='delete it and run again'):
        fidelity.load_units(plan, tmp_path)


def test_residuals_take_out_the_straight_line_in_gmacs():
    x = [1.0, 2.0, 3.0, 4.0]
    assert fidelity._residuals([2 * v + 1 for v in x], x) == pytest.approx([0, 0, 0, 0])
    r = fidelity._residuals([2 * v + e for v, e in zip(x, [0.5, -0.5, -0.5, 0.5], strict=True)], x)
    assert r == pytest.approx([0.5, -0.5, -0.5, 0.5])
