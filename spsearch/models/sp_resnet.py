"""SP-ResNet (ImageNet layout): timm's ResNet with every 3x3 conv inside the residual blocks an SPConv.

The blocks subclass timm's own ``BasicBlock`` / ``Bottleneck`` and swap their 3x3 convs for
``SPConv2d`` with the same channels, stride and dilation, so the forward pass, drop-path,
attention and anti-aliasing options, ``zero_init_last`` and the parameter names stay timm's (and
the SPConv reference code's: ``layerN.M.conv2.gwc.weight`` etc.). Settings are per stage: a stage
whose ``sp_alpha`` is vanilla gets timm's plain block, so ``sp_alpha="vanilla"`` is exactly the
timm ResNet of the same depth.

Registered here, on import, as timm registers its own models: ``sp_resnet18`` ... ``sp_resnet152``,
``sp_resnext50_32x4d`` and ``sp_wide_resnet50_2`` (``import timm_plugins`` or ``import spsearch``
makes them known to ``timm.create_model``). Every entrypoint takes ``sp_alpha`` and ``sp_groups``
(scalar or per stage) besides timm's ResNet keyword arguments.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from ..ops import SPConv2d
from .stages import SPSite, StageAlpha, StageSpec, parse_stage_alphas, parse_stage_groups

__all__ = ['SPBasicBlock', 'SPBottleneck', 'SPResNet', 'create_sp_resnet', 'resnet_stage_specs', 'sp_stage_blocks']


def _spconv_like(conv: nn.Conv2d, alpha: float, groups: int, norm_layer: Callable[..., nn.Module]) -> SPConv2d:
    """An SPConv2d with the channels, kernel, stride and dilation of ``conv``."""
    return SPConv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size[0],
        stride=conv.stride[0],
        alpha=alpha,
        groups=groups,
        dilation=conv.dilation[0],
        norm_layer=norm_layer,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )


class SPBasicBlock(BasicBlock):
    """timm ``BasicBlock`` whose two 3x3 convs are SPConv.

    Args:
        *args: Positional arguments of ``BasicBlock`` (inplanes, planes, stride, downsample).
        sp_alpha: Split ratio of both SPConvs.
        sp_groups: Groups of their group-wise convs.
        **kwargs: Keyword arguments of ``BasicBlock``.
    """

    def __init__(self, *args: Any, sp_alpha: float = 0.5, sp_groups: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        norm_layer = kwargs.get('norm_layer', nn.BatchNorm2d)
        # SPConv2d is a drop-in replacement for the 3x3 convs timm types as nn.Conv2d
        self.conv1 = _spconv_like(self.conv1, sp_alpha, sp_groups, norm_layer)  # type: ignore[assignment]
        self.conv2 = _spconv_like(self.conv2, sp_alpha, sp_groups, norm_layer)  # type: ignore[assignment]


class SPBottleneck(Bottleneck):
    """timm ``Bottleneck`` whose 3x3 conv is SPConv.

    Args:
        *args: Positional arguments of ``Bottleneck`` (inplanes, planes, stride, downsample).
        sp_alpha: Split ratio of the SPConv.
        sp_groups: Groups of its group-wise conv.
        **kwargs: Keyword arguments of ``Bottleneck``.
    """

    def __init__(self, *args: Any, sp_alpha: float = 0.5, sp_groups: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        norm_layer = kwargs.get('norm_layer', nn.BatchNorm2d)
        # SPConv2d is a drop-in replacement for the 3x3 conv timm types as nn.Conv2d
        self.conv2 = _spconv_like(self.conv2, sp_alpha, sp_groups, norm_layer)  # type: ignore[assignment]


_SP_BLOCKS: dict[type[BasicBlock] | type[Bottleneck], type[SPBasicBlock] | type[SPBottleneck]] = {
    BasicBlock: SPBasicBlock, Bottleneck: SPBottleneck}


def _block_sites(block: nn.Module) -> tuple[str, ...]:
    """The 3x3 convs of a residual block that SP settings apply to (timm's names)."""
    if isinstance(block, Bottleneck):
        return ('conv2',)
    if isinstance(block, BasicBlock):
        return ('conv1', 'conv2')
    raise TypeError(f'{type(block).__name__} is not a timm BasicBlock or Bottleneck')


def sp_stage_blocks(
        block: type[BasicBlock] | type[Bottleneck],
        alphas: tuple[StageAlpha, ...],
        groups: tuple[int, ...],
) -> tuple[Callable[..., nn.Module], ...]:
    """One block constructor per stage, as timm's ``ResNet(block=...)`` takes them.

    Args:
        block: The vanilla timm block class (``BasicBlock`` or ``Bottleneck``).
        alphas: Per-stage split ratio, ``None`` for a vanilla stage.
        groups: Per-stage GWC groups.

    Returns:
        The vanilla block for vanilla stages, else a partial of its SP subclass that carries
        ``expansion`` like the class does.
    """
    sp_block = _SP_BLOCKS[block]
    stage_blocks: list[Callable[..., nn.Module]] = []
    for alpha, group in zip(alphas, groups, strict=True):
        if alpha is None:
            stage_blocks.append(block)
            continue
        stage_block = functools.partial(sp_block, sp_alpha=alpha, sp_groups=group)
        setattr(stage_block, 'expansion', sp_block.expansion)  # noqa: B010  (timm reads block.expansion)
        stage_blocks.append(stage_block)
    return tuple(stage_blocks)


def resnet_stage_specs(model: nn.Module, stage_names: Sequence[str]) -> tuple[StageSpec, ...]:
    """The stage description of a ResNet whose stages are the modules ``stage_names`` (of residual blocks)."""
    specs = []
    for stage_name in stage_names:
        sites = [SPSite.of(f'{stage_name}.{block_name}.{conv}', getattr(block, conv))
                 for block_name, block in model.get_submodule(stage_name).named_children()
                 for conv in _block_sites(block)]
        specs.append(StageSpec((stage_name,), tuple(sites)))
    return tuple(specs)


class SPResNet(ResNet):
    """timm's ``ResNet`` (ImageNet layout), built with per-stage SP blocks; it adds the stage description.

    Args and behaviour are timm's ``ResNet``'s; ``block`` may be one constructor per stage
    (``sp_stage_blocks``).
    """

    stage_names: tuple[str, ...] = ('layer1', 'layer2', 'layer3', 'layer4')
    """timm's ResNet runs exactly these four stage modules (``ResNet.forward_features``)."""

    def sp_stages(self) -> tuple[StageSpec, ...]:
        """One ``StageSpec`` per residual stage (``layer1`` ... ``layer4``)."""
        return resnet_stage_specs(self, self.stage_names)


def create_sp_resnet(
        variant: str,
        pretrained: bool = False,
        *,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, ...],
        sp_alpha: Any = 0.5,
        sp_groups: Any = 2,
        **kwargs: Any,
) -> SPResNet:
    """Build an ImageNet-layout SP-ResNet with timm's builder (features_only, pretrained, ...).

    Args:
        variant: Registered model name, the key of its default config.
        pretrained: Load weights named by the pretrained config (e.g. a local ``file``).
        block: The vanilla timm block class of the architecture.
        layers: Blocks per stage.
        sp_alpha: Split ratio, scalar or per stage; ``"vanilla"`` for plain 3x3 convs.
        sp_groups: GWC groups, scalar or per stage.
        **kwargs: Passed on to ``ResNet`` (num_classes, in_chans, cardinality, ...).

    Raises:
        ValueError: On an invalid ``sp_alpha``/``sp_groups`` (the message names the entry).
    """
    num_stages = len(SPResNet.stage_names)
    blocks = sp_stage_blocks(
        block, parse_stage_alphas(sp_alpha, num_stages), parse_stage_groups(sp_groups, num_stages))
    return build_model_with_cfg(SPResNet, variant, pretrained, block=blocks, layers=layers, **kwargs)


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
def sp_resnet18(pretrained: bool = False, **kwargs: Any) -> SPResNet:
    """SP-ResNet-18: ResNet-18 with SPConv in place of every block 3x3 conv (alpha 1/2, G 2)."""
    model_args: dict[str, Any] = dict(block=BasicBlock, layers=(2, 2, 2, 2))
    return create_sp_resnet('sp_resnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def sp_resnet34(pretrained: bool = False, **kwargs: Any) -> SPResNet:
    """SP-ResNet-34: ResNet-34 with SPConv in place of every block 3x3 conv (alpha 1/2, G 2)."""
    model_args: dict[str, Any] = dict(block=BasicBlock, layers=(3, 4, 6, 3))
    return create_sp_resnet('sp_resnet34', pretrained, **dict(model_args, **kwargs))


@register_model
def sp_resnet50(pretrained: bool = False, **kwargs: Any) -> SPResNet:
    """SP-ResNet-50 of the paper: ResNet-50 (v1.5) with SPConv bottleneck 3x3s (alpha 1/2, G 2)."""
    model_args: dict[str, Any] = dict(block=Bottleneck, layers=(3, 4, 6, 3))
    return create_sp_resnet('sp_resnet50', pretrained, **dict(model_args, **kwargs))


@register_model
def sp_resnet101(pretrained: bool = False, **kwargs: Any) -> SPResNet:
    """SP-ResNet-101: ResNet-101 with SPConv bottleneck 3x3s (alpha 1/2, G 2)."""
    model_args: dict[str, Any] = dict(block=Bottleneck, layers=(3, 4, 23, 3))
    return create_sp_resnet('sp_resnet101', pretrained, **dict(model_args, **kwargs))


@register_model
def sp_resnet152(pretrained: bool = False, **kwargs: Any) -> SPResNet:
    """SP-ResNet-152: ResNet-152 with SPConv bottleneck 3x3s (alpha 1/2, G 2)."""
    model_args: dict[str, Any] = dict(block=Bottleneck, layers=(3, 8, 36, 3))
    return create_sp_resnet('sp_resnet152', pretrained, **dict(model_args, **kwargs))


@register_model
def sp_resnext50_32x4d(pretrained: bool = False, **kwargs: Any) -> SPResNet:
    """SP-ResNeXt-50 32x4d: alpha 1/2, and G = 32 (the cardinality) by default.

    With the paper's G = 2 the group-wise conv would be 8x denser than the 32-group 3x3 conv it
    replaces, so the default keeps ResNeXt's cardinality; pass ``sp_groups`` to change it.
    """
    model_args: dict[str, Any] = dict(block=Bottleneck, layers=(3, 4, 6, 3), cardinality=32, base_width=4, sp_groups=32)
    return create_sp_resnet('sp_resnext50_32x4d', pretrained, **dict(model_args, **kwargs))


@register_model
def sp_wide_resnet50_2(pretrained: bool = False, **kwargs: Any) -> SPResNet:
    """SP-Wide-ResNet-50-2: Wide ResNet-50-2 with SPConv bottleneck 3x3s (alpha 1/2, G 2)."""
    model_args: dict[str, Any] = dict(block=Bottleneck, layers=(3, 4, 6, 3), base_width=128)
    return create_sp_resnet('sp_wide_resnet50_2', pretrained, **dict(model_args, **kwargs))
