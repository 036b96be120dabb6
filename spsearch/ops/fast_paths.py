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
- ``infer``: the no-grad path with the batch norms (running statistics) folded into the conv
  weights on the fly and the fusion written in place into the redundant branch's output.

All of them are checked against the reference formulation, outputs and gradients, in
``tests/test_fast_paths.py``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['BranchFusion', 'branch_norm_stats', 'dense_rep_weight', 'dense_supported', 'infer', 'norm_affine']

_BN_STATS_DEVICES = ('cpu', 'cuda')


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
    return out + F.conv2d(_pool(x_rep, gwc.stride[0]), pwc_weight)


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
) -> torch.Tensor:
    """SPConv forward without autograd, batch norms in eval mode (running stats) or folded.

    The norms are folded into the conv weights on the fly (a few ops on small tensors), the
    representative branch is one dense conv when ``dense``, and the fused map is written into
    the redundant branch's output in place: four large-tensor ops in all (two convs, the two
    means, one lerp) instead of eleven.
    """
    aff1 = norm_affine(bn1)
    gwc_weight, rep_bias = _fold(gwc.weight, gwc.bias, aff1)
    pwc_weight, _ = _fold(pwc.weight, None, aff1)
    dense_weight = dense_rep_weight(gwc_weight, pwc_weight, gwc.groups, gwc.stride[0]) if dense else None
    if conv1x1 is None or bn2 is None:
        return rep_branch(x, gwc, pwc_weight, dense_weight, rep_bias, gwc_weight)
    x_rep, x_red = x.split((rep_channels, x.shape[1] - rep_channels), dim=1)
    rep = rep_branch(x_rep, gwc, pwc_weight, dense_weight, rep_bias, gwc_weight)
    red_weight, red_bias = _fold(conv1x1.weight, conv1x1.bias, norm_affine(bn2))
    red = F.conv2d(_pool(x_red, gwc.stride[0]), red_weight, red_bias)
    logit = rep.mean((2, 3), keepdim=True) - red.mean((2, 3), keepdim=True)
    if gate_scale is not None:
        logit = logit * gate_scale
    return red.lerp_(rep, torch.sigmoid(logit))


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
