"""Operator tests: shapes over a grid of alpha/G/stride/odd sizes/batch 1, the split rule, errors,
equality with the paper's formulation, gradients, and BN folding."""
from __future__ import annotations

import itertools

import pytest
import torch
from timm.utils.model import reparameterize_model
from torch import nn

from spsearch import SPConv2d, sp_split
from spsearch.ops import SoftmaxFusion, fold_batchnorms

from helpers import paper_spconv, randomize_bn

ALPHAS = [1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1.0]
GROUPS = [1, 2, 4, 8]


GRID = [
    (alpha, groups, stride, size)
    for alpha, groups, stride, size in itertools.product(ALPHAS, GROUPS, [1, 2], [7, 8])
]


@pytest.mark.parametrize('alpha,groups,stride,size', GRID)
def test_grid_shapes_and_paper_equivalence(alpha, groups, stride, size):
    torch.manual_seed(0)
    m = SPConv2d(24, 32, stride=stride, alpha=alpha, groups=groups)
    assert m.rep_channels + m.red_channels == 24
    assert m.rep_channels % groups == 0
    x = torch.randn(2, 24, size, size + 1)
    y = m(x)
    expected_hw = (-(-size // stride), -(-(size + 1) // stride))
    assert y.shape == (2, 32, *expected_hw)
    torch.testing.assert_close(y, paper_spconv(m, x), rtol=1e-5, atol=1e-5)
    m.eval()
    randomize_bn(m)
    torch.testing.assert_close(m(x), paper_spconv(m, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('stride', [1, 2])
def test_batch_one_train_and_eval(stride):
    m = SPConv2d(16, 16, stride=stride)
    y = m(torch.randn(1, 16, 5, 5))
    assert y.shape == (1, 16, 3 if stride == 2 else 5, 3 if stride == 2 else 5)
    y.sum().backward()
    m.eval()
    assert m(torch.randn(1, 16, 1, 1)).shape == (1, 16, 1, 1)


def test_reference_parameter_layout():
    """G=2 and a bias on the redundant 1x1 by default; the reference's submodule names."""
    m = SPConv2d(64, 64)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items() if not k.endswith('num_batches_tracked')}
    assert shapes == {
        'gwc.weight': (64, 16, 3, 3), 'pwc.weight': (64, 32, 1, 1),
        'conv1x1.weight': (64, 32, 1, 1), 'conv1x1.bias': (64,),
        'bn1.weight': (64,), 'bn1.bias': (64,), 'bn1.running_mean': (64,), 'bn1.running_var': (64,),
        'bn2.weight': (64,), 'bn2.bias': (64,), 'bn2.running_mean': (64,), 'bn2.running_var': (64,),
    }
    # params = 9*C^2*alpha/G + C^2*alpha + C^2*(1-alpha) + C + 4C
    assert sum(p.numel() for p in m.parameters()) == 9 * 64 * 64 // 4 + 64 * 64 + 5 * 64


def test_alpha_one_has_no_redundant_branch():
    m = SPConv2d(16, 32, alpha=1, groups=4)
    assert (m.rep_channels, m.red_channels) == (16, 0)
    assert m.conv1x1 is None and m.bn2 is None and m.fusion is None
    x = torch.randn(2, 16, 6, 6)
    torch.testing.assert_close(m(x), m.bn1(m.gwc(x) + m.pwc(x)))


@pytest.mark.parametrize('in_channels,alpha,groups,expected', [
    (64, 0.5, 2, (32, 32)),       # the paper: exact
    (16, 1 / 16, 2, (2, 14)),     # 1 rounds up to one group of 2
    (24, 0.5, 8, (16, 8)),        # 12 is 1.5 groups of 8: rounded half up to 2 groups
    (5, 1.0, 2, (4, 1)),          # cannot take all 5 in groups of 2
    (6, 0.5, 4, (4, 2)),          # 3 -> 4
    (7, 0.5, 1, (4, 3)),          # 3.5 rounds half up
    (8, 1.0, 8, (8, 0)),
])
def test_split_rounding_rule(in_channels, alpha, groups, expected):
    assert sp_split(in_channels, alpha, groups) == expected


@pytest.mark.parametrize('kwargs,names', [
    (dict(alpha=0), 'alpha'), (dict(alpha=-0.5), 'alpha'), (dict(alpha=1.01), 'alpha'),
    (dict(alpha=float('nan')), 'alpha'), (dict(alpha='half'), 'alpha'),
    (dict(groups=0), 'groups'), (dict(groups=1.5), 'groups'),
    (dict(kernel_size=2), 'kernel_size'), (dict(kernel_size=1), 'kernel_size'),
    (dict(kernel_size=(3, 5)), 'kernel_size'),
    (dict(in_channels=3, groups=4), 'in_channels'), (dict(out_channels=30, groups=4), 'out_channels'),
    (dict(stride=0), 'stride'), (dict(in_channels=0), 'in_channels'),
])
def test_invalid_settings_raise_value_error_naming_the_argument(kwargs, names):
    args = dict(in_channels=16, out_channels=16)
    args.update(kwargs)
    with pytest.raises(ValueError, match=names):
        SPConv2d(**args)


@pytest.mark.parametrize('alpha,stride', [(0.5, 1), (0.25, 2), (1.0, 2)])
def test_every_parameter_gets_a_gradient(alpha, stride):
    m = SPConv2d(16, 24, stride=stride, alpha=alpha, groups=4)
    x = torch.randn(3, 16, 9, 9, requires_grad=True)
    m(x).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_fusion_equals_two_way_softmax():
    a, b = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4)
    w = torch.softmax(torch.stack([a.mean((2, 3)), b.mean((2, 3))]), dim=0)
    expected = a * w[0, :, :, None, None] + b * w[1, :, :, None, None]
    torch.testing.assert_close(SoftmaxFusion()(a, b), expected)


@pytest.mark.parametrize('alpha,groups,stride,size',
                         [(0.5, 2, 1, 8), (0.25, 4, 2, 7), (1.0, 2, 2, 5), (0.125, 1, 2, 9)])
def test_reparameterize_matches_eval_module(alpha, groups, stride, size):
    torch.manual_seed(1)
    m = SPConv2d(32, 16, stride=stride, alpha=alpha, groups=groups).eval()
    randomize_bn(m)
    x = torch.randn(2, 32, size, size)
    with torch.no_grad():
        ref = m(x)
        via_timm = reparameterize_model(nn.Sequential(m))(x)
        m.reparameterize()
        m.reparameterize()  # idempotent
        fused = m(x)
    assert not any(isinstance(b, nn.BatchNorm2d) for b in m.modules())
    scale = ref.abs().max()
    assert (fused - ref).abs().max() <= 1e-5 * scale
    assert (via_timm - ref).abs().max() <= 1e-5 * scale


@pytest.mark.parametrize('alpha', [0.5, 1.0])
def test_fold_output_bn_keeps_the_function(alpha):
    torch.manual_seed(2)
    seq = nn.Sequential(SPConv2d(16, 16, alpha=alpha), nn.BatchNorm2d(16)).eval()
    randomize_bn(seq)
    seq[1].weight.data[:3] = torch.tensor([0.0, -1.0, 1e-3])  # zero and negative scales too
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        ref = seq(x)
        folded = fold_batchnorms(seq)
        out = folded(x)
    assert isinstance(folded[1], nn.Identity)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_forward_does_no_channel_arithmetic_or_module_construction(monkeypatch):
    """The split is fixed in __init__: forward must not call the split rule or build modules."""
    m = SPConv2d(16, 16, stride=2)
    calls = []
    import spsearch.ops.spconv as spconv_module
    monkeypatch.setattr(spconv_module, 'sp_split', lambda *a: calls.append(a))
    monkeypatch.setattr(nn.Module, '__init__', lambda *a, **k: calls.append('module'))
    m(torch.randn(2, 16, 8, 8))
    assert calls == []


def test_dtype_and_device_arguments():
    m = SPConv2d(8, 8, dtype=torch.float64, device='meta')
    assert all(p.dtype == torch.float64 and p.device.type == 'meta' for p in m.parameters())


def test_fold_batchnorms_leaves_an_spconv_with_other_norms_unfolded():
    """A group-normed SPConv: its output BN cannot move into the convs before the group norms; the function holds."""
    torch.manual_seed(0)
    seq = nn.Sequential(SPConv2d(8, 8, norm_layer=lambda c, **kw: nn.GroupNorm(2, c, **kw)), nn.BatchNorm2d(8))
    randomize_bn(seq)
    seq.eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        ref = seq(x)
        folded = fold_batchnorms(seq)
        torch.testing.assert_close(folded(x), ref)
    assert isinstance(folded[1], nn.BatchNorm2d)
    with pytest.raises(ValueError, match='only batch norms fold'):
        seq[0].fold_output_bn(seq[1])
