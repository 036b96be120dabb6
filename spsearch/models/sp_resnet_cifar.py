"""SP-ResNet (CIFAR layout): the ResNet-20/56/110 of the SPConv paper's CIFAR tables, on timm's ``ResNet``.

``CifarResNet`` is the ResNet of He et al. (2016, Sec. 4.2): a 3x3 stem at stride 1 and no max
pool, three stages of BasicBlocks with 16/32/64 channels, 1x1 conv + BN projection shortcuts
(timm's ``downsample_conv``). It reuses timm's ``make_blocks``, head, init, classifier reset and
parameter grouping, and the SP blocks and stage description of ``sp_resnet``; only the stem and the
stage loop (timm's ResNet hard-codes four stages and a stride-4 stem) are its own. The first conv
stays vanilla and every block 3x3 conv can be SPConv, per stage.

Registered here, on import: ``sp_resnet20``, ``sp_resnet56``, ``sp_resnet110`` (``sp_alpha`` and
``sp_groups``, scalar or per stage, ``"vanilla"`` for plain convs).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import create_classifier, get_act_layer, get_norm_layer, to_ntuple
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.resnet import BasicBlock, make_blocks
from torch import nn

from .sp_resnet import SPResNet, sp_stage_blocks
from .stages import parse_stage_alphas, parse_stage_groups

__all__ = ['CIFAR10_MEAN', 'CIFAR10_STD', 'CifarResNet', 'cifar_cfg', 'create_sp_cifar_resnet']

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class CifarResNet(SPResNet):
    """ResNet for small (32x32) inputs with any number of stages (its stage description is ``SPResNet``'s).

    Args:
        block: Block class, or one per stage (see ``sp_stage_blocks``).
        layers: Blocks per stage.
        num_classes: Classifier outputs.
        in_chans: Input channels.
        output_stride: Final feature reduction: 4 (natural for three stages), 2 or 1 (dilated).
        global_pool: Global pooling type of the head.
        channels: Channels per stage; the stem has ``channels[0]``.
        act_layer: Activation layer.
        norm_layer: Norm layer.
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth rate.
        zero_init_last: Zero-init the last BN of each residual branch.
        block_args: Extra keyword arguments for every block.
        device: Device of the parameters.
        dtype: Dtype of the parameters.
    """

    def __init__(
            self,
            block: Any = BasicBlock,
            layers: Sequence[int] = (3, 3, 3),
            num_classes: int = 10,
            in_chans: int = 3,
            output_stride: int = 4,
            global_pool: str = 'avg',
            channels: Sequence[int] = (16, 32, 64),
            act_layer: Any = nn.ReLU,
            norm_layer: Any = nn.BatchNorm2d,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            zero_init_last: bool = True,
            block_args: dict[str, Any] | None = None,
            device=None,
            dtype=None,
    ) -> None:
        nn.Module.__init__(self)
        dd = {'device': device, 'dtype': dtype}
        natural_stride = 2 ** (len(channels) - 1)
        if output_stride not in [natural_stride // 2 ** i for i in range(len(channels))]:
            raise ValueError(f'output_stride={output_stride} is not supported; use a power of two <= {natural_stride}')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        act_layer = get_act_layer(act_layer)
        norm_layer = get_norm_layer(norm_layer)

        stem_chs = channels[0]
        # timm's ResNet types its stem as a Sequential (the deep-stem branch); ours is one conv
        self.conv1 = nn.Conv2d(in_chans, stem_chs, kernel_size=3, padding=1, bias=False, **dd)  # type: ignore[assignment]
        self.bn1 = norm_layer(stem_chs, **dd)
        self.act1 = act_layer(inplace=True)
        self.maxpool = nn.Identity()  # type: ignore[assignment]
        self.feature_info = [dict(num_chs=stem_chs, reduction=1, module='act1')]

        # make_blocks counts strides from timm's stride-4 stem; this stem has stride 1.
        stage_modules, stage_feature_info = make_blocks(
            to_ntuple(len(channels))(block),
            tuple(channels),
            tuple(layers),
            stem_chs,
            output_stride=output_stride * 4,
            act_layer=act_layer,
            norm_layer=norm_layer,
            drop_path_rate=drop_path_rate,
            **(block_args or {}),
            **dd,
        )
        for name, stage in stage_modules:
            self.add_module(name, stage)
        for info in stage_feature_info:
            info['reduction'] //= 4
        self.feature_info.extend(stage_feature_info)
        self.stage_names = tuple(name for name, _ in stage_modules)

        self.num_features = stage_feature_info[-1]['num_chs']
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.init_weights(zero_init_last=zero_init_last)

    def _stages(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.stage_names]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self._stages(), x, flatten=True)
        for stage in self._stages():
            x = stage(x)
        return x

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Forward that also returns the stem (index 0) and stage (1..N) outputs in ``indices``."""
        if output_fmt != 'NCHW':
            raise ValueError(f'output_fmt={output_fmt!r} is not supported; use NCHW')
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        intermediates = []
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in take_indices:
            intermediates.append(x)
        stages = self._stages()[:max_index] if stop_early else self._stages()
        for feat_idx, stage in enumerate(stages, start=1):
            x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the last wanted intermediate (and the head)."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        for name in self.stage_names[max_index:]:
            setattr(self, name, nn.Sequential())
        if max_index < len(self.stage_names):
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            prune_head = True
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices


def create_sp_cifar_resnet(
        variant: str,
        pretrained: bool = False,
        *,
        layers: tuple[int, ...],
        sp_alpha: Any = 0.5,
        sp_groups: Any = 2,
        **kwargs: Any,
) -> CifarResNet:
    """Build a CIFAR SP-ResNet with timm's builder.

    Args:
        variant: Registered model name, the key of its default config.
        pretrained: Load weights named by the pretrained config (e.g. a local ``file``).
        layers: BasicBlocks per stage.
        sp_alpha: Split ratio, scalar or per stage; ``"vanilla"`` for plain 3x3 convs.
        sp_groups: GWC groups, scalar or per stage.
        **kwargs: Passed on to ``CifarResNet``.
    """
    num_stages = len(kwargs.get('channels', (16, 32, 64)))
    blocks = sp_stage_blocks(
        BasicBlock, parse_stage_alphas(sp_alpha, num_stages), parse_stage_groups(sp_groups, num_stages))
    return build_model_with_cfg(
        CifarResNet, variant, pretrained, block=blocks, layers=layers,
        feature_cfg=dict(out_indices=tuple(range(num_stages + 1))), **kwargs)


def cifar_cfg(**kwargs: Any) -> dict[str, Any]:
    """A timm default config for a CIFAR-10 model at 32x32 (the data set's mean and std)."""
    return {
        'url': '', 'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (8, 8),
        'crop_pct': 1.0, 'interpolation': 'bilinear', 'mean': CIFAR10_MEAN, 'std': CIFAR10_STD,
        'first_conv': 'conv1', 'classifier': 'fc', 'paper_ids': 'arXiv:2006.12085',
        'license': 'apache-2.0', **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'sp_resnet20.untrained': cifar_cfg(),
    'sp_resnet56.untrained': cifar_cfg(),
    'sp_resnet110.untrained': cifar_cfg(),
})


@register_model
def sp_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """SP-ResNet-20 (CIFAR): 3 stages x 3 BasicBlocks, every block 3x3 conv SPConv (alpha 1/2, G 2)."""
    model_args: dict[str, Any] = dict(layers=(3, 3, 3))
    return create_sp_cifar_resnet('sp_resnet20', pretrained, **dict(model_args, **kwargs))


@register_model
def sp_resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """SP-ResNet-56 (CIFAR): 3 stages x 9 BasicBlocks (alpha 1/2, G 2)."""
    model_args: dict[str, Any] = dict(layers=(9, 9, 9))
    return create_sp_cifar_resnet('sp_resnet56', pretrained, **dict(model_args, **kwargs))


@register_model
def sp_resnet110(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """SP-ResNet-110 (CIFAR): 3 stages x 18 BasicBlocks (alpha 1/2, G 2)."""
    model_args: dict[str, Any] = dict(layers=(18, 18, 18))
    return create_sp_cifar_resnet('sp_resnet110', pretrained, **dict(model_args, **kwargs))
