"""timm registration of the CIFAR-layout SP networks of the paper.

``sp_resnet20`` / ``sp_resnet56`` / ``sp_resnet110`` (16/32/64 channels, projection shortcuts)
and ``sp_vgg16_cifar`` (VGG-16 with BN, classifier 512-512-classes). Every entrypoint takes
``sp_alpha`` and ``sp_groups`` (scalar or per stage, ``"vanilla"`` for plain convs).
"""
from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs, register_model

from spsearch.models import CifarResNet, CifarVGG, create_sp_cifar_resnet, create_sp_cifar_vgg

__all__: list[str] = []

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        'url': '', 'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (8, 8),
        'crop_pct': 1.0, 'interpolation': 'bilinear', 'mean': CIFAR10_MEAN, 'std': CIFAR10_STD,
        'first_conv': 'conv1', 'classifier': 'fc', 'paper_ids': 'arXiv:2006.12085',
        'license': 'apache-2.0', **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'sp_resnet20.untrained': _cfg(),
    'sp_resnet56.untrained': _cfg(),
    'sp_resnet110.untrained': _cfg(),
    'sp_vgg16_cifar.untrained': _cfg(pool_size=(1, 1), first_conv='features.0', classifier='head.fc'),
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


@register_model
def sp_vgg16_cifar(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """SP-VGG-16 (CIFAR): 13 convs with BN, first vanilla, classifier 512-512-classes (alpha 1/2, G 2)."""
    return create_sp_cifar_vgg('sp_vgg16_cifar', pretrained, **kwargs)
