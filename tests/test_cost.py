"""Cost accounting: the paper's exact counts, thop vs. the analytic count on every registered model
and a grid of alpha/groups, and profile_model's behaviour."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from spsearch import SPConv2d
from spsearch.cost import UnsupportedModuleError, analytic_count, profile_model, softmax_fusion_macs, thop_count
from spsearch.cost.paper import PAPER_ROWS

from helpers import ROOT, load_script, sp_models

ROWS = {(r.model, r.sp_alpha): r for r in PAPER_ROWS}


@pytest.mark.parametrize('alpha,params', [('vanilla', 25_557_032), (1 / 2, 18_345_448), (1 / 4, 16_930_792),
                                          (1 / 8, 16_223_464)])
def test_sp_resnet50_exact_params_and_macs_within_1pct(alpha, params):
    model = timm.create_model('sp_resnet50', sp_alpha=alpha, num_classes=1000)
    cost = profile_model(model, (3, 224, 224))
    assert cost.params == params
    assert cost.analytic_params == params
    paper = ROWS[('sp_resnet50', alpha)].macs
    assert abs(cost.macs / paper - 1) < 0.01, (cost.macs, paper)


def test_sp_resnet20_costs():
    costs = {a: profile_model(timm.create_model('sp_resnet20', sp_alpha=a, num_classes=10), (3, 32, 32))
             for a in ('vanilla', 1 / 2, 1 / 4)}
    assert abs(costs['vanilla'].macs / 41.62e6 - 1) < 0.01
    assert abs(costs['vanilla'].params / 0.27e6 - 1) < 0.01
    assert costs['vanilla'].params == 272_474
    assert abs(costs[1 / 2].macs / 17.91e6 - 1) < 0.02
    assert abs(costs[1 / 2].params - 0.10e6) <= 0.006e6
    assert abs(costs[1 / 4].macs / 12.89e6 - 1) < 0.02


@pytest.mark.parametrize('alpha,paper_params', [(1 / 2, 5.6e6), (1 / 4, 3.77e6), (1 / 8, 2.85e6), (1 / 16, 2.39e6)])
def test_sp_vgg16_cifar_params_within_1pct(alpha, paper_params):
    model = timm.create_model('sp_vgg16_cifar', sp_alpha=alpha, num_classes=10)
    assert abs(sum(p.numel() for p in model.parameters()) / paper_params - 1) < 0.01


def test_reference_thop_convention_reproduces_measured_2_9660():
    """thop on the reference code gave 2.9660 GMACs for SP-ResNet-50 a=1/2; it misses the fusion's softmax and
    weighted sum. Our count minus exactly those ops must land on it."""
    model = timm.create_model('sp_resnet50')
    cost = profile_model(model, (3, 224, 224))
    fusions = [m for m in model.modules() if isinstance(m, SPConv2d)]
    sizes = {64: 56, 128: 28, 256: 14, 512: 7}
    missed = sum(5 * f.out_channels + 2 * f.out_channels * sizes[f.out_channels] ** 2 for f in fusions)
    assert round((cost.macs - missed) / 1e9, 4) == 2.9660


@pytest.mark.parametrize('name', sp_models())
def test_thop_and_analytic_agree_on_every_registered_model(name):
    model = timm.create_model(name)
    input_size = model.pretrained_cfg['input_size']
    cost = profile_model(model, input_size)
    assert cost.analytic_macs == cost.macs
    assert cost.analytic_params == cost.params


@pytest.mark.parametrize('alpha', ['vanilla', 1.0, 0.5, 0.3, 0.125, 1 / 16])
@pytest.mark.parametrize('groups', [1, 2, 4, 8])
def test_thop_and_analytic_agree_over_a_grid(alpha, groups):
    for name, size in [('sp_resnet20', (3, 33, 31)), ('sp_resnet18', (3, 65, 64)), ('sp_vgg16_cifar', (3, 32, 32))]:
        model = timm.create_model(name, sp_alpha=alpha, sp_groups=groups)
        cost = profile_model(model, size)
        assert (cost.analytic_macs, cost.analytic_params) == (cost.macs, cost.params), name


def test_analytic_count_works_on_meta_device_and_after_folding():
    with torch.device('meta'):
        meta_model = timm.create_model('sp_resnet50', sp_alpha=(0.5, 'vanilla', 0.25, 1 / 8), sp_groups=(2, 2, 4, 8))
    real = timm.create_model('sp_resnet50', sp_alpha=(0.5, 'vanilla', 0.25, 1 / 8), sp_groups=(2, 2, 4, 8))
    assert analytic_count(meta_model, (3, 224, 224)) == analytic_count(real, (3, 224, 224))
    fused = real.eval()
    for m in fused.modules():
        if isinstance(m, SPConv2d):
            m.reparameterize()
    macs, _ = thop_count(fused, (3, 96, 96))
    assert analytic_count(fused, (3, 96, 96)).macs == macs


def test_paper_costs_tool_subtracts_the_fusion_ops_the_reference_thop_missed():
    """tools/paper_costs.py's "ref. conv." column: the fusion modules must run (reference impl) to be seen."""
    tool = load_script('paper_costs', ROOT / 'tools' / 'paper_costs.py')
    row = ROWS[('sp_resnet20', 1 / 2)]
    measured = tool.measure(row)
    missed = 5 * (16 + 32 + 64) * 6 + 2 * 6 * (16 * 32 * 32 + 32 * 16 * 16 + 64 * 8 * 8)
    assert measured['macs'] - measured['ref_macs'] == missed


def test_softmax_fusion_rule():
    assert softmax_fusion_macs(4, 2, 3) == 4 * (4 * 6 + 7)


def test_profile_model_leaves_the_model_untouched_and_handles_unknown_modules():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GELU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    keys = list(model.state_dict())
    cost = profile_model(model, (3, 8, 8))
    assert list(model.state_dict()) == keys
    assert cost.macs == 8 * 27 * 36 + 8 * 36 * 2
    assert cost.analytic_macs is None and cost.analytic_params is None
    with pytest.raises(UnsupportedModuleError, match='GELU'):
        analytic_count(model, (3, 8, 8))


def test_cost_summary_states_the_convention():
    cost = profile_model(timm.create_model('sp_resnet20'), (3, 32, 32))
    text = cost.summary()
    assert 'GMACs' in text and 'GFLOPs as in the SPConv paper' in text and '2xMACs' in text
    assert cost.gflops_2x == pytest.approx(2 * cost.gmacs)
    assert cost.to_dict()['macs'] == cost.macs
