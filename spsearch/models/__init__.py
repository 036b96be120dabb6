"""SP model families on timm's ResNet and VGG classes, registered with timm on import.

Each family is one module holding its blocks, its stage description (``sp_stages()``) and its
``default_cfgs`` + ``@register_model`` entrypoints, as timm's own model modules do. Importing
this package (``import spsearch``, or ``import timm_plugins``) registers them all.

Add a family: write one module ``spsearch/models/sp_<family>.py`` with the model class (implementing
``sp_stages()``, see ``stages.SPStagedModel``), ``default_cfgs`` and the ``@register_model``
entrypoints. Every ``sp_*`` module here is imported as a family (``FAMILIES``), so its models are
registered and listed, and the generic tests (models, costs, the golden complexity file, the search
space) cover them.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
from types import ModuleType
from typing import Any

import timm
import torch
from torch import nn

from .sp_resnet import SPBasicBlock, SPBottleneck, SPResNet, create_sp_resnet, sp_stage_blocks
from .sp_resnet_cifar import CifarResNet, create_sp_cifar_resnet
from .sp_vgg_cifar import VGG16_CFG, CifarVGG, create_sp_cifar_vgg
from .stages import (
    VANILLA,
    SPSite,
    SPStagedModel,
    StageAlpha,
    StageSpec,
    format_alpha,
    format_stage_values,
    parse_alpha,
    parse_groups,
    parse_stage_alphas,
    parse_stage_groups,
)

__all__ = [
    'FAMILIES', 'VANILLA', 'VGG16_CFG', 'CifarResNet', 'CifarVGG', 'SPBasicBlock', 'SPBottleneck', 'SPResNet',
    'SPSite', 'SPStagedModel', 'StageAlpha', 'StageSpec', 'create_sp_cifar_resnet', 'create_sp_cifar_vgg',
    'create_sp_resnet', 'format_alpha', 'format_stage_values', 'list_sp_models', 'parse_alpha', 'parse_groups',
    'parse_stage_alphas', 'parse_stage_groups', 'sp_stage_blocks', 'stage_specs',
]

FAMILIES: tuple[ModuleType, ...] = tuple(
    importlib.import_module(f'{__name__}.{name}')
    for name in sorted(info.name for info in pkgutil.iter_modules(__path__)) if name.startswith('sp_'))
"""The family modules: every ``sp_*`` module of this package, imported (and so registered) here."""


def list_sp_models(filter: str = '', include_tags: bool = False) -> list[str]:
    """Names of the registered SP models (optionally ``name.tag``), filtered like ``timm.list_models``.

    The models of every imported family module (``spsearch.models.sp_*``); timm knows a module by its
    last name component. ``timm.list_models('sp*')`` also matches timm's own ``spnasnet_100``; this
    lists exactly ours.
    """
    families = [name.rsplit('.', 1)[1] for name in list(sys.modules) if name.startswith(f'{__name__}.sp_')]
    return timm.list_models(filter, module=families, include_tags=include_tags)


def stage_specs(model: str | nn.Module, **kwargs: Any) -> tuple[StageSpec, ...]:
    """The stage description of an SP model instance, or of a registered model name (any SP family).

    A name is built once on the ``meta`` device (no memory, no initialisation) with ``kwargs``.

    Raises:
        ValueError: If the model has no stage description (it is not an SP model).
        TypeError: If a registered model does not take ``kwargs``.
        RuntimeError: If the name is not a registered timm model.
    """
    if isinstance(model, str):
        with torch.device('meta'):
            model = timm.create_model(model, **kwargs)
    if not isinstance(model, SPStagedModel):
        raise ValueError(f'{type(model).__name__} has no stage description (sp_stages()); it is not an SP model')
    return model.sp_stages()
