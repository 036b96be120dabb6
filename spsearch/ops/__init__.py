"""SPSearch operators: the SPConv operator, its parameter-free fusion, fast paths and inference-time folding."""
from .affine import bn_affine, scale_conv_
from .autotune import autotune, set_spconv_impl
from .fast_paths import auto_impl
from .fold_bn import fold_batchnorms
from .softmax_fusion import SoftmaxFusion
from .spconv import SPCONV_IMPLS, SPConv2d, sp_split

__all__ = ['SPCONV_IMPLS', 'SPConv2d', 'SoftmaxFusion', 'auto_impl', 'autotune', 'bn_affine', 'fold_batchnorms',
           'scale_conv_', 'set_spconv_impl', 'sp_split']
