"""Fast implementations of SPConv: the same function as the paper's formulation, in fewer passes.

``SPConv2d`` (``impl='reference'``) computes the operator module by module, as the paper writes
it: group-wise conv, point-wise conv, their sum, a batch norm, the redundant 1x1 conv and its
batch norm, two global means, a softmax and a weighted sum. Every step reads and writes a full
``(N, C_out, H, W)`` tensor, autograd stores most of them, and at 16-64 channels the op count
rather than the MACs sets the time. This package computes the same result with fewer, larger
steps; ``SPConv2d.forward`` calls one function of it, ``forward(module, x)``
(``dispatch.py``), which picks the path (``auto_impl``, the GEMM thresholds) and runs it:

- ``dense_rep_weight`` (``convs.py``): GWC and PWC folded into ONE dense k x k kernel over the
  representative channels (the PWC is the centre tap; at stride 2 the 2 x 2 average pool + 1x1
  is the 2 x 2 block of taps below-right of the centre, each with a quarter of the weight,
  exact when H and W are even). One conv instead of two convs and an add; built from the
  reference parameters inside the graph, so gradients reach ``gwc.weight`` and ``pwc.weight``.
- ``BranchFusion`` (``fusion.py``): an autograd Function for both batch norms and the softmax
  fusion, saving only the two conv outputs, with a hand-derived backward.
- ``GemmBranchFusion`` (``fusion.py``): the same with the redundant branch's 1x1 conv inside,
  so its output is never materialised (statistics from a Gram matrix of its input, contribution
  and gradients by batched GEMMs).
- ``infer`` (``inference.py``): the no-grad path with the batch norms (running statistics)
  folded into the conv weights on the fly, and both 1x1 convs and the fusion as one per-sample
  batched GEMM added in place to the k x k conv's output: one full-size map is materialised, as
  for the vanilla conv.

All of them are checked against the reference formulation, outputs and gradients, in
``tests/test_fast_paths.py``. The thresholds are module attributes of ``dispatch``, read at
every call.
"""
from .convs import dense_rep_weight, dense_supported, rep_branch
from .dispatch import auto_impl, forward
from .fusion import BranchFusion, GemmBranchFusion, branch_norm_stats
from .inference import infer

__all__ = ['BranchFusion', 'GemmBranchFusion', 'auto_impl', 'branch_norm_stats', 'dense_rep_weight',
           'dense_supported', 'forward', 'infer', 'rep_branch']
