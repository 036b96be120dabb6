"""Batch-norm folding arithmetic: an eval-mode BatchNorm as a per-channel affine map, and a conv
with such a map applied to its output.

Every fold of SPSearch goes through these two: ``SPConv2d.reparameterize`` and
``SPConv2d.fold_output_bn`` and ``fold_batchnorms`` fold in place in float64, and the fast
inference path (``fast_paths.infer``) folds on the fly in the parameters' dtype.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ['bn_affine', 'scale_conv', 'scale_conv_']


def bn_affine(bn: nn.modules.batchnorm._BatchNorm,
              dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` with ``bn(x) == x * scale + shift`` in eval mode.

    Args:
        bn: The norm; its running statistics are used.
        dtype: Dtype of the arithmetic and the result: float64 (the default) to fold in place
            without rounding, or the parameters' dtype to fold on the fly inside a forward.

    Raises:
        ValueError: If the norm keeps no running statistics.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f'cannot fold {type(bn).__name__} without running statistics '
                         '(track_running_stats=False); folding needs eval-mode statistics')
    scale = torch.rsqrt(bn.running_var.to(dtype) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(dtype)
    shift = -bn.running_mean.to(dtype) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.to(dtype)
    return scale, shift


def scale_conv(weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor,
               shift: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias of ``conv(x) * scale + shift`` (per output channel) from those of ``conv``.

    The arithmetic runs in the promoted dtype of the inputs (float64 for ``bn_affine``'s default).
    With ``shift=None`` only the weight and an existing bias are scaled.
    """
    weight = weight * scale.view(-1, 1, 1, 1)
    bias = bias * scale if bias is not None else None
    if shift is not None:
        bias = shift if bias is None else bias + shift
    return weight, bias


@torch.no_grad()
def scale_conv_(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor | None) -> None:
    """In place: ``conv(x) -> conv(x) * scale + shift`` (``scale_conv``), stored in ``conv``'s dtype."""
    weight, bias = scale_conv(conv.weight, conv.bias, scale, shift)
    conv.weight.copy_(weight)
    if bias is not None:
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype))
