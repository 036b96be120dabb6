"""Which fast path an ``SPConv2d`` forward takes, and running it: ``forward``, the one entry point.

``forward(module, x)`` returns the layer's output, or None where no fast path applies and the
module runs its reference formulation: ``impl='reference'``, norms other than ``BatchNorm2d``
(or ``nn.Identity`` once folded), a mix of train- and eval-mode norms, and ``impl='auto'`` where
``auto_impl`` says so. Otherwise, without autograd and with eval-mode (or folded) norms, it is
``infer``; in training the representative convs, then ``BranchFusion`` or ``GemmBranchFusion``
(by ``GEMM_MIN_PIXELS_PER_CHANNEL_TRAIN``), updating the running statistics as batch norm does.

The thresholds here and the CPU rule of ``auto_impl`` were measured on one CPU (2 threads), its
CUDA rule on one H200.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .convs import dense_rep_weight, dense_supported, rep_branch
from .fusion import BranchFusion, GemmBranchFusion
from .inference import infer

if TYPE_CHECKING:
    from ..spconv import SPConv2d

__all__ = ['CUDA_DENSE_MIN_BATCH', 'GEMM_MIN_PIXELS', 'GEMM_MIN_PIXELS_PER_CHANNEL_TRAIN', 'auto_impl', 'forward']

GEMM_MIN_PIXELS = 256
"""Output maps at least this large (H * W) use the per-sample GEMM in ``infer`` (measured on CPU,
2 threads: at 14 x 14 both ways tie, at 7 x 7 the GEMMs take 1.3x as long)."""
GEMM_MIN_PIXELS_PER_CHANNEL_TRAIN = 2.0
"""Training uses ``GemmBranchFusion`` where the output map has at least this many pixels per
redundant input channel (``H * W >= 2 r``), ``BranchFusion`` (the 1x1 conv materialised) below.
``GemmBranchFusion`` trades the full-size map ``z2`` (``N C H W`` values) for per-sample ``N C r``
weights and gradients, which only pays while ``H W`` exceeds ``r``. Measured per layer on CPU,
2 threads, batch 128 (forward + backward, GEMM / plain time): 0.84-0.92 at ``H W / r`` of 2-128
(CIFAR ResNet-20, SP-ResNet-50's first stages), about 1.0 at 1-2, 1.2-8x slower at 0.5 and below
(ImageNet-layout models at small inputs, SP-ResNet-50's 7 x 7 stage)."""


def auto_impl(rep_channels: int, groups: int, kernel_size: int, stride: int, dilation: int, training: bool,
              device_type: str = 'cpu', batch_size: int | None = None, reduced_precision: bool = False) -> str:
    """The implementation ``impl='auto'`` picks for one layer on one device type.

    On CPU (``device_type='cpu'``, the default), a rule measured there with 2 threads. Training:
    dense where the group-wise conv has at most 8 input channels per group; there oneDNN runs one
    dense conv (forward and backward) about as fast as the grouped conv alone, so folding the PWC
    into it is free. Inference, and training elsewhere: split, since a dense conv has ``G``
    times the GWC's MACs and at inference the PWC costs nothing extra (it rides in the batched
    GEMM of ``infer``). See the per-layer tables of ``benchmarks/profile_ops.py`` in
    ``results/benchmarks.md``.

    On CUDA, a rule measured on one H200 (``make gpu-check``, ``results/gpu_check.md``: SP-ResNet-50
    alpha 1/2, bf16 autocast, channels_last, whole-model time over ResNet-50's in the same process).
    ``'dense'`` at batch ``CUDA_DENSE_MIN_BATCH`` (256) and above under bf16/fp16, where it measured
    fastest (inference 1.27x ResNet-50 vs 1.38x split and 1.46x reference; training 1.59x vs 1.70x
    and 1.80x); ``'reference'`` otherwise, which was fastest at batch 64 (inference 1.59x vs 1.77x
    split and 2.13x dense; training 2.11x vs 3.40x and 3.59x): there the fast paths' extra kernels cost
    more than they save. Batches between 64 and 256, and fp32, were not measured for the fast paths,
    so they keep the reference.

    On any other device type (``'mps'``, ``'meta'``, ...), ``'reference'``: nothing was measured
    there. ``spsearch.ops.autotune`` (``benchmark.py --sp-impl tune``) measures the fast paths per
    layer on the target device and pins the faster.

    Args:
        rep_channels, groups, kernel_size, stride, dilation: The layer's settings.
        training: Training (forward + backward) rather than inference.
        device_type: The input's device type.
        batch_size: The input's batch size (the CUDA rule uses it; None: unknown).
        reduced_precision: The input is bf16/fp16 or autocast to them is on (the CUDA rule uses it).

    Returns:
        ``'reference'``, ``'split'`` or ``'dense'``.
    """
    if device_type == 'cuda':
        large = batch_size is not None and batch_size >= CUDA_DENSE_MIN_BATCH
        return 'dense' if large and reduced_precision and dense_supported(kernel_size, stride, dilation) \
            else 'reference'
    if device_type != 'cpu':
        return 'reference'
    if training and dense_supported(kernel_size, stride, dilation) and rep_channels // groups <= 8:
        return 'dense'
    return 'split'

CUDA_DENSE_MIN_BATCH = 256
"""On CUDA under bf16/fp16, ``auto`` picks ``'dense'`` from this batch size on (see ``auto_impl``)."""
_REDUCED = (torch.bfloat16, torch.float16)


def forward(module: SPConv2d, x: torch.Tensor) -> torch.Tensor | None:
    """``module(x)`` by a fast path, or None where the reference formulation must run (see above)."""
    norm_mode = _norm_mode(module)
    if norm_mode is None:
        return None
    training = norm_mode == 'batch' or torch.is_grad_enabled()
    impl = module.impl
    if impl == 'auto':
        impl = auto_impl(module.rep_channels, module.groups, module.kernel_size, module.stride, module.dilation,
                         training, x.device.type, x.shape[0],
                         x.device.type == 'cuda' and (x.dtype in _REDUCED or torch.is_autocast_enabled('cuda')))
    if impl == 'reference':
        return None
    dense = impl == 'dense' and x.shape[-2] % module.stride == 0 and x.shape[-1] % module.stride == 0
    if not training:
        return infer(x, module.rep_channels, module.gwc, module.pwc, module.bn1, module.conv1x1, module.bn2,
                     module.fusion.gate_scale if module.fusion is not None else None, dense, GEMM_MIN_PIXELS)
    if module.conv1x1 is None:
        return module.bn1(_rep_branch(module, x, dense))
    if module.recompute and torch.is_grad_enabled():
        out, stats = checkpoint(_fused_branches, module, x, dense, use_reentrant=False, preserve_rng_state=False)
    else:
        out, stats = _fused_branches(module, x, dense)
    if norm_mode == 'batch' and module.training:
        _update_running_stats(module, stats, out.numel() // out.shape[1])
    return out


def _norm_mode(module: SPConv2d) -> str | None:
    """How the fast paths treat the branch norms: 'folded' (both Identity), 'running' (eval
    batch norms), 'batch' (batch statistics), or None (anything else: use the reference)."""
    norms = (module.bn1,) if module.bn2 is None else (module.bn1, module.bn2)
    if all(type(n) is nn.Identity for n in norms):
        return 'folded'
    if not all(type(n) is nn.BatchNorm2d for n in norms):
        return None
    batch = [n.training or n.running_mean is None for n in norms]
    if any(batch) != all(batch):
        return None
    return 'batch' if batch[0] else 'running'


def _rep_branch(module: SPConv2d, x_rep: torch.Tensor, dense: bool) -> torch.Tensor:
    weight = (dense_rep_weight(module.gwc.weight, module.pwc.weight, module.groups, module.stride)
              if dense else None)
    return rep_branch(x_rep, module.gwc, module.pwc.weight, weight, module.gwc.bias)


def _fused_branches(module: SPConv2d, x: torch.Tensor, dense: bool) -> tuple[torch.Tensor, torch.Tensor]:
    assert module.conv1x1 is not None and module.bn2 is not None and module.fusion is not None
    x_rep, x_red = x.split((module.rep_channels, module.red_channels), dim=1)
    z_rep = _rep_branch(module, x_rep, dense)
    u = module.pool(x_red)
    gate_scale = module.fusion.gate_scale
    if z_rep.shape[-1] * z_rep.shape[-2] >= GEMM_MIN_PIXELS_PER_CHANNEL_TRAIN * module.red_channels:
        return GemmBranchFusion.apply(z_rep, u, module.conv1x1.weight, module.conv1x1.bias,
                                      *_norm_args(module.bn1, z_rep), *_norm_args(module.bn2, z_rep), gate_scale)
    z_red = module.conv1x1(u)
    return BranchFusion.apply(z_rep, z_red, *_norm_args(module.bn1, z_rep), *_norm_args(module.bn2, z_red),
                              gate_scale)


def _norm_args(norm: nn.Module, z: torch.Tensor) -> tuple[Any, ...]:
    """The Functions' arguments for one branch norm: weight, bias, running mean/var, eps."""
    if isinstance(norm, nn.BatchNorm2d):
        batch = norm.training or norm.running_mean is None
        return (norm.weight, norm.bias, None if batch else norm.running_mean,
                None if batch else norm.running_var, norm.eps)
    # a folded norm is the identity: statistics (0, 1) with eps 0
    ones = torch.ones(z.shape[1], device=z.device, dtype=torch.promote_types(z.dtype, torch.float32))
    return None, None, torch.zeros_like(ones), ones, 0.0


@torch.no_grad()
def _update_running_stats(module: SPConv2d, stats: torch.Tensor, count: int) -> None:
    if count <= 1:
        raise ValueError(f'Expected more than 1 value per channel when training, got input of {count} per channel')
    for bn, mean, var in ((module.bn1, stats[0], stats[1]), (module.bn2, stats[2], stats[3])):
        assert isinstance(bn, nn.BatchNorm2d)
        if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
            continue
        factor: float | torch.Tensor = 0.0 if bn.momentum is None else bn.momentum
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:
                factor = 1.0 / bn.num_batches_tracked.to(bn.running_mean.dtype)
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
        bn.running_var.lerp_((var * (count / (count - 1))).to(bn.running_var.dtype), factor)
