"""Counting MACs with thop, plus the rule thop needs for SPConv's fusion.

thop counts convs (bias excluded), batch norms (4 ops per element with affine), pools and linears
from module hooks, and skips anything computed inside a parent's ``forward``. In ``SPConv2d``
everything but the fusion is a leaf module thop already knows; ``SoftmaxFusion`` gets the rule
below, so nothing is missed and nothing is counted twice. The fast implementations of SPConv
call the convs functionally (hooks would not see them), so the profiled copy runs
``impl='reference'``: the count is the operator's architecture, whatever implementation runs.
"""
from __future__ import annotations

import contextlib
import copy
import io
import warnings
from typing import cast

import torch
from torch import nn

from ..ops import SoftmaxFusion, set_spconv_impl

__all__ = ['THOP_CUSTOM_OPS', 'softmax_fusion_macs', 'thop_count']


def softmax_fusion_macs(channels: int, height: int, width: int) -> int:
    """MACs of ``SoftmaxFusion`` for one sample, in thop's conventions.

    Two global average pools as thop counts ``AdaptiveAvgPool2d`` (``H*W + 1`` per output),
    a two-way softmax as thop counts ``nn.Softmax`` (``2 exp + 1 add + 2 div`` per channel) and the
    weighted sum (2 multiply-accumulates per output element): ``C * (4*H*W + 7)``.
    """
    return channels * (4 * height * width + 7)


def _count_softmax_fusion(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
    n, c, h, w = inputs[0].shape
    cast(torch.Tensor, module.total_ops).add_(n * softmax_fusion_macs(c, h, w))


THOP_CUSTOM_OPS = {SoftmaxFusion: _count_softmax_fusion}


def thop_count(model: nn.Module, input_size: tuple[int, int, int]) -> tuple[int, int]:
    """Return ``(macs, params)`` of ``model`` for one ``input_size`` image, counted by thop.

    The model is deep-copied (thop leaves buffers on the modules it profiles) and run once in
    eval mode on a zero input on its own device and dtype.

    Args:
        model: The model to count.
        input_size: ``(C, H, W)`` of one input image.
    """
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)  # thop imports distutils' LooseVersion
        import thop

    probe = copy.deepcopy(model).eval()
    set_spconv_impl(probe, 'reference')
    param = next(probe.parameters(), None)
    x = torch.zeros((1, *input_size), device=param.device if param is not None else None,
                    dtype=param.dtype if param is not None else None)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter('ignore')
        macs, params = thop.profile(probe, inputs=(x,), custom_ops=THOP_CUSTOM_OPS, verbose=False)
    return int(round(macs)), int(round(params))
