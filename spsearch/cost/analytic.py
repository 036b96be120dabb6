"""Analytic MAC and parameter counts, computed from module configurations alone.

A pycls-style ``complexity`` walk: each supported module type has a rule that maps an input
shape to an output shape, MACs and parameters using only the module's configuration (channels,
kernel, stride, ...), never its forward pass or its tensors. It follows the conventions thop
uses (see ``thop_count``) so the two counts must agree exactly; a test checks that they do for
every registered model, which catches a missed or double-counted op on either side. Being
forward-free, it also works on models built on the ``meta`` device, which makes it the fast
counter for scanning search spaces.

Rules exist for the modules of the SP families and timm's ResNet and VGG; any other module type
raises ``UnsupportedModuleError`` rather than being silently counted as zero. ``analytic_count``
can also report the count of named submodules from the same walk (``sites``): the search space
reads the cost of each stage's SP sites from it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass

from timm.layers import ClassifierHead, SelectAdaptivePool2d
from timm.layers.drop import DropPath
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from timm.models.vgg import VGG
from torch import nn

from ..ops import SPConv2d
from .thop_count import softmax_fusion_macs

__all__ = ['Count', 'UnsupportedModuleError', 'analytic_count', 'analytic_site_counts']

Shape = tuple[int, ...]
"""Per-sample shape: ``(C, H, W)`` for maps, ``(F,)`` after flattening."""


@dataclass(frozen=True)
class Count:
    """MACs and parameters of a module for one sample."""

    macs: int = 0
    params: int = 0

    def __add__(self, other: Count) -> Count:
        return Count(self.macs + other.macs, self.params + other.params)


class UnsupportedModuleError(TypeError):
    """Raised for a module type the analytic counter has no rule for."""


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _window_out(size: int, kernel: int, stride: int, padding: int, dilation: int = 1, ceil_mode: bool = False) -> int:
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _conv(m: nn.Conv2d, shape: Shape) -> tuple[Shape, Count]:
    c, h, w = shape
    kh, kw = _pair(m.kernel_size)
    sh, sw = _pair(m.stride)
    dh, dw = _pair(m.dilation)
    if isinstance(m.padding, str):
        ph, pw = ((dh * (kh - 1) // 2, dw * (kw - 1) // 2) if m.padding == 'same' else (0, 0))
    else:
        ph, pw = _pair(m.padding)
    ho, wo = _window_out(h, kh, sh, ph, dh), _window_out(w, kw, sw, pw, dw)
    weights = m.out_channels * (c // m.groups) * kh * kw
    params = weights + (m.out_channels if m.bias is not None else 0)
    return (m.out_channels, ho, wo), Count(ho * wo * weights, params)


def _batch_norm(m: nn.modules.batchnorm._BatchNorm, shape: Shape) -> tuple[Shape, Count]:
    numel = math.prod(shape)
    return shape, Count(numel * (4 if m.affine else 2), 2 * m.num_features if m.affine else 0)


def _avg_pool(m: nn.AvgPool2d, shape: Shape) -> tuple[Shape, Count]:
    c, h, w = shape
    (kh, kw), (ph, pw) = _pair(m.kernel_size), _pair(m.padding)
    sh, sw = _pair(m.stride if m.stride is not None else m.kernel_size)
    out = (c, _window_out(h, kh, sh, ph, ceil_mode=m.ceil_mode), _window_out(w, kw, sw, pw, ceil_mode=m.ceil_mode))
    return out, Count(math.prod(out))


def _max_pool(m: nn.MaxPool2d, shape: Shape) -> tuple[Shape, Count]:
    c, h, w = shape
    (kh, kw), (ph, pw), (dh, dw) = _pair(m.kernel_size), _pair(m.padding), _pair(m.dilation)
    sh, sw = _pair(m.stride if m.stride is not None else m.kernel_size)
    return (c, _window_out(h, kh, sh, ph, dh, m.ceil_mode), _window_out(w, kw, sw, pw, dw, m.ceil_mode)), Count()


def _adaptive_pool(m: nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d, shape: Shape) -> tuple[Shape, Count]:
    c, h, w = shape
    oh, ow = _pair(m.output_size)  # type: ignore[arg-type]
    oh, ow = oh or h, ow or w
    if isinstance(m, nn.AdaptiveMaxPool2d):
        return (c, oh, ow), Count()
    return (c, oh, ow), Count(int((h / oh * w / ow + 1) * c * oh * ow))


def _flatten(shape: Shape) -> Shape:
    return (math.prod(shape),)


def _linear(m: nn.Linear, shape: Shape) -> tuple[Shape, Count]:
    params = m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)
    return shape[:-1] + (m.out_features,), Count(math.prod(shape[:-1]) * m.in_features * m.out_features, params)


def _sequence(modules: list[nn.Module | None], shape: Shape) -> tuple[Shape, Count]:
    total = Count()
    for m in modules:
        if m is None:
            continue
        shape, count = _walk(m, shape)
        total += count
    return shape, total


def _spconv(m: SPConv2d, shape: Shape) -> tuple[Shape, Count]:
    c, h, w = shape
    rep, red = (m.rep_channels, h, w), (m.red_channels, h, w)
    out, total = _sequence([m.gwc], rep)
    pooled_rep, pool_count = _walk(m.pool, rep)
    _, pwc = _walk(m.pwc, pooled_rep)
    _, bn1 = _walk(m.bn1, out)
    total += pool_count + pwc + bn1
    if m.conv1x1 is not None:
        _, branch = _sequence([m.pool, m.conv1x1, m.bn2], red)
        total += branch + Count(softmax_fusion_macs(*out))
    return out, total


def _block(m: BasicBlock | Bottleneck, shape: Shape) -> tuple[Shape, Count]:
    if getattr(m, 'se', None) is not None:
        raise UnsupportedModuleError(f'no analytic rule for attention layers in {type(m).__name__}')
    if isinstance(m, Bottleneck):
        order = [m.conv1, m.bn1, m.act1, m.conv2, m.bn2, m.drop_block, m.act2, m.aa, m.conv3, m.bn3, m.drop_path]
    else:
        order = [m.conv1, m.bn1, m.drop_block, m.act1, m.aa, m.conv2, m.bn2, m.drop_path]
    out, total = _sequence(order, shape)
    if m.downsample is not None:
        _, down = _walk(m.downsample, shape)
        total += down
    return out, total


def _children(m: ResNet | VGG, shape: Shape) -> tuple[Shape, Count]:
    """timm's ResNet (stem, stages, pool, classifier) and VGG (features, pre-logits, head) run their child
    modules in the order they were registered; the families built on them keep that order."""
    return _sequence(list(m.children()), shape)


def _select_pool(m: SelectAdaptivePool2d, shape: Shape) -> tuple[Shape, Count]:
    out, count = _walk(m.pool, shape)
    return (_flatten(out) if isinstance(m.flatten, nn.Flatten) else out), count


def _classifier_head(m: ClassifierHead, shape: Shape) -> tuple[Shape, Count]:
    return _sequence([m.global_pool, m.drop, m.fc, m.flatten], shape)


_ZERO_COST = (nn.Identity, nn.ReLU, nn.ReLU6, nn.Dropout, DropPath)

_RULES: list[tuple[type | tuple[type, ...], Callable[..., tuple[Shape, Count]]]] = [
    (SPConv2d, _spconv),
    (nn.Conv2d, _conv),
    (nn.modules.batchnorm._BatchNorm, _batch_norm),
    (nn.AvgPool2d, _avg_pool),
    (nn.MaxPool2d, _max_pool),
    ((nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d), _adaptive_pool),
    (nn.Linear, _linear),
    (nn.Flatten, lambda m, s: (_flatten(s), Count())),
    (_ZERO_COST, lambda m, s: (s, Count())),
    (nn.Sequential, lambda m, s: _sequence(list(m), s)),
    ((BasicBlock, Bottleneck), _block),
    ((ResNet, VGG), _children),
    (SelectAdaptivePool2d, _select_pool),
    (ClassifierHead, _classifier_head),
]


_SITES: ContextVar[tuple[dict[int, str], dict[str, Count]] | None] = ContextVar('analytic_sites', default=None)
"""While ``analytic_site_counts`` walks: the modules to report (by id) and their counts so far."""


def _walk(module: nn.Module, shape: Shape) -> tuple[Shape, Count]:
    for types, rule in _RULES:
        if isinstance(module, types):
            out, count = rule(module, shape)
            sites = _SITES.get()
            if sites is not None and id(module) in sites[0]:
                sites[1][sites[0][id(module)]] = count
            return out, count
    raise UnsupportedModuleError(f'no analytic rule for {type(module).__module__}.{type(module).__name__}')


def analytic_count(model: nn.Module, input_size: tuple[int, int, int]) -> Count:
    """MACs and parameters of ``model`` for one ``input_size`` image, from its configuration.

    Args:
        model: A supported model (any device, ``meta`` included).
        input_size: ``(C, H, W)`` of one input image.

    Raises:
        UnsupportedModuleError: If the model holds a module type without a rule.
    """
    return _walk(model, tuple(input_size))[1]


def analytic_site_counts(model: nn.Module, input_size: tuple[int, int, int],
                         sites: Iterable[str]) -> tuple[Count, dict[str, Count]]:
    """``analytic_count`` of ``model`` and, from the same walk, of each named submodule in ``sites``.

    Args:
        model: A supported model (any device, ``meta`` included).
        input_size: ``(C, H, W)`` of one input image.
        sites: Names of submodules (``layer1.0.conv1``) whose own counts to report.

    Returns:
        The model's count, and each site's count at the input shape it sees in the model.

    Raises:
        UnsupportedModuleError: If the model holds a module type without a rule.
        KeyError: If a site is not a submodule, or the walk does not reach it.
    """
    targets = {id(model.get_submodule(name)): name for name in sites}
    found: dict[str, Count] = {}
    token = _SITES.set((targets, found))
    try:
        total = _walk(model, tuple(input_size))[1]
    finally:
        _SITES.reset(token)
    missing = sorted(set(targets.values()) - set(found))
    if missing:
        raise KeyError(f'the analytic walk did not reach {", ".join(missing)}')
    return total, found
