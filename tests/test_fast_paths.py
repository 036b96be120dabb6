"""The fast SPConv implementations against the reference formulation: outputs, input and parameter
gradients and running statistics over a grid (alpha incl. 1, G, stride 1/2, odd sizes, batch 1,
channels_last, train and eval, folded), the autograd Function by gradcheck, the memory it saves,
torch.compile without graph breaks, autocast, autotuning, and cost counting independent of impl."""
from __future__ import annotations

import copy
import itertools

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from spsearch import SPConv2d
from spsearch.cost import profile_model
from spsearch.models.sp_resnet import SPBasicBlock, SPBottleneck
from spsearch.ops import auto_impl, autotune, fast_paths, fold_batchnorms, set_spconv_impl
from spsearch.ops.fast_paths import dispatch

from helpers import paper_spconv, randomize_bn

GRID = list(itertools.product([0.25, 0.5, 1.0], [1, 2, 4], [1, 2], [(7, 8), (8, 8)], [1, 3]))


def clone_as(module: SPConv2d, impl: str, recompute: bool = False) -> SPConv2d:
    m = copy.deepcopy(module)
    m.set_impl(impl)
    m.recompute = recompute
    return m


def run(m: nn.Module, x: torch.Tensor, g: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """Output, input gradient and parameter gradients for loss = sum(y * g)."""
    x = x.clone().requires_grad_()
    y = m(x)
    g = torch.randn_like(y) if g is None else g
    (y * g).sum().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    return y.detach(), x.grad, grads


@pytest.mark.parametrize('impl,train,channels_last,recompute,gemm', [
    ('split', True, False, False, True), ('dense', True, False, False, False), ('split', False, False, False, True),
    ('split', False, True, False, False), ('dense', False, False, False, True), ('dense', False, True, False, False),
    ('dense', True, True, False, True), ('split', True, True, True, False), ('dense', True, False, True, True),
    ('split', True, True, False, True),
])
def test_grid_matches_reference_outputs_gradients_and_running_stats(impl, train, channels_last, recompute, gemm,
                                                                   monkeypatch):
    """float64 so that any difference beyond rounding is a bug, not noise. ``gemm`` picks the
    Function with the redundant 1x1 conv inside (GemmBranchFusion) or outside (BranchFusion)."""
    monkeypatch.setattr(dispatch, 'GEMM_MIN_PIXELS_PER_CHANNEL_TRAIN', 0 if gemm else 10 ** 9)
    torch.manual_seed(0)
    for alpha, groups, stride, (h, w), batch in GRID:
        ref = SPConv2d(16, 24, stride=stride, alpha=alpha, groups=groups, impl='reference').double()
        randomize_bn(ref)
        ref.train(train)
        fast = clone_as(ref, impl, recompute)
        x = torch.randn(batch, 16, h, w, dtype=torch.float64)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        g = torch.randn(batch, 24, -(-h // stride), -(-w // stride), dtype=torch.float64)
        y_ref, gx_ref, gp_ref = run(ref, x, g)
        y, gx, gp = run(fast, x, g)
        case = dict(alpha=alpha, groups=groups, stride=stride, size=(h, w), batch=batch)
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10, msg=f'output {case}')
        torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-10, msg=f'input grad {case}')
        assert gp.keys() == gp_ref.keys()
        for name in gp:
            torch.testing.assert_close(gp[name], gp_ref[name], rtol=1e-9, atol=1e-10, msg=f'{name} grad {case}')
        for (name, b), b_ref in zip(fast.named_buffers(), ref.buffers(), strict=True):
            torch.testing.assert_close(b, b_ref, rtol=1e-12, atol=1e-12, msg=f'buffer {name} {case}')
        if channels_last:
            assert y.is_contiguous(memory_format=torch.channels_last) == y_ref.is_contiguous(
                memory_format=torch.channels_last)
        for min_pixels in ([0, 10 ** 9] if not train else []):  # the no-grad path, per-sample GEMM or not
            monkeypatch.setattr(dispatch, 'GEMM_MIN_PIXELS', min_pixels)
            with torch.inference_mode():
                y = fast(x)
            assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
            torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10, msg=f'inference {min_pixels} {case}')


