"""Fold every batch norm of a model into the conv before it, for inference.

``timm.utils.model.reparameterize_model`` only folds the norms *inside* SPConv (via its
``fuse()``). Comparing that against an unfolded vanilla network would flatter SPConv, so
benchmarks fold both sides completely with ``fold_batchnorms``: the stem, every conv/norm pair of
timm's residual blocks (an SPConv and the norm after it included), projection shortcuts and
conv/norm pairs inside ``nn.Sequential`` (VGG features).
"""
from __future__ import annotations

import copy

import torch
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from .affine import bn_affine, scale_conv_
from .spconv import SPConv2d

__all__ = ['fold_batchnorms']

_BN = nn.modules.batchnorm._BatchNorm


def _fold_pair(conv: nn.Module, bn: nn.Module) -> bool:
    if not isinstance(bn, _BN) or bn.running_var is None:
        return False
    if isinstance(conv, SPConv2d):
        if not conv.can_fold_output_bn():
            return False
        conv.fold_output_bn(bn)
        return True
    if isinstance(conv, nn.Conv2d):
        scale_conv_(conv, *bn_affine(bn))
        return True
    return False


def _fold_attr_pairs(module: nn.Module, pairs: list[tuple[str, str]]) -> None:
    for conv_name, bn_name in pairs:
        conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
        if conv is not None and bn is not None and _fold_pair(conv, bn):
            setattr(module, bn_name, nn.Identity())


def _fold_sequential(seq: nn.Sequential) -> None:
    names = list(seq._modules)
    for conv_name, bn_name in zip(names, names[1:], strict=False):
        if _fold_pair(seq._modules[conv_name], seq._modules[bn_name]):
            seq._modules[bn_name] = nn.Identity()


@torch.no_grad()
def fold_batchnorms(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return ``model`` with its batch norms folded into the preceding convs (eval semantics).

    The result computes the same function as ``model.eval()`` (up to float rounding) with fewer
    ops; it is meant for inference only. Norms in positions not listed in the module docstring
    are left in place, so the result is always correct.

    Args:
        model: The model; put in eval mode.
        inplace: Modify ``model`` itself instead of a deep copy.
    """
    model = (model if inplace else copy.deepcopy(model)).eval()
    for module in list(model.modules()):
        if isinstance(module, SPConv2d):
            module.reparameterize()
        if isinstance(module, Bottleneck):
            _fold_attr_pairs(module, [('conv1', 'bn1'), ('conv2', 'bn2'), ('conv3', 'bn3')])
        elif isinstance(module, BasicBlock):
            _fold_attr_pairs(module, [('conv1', 'bn1'), ('conv2', 'bn2')])
        elif isinstance(module, ResNet):
            _fold_attr_pairs(module, [('conv1', 'bn1')])
        elif isinstance(module, nn.Sequential):
            _fold_sequential(module)
    return model
