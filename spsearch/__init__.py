"""SPSearch: SPConv networks for timm, and a search for their per-stage settings under a budget.

Importing ``spsearch`` registers the SP models with timm (``spsearch.models``).
"""
from . import models
from .models import list_sp_models
from .ops import SoftmaxFusion, SPConv2d, sp_split

__version__ = '0.1.0'
__all__ = ['SPConv2d', 'SoftmaxFusion', 'list_sp_models', 'models', 'sp_split', '__version__']
