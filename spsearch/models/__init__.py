"""SP model families built on timm's ResNet and VGG classes (registered by ``timm_plugins``)."""
from .cifar import VGG16_CFG, CifarResNet, CifarVGG, create_sp_cifar_resnet, create_sp_cifar_vgg
from .sp_resnet import SPBasicBlock, SPBottleneck, create_sp_resnet, sp_stage_blocks
from .stage_config import VANILLA, format_stage_values, parse_stage_alphas, parse_stage_groups

__all__ = [
    'VANILLA', 'VGG16_CFG', 'CifarResNet', 'CifarVGG', 'SPBasicBlock', 'SPBottleneck',
    'create_sp_cifar_resnet', 'create_sp_cifar_vgg', 'create_sp_resnet', 'format_stage_values',
    'parse_stage_alphas', 'parse_stage_groups', 'sp_stage_blocks',
]
