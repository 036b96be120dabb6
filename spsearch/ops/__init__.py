"""SPSearch operators: the SPConv operator, its parameter-free fusion, and inference-time folding."""
from .fold_bn import fold_batchnorms
from .softmax_fusion import SoftmaxFusion
from .spconv import SPConv2d, bn_affine, scale_conv_, sp_split

__all__ = ['SPConv2d', 'SoftmaxFusion', 'bn_affine', 'fold_batchnorms', 'scale_conv_', 'sp_split']
