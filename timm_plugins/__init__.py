"""Makes SPSearch's SP models known to timm: ``import timm_plugins`` before ``timm.create_model``.

timm discovers models only in modules that have been imported. The SP model families register
themselves where they are defined (``spsearch.models``, as timm's own model modules do); this
package is the one documented import for users of timm and timm's scripts
(``--device-modules timm_plugins``). ``list_sp_models()`` lists exactly our models
(``timm.list_models('sp*')`` also matches timm's own ``spnasnet_100``).
"""
from __future__ import annotations

from spsearch.models import list_sp_models

__all__ = ['list_sp_models']
