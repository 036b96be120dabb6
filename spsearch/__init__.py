"""SPSearch: SPConv networks for timm, and a search for their per-stage settings under a budget."""
from .ops import SoftmaxFusion, SPConv2d, sp_split

__version__ = '0.1.0'
__all__ = ['SPConv2d', 'SoftmaxFusion', 'sp_split', '__version__']