@pytest.mark.parametrize('impl', ['split', 'dense'])
def test_running_stats_track_batch_norm_over_steps_incl_cumulative_momentum(impl):
    torch.manual_seed(0)
    ref = SPConv2d(8, 8, impl='reference').double()
    ref.bn2.momentum = None  # cumulative moving average
    fast = clone_as(ref, impl)
    for _ in range(3):
        x = torch.randn(4, 8, 6, 6, dtype=torch.float64) * 3 + 1
        ref(x), fast(x)
    for (name, b), b_ref in zip(fast.named_buffers(), ref.buffers(), strict=True):
        torch.testing.assert_close(b, b_ref, rtol=1e-12, atol=1e-12, msg=name)
    assert int(fast.bn1.num_batches_tracked) == 3


@pytest.mark.parametrize('impl', ['split', 'dense'])
def test_inference_after_folding_and_fold_output_bn_matches_paper(impl):
    """Folded branch norms (Identity) and a folded output norm (gate_scale), zero/negative scales."""
    torch.manual_seed(3)
    for alpha, stride, size in [(0.5, 1, 8), (0.25, 2, 7), (0.5, 2, 8), (1.0, 2, 6)]:
        seq = nn.Sequential(SPConv2d(16, 16, stride=stride, alpha=alpha, impl=impl), nn.BatchNorm2d(16)).eval()
        randomize_bn(seq)
        seq[1].weight.data[:3] = torch.tensor([0.0, -1.0, 1e-3])
        x = torch.randn(2, 16, size, size)
        with torch.no_grad():
            expected = seq[1](paper_spconv(seq[0], x))
            folded = fold_batchnorms(seq)
            assert isinstance(folded[0].bn1, nn.Identity)
            out = folded(x)
            with torch.inference_mode():
                out_inference = folded(x)
        tol = 1e-5 * expected.abs().max()
        assert (out - expected).abs().max() <= tol
        assert (out_inference - expected).abs().max() <= tol


def test_folded_module_still_trains_through_the_fast_path():
    torch.manual_seed(0)
    ref = SPConv2d(8, 8, impl='reference').double().eval()
    randomize_bn(ref)
    fold_batchnorms(ref, inplace=True)
    ref.train()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    g = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    y_ref, gx_ref, gp_ref = run(ref, x, g)
    for impl in ('split', 'dense'):
        y, gx, gp = run(clone_as(ref, impl), x, g)
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(gx, gx_ref)
        for name in gp_ref:
            torch.testing.assert_close(gp[name], gp_ref[name])


@pytest.mark.parametrize('batch_stats,affine,gate', [(True, True, False), (False, True, True), (True, False, True)])
def test_branch_fusion_gradcheck(batch_stats, affine, gate):
    torch.manual_seed(0)
    d = dict(dtype=torch.float64)
    z1 = torch.randn(3, 4, 3, 2, **d, requires_grad=True)
    z2 = torch.randn(3, 4, 3, 2, **d, requires_grad=True)

    def norm_args() -> tuple:
        weight = (torch.rand(4, **d) + 0.5).requires_grad_() if affine else None
        bias = torch.randn(4, **d, requires_grad=True) if affine else None
        running = () if batch_stats else (torch.randn(4, **d), torch.rand(4, **d) + 0.5)
        return weight, bias, *(running or (None, None)), 1e-5

    gate_scale = torch.randn(1, 4, 1, 1, **d) if gate else None
    args = (z1, z2, *norm_args(), *norm_args(), gate_scale)
    assert torch.autograd.gradcheck(lambda *a: fast_paths.BranchFusion.apply(*a)[0], args)


@pytest.mark.parametrize('batch_stats,channels_last,gate', [(True, False, False), (True, True, True),
                                                          (False, True, False), (False, False, True)])
