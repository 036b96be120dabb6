"""Cost accounting: exact parameters and MACs (thop + an independent analytic count).

"GFLOPs" in SPSearch means 10^9 multiply-accumulates, the SPConv paper's and thop's convention.
"""
from .analytic import Count, UnsupportedModuleError, analytic_count, analytic_site_counts
from .profile import ModelCost, profile_model
from .thop_count import THOP_CUSTOM_OPS, softmax_fusion_macs, thop_count

__all__ = [
    'THOP_CUSTOM_OPS', 'Count', 'ModelCost', 'UnsupportedModuleError', 'analytic_count', 'analytic_site_counts',
    'profile_model', 'softmax_fusion_macs', 'thop_count',
]
