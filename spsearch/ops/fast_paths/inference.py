"""SPConv inference without autograd: the batch norms folded on the fly, one full-size map."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..affine import bn_affine, scale_conv
from .convs import as_mat, dense_rep_weight, is_channels_last, pool

__all__ = ['infer']


def _fold(conv_weight: torch.Tensor, conv_bias: torch.Tensor | None,
          norm: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A conv's weight and bias with the eval-mode batch norm after it folded in (none: unchanged)."""
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
        return conv_weight, conv_bias
    return scale_conv(conv_weight, conv_bias, *bn_affine(norm, conv_weight.dtype))


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
        gemm_min_pixels: float,
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
    PWC and the redundant 1x1 together), against eleven full-size ops for the reference. On
    small maps N small GEMMs are slow; there the 1x1 convs run with shared weights and the
    fusion is an in-place lerp.

    Args:
        x: The layer input.
        rep_channels: Its representative channels (the first ones).
        gwc, pwc, bn1, conv1x1, bn2: The layer's modules (``conv1x1`` and ``bn2`` None without
            a redundant part; the norms eval-mode batch norms or ``nn.Identity``).
        gate_scale: ``SoftmaxFusion.gate_scale``.
        dense: Run GWC and PWC as one dense conv (``dense_rep_weight``).
        gemm_min_pixels: Output maps of at least this many pixels (H * W) take the per-sample
            GEMM, smaller ones the shared-weight convs (0: always the GEMM).
    """
    gwc_weight, rep_bias = _fold(gwc.weight, gwc.bias, bn1)
    pwc_weight, _ = _fold(pwc.weight, None, bn1)
    stride = gwc.stride[0]
    if dense:
        weight = dense_rep_weight(gwc_weight, pwc_weight, gwc.groups, stride)
        groups = 1
    else:
        weight, groups = gwc_weight, gwc.groups
    has_red = conv1x1 is not None and bn2 is not None
    x_rep = x[:, :rep_channels] if has_red else x
    out = F.conv2d(x_rep, weight, rep_bias, gwc.stride, gwc.padding, gwc.dilation, groups)
    pooled = pool(x, stride)
    channels_last = is_channels_last(out)
    if not channels_last and not out.is_contiguous():
        out = out.contiguous()
    pwc_mat = pwc_weight.flatten(1).to(out.dtype)
    if not has_red:
        if not dense:
            _gemm_add_(out, pooled, pwc_mat.expand(out.shape[0], -1, -1), channels_last)
        return out
    assert conv1x1 is not None and bn2 is not None
    red_weight, red_bias = _fold(conv1x1.weight, conv1x1.bias, bn2)
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
    if out.shape[-1] * out.shape[-2] < gemm_min_pixels:
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
    out_mat, x_mat = as_mat(out, channels_last), as_mat(x, channels_last).to(out.dtype)
    weight = weight.to(out.dtype)
    if channels_last:
        out_mat.baddbmm_(x_mat, weight.transpose(1, 2))
    else:
        out_mat.baddbmm_(weight, x_mat)
