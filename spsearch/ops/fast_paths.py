"""Fast implementations of SPConv: the same function as the paper's formulation, in fewer passes.

``SPConv2d`` (``impl='reference'``) computes the operator module by module, as the paper writes
it: group-wise conv, point-wise conv, their sum, a batch norm, the redundant 1x1 conv and its
batch norm, two global means, a softmax and a weighted sum. Every step reads and writes a full
``(N, C_out, H, W)`` tensor, autograd stores most of them, and at 16-64 channels the op count
rather than the MACs sets the time. The functions here compute the same result with fewer,
larger steps:

- ``dense_rep_weight``: GWC and PWC folded into ONE dense k x k kernel over the representative
  channels (the PWC is the centre tap; at stride 2 the 2 x 2 average pool + 1x1 is the 2 x 2
  block of taps below-right of the centre, each with a quarter of the weight, exact when H and W
  are even). One conv instead of two convs and an add; built from the reference parameters
  inside the graph, so gradients reach ``gwc.weight`` and ``pwc.weight``.
- ``BranchFusion``: an autograd Function for both batch norms and the softmax fusion. Every
  normalised value is a per-channel affine map of a conv output, so the output is
  ``y = P * z_rep + Q * z_red + R`` with per-(sample, channel) ``P, Q, R``: two passes forward;
  it stores only the two conv outputs (not the normalised maps, the fused map and the weights)
  and its hand-derived backward needs three reductions and two passes per branch.
- ``GemmBranchFusion``: the same with the redundant branch's 1x1 conv inside, so its output is
  never materialised (statistics from a Gram matrix of its input, contribution and gradients
  by batched GEMMs); the training path of ``SPConv2d``.
- ``infer``: the no-grad path with the batch norms (running statistics) folded into the conv
  weights on the fly, and both 1x1 convs and the fusion as one per-sample batched GEMM added in
  place to the k x k conv's output (see its docstring): one full-size map is materialised, as
  for the vanilla conv.

All of them are checked against the reference formulation, outputs and gradients, in
``tests/test_fast_paths.py``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['GEMM_MIN_PIXELS', 'GEMM_MIN_PIXELS_PER_CHANNEL_TRAIN', 'BranchFusion', 'GemmBranchFusion',
           'branch_norm_stats', 'dense_rep_weight', 'dense_supported', 'infer', 'norm_affine', 'rep_branch']

_BN_STATS_DEVICES = ('cpu', 'cuda')

GEMM_MIN_PIXELS = 256
"""Output maps at least this large (H * W) use the per-sample GEMM in ``infer`` (measured on CPU,
2 threads: at 14 x 14 both ways tie, at 7 x 7 the GEMMs take 1.3x as long)."""
GEMM_MIN_PIXELS_PER_CHANNEL_TRAIN = 2.0
"""Training uses ``GemmBranchFusion`` where the output map has at least this many pixels per
redundant input channel (``H * W >= 2 r``), ``BranchFusion`` (the 1x1 conv materialised) below.
``GemmBranchFusion`` trades the full-size map ``z2`` (``N C H W`` values) for per-sample ``N C r``
weights and gradients, which only pays while ``H W`` exceeds ``r``. Measured per layer on CPU,
2 threads, batch 128 (forward + backward, GEMM / plain time): 0.84-0.92 at ``H W / r`` of 2-128
(CIFAR ResNet-20, SP-ResNet-50's first stages), about 1.0 at 1-2, 1.2-8x slower at 0.5 and below
(ImageNet-layout models at small inputs, SP-ResNet-50's 7 x 7 stage)."""


def dense_supported(kernel_size: int, stride: int, dilation: int) -> bool:
    """Whether GWC + (pooled) PWC can be one dense ``kernel_size`` conv at this stride.

    At stride 1 the PWC is the centre tap (any dilation). At stride s > 1 the s x s average pool
    + 1x1 covers the taps ``c .. c+s-1`` below-right of the centre ``c``, which must lie inside
    the kernel, undilated.
    """
    return stride == 1 or (dilation == 1 and kernel_size // 2 + stride <= kernel_size)


def dense_rep_weight(gwc_weight: torch.Tensor, pwc_weight: torch.Tensor, groups: int, stride: int) -> torch.Tensor:
    """One dense k x k kernel equal to the group-wise conv plus the (pooled) point-wise conv.

    The dense conv uses the GWC's stride, padding and dilation. At stride s > 1 it equals
    ``gwc(x) + pwc(avg_pool_s(x))`` when H and W are multiples of s (see ``dense_supported``).

    Args:
        gwc_weight: ``(C_out, C_rep / groups, k, k)``.
        pwc_weight: ``(C_out, C_rep, 1, 1)``.
        groups: Groups of the GWC.
        stride: Stride of the GWC (the pool size of the PWC's input).

    Returns:
        ``(C_out, C_rep, k, k)``, differentiable with respect to both weights.
    """
    out_channels, in_per_group, k, _ = gwc_weight.shape
    blocks = gwc_weight.reshape(groups, out_channels // groups, in_per_group, k, k)
    eye = torch.eye(groups, dtype=gwc_weight.dtype, device=gwc_weight.device)
    dense = torch.einsum('gh,goikl->gohikl', eye, blocks).reshape(out_channels, groups * in_per_group, k, k)
    centre = k // 2
    taps = pwc_weight.expand(-1, -1, stride, stride) / (stride * stride) if stride > 1 else pwc_weight
    return dense + F.pad(taps, (centre, k - centre - stride, centre, k - centre - stride))


def norm_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(scale, shift)`` with ``norm(x) == x * scale + shift`` per channel, from running stats.

    ``None`` for ``nn.Identity`` (a norm already folded). Computed in the parameters' dtype, for
    on-the-fly folding (``SPConv2d.reparameterize`` folds in float64 instead).
    """
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
        return None
    assert norm.running_mean is not None and norm.running_var is not None
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return scale, shift


def _fold(weight: torch.Tensor, bias: torch.Tensor | None,
          affine: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if affine is None:
        return weight, bias
    scale, shift = affine
    return weight * scale.view(-1, 1, 1, 1), shift if bias is None else bias * scale + shift


def _pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    if stride == 1:
        return x
    return F.avg_pool2d(x, stride, stride, ceil_mode=True, count_include_pad=False)


def rep_branch(x_rep: torch.Tensor, gwc: nn.Conv2d, pwc_weight: torch.Tensor, dense_weight: torch.Tensor | None,
               rep_bias: torch.Tensor | None = None, gwc_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Representative branch before its norm: one dense conv, or GWC + PWC (on pooled input).

    Args:
        x_rep: Representative input channels.
        gwc: The group-wise conv (its stride, padding, dilation and groups are used).
        pwc_weight: Point-wise weight (possibly with a norm folded in).
        dense_weight: The dense kernel from ``dense_rep_weight``, or None for the two-conv form.
        rep_bias: Bias of the branch (a folded norm's shift, or ``gwc.bias``).
        gwc_weight: GWC weight to use instead of ``gwc.weight`` (a norm folded in).
    """
    if dense_weight is not None:
        return F.conv2d(x_rep, dense_weight, rep_bias, gwc.stride, gwc.padding, gwc.dilation)
    weight = gwc.weight if gwc_weight is None else gwc_weight
    out = F.conv2d(x_rep, weight, rep_bias, gwc.stride, gwc.padding, gwc.dilation, gwc.groups)
    return out.add_(F.conv2d(_pool(x_rep, gwc.stride[0]), pwc_weight))


def _channels_last(t: torch.Tensor) -> bool:
    """Whether batched-matrix views of ``t`` should be ``(N, HW, C)`` (else ``(N, C, HW)``)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _as_mat(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``(N, HW, C)`` or ``(N, C, HW)``; a view when ``t`` is laid out that way, else a copy."""
    n, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(n, h * w, c) if channels_last else t.reshape(n, c, h * w)


def infer(
        x: torch.Tensor,
        rep_channels: int,
        gwc: nn.Conv2d,
        pwc: nn.Conv2d,
        bn1: nn.Module,
        conv1x1: nn.Conv2d | None,
        bn2: nn.Module | None,
        gate_scale: torch.Tensor | None,
        dense: bool,
        per_sample_gemm: bool | None = None,
) -> torch.Tensor:
    """SPConv forward without autograd, batch norms in eval mode (running stats) or folded.

    The norms are folded into the conv weights on the fly (a few ops on small tensors). The 1x1
    convs are linear, so their spatial means, which the gate needs, are the 1x1 convs of the
    input's means, and their weighted contribution to the output is a per-sample 1x1 conv with
    the gate folded into its weights. So only the k x k conv's output is ever materialised::

        a = GWC(x_rep) + b1                             (or the dense conv: GWC + PWC)
        w = sigmoid(gs * (mean(a) + PWC(mean x_rep) - RED(mean x_red) - b2))
        y = w * a + (1 - w) * b2 + bmm(pool(x), [w * PWC | (1 - w) * RED])

    one conv, two means, one in-place scale and one in-place batched GEMM over the input (the
    PWC and the redundant 1x1 together), against eleven full-size ops for the reference. On small
    maps (``H * W < GEMM_MIN_PIXELS``) N small GEMMs are slow; there the 1x1 convs run with
    shared weights and the fusion is an in-place lerp (``per_sample_gemm`` forces either).
    """
    aff1 = norm_affine(bn1)
    gwc_weight, rep_bias = _fold(gwc.weight, gwc.bias, aff1)
    pwc_weight, _ = _fold(pwc.weight, None, aff1)
    stride = gwc.stride[0]
    if dense:
        weight = dense_rep_weight(gwc_weight, pwc_weight, gwc.groups, stride)
        groups = 1
    else:
        weight, groups = gwc_weight, gwc.groups
    has_red = conv1x1 is not None and bn2 is not None
    x_rep = x[:, :rep_channels] if has_red else x
    out = F.conv2d(x_rep, weight, rep_bias, gwc.stride, gwc.padding, gwc.dilation, groups)
    pooled = _pool(x, stride)
    channels_last = _channels_last(out)
    if not channels_last and not out.is_contiguous():
        out = out.contiguous()
    pwc_mat = pwc_weight.flatten(1).to(out.dtype)
    if not has_red:
        if not dense:
            _gemm_add_(out, pooled, pwc_mat.expand(out.shape[0], -1, -1), channels_last)
        return out
    assert conv1x1 is not None and bn2 is not None
    red_weight, red_bias = _fold(conv1x1.weight, conv1x1.bias, norm_affine(bn2))
    red_mat = red_weight.flatten(1).to(out.dtype)
    x_mean = pooled.mean((2, 3))
    logit = out.mean((2, 3)) - x_mean[:, rep_channels:] @ red_mat.t()
    if not dense:
        logit = logit + x_mean[:, :rep_channels] @ pwc_mat.t()
    if red_bias is not None:
        logit = logit - red_bias
    if gate_scale is not None:
        logit = logit * gate_scale.reshape(1, -1)
    w = torch.sigmoid(logit)
    if per_sample_gemm is None:
        per_sample_gemm = out.shape[-1] * out.shape[-2] >= GEMM_MIN_PIXELS
    if not per_sample_gemm:
        # small maps: N small GEMMs lose to shared-weight 1x1 convs and an in-place lerp
        if not dense:
            out.add_(F.conv2d(pooled[:, :rep_channels], pwc_weight))
        red = F.conv2d(pooled[:, rep_channels:], red_weight, red_bias)
        return out.lerp_(red, (1 - w)[:, :, None, None].to(out.dtype))
    shift = (1 - w) * red_bias if red_bias is not None else torch.zeros_like(w)
    torch.addcmul(shift[:, :, None, None].to(out.dtype), out, w[:, :, None, None].to(out.dtype), out=out)
    red_part = (1 - w)[:, :, None] * red_mat
    if dense:
        _gemm_add_(out, pooled[:, rep_channels:], red_part, channels_last)
    else:
        _gemm_add_(out, pooled, torch.cat([w[:, :, None] * pwc_mat, red_part], dim=2), channels_last)
    return out


def _gemm_add_(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, channels_last: bool) -> None:
    """In place: ``out += `` the 1x1 conv of ``x`` with a per-sample weight ``(N, C_out, C_in)``.

    Runs on batched-matrix views: ``out``'s is a view (``out`` is laid out as ``channels_last``
    says), ``x``'s one too when ``x`` is laid out the same way (a channel slice included).
    """
    out_mat, x_mat = _as_mat(out, channels_last), _as_mat(x, channels_last).to(out.dtype)
    weight = weight.to(out.dtype)
    if channels_last:
        out_mat.baddbmm_(x_mat, weight.transpose(1, 2))
    else:
        out_mat.baddbmm_(weight, x_mat)


def branch_norm_stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel batch mean and biased variance of ``z`` over (N, H, W), in float32 or wider.

    Uses the kernel batch norm itself uses on CPU and CUDA (``batch_norm_update_stats``; much
    faster than ``torch.var_mean`` on CPU), ``var_mean`` elsewhere.
    """
    if z.dtype not in (torch.float32, torch.float64):
        z = z.float()
    if z.device.type in _BN_STATS_DEVICES:
        mean, var = torch.ops.aten.batch_norm_update_stats(z, None, None, 0.0)
        return mean, var
    var, mean = torch.var_mean(z, dim=(0, 2, 3), correction=0)
    return mean, var


def _affine(mean: torch.Tensor, inv_std: torch.Tensor, weight: torch.Tensor | None,
            bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    scale = inv_std if weight is None else inv_std * weight
    shift = -mean * scale
    return scale, shift if bias is None else shift + bias


class BranchFusion(torch.autograd.Function):
    """``y = w * bn1(z1) + (1 - w) * bn2(z2)``, ``w = sigmoid(gs * (mean_hw bn1(z1) - mean_hw bn2(z2)))``.

    Inputs: the two conv outputs ``z1`` (representative) and ``z2`` (redundant); per branch the
    norm's affine weight and bias (or None), running mean and variance (None: use batch
    statistics, as in training) and eps; and the gate scale ``gs`` (``SoftmaxFusion.gate_scale``,
    or None).

    Outputs: ``y``, and a ``(4, C)`` non-differentiable tensor of the statistics used (means and
    biased variances of both branches), from which the caller updates the running statistics.

    Saves only ``z1``, ``z2`` and per-channel/per-sample vectors. Gradients are exact (checked
    against autograd through the reference formulation and with ``gradcheck``).
    """

    @staticmethod
    def forward(ctx: Any, z1: torch.Tensor, z2: torch.Tensor,
                weight1: torch.Tensor | None, bias1: torch.Tensor | None,
                running_mean1: torch.Tensor | None, running_var1: torch.Tensor | None, eps1: float,
                weight2: torch.Tensor | None, bias2: torch.Tensor | None,
                running_mean2: torch.Tensor | None, running_var2: torch.Tensor | None, eps2: float,
                gate_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if running_mean1 is None or running_var1 is None or running_mean2 is None or running_var2 is None:
            batch_stats = True
            mean1, var1 = branch_norm_stats(z1)
            mean2, var2 = branch_norm_stats(z2)
        else:
            batch_stats = False
            mean1, var1, mean2, var2 = running_mean1, running_var1, running_mean2, running_var2
        stat_dtype = mean1.dtype
        inv1, inv2 = torch.rsqrt(var1 + eps1), torch.rsqrt(var2 + eps2)
        scale1, shift1 = _affine(mean1, inv1, weight1, bias1)
        scale2, shift2 = _affine(mean2, inv2, weight2, bias2)
        zbar1 = z1.mean((2, 3), dtype=stat_dtype)
        zbar2 = z2.mean((2, 3), dtype=stat_dtype)
        logit = (zbar1 * scale1 + shift1) - (zbar2 * scale2 + shift2)
        if gate_scale is not None:
            logit = logit * gate_scale.reshape(1, -1)
        w = torch.sigmoid(logit)
        p = (w * scale1).to(z1.dtype)[:, :, None, None]
        q = ((1 - w) * scale2).to(z1.dtype)[:, :, None, None]
        r = torch.lerp(shift2, shift1, w).to(z1.dtype)[:, :, None, None]
        y = torch.addcmul(r, z1, p)
        y.addcmul_(z2, q)

        ctx.batch_stats = batch_stats
        ctx.has_weight = (weight1 is not None, weight2 is not None)
        ctx.has_bias = (bias1 is not None, bias2 is not None)
        ctx.save_for_backward(z1, z2, w, zbar1, zbar2, mean1, inv1, scale1, shift1, mean2, inv2, scale2, shift2,
                              gate_scale)
        stats = torch.stack([mean1, var1, mean2, var2])
        ctx.mark_non_differentiable(stats)
        return y, stats

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor, _grad_stats: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        (z1, z2, w, zbar1, zbar2, mean1, inv1, scale1, shift1, mean2, inv2, scale2, shift2,
         gate_scale) = ctx.saved_tensors
        n, _, h, width = z1.shape
        hw, m = h * width, n * h * width
        dtype = w.dtype
        sum_g = grad.sum((2, 3), dtype=dtype)
        sum_gz1 = (grad * z1).sum((2, 3), dtype=dtype)
        sum_gz2 = (grad * z2).sum((2, 3), dtype=dtype)
        # d loss / d logit: sum_hw grad * (bn1(z1) - bn2(z2)) * w (1 - w)
        dlogit = (scale1 * sum_gz1 - scale2 * sum_gz2 + (shift1 - shift2) * sum_g) * w * (1 - w)
        if gate_scale is not None:
            dlogit = dlogit * gate_scale.reshape(1, -1)
        grads: list[torch.Tensor | None] = []
        param_grads: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []
        for i, (z, zbar, sum_gz, mean, inv, scale, weight_w, dmean) in enumerate((
                (z1, zbar1, sum_gz1, mean1, inv1, scale1, w, dlogit),
                (z2, zbar2, sum_gz2, mean2, inv2, scale2, 1 - w, -dlogit))):
            # d loss / d bn_i(z) = grad * weight_w + dmean / HW (dmean: through the spatial mean)
            dbias = (weight_w * sum_g + dmean).sum(0)
            dweight = (inv * (weight_w * (sum_gz - mean * sum_g) + dmean * (zbar - mean))).sum(0)
            coef_g = scale * weight_w
            const = scale * dmean / hw
            if ctx.batch_stats:
                # batch statistics depend on z: the usual batch-norm correction terms
                const = const + scale * (inv * dweight * mean - dbias) / m
                dz = torch.addcmul(const.to(z.dtype)[:, :, None, None], grad, coef_g.to(z.dtype)[:, :, None, None])
                dz.addcmul_(z, (-scale * inv * dweight / m).to(z.dtype)[None, :, None, None])
            else:
                dz = torch.addcmul(const.to(z.dtype)[:, :, None, None], grad, coef_g.to(z.dtype)[:, :, None, None])
            grads.append(dz if ctx.needs_input_grad[i] else None)
            param_grads.append((dweight if ctx.has_weight[i] else None, dbias if ctx.has_bias[i] else None))
        return (grads[0], grads[1], *param_grads[0], None, None, None, *param_grads[1], None, None, None, None)


class GemmBranchFusion(torch.autograd.Function):
    """``BranchFusion`` with the redundant branch's 1x1 conv inside, never materialised.

    ``z2 = W u + b`` is linear in the (pooled) redundant input ``u``, so everything the fusion
    needs from it is small: its batch mean and variance are ``W mean(u) + b`` and
    ``diag(W cov(u) W^T)`` (``cov(u)``: an ``r x r`` Gram matrix of the input), its per-sample
    means are ``W mean_hw(u) + b``, and its weighted contribution to the output,
    ``(1 - w) * bn2(z2)``, is a per-sample 1x1 conv with the gate and the norm folded into the
    weights, accumulated in place into ``y`` by one batched GEMM. The backward likewise needs
    ``sum_hw grad u^T`` (one batched GEMM) instead of the full-size ``dz2`` and a conv backward.
    Per layer this saves writing and reading ``z2`` (five full-size passes forward and backward)
    and storing it.

    Inputs: ``z1`` (the representative conv output), ``u`` (the redundant branch's input,
    already pooled at stride > 1; may be a channel slice of the layer input), the 1x1 conv's
    weight and bias, then as ``BranchFusion``: per branch the norm's weight, bias, running mean,
    running variance (None: batch statistics) and eps, and the gate scale.

    Outputs: ``y`` (laid out like ``z1``) and the ``(4, C)`` statistics, as ``BranchFusion``.
    The variance of the redundant branch comes from ``E[u u^T] - E[u] E[u]^T`` in float32 (or
    float64 for float64 inputs), which loses precision when an input channel's mean is orders
    of magnitude above its spread; layer inputs after BN + ReLU are far from that.
    """

    @staticmethod
    def forward(ctx: Any, z1: torch.Tensor, u: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor | None,
                weight1: torch.Tensor | None, bias1: torch.Tensor | None,
                running_mean1: torch.Tensor | None, running_var1: torch.Tensor | None, eps1: float,
                weight2: torch.Tensor | None, bias2: torch.Tensor | None,
                running_mean2: torch.Tensor | None, running_var2: torch.Tensor | None, eps2: float,
                gate_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        channels_last = _channels_last(z1)
        if not channels_last and not z1.is_contiguous():
            z1 = z1.contiguous()
        n, c, h, width = z1.shape
        m = n * h * width
        st = torch.promote_types(z1.dtype, torch.float32)
        w_red = conv_weight.reshape(c, -1).to(st)
        b_red = conv_bias.to(st) if conv_bias is not None else torch.zeros(c, dtype=st, device=z1.device)
        u_mat = _as_mat(u, channels_last)
        u_mean = u.mean((2, 3), dtype=st)
        mu_u = u_mean.mean(0)
        if running_mean1 is None or running_var1 is None or running_mean2 is None or running_var2 is None:
            batch_stats = True
            mean1, var1 = branch_norm_stats(z1)
            if channels_last:
                u_rows = u_mat.reshape(m, -1)
                gram = (u_rows.t() @ u_rows).to(st) / m
            else:
                gram = (u_mat @ u_mat.transpose(1, 2)).sum(0).to(st) / m
            cov = gram - torch.outer(mu_u, mu_u)
            mean2 = w_red @ mu_u + b_red
            var2 = ((w_red @ cov) * w_red).sum(1).clamp_min(0)
            delta = -(w_red @ mu_u)
        else:
            batch_stats = False
            mean1, var1, mean2, var2 = running_mean1, running_var1, running_mean2, running_var2
            gram = torch.zeros(0, dtype=st, device=z1.device)
            delta = b_red - mean2
        inv1, inv2 = torch.rsqrt(var1 + eps1), torch.rsqrt(var2 + eps2)
        scale1, shift1 = _affine(mean1, inv1, weight1, bias1)
        # bn2(z2) = scale2 * (W u) + shift2
        scale2 = inv2 if weight2 is None else inv2 * weight2
        shift2 = scale2 * delta if bias2 is None else scale2 * delta + bias2
        zbar1 = z1.mean((2, 3), dtype=st)
        wu_mean = u_mean @ w_red.t()
        logit = (zbar1 * scale1 + shift1) - (wu_mean * scale2 + shift2)
        if gate_scale is not None:
            logit = logit * gate_scale.reshape(1, -1)
        w = torch.sigmoid(logit)
        dt = z1.dtype
        y = torch.addcmul(torch.lerp(shift2, shift1, w).to(dt)[:, :, None, None], z1,
                          (w * scale1).to(dt)[:, :, None, None])
        per_sample = (((1 - w) * scale2)[:, :, None] * w_red).to(dt)
        y_mat, u_mat_d = _as_mat(y, channels_last), u_mat.to(dt)
        if channels_last:
            y_mat.baddbmm_(u_mat_d, per_sample.transpose(1, 2))
        else:
            y_mat.baddbmm_(per_sample, u_mat_d)

        ctx.batch_stats, ctx.channels_last = batch_stats, channels_last
        ctx.has = (weight1 is not None, bias1 is not None, weight2 is not None, bias2 is not None,
                   conv_bias is not None)
        ctx.save_for_backward(z1, u, w_red, w, zbar1, u_mean, mean1, inv1, scale1, shift1, inv2, scale2, shift2,
                              delta, gram, gate_scale)
        stats = torch.stack([mean1, var1, mean2, var2])
        ctx.mark_non_differentiable(stats)
        return y, stats

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor, _grad_stats: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        (z1, u, w_red, w, zbar1, u_mean, mean1, inv1, scale1, shift1, inv2, scale2, shift2, delta, gram,
         gate_scale) = ctx.saved_tensors
        cl = ctx.channels_last
        n, c, h, width = z1.shape
        hw, m = h * width, n * h * width
        st = w.dtype
        grad = grad.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        g_mat, u_mat = _as_mat(grad, cl), _as_mat(u, cl).to(grad.dtype)
        sum_g = grad.sum((2, 3), dtype=st)
        sum_gz1 = (grad * z1).sum((2, 3), dtype=st)
        # sum_hw g u^T, (N, C, r); computed as (u^T g)^T, which MKL runs 2x faster for small r
        g_u = ((u_mat.transpose(1, 2) @ g_mat).transpose(1, 2) if cl else g_mat @ u_mat.transpose(1, 2)).to(st)
        sum_gwu = (g_u * w_red).sum(2)  # sum_hw g * (W u)
        dlogit = (scale1 * sum_gz1 + shift1 * sum_g - scale2 * sum_gwu - shift2 * sum_g) * w * (1 - w)
        if gate_scale is not None:
            dlogit = dlogit * gate_scale.reshape(1, -1)

        # representative branch: as BranchFusion
        dbias1 = (w * sum_g + dlogit).sum(0)
        dweight1 = (inv1 * (w * (sum_gz1 - mean1 * sum_g) + dlogit * (zbar1 - mean1))).sum(0)
        const = scale1 * dlogit / hw
        coef = (scale1 * w).to(z1.dtype)[:, :, None, None]
        if ctx.batch_stats:
            const = const + scale1 * (inv1 * dweight1 * mean1 - dbias1) / m
            dz1 = torch.addcmul(const.to(z1.dtype)[:, :, None, None], grad, coef)
            dz1.addcmul_(z1, (-scale1 * inv1 * dweight1 / m).to(z1.dtype)[None, :, None, None])
        else:
            dz1 = torch.addcmul(const.to(z1.dtype)[:, :, None, None], grad, coef)

        # redundant branch: bn2 input z2 = W u + b, x_hat2 = (W u + delta) * inv2
        omega, dm2 = 1 - w, -dlogit
        wu_mean = u_mean @ w_red.t()
        dbias2 = (omega * sum_g + dm2).sum(0)
        dweight2 = (inv2 * (omega * (sum_gwu + delta * sum_g) + dm2 * (wu_mean + delta))).sum(0)
        # d loss / d z2 = d1 * grad + e * (W u) + f
        d1 = scale2 * omega
        f = scale2 * dm2 / hw
        e = torch.zeros_like(inv2)
        if ctx.batch_stats:
            e = -scale2 * inv2 * dweight2 / m
            f = f - scale2 * dbias2 / m + e * delta
        du = None
        if ctx.needs_input_grad[1]:
            gd = (d1[:, :, None] * w_red).to(grad.dtype)  # (N, C, r)
            fw = (f @ w_red).to(grad.dtype)  # W^T f, (N, r)
            if cl:
                du_mat = torch.baddbmm(fw[:, None, :], g_mat, gd)
            else:
                du_mat = torch.baddbmm(fw[:, :, None], gd.transpose(1, 2), g_mat)
            if ctx.batch_stats:  # + (W^T diag(e) W) u: the same weight for every sample, one GEMM
                q = (w_red.t() @ (e[:, None] * w_red)).to(grad.dtype)
                if cl:
                    du_mat.view(m, -1).addmm_(u_mat.reshape(m, -1), q)
                else:
                    du_mat.baddbmm_(q.expand(n, -1, -1), u_mat)
            r = w_red.shape[1]
            du = (du_mat.view(n, h, width, r).permute(0, 3, 1, 2) if cl else du_mat.view(n, r, h, width)).to(u.dtype)
        dconv_w = (d1[:, :, None] * g_u).sum(0) + hw * f.t() @ u_mean
        dconv_b = (d1 * sum_g).sum(0) + hw * f.sum(0)
        if ctx.batch_stats:
            dconv_w = dconv_w + e[:, None] * (w_red @ (m * gram))
            dconv_b = dconv_b + e * (w_red @ (m * u_mean.mean(0)))
        has_w1, has_b1, has_w2, has_b2, has_cb = ctx.has
        return (dz1 if ctx.needs_input_grad[0] else None, du, dconv_w.view(c, -1, 1, 1),
                dconv_b if has_cb else None,
                dweight1 if has_w1 else None, dbias1 if has_b1 else None, None, None, None,
                dweight2 if has_w2 else None, dbias2 if has_b2 else None, None, None, None, None)