def test_gemm_branch_fusion_gradcheck(batch_stats, channels_last, gate):
    """Inputs as in a layer: u is a channel slice of a (channels_last) input, so a strided view."""
    torch.manual_seed(0)
    d = dict(dtype=torch.float64)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    z1 = torch.randn(3, 4, 3, 2, **d).contiguous(memory_format=fmt).requires_grad_()
    x = torch.randn(3, 5, 3, 2, **d).contiguous(memory_format=fmt).requires_grad_()
    conv_w = torch.randn(4, 3, 1, 1, **d, requires_grad=True)
    conv_b = torch.randn(4, **d, requires_grad=True)

    def norm_args() -> tuple:
        running = (None, None) if batch_stats else (torch.randn(4, **d), torch.rand(4, **d) + 0.5)
        return (torch.rand(4, **d) + 0.5).requires_grad_(), torch.randn(4, **d, requires_grad=True), *running, 1e-5

    gate_scale = torch.randn(1, 4, 1, 1, **d) if gate else None
    n1, n2 = norm_args(), norm_args()

    def fn(z1, x, conv_w, conv_b, w1, b1, w2, b2):
        return fast_paths.GemmBranchFusion.apply(z1, x[:, 2:], conv_w, conv_b, w1, b1, *n1[2:], w2, b2, *n2[2:],
                                                 gate_scale)[0]
    assert torch.autograd.gradcheck(fn, (z1, x, conv_w, conv_b, n1[0], n1[1], n2[0], n2[1]))


