"""Registers SPSearch's SP model families with timm: ``import timm_plugins`` before ``timm.create_model``.

timm discovers models only in modules that have been imported, so this import is what makes
``timm.create_model('sp_resnet50')`` work. ``list_sp_models()`` lists exactly our models
(``timm.list_models('sp*')`` also matches timm's own ``spnasnet_100``).
"""
from __future__ import annotations

import timm

from . import sp_cifar, sp_resnet  # noqa: F401  (importing registers the models)

__all__ = ['SP_MODULES', 'list_sp_models']

SP_MODULES = ('sp_resnet', 'sp_cifar')


def list_sp_models(filter: str = '', include_tags: bool = False) -> list[str]:
    """Names of the registered SP models (optionally ``name.tag``), filtered like ``timm.list_models``."""
    return timm.list_models(filter, module=list(SP_MODULES), include_tags=include_tags)
