"""The convolutions of SPConv's fast paths: the representative branch as two convs or one dense
kernel, and the batched-matrix views of feature maps that their GEMMs share."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['as_mat', 'dense_rep_weight', 'dense_supported', 'is_channels_last', 'pool', 'rep_branch']


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


def pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    """The s x s average pool of the 1x1 paths (``SPConv2d.pool``), as a function."""
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
    return out.add_(F.conv2d(pool(x_rep, gwc.stride[0]), pwc_weight))


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether batched-matrix views of ``t`` should be ``(N, HW, C)`` (else ``(N, C, HW)``)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def as_mat(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``(N, HW, C)`` or ``(N, C, HW)``; a view when ``t`` is laid out that way, else a copy."""
    n, c, h, w = t.shape
    return t.permute(0, 2, 3, 1).reshape(n, h * w, c) if channels_last else t.reshape(n, c, h * w)
