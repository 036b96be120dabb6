"""SPConv: split a k x k convolution into a representative and a redundant part.

The input channels are split by index: the first ``rep_channels`` (about ``alpha * in_channels``)
form the *representative* part, which gets a group-wise k x k conv (GWC) plus a point-wise 1x1
conv (PWC), summed and batch-normalised; the remaining *redundant* channels get one cheap 1x1 conv
and their own batch norm. A parameter-free softmax over the two branches' pooled statistics
merges them (``SoftmaxFusion``). At stride s the GWC carries the stride and the inputs of both
1x1 paths are s x s average-pooled first.

Paper: `Split to Be Slim: An Overlooked Redundancy in Vanilla Convolution`, IJCAI 2020
(https://arxiv.org/abs/2006.12085). Reference code: github.com/qiulinzhang/SPConv.pytorch
(`code/resnet_sp.py`, class `SPConv_3x3`). Submodule names (``gwc``, ``pwc``, ``conv1x1``,
``bn1``, ``bn2``) follow the reference, so its checkpoints load and the defaults (G=2, a bias on
the redundant 1x1) reproduce its parameter counts exactly. Unlike the reference it
accepts odd spatial sizes at stride 2 (the pools use ``ceil_mode`` and so agree with the strided
conv), representative channel counts that G does not divide (rounded, see ``sp_split``), any
batch size and ``alpha=1``.

Implementations (``impl``): ``'reference'`` runs the modules one by one as the paper writes the
operator (``forward_reference``: the oracle for tests, and what ``thop`` counts); ``'split'``
and ``'dense'`` compute the same function with the fast paths of the ``fast_paths`` package
(batch norms and fusion in one autograd Function, BNs folded on the fly at inference), keeping
the GWC and PWC as two convs or folding them into one dense k x k conv; ``forward`` hands them
to ``fast_paths.forward``. ``'auto'`` picks per layer at each forward: on CPU by a rule
measured there, on other devices the reference (``fast_paths.auto_impl``);
``spsearch.ops.autotune`` picks per layer by timing on the target device. Every implementation
has the same parameters and state dict.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from . import fast_paths
from .affine import bn_affine, scale_conv_
from .softmax_fusion import SoftmaxFusion

__all__ = ['SPCONV_IMPLS', 'SPConv2d', 'sp_split']

SPCONV_IMPLS = ('reference', 'split', 'dense')
"""Implementations of ``SPConv2d`` (``impl``); ``'auto'`` picks one per layer and device by
``fast_paths.auto_impl``."""


def sp_split(in_channels: int, alpha: float, groups: int) -> tuple[int, int]:
    """Return ``(rep_channels, red_channels)``, the SPConv split of ``in_channels``.

    Rounding rule: ``alpha * in_channels`` is rounded (half up) to the nearest multiple of
    ``groups``, at least ``groups``; if that exceeds ``in_channels`` the largest multiple of
    ``groups`` that fits is used. For every configuration of the paper (power-of-two channels
    and ratios) this is exactly ``alpha * in_channels``. When the representative part takes every
    channel the redundant part is empty (``alpha=1`` with ``groups`` dividing ``in_channels``).

    Args:
        in_channels: Number of input channels.
        alpha: Split ratio in (0, 1].
        groups: Groups of the group-wise conv, >= 1.

    Returns:
        Representative and redundant channel counts, summing to ``in_channels``.

    Raises:
        ValueError: If an argument is out of range or ``in_channels < groups``.
    """
    _check_int('in_channels', in_channels, 1)
    _check_int('groups', groups, 1)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha <= 1:
        raise ValueError(f'alpha must be a number in (0, 1], got {alpha!r}')
    if in_channels < groups:
        raise ValueError(
            f'cannot split in_channels={in_channels} with groups={groups}: the representative part '
            f'needs at least `groups` channels; use groups <= {in_channels}')
    rep = groups * max(1, math.floor(alpha * in_channels / groups + 0.5))
    if rep > in_channels:
        rep = groups * (in_channels // groups)
    return rep, in_channels - rep


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f'{name} must be an integer >= {minimum}, got {value!r}')


def _square_odd_kernel(kernel_size: int | tuple[int, int]) -> int:
    k = kernel_size
    if isinstance(k, (tuple, list)):
        if len(k) != 2 or k[0] != k[1]:
            raise ValueError(f'kernel_size must be square (an int or (k, k)), got {kernel_size!r}')
        k = k[0]
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 3 or k % 2 == 0:
        raise ValueError(f'kernel_size must be an odd integer >= 3, got {kernel_size!r}')
    return int(k)


class SPConv2d(nn.Module):
    """Split-based convolution, a drop-in replacement for a k x k ``nn.Conv2d`` (no bias).

    Output size follows a padded k x k conv: ``ceil(H / stride)`` for any H.

    Args:
        in_channels: Number of input channels.
        out_channels: Number of output channels; must be divisible by ``groups``.
        kernel_size: Odd square kernel size of the group-wise conv (>= 3).
        stride: Stride (>= 1). The 1x1 paths see ``stride x stride`` average-pooled inputs.
        alpha: Fraction of input channels in the representative part, in (0, 1].
        groups: Groups of the group-wise k x k conv (the paper's G, 2 there).
        dilation: Dilation of the group-wise conv.
        bias: Give the redundant 1x1 conv a bias, as the reference implementation does.
        norm_layer: Norm applied to each branch; ``nn.BatchNorm2d`` as in the paper. Other norms
            run the reference implementation.
        impl: ``'reference'``, ``'split'``, ``'dense'`` or ``'auto'`` (see the module docstring);
            changeable later with ``set_impl``.
        recompute: In training, keep only the input for backward and recompute the branch convs
            there (about the memory of a vanilla conv, for one extra forward of the cheap convs).
        device: Device of the parameters.
        dtype: Dtype of the parameters.

    Raises:
        ValueError: On an argument outside its valid range (the message names it).
    """

    conv1x1: nn.Conv2d | None
    bn2: nn.Module | None
    fusion: SoftmaxFusion | None

    def __init__(
            self,
            in_channels: int,
            out_channels: int,
            kernel_size: int | tuple[int, int] = 3,
            stride: int = 1,
            alpha: float = 0.5,
            groups: int = 2,
            dilation: int = 1,
            bias: bool = True,
            norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
            impl: str = 'auto',
            recompute: bool = False,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        k = _square_odd_kernel(kernel_size)
        _check_int('out_channels', out_channels, 1)
        _check_int('stride', stride, 1)
        _check_int('dilation', dilation, 1)
        rep, red = sp_split(in_channels, alpha, groups)
        if out_channels % groups:
            raise ValueError(f'out_channels={out_channels} must be divisible by groups={groups}; '
                             f'use a groups value that divides {out_channels}')
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = k
        self.stride = stride
        self.dilation = dilation
        self.alpha = float(alpha)
        self.groups = groups
        self.rep_channels = rep
        self.red_channels = red
        self.recompute = bool(recompute)

        self.gwc = nn.Conv2d(
            rep, out_channels, k, stride=stride, padding=dilation * (k - 1) // 2,
            dilation=dilation, groups=groups, bias=False, **dd)
        self.pwc = nn.Conv2d(rep, out_channels, 1, bias=False, **dd)
        self.bn1 = norm_layer(out_channels, **dd)
        self.pool = (
            nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
            if stride > 1 else nn.Identity())
        if red:
            self.conv1x1 = nn.Conv2d(red, out_channels, 1, bias=bias, **dd)
            self.bn2 = norm_layer(out_channels, **dd)
            self.fusion = SoftmaxFusion()
        else:
            self.conv1x1 = self.bn2 = self.fusion = None
        self.impl = 'reference'
        self.set_impl(impl)

    def set_impl(self, impl: str) -> None:
        """Choose the implementation: ``'reference'``, ``'split'``, ``'dense'`` or ``'auto'``.

        ``'auto'`` is resolved at every forward, from the input's device type and training vs.
        inference, by ``fast_paths.auto_impl`` (a few integer comparisons).

        Raises:
            ValueError: For an unknown name, or ``'dense'`` where the stride/dilation cannot be
                expressed as one dense conv (``fast_paths.dense_supported``).
        """
        if impl not in (*SPCONV_IMPLS, 'auto'):
            raise ValueError(f"impl must be one of {(*SPCONV_IMPLS, 'auto')}, got {impl!r}")
        if impl == 'dense' and not fast_paths.dense_supported(self.kernel_size, self.stride, self.dilation):
            raise ValueError(f"impl='dense' needs stride 1, or stride <= {self.kernel_size // 2 + 1} without "
                             f'dilation; got stride={self.stride}, dilation={self.dilation}; use impl=\'split\'')
        self.impl = impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the fast paths choose by the input's shape and device; under torch.fx tracing (timm's feature_cls='fx',
        # torchvision's feature extraction) the reference formulation, which has no data-dependent branch, runs
        if self.impl != 'reference' and not is_fx_symbolic_tracing():
            out = fast_paths.forward(self, x)
            if out is not None:
                return out
        return self.forward_reference(x)

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The operator as the paper writes it, module by module (``impl='reference'``)."""
        x_rep = x[:, :self.rep_channels]
        out = self.bn1(self.gwc(x_rep) + self.pwc(self.pool(x_rep)))
        if self.conv1x1 is None or self.bn2 is None or self.fusion is None:
            return out
        red = self.bn2(self.conv1x1(self.pool(x[:, self.rep_channels:])))
        return self.fusion(out, red)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Fold both batch norms into the convs before them, in place, for inference.

        Uses the running statistics, so the result equals this module in eval mode. Norms other
        than batch norm are left in place. Calling it again is a no-op.
        """
        if isinstance(self.bn1, nn.modules.batchnorm._BatchNorm):
            scale, shift = bn_affine(self.bn1)
            scale_conv_(self.gwc, scale, shift)
            scale_conv_(self.pwc, scale, None)
            self.bn1 = nn.Identity()
        if isinstance(self.bn2, nn.modules.batchnorm._BatchNorm) and self.conv1x1 is not None:
            scale_conv_(self.conv1x1, *bn_affine(self.bn2))
            self.bn2 = nn.Identity()

    def can_fold_output_bn(self) -> bool:
        """Whether both branch norms are batch norms (or folded already), as ``fold_output_bn`` needs."""
        return all(isinstance(n, (nn.modules.batchnorm._BatchNorm, nn.Identity))
                   for n in (self.bn1, self.bn2) if n is not None)

    @torch.no_grad()
    def fold_output_bn(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        """Fold a batch norm applied to this module's output into it, in place.

        Both branches take the norm's scale and shift, and the fusion's gate is rescaled so the
        branch weights are unchanged (see ``SoftmaxFusion.fold_output_affine``). The caller
        replaces ``bn`` by ``nn.Identity()``. Reparameterizes first.

        Raises:
            ValueError: If a branch norm is not a batch norm (``can_fold_output_bn``): a scale folded into
                the convs before, say, a group norm would change the function.
        """
        if not self.can_fold_output_bn():
            raise ValueError(f'cannot fold an output batch norm into an SPConv2d whose branch norms are '
                             f'{type(self.bn1).__name__}; only batch norms fold')
        self.reparameterize()
        scale, shift = bn_affine(bn)
        scale_conv_(self.gwc, scale, shift)
        scale_conv_(self.pwc, scale, None)
        if self.conv1x1 is not None and self.fusion is not None:
            scale_conv_(self.conv1x1, scale, shift)
            self.fusion.fold_output_affine(scale.to(self.gwc.weight.dtype))

    def fuse(self) -> SPConv2d:
        """Reparameterize in place and return self (the hook ``timm``'s ``reparameterize_model`` calls)."""
        self.reparameterize()
        return self

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, '
                f'stride={self.stride}, alpha={self.alpha:g}, groups={self.groups}, '
                f'split=({self.rep_channels}, {self.red_channels})'
                + (f', dilation={self.dilation}' if self.dilation != 1 else '')
                + f', impl={self.impl}' + (', recompute=True' if self.recompute else ''))
