"""SP-ResNet: timm's ResNet with every 3x3 conv inside the residual blocks replaced by SPConv.

The blocks subclass timm's own ``BasicBlock`` / ``Bottleneck`` and swap their 3x3 convs for
``SPConv2d`` with the same channels, stride and dilation, so the forward pass, drop-path,
attention and anti-aliasing options, ``zero_init_last`` and the parameter names stay timm's (and
the SPConv reference code's: ``layerN.M.conv2.gwc.weight`` etc.). Settings are per stage: a stage
whose ``sp_alpha`` is vanilla gets timm's plain block, so ``sp_alpha="vanilla"`` is exactly the
timm ResNet of the same depth.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from timm.models import build_model_with_cfg
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from ..ops import SPConv2d
from .stage_config import StageAlpha, parse_stage_alphas, parse_stage_groups

__all__ = ['SPBasicBlock', 'SPBottleneck', 'sp_stage_blocks', 'create_sp_resnet']


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


def create_sp_resnet(
        variant: str,
        pretrained: bool = False,
        *,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, ...],
        sp_alpha: Any = 0.5,
        sp_groups: Any = 2,
        **kwargs: Any,
) -> ResNet:
    """Build an ImageNet-layout SP-ResNet with timm's builder (features_only, pretrained, ...).

    Args:
        variant: Registered model name, the key of its default config.
        pretrained: Load weights named by the pretrained config (e.g. a local ``file``).
        block: The vanilla timm block class of the architecture.
        layers: Blocks per stage.
        sp_alpha: Split ratio, scalar or per stage; ``"vanilla"`` for plain 3x3 convs.
        sp_groups: GWC groups, scalar or per stage.
        **kwargs: Passed on to ``ResNet`` (num_classes, in_chans, cardinality, ...).
    """
    num_stages = len(kwargs.get('channels', (64, 128, 256, 512)))
    blocks = sp_stage_blocks(
        block, parse_stage_alphas(sp_alpha, num_stages), parse_stage_groups(sp_groups, num_stages))
    return build_model_with_cfg(ResNet, variant, pretrained, block=blocks, layers=layers, **kwargs)
