"""SP-VGG-16 (CIFAR layout): the VGG of the SPConv paper's CIFAR tables, on timm's ``VGG``.

``CifarVGG`` is VGG-16 with BN (13 convs with bias, each followed by BN and ReLU, five max pools)
and a 512-512-classes classifier, the model that the paper's SPConv-VGG rows fit. It reuses timm's
``VGG`` methods (features, intermediates, pruning, head) with its own ``__init__`` so the ImageNet
head (a 7x7 conv to 4096 channels, 100M parameters) is never built. A stage is the run of convs
before a max pool; the first conv stays vanilla and every other 3x3 conv can be SPConv, per stage.

Registered here, on import: ``sp_vgg16_cifar`` (``sp_alpha`` and ``sp_groups``, scalar or per stage).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, cast

from timm.layers import ClassifierHead
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vgg import VGG
from torch import nn

from ..ops import SPConv2d
from .sp_resnet_cifar import cifar_cfg
from .stages import SPSite, StageSpec, parse_stage_alphas, parse_stage_groups

__all__ = ['VGG16_CFG', 'CifarVGG', 'create_sp_cifar_vgg']

VGG16_CFG: list[int | str] = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M']


class CifarVGG(VGG):
    """VGG with BN for 32x32 inputs, a 512-512-classes classifier, and SPConv per stage.

    Args:
        cfg: Layer list as timm's VGG takes it (channels, ``'M'`` for a max pool).
        sp_alpha: Split ratio, scalar or one per stage (stages end at each ``'M'``);
            ``"vanilla"`` for plain convs. The first conv is always vanilla.
        sp_groups: GWC groups, scalar or per stage.
        num_classes: Classifier outputs.
        in_chans: Input channels.
        hidden_features: Width of the hidden classifier layer (512 in the paper's VGG).
        act_layer: Activation layer.
        norm_layer: Norm layer after every conv.
        global_pool: Global pooling type of the head.
        drop_rate: Dropout in the classifier.
        device: Device of the parameters.
        dtype: Dtype of the parameters.
    """

    def __init__(
            self,
            cfg: Sequence[int | str] = tuple(VGG16_CFG),
            sp_alpha: Any = 0.5,
            sp_groups: Any = 2,
            num_classes: int = 10,
            in_chans: int = 3,
            hidden_features: int = 512,
            act_layer: Callable[..., nn.Module] = nn.ReLU,
            norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            device=None,
            dtype=None,
    ) -> None:
        nn.Module.__init__(self)
        dd = {'device': device, 'dtype': dtype}
        num_stages = sum(1 for v in cfg if v == 'M')
        alphas = parse_stage_alphas(sp_alpha, num_stages)
        groups = parse_stage_groups(sp_groups, num_stages)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.use_norm = True
        self.feature_info: list[dict[str, Any]] = []
        self.feature_ends: list[int] = []

        prev_chs, net_stride, stage_idx = in_chans, 1, 0
        layers: list[nn.Module] = []

        def add_feature_tap() -> None:
            self.feature_info.append(dict(num_chs=prev_chs, reduction=net_stride, module=f'features.{len(layers) - 1}'))
            self.feature_ends.append(len(layers) - 1)

        for v in cfg:
            if v == 'M':
                add_feature_tap()
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                net_stride *= 2
                stage_idx += 1
                continue
            out_chs = cast(int, v)
            alpha = alphas[stage_idx]
            if alpha is None or not layers:
                conv: nn.Module = nn.Conv2d(prev_chs, out_chs, kernel_size=3, padding=1, **dd)
            else:
                conv = SPConv2d(
                    prev_chs, out_chs, 3, alpha=alpha, groups=groups[stage_idx], norm_layer=norm_layer, **dd)
            layers += [conv, norm_layer(out_chs, **dd), act_layer(inplace=True)]
            prev_chs = out_chs
        add_feature_tap()
        self.features = nn.Sequential(*layers)

        self.num_features = prev_chs
        self.pre_logits = nn.Sequential(OrderedDict([  # type: ignore[assignment]  # timm: ConvMlp
            ('fc1', nn.Conv2d(prev_chs, hidden_features, 1, **dd)),
            ('act1', act_layer(inplace=True)),
            ('drop', nn.Dropout(drop_rate)),
        ]))
        self.head = ClassifierHead(hidden_features, num_classes, pool_type=global_pool, **dd)
        self.head_hidden_size = hidden_features  # the classifier's input (ClassifierHead.num_features is timm>=1.0.30)
        self._initialize_weights()

    def sp_stages(self) -> tuple[StageSpec, ...]:
        """One ``StageSpec`` per run of convs ending in a max pool; the first conv is never a site."""
        specs: list[StageSpec] = []
        start, sites, first = 0, [], True
        for index, layer in enumerate(self.features):
            if isinstance(layer, (nn.Conv2d, SPConv2d)):
                if not first:
                    sites.append(SPSite.of(f'features.{index}', layer))
                first = False
            elif isinstance(layer, nn.MaxPool2d):
                specs.append(StageSpec(tuple(f'features.{j}' for j in range(start, index + 1)), tuple(sites)))
                start, sites = index + 1, []
        return tuple(specs)


def create_sp_cifar_vgg(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """Build a CIFAR SP-VGG with timm's builder.

    As for timm's VGG, the feature taps are the output of each stage before its max pool
    (indices 0-4) and the final max pool output (index 5).
    """
    return build_model_with_cfg(
        CifarVGG, variant, pretrained, feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3, 4, 5)),
        **kwargs)


default_cfgs = generate_default_cfgs({
    'sp_vgg16_cifar.untrained': cifar_cfg(pool_size=(1, 1), first_conv='features.0', classifier='head.fc'),
})


@register_model
def sp_vgg16_cifar(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """SP-VGG-16 (CIFAR): 13 convs with BN, first vanilla, classifier 512-512-classes (alpha 1/2, G 2)."""
    return create_sp_cifar_vgg('sp_vgg16_cifar', pretrained, **kwargs)