@pytest.mark.parametrize('stride,size,exact', [(1, (7, 9), True), (2, (8, 6), True), (2, (7, 8), False)])
def test_dense_weight_equals_gwc_plus_pooled_pwc(stride, size, exact):
    """The fold is exact at stride 1 and at stride 2 with even sizes; SPConv2d falls back otherwise."""
    torch.manual_seed(0)
    gwc = nn.Conv2d(8, 12, 3, stride, 1, groups=4, bias=False).double()
    pwc = nn.Conv2d(8, 12, 1, bias=False).double()
    x = torch.randn(2, 8, *size, dtype=torch.float64)
    pooled = F.avg_pool2d(x, stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1 else x
    expected = gwc(x) + pwc(pooled)
    dense = F.conv2d(x, fast_paths.dense_rep_weight(gwc.weight, pwc.weight, 4, stride), None, stride, 1)
    assert torch.allclose(dense, expected, atol=1e-12) == exact
    assert fast_paths.dense_supported(3, 2, 1) and not fast_paths.dense_supported(3, 2, 2)
    assert not fast_paths.dense_supported(3, 3, 1) and fast_paths.dense_supported(5, 3, 1)


def test_dense_impl_validation_and_auto_rule():
    with pytest.raises(ValueError, match='impl must be one of'):
        SPConv2d(8, 8, impl='fast')
    with pytest.raises(ValueError, match="impl='dense' needs stride"):
        SPConv2d(8, 8, stride=2, dilation=2, impl='dense')
    assert auto_impl(8, 2, 3, 2, 2, training=False) == 'split'  # never what cannot run
    assert auto_impl(16, 2, 3, 2, 1, training=True) == 'dense' and auto_impl(32, 2, 3, 1, 1, training=True) == 'split'
    assert auto_impl(16, 2, 3, 1, 1, training=False) == 'split'
    m = SPConv2d(8, 8, stride=2, dilation=2)
    assert m.impl == 'auto' and 'impl=auto' in repr(m)
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(m(x), paper_spconv(m, x))


def test_auto_applies_each_device_types_measured_rule():
    """The CPU rule and the GEMM thresholds were measured on one CPU, the CUDA rule on one H200 (dense at batch
    256+ under bf16/fp16, else the reference); any other device type gets the reference, decided at each
    forward from the input's device, batch and precision."""
    for training in (False, True):
        assert auto_impl(16, 2, 3, 1, 1, training, device_type='cuda') == 'reference'
        assert auto_impl(16, 2, 3, 1, 1, training, 'cuda', 64, reduced_precision=True) == 'reference'
        assert auto_impl(16, 2, 3, 1, 1, training, 'cuda', 256, reduced_precision=False) == 'reference'
        assert auto_impl(16, 2, 3, 1, 1, training, 'cuda', 256, reduced_precision=True) == 'dense'
        assert auto_impl(16, 2, 3, 2, 2, training, 'cuda', 256, reduced_precision=True) == 'reference'  # can't run
        assert auto_impl(16, 2, 3, 1, 1, training, 'meta', 256, reduced_precision=True) == 'reference'
        assert auto_impl(16, 2, 3, 1, 1, training, 'cpu') == auto_impl(16, 2, 3, 1, 1, training)
    assert auto_impl(16, 2, 3, 1, 1, training=True) == 'dense'
    m = SPConv2d(16, 16, device='meta')
    x = torch.randn(2, 16, 8, 8, device='meta', requires_grad=True)
    assert m.impl == 'auto' and dispatch.forward(m, x) is None
    y = m(x)
    assert y.shape == (2, 16, 8, 8) and y.device.type == 'meta'
    assert type(y.grad_fn).__name__.startswith('LerpBackward')  # SoftmaxFusion's: the reference ran
    assert type(SPConv2d(16, 16)(torch.randn(2, 16, 8, 8)).grad_fn).__name__ == 'GemmBranchFusionBackward'


def saved_bytes(m: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward, counting each storage once (views of the input are free)."""
    seen, total = {x.untyped_storage().data_ptr()}, 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m(x)
    return total


def test_training_memory_fast_paths_store_less(monkeypatch):
    """Per layer autograd keeps: reference ~5 full-size maps; BranchFusion the two conv outputs;
    GemmBranchFusion only the representative one (the redundant input is a view of the layer
    input); recompute nothing but the input."""
    m = SPConv2d(32, 32)
    x = torch.randn(8, 32, 32, 32, requires_grad=True)
    full_map = 8 * 32 * 32 * 32 * 4
    small = 0.05 * full_map  # weights and per-channel vectors
    assert saved_bytes(clone_as(m, 'reference'), x) >= 4 * full_map
    monkeypatch.setattr(dispatch, 'GEMM_MIN_PIXELS_PER_CHANNEL_TRAIN', 10 ** 9)
    assert 2 * full_map <= saved_bytes(clone_as(m, 'dense'), x) < 2 * full_map + small
    monkeypatch.setattr(dispatch, 'GEMM_MIN_PIXELS_PER_CHANNEL_TRAIN', 0)
    assert full_map <= saved_bytes(clone_as(m, 'split'), x) < full_map + small
    assert full_map <= saved_bytes(clone_as(m, 'dense'), x) < full_map + small
    assert saved_bytes(clone_as(m, 'dense', recompute=True), x) < small


def test_torch_compile_fullgraph_spconv_and_blocks():
    """No graph breaks (fullgraph=True), forward and backward (aot_eager traces the backward too)."""
    torch.manual_seed(0)
    for impl, recompute, stride in [('dense', False, 2), ('split', True, 1)]:
        m = SPConv2d(16, 16, stride=stride, impl=impl, recompute=recompute)
        ref = clone_as(m, 'reference')
        compiled = torch.compile(m, fullgraph=True, backend='aot_eager')
        x = torch.randn(2, 16, 8, 8)
        y, gx, gp = run(compiled, x, torch.ones(2, 16, 8 // stride, 8 // stride))
        y_ref, gx_ref, gp_ref = run(ref, x, torch.ones_like(y))
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(gx, gx_ref)
        m.eval(), ref.eval()
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), ref(x))
    for block in (SPBasicBlock(16, 16), SPBottleneck(64, 16)):
        compiled = torch.compile(block, fullgraph=True, backend='eager')
        x = torch.randn(2, block.conv1.in_channels, 8, 8)
        compiled(x).sum().backward()
        assert all(p.grad is not None for p in block.parameters())


def test_autocast_bf16_runs_the_fast_path_close_to_reference(monkeypatch):
    torch.manual_seed(0)
    m = SPConv2d(16, 16, impl='dense')
    ref = clone_as(m, 'reference')
    x = torch.randn(2, 16, 8, 8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y, y_ref = m(x), ref(x)
        y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and y_ref.dtype == torch.bfloat16
    assert (y.float() - y_ref.float()).abs().max() < 0.05 * y_ref.float().abs().max()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in m.parameters())
    m.eval(), ref.eval()
    for min_pixels in (0, 10 ** 9):
        monkeypatch.setattr(dispatch, 'GEMM_MIN_PIXELS', min_pixels)
        with torch.autocast('cpu', dtype=torch.bfloat16), torch.no_grad():
            y, y_ref = m(x), ref(x)
        assert y.dtype == torch.bfloat16
        assert (y.float() - y_ref.float()).abs().max() < 0.05 * y_ref.float().abs().max()


def test_cost_counts_the_architecture_whatever_the_impl():
    model = timm.create_model('sp_resnet20')
    counts = set()
    for impl in ('reference', 'split', 'dense'):
        set_spconv_impl(model, impl)
        cost = profile_model(model, (3, 32, 32))
        counts.add((cost.macs, cost.analytic_macs, cost.params))
    assert counts == {(18_070_816, 18_070_816, sum(p.numel() for p in model.parameters()))}


def test_autotune_sets_a_measured_impl_per_layer_and_keeps_the_function():
    torch.manual_seed(0)
    model = timm.create_model('sp_resnet20', sp_alpha=(0.5, 0.25, 0.5)).eval()
    randomize_bn(model)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(x)
    report = autotune(model, x, warmup=0, repeats=1)
    sites = [n for n, m in model.named_modules() if isinstance(m, SPConv2d)]
    assert list(report) == sites
    for name, row in report.items():
        assert row['chosen'] in ('split', 'dense') and row[row['chosen']] == min(row['split'], row['dense'])
        assert model.get_submodule(name).impl == row['chosen']
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
    assert set_spconv_impl(model, 'reference', recompute=True) == len(sites)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
@pytest.mark.parametrize('impl', ['split', 'dense'])
def test_cuda_fp32_and_bf16_channels_last_match_reference(impl):
    """The GPU configuration of the issue's goals (bf16 autocast, channels_last), train and eval.

    fp32 is compared with TF32 off: cuDNN's default TF32 convs differ from each other by ~6e-4 (seen on an H200),
    which says nothing about the formulations."""
    torch.manual_seed(0)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        _compare_on_cuda(impl)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def _compare_on_cuda(impl: str) -> None:
    ref = SPConv2d(64, 64, stride=2, impl='reference').cuda().to(memory_format=torch.channels_last)
    fast = clone_as(ref, impl)
    x = torch.randn(8, 64, 28, 28, device='cuda').contiguous(memory_format=torch.channels_last)
    g = torch.randn(8, 64, 14, 14, device='cuda').contiguous(memory_format=torch.channels_last)
    y_ref, gx_ref, _ = run(ref, x, g)
    y, gx, _ = run(fast, x, g)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-4, atol=1e-4)
    for train in (True, False):
        ref.train(train), fast.train(train)
        with torch.autocast('cuda', dtype=torch.bfloat16):
            y_ref, y = ref(x), fast(x)
        assert y.dtype == torch.bfloat16
        assert (y.float() - y_ref.float()).abs().max() < 0.05 * y_ref.float().abs().max()


@pytest.mark.parametrize('impl', ['reference', 'split', 'dense'])
def test_a_folded_model_runs_under_bf16_autocast(impl):
    """Regression, seen first on an H200: a folded model's fp32 ``gate_scale`` made the fusion weight fp32 under
    autocast while the maps were bf16, and ``torch.lerp`` refused the mix (CPU autocast does the same)."""
    torch.manual_seed(0)
    model = timm.create_model('sp_resnet20').eval()
    randomize_bn(model)
    set_spconv_impl(model, impl)
    folded = fold_batchnorms(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        expected = folded(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y = folded(x)
    assert y.dtype == torch.bfloat16
    assert (y.float() - expected).abs().max() < 0.1 * expected.abs().max()


@pytest.mark.parametrize('channels,size,expected', [(16, 32, 'GemmBranchFusion'), (64, 8, 'GemmBranchFusion'),
                                                    (256, 2, 'BranchFusion'), (512, 1, 'BranchFusion')])
def test_training_picks_gemm_fusion_only_where_the_map_outweighs_the_redundant_channels(channels, size, expected):
    """GemmBranchFusion replaces the N*C*H*W map z2 with N*C*r per-sample weights: it is used only where
    H*W >= GEMM_MIN_PIXELS_PER_CHANNEL_TRAIN * r (at 1 x 1 with r = 256 it measured 8x slower)."""
    m = SPConv2d(channels, channels).train()
    out = m(torch.randn(4, channels, size, size, requires_grad=True))
    assert type(out.grad_fn).__name__ == f'{expected}Backward'
