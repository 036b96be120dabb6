"""timm registration of the ImageNet-layout SP-ResNets (``sp_resnet18`` ... ``sp_wide_resnet50_2``).

Every entrypoint takes ``sp_alpha`` and ``sp_groups`` (scalar or per stage, ``sp_alpha="vanilla"``
for timm's plain ResNet) besides timm's usual ResNet keyword arguments.
"""
from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from spsearch.models import create_sp_resnet

__all__: list[str] = []


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        'url': '', 'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear', 'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD, 'first_conv': 'conv1', 'classifier': 'fc',
        'paper_ids': 'arXiv:2006.12085', 'license': 'apache-2.0', **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'sp_resnet18.untrained': _cfg(),
    'sp_resnet34.untrained': _cfg(),
    'sp_resnet50.untrained': _cfg(),
    'sp_resnet101.untrained': _cfg(),
    'sp_resnet152.untrained': _cfg(),
    'sp_resnext50_32x4d.untrained': _cfg(),
    'sp_wide_resnet50_2.untrained': _cfg(),
})


@register_model
def sp_resnet18(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """SP-ResNet-18: ResNet-18 with SPConv in place of every block 3x3 conv (alpha 1/2, G 2)."""
    model_args: dict[str, Any] = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return create_sp_resnet('sp_resnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def sp_resnet34(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """SP-ResNet-34: ResNet-34 with SPConv in place of every block 3x3 conv (alpha 1/2, G 2)."""
    model_args: dict[str, Any] = dict(block=BasicBlock, layers=(3, 4, 6, 3))
    return create_sp_resnet('sp_resnet34', pretrained, **dict(model_args, **kwargs))


@register_model
def sp_resnet50(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """SP-ResNet-50 of the paper: ResNet-50 (v1.5) with SPConv bottleneck 3x3s (alpha 1/2, G 2)."""
    model_args: dict[str, Any] = dict(block=Bottleneck, layers=(3, 4, 6, 3))
    return create_sp_resnet('sp_resnet50', pretrained, **dict(model_args, **kwargs))


@register_model
def sp_resnet101(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """SP-ResNet-101: ResNet-101 with SPConv bottleneck 3x3s (alpha 1/2, G 2)."""
    model_args: dict[str, Any] = dict(block=Bottleneck, layers=(3, 4, 23, 3))
    return create_sp_resnet('sp_resnet101', pretrained, **dict(model_args, **kwargs))


@register_model
def sp_resnet152(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """SP-ResNet-152: ResNet-152 with SPConv bottleneck 3x3s (alpha 1/2, G 2)."""
    model_args: dict[str, Any] = dict(block=Bottleneck, layers=(3, 8, 36, 3))
    return create_sp_resnet('sp_resnet152', pretrained, **dict(model_args, **kwargs))


@register_model
def sp_resnext50_32x4d(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """SP-ResNeXt-50 32x4d: alpha 1/2, and G = 32 (the cardinality) by default.

    With the paper's G = 2 the group-wise conv would be 8x denser than the 32-group 3x3 conv it
    replaces, so the default keeps ResNeXt's cardinality; pass ``sp_groups`` to change it.
    """
    model_args: dict[str, Any] = dict(block=Bottleneck, layers=(3, 4, 6, 3), cardinality=32, base_width=4, sp_groups=32)
    return create_sp_resnet('sp_resnext50_32x4d', pretrained, **dict(model_args, **kwargs))


@register_model
def sp_wide_resnet50_2(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """SP-Wide-ResNet-50-2: Wide ResNet-50-2 with SPConv bottleneck 3x3s (alpha 1/2, G 2)."""
    model_args: dict[str, Any] = dict(block=Bottleneck, layers=(3, 4, 6, 3), base_width=128)
    return create_sp_resnet('sp_wide_resnet50_2', pretrained, **dict(model_args, **kwargs))
