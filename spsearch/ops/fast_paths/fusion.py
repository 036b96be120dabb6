"""SPConv's two batch norms and softmax fusion as autograd Functions, for training.

Every normalised value is a per-channel affine map of a conv output, so the fused output is
``y = P * z_rep + Q * z_red + R`` with per-(sample, channel) ``P, Q, R``: two passes forward,
only the conv outputs saved (not the normalised maps, the fused map and the weights), and a
hand-derived backward of three reductions and two passes per branch. ``BranchFusion`` takes
both conv outputs; ``GemmBranchFusion`` takes the redundant branch's input instead and keeps its
1x1 conv inside, never materialising its output. Both derive the gradients through a branch's
norm and gate with one helper (``_branch_grads``).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .convs import as_mat, is_channels_last

__all__ = ['BranchFusion', 'GemmBranchFusion', 'branch_norm_stats']

_BN_STATS_DEVICES = ('cpu', 'cuda')


def branch_norm_stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel batch mean and biased variance of ``z`` over (N, H, W), in float32 or wider.

    Uses the kernel batch norm itself uses on CPU and CUDA (``batch_norm_update_stats``; much
    faster than ``torch.var_mean`` on CPU), ``var_mean`` elsewhere.
    """
    if z.dtype not in (torch.float32, torch.float64):
        z = z.float()
    if z.device.type in _BN_STATS_DEVICES:
        mean, var = torch.ops.aten.batch_norm_update_stats(z, None, None, 0.0)
        return mean, var
    var, mean = torch.var_mean(z, dim=(0, 2, 3), correction=0)
    return mean, var


def _affine(mean: torch.Tensor, inv_std: torch.Tensor, weight: torch.Tensor | None,
            bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    scale = inv_std if weight is None else inv_std * weight
    shift = -mean * scale
    return scale, shift if bias is None else shift + bias


def _statistics(ctx: Any, mean1: torch.Tensor, var1: torch.Tensor, mean2: torch.Tensor,
                var2: torch.Tensor) -> torch.Tensor:
    """The Functions' second output: the ``(4, C)`` statistics used, for the running statistics."""
    stats = torch.stack([mean1, var1, mean2, var2])
    ctx.mark_non_differentiable(stats)
    return stats


def _gate(logit: torch.Tensor, gate_scale: torch.Tensor | None) -> torch.Tensor:
    """The representative branch's weight from ``mean_hw bn1(z1) - mean_hw bn2(z2)``."""
    if gate_scale is not None:
        logit = logit * gate_scale.reshape(1, -1)
    return torch.sigmoid(logit)


def _gate_grad(grad_diff: torch.Tensor, w: torch.Tensor, gate_scale: torch.Tensor | None) -> torch.Tensor:
    """d loss / d ``mean_hw bn1(z1)`` (minus that of bn2) from ``sum_hw grad * (bn1(z1) - bn2(z2))``."""
    dlogit = grad_diff * w * (1 - w)
    return dlogit if gate_scale is None else dlogit * gate_scale.reshape(1, -1)


class _BranchGrads(NamedTuple):
    """The norm's parameter gradients ``(C,)``, and ``dz = coef_g * grad + coef_z * (z - mean) + const``."""

    dweight: torch.Tensor
    dbias: torch.Tensor
    coef_g: torch.Tensor
    coef_z: torch.Tensor | None
    const: torch.Tensor


def _branch_grads(sum_g: torch.Tensor, sum_gzc: torch.Tensor, zbar_c: torch.Tensor, inv: torch.Tensor,
                  scale: torch.Tensor, gate: torch.Tensor, dmean: torch.Tensor, hw: int, m: int,
                  batch_stats: bool) -> _BranchGrads:
    """Gradients through one branch's batch norm ``bn(z) = scale * (z - mean) + bias``.

    The branch enters the output as ``gate * bn(z)`` and the gate's logit through ``mean_hw
    bn(z)``. With batch statistics, ``mean`` and ``inv = 1 / sqrt(var + eps)`` depend on ``z``
    too: the usual batch-norm correction terms. Only per-(sample, channel) sums of the full-size
    maps enter, so a caller that never materialises ``z`` can supply them.

    Args:
        sum_g: ``sum_hw grad``, ``(N, C)``.
        sum_gzc: ``sum_hw grad * (z - mean)``, ``(N, C)``.
        zbar_c: ``mean_hw z - mean``, ``(N, C)``.
        inv: ``1 / sqrt(var + eps)``, ``(C,)``.
        scale: ``inv * weight``, ``(C,)``.
        gate: The branch's weight in the output, ``(N, C)``.
        dmean: d loss / d ``mean_hw bn(z)`` through the gate, ``(N, C)``.
        hw: Pixels per map.
        m: Values per channel in the batch (``N * hw``).
        batch_stats: Whether ``mean`` and ``inv`` are the batch's.

    Returns:
        ``_BranchGrads``: ``coef_g`` and ``const`` are ``(N, C)``, ``coef_z`` is ``(C,)`` (None
        without batch statistics).
    """
    dbias = (gate * sum_g + dmean).sum(0)
    dweight = (inv * (gate * sum_gzc + dmean * zbar_c)).sum(0)
    coef_g = scale * gate
    const = scale * dmean / hw
    if not batch_stats:
        return _BranchGrads(dweight, dbias, coef_g, None, const)
    return _BranchGrads(dweight, dbias, coef_g, -scale * inv * dweight / m, const - scale * dbias / m)


def _input_grad(grad: torch.Tensor, z: torch.Tensor, mean: torch.Tensor, g: _BranchGrads) -> torch.Tensor:
    """``dz`` of a materialised branch from ``_branch_grads``, in ``z``'s dtype: one or two full-size passes."""
    const = g.const if g.coef_z is None else g.const - g.coef_z * mean
    dz = torch.addcmul(const.to(z.dtype)[:, :, None, None], grad, g.coef_g.to(z.dtype)[:, :, None, None])
    if g.coef_z is not None:
        dz.addcmul_(z, g.coef_z.to(z.dtype)[None, :, None, None])
    return dz


class BranchFusion(torch.autograd.Function):
    """``y = w * bn1(z1) + (1 - w) * bn2(z2)``, ``w = sigmoid(gs * (mean_hw bn1(z1) - mean_hw bn2(z2)))``.

    Inputs: the two conv outputs ``z1`` (representative) and ``z2`` (redundant); per branch the
    norm's affine weight and bias (or None), running mean and variance (None: use batch
    statistics, as in training) and eps; and the gate scale ``gs`` (``SoftmaxFusion.gate_scale``,
    or None).

    Outputs: ``y``, and a ``(4, C)`` non-differentiable tensor of the statistics used (means and
    biased variances of both branches), from which the caller updates the running statistics.

    Saves only ``z1``, ``z2`` and per-channel/per-sample vectors. Gradients are exact (checked
    against autograd through the reference formulation and with ``gradcheck``).
    """

    @staticmethod
    def forward(ctx: Any, z1: torch.Tensor, z2: torch.Tensor,
                weight1: torch.Tensor | None, bias1: torch.Tensor | None,
                running_mean1: torch.Tensor | None, running_var1: torch.Tensor | None, eps1: float,
                weight2: torch.Tensor | None, bias2: torch.Tensor | None,
                running_mean2: torch.Tensor | None, running_var2: torch.Tensor | None, eps2: float,
                gate_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if running_mean1 is None or running_var1 is None or running_mean2 is None or running_var2 is None:
            batch_stats = True
            mean1, var1 = branch_norm_stats(z1)
            mean2, var2 = branch_norm_stats(z2)
        else:
            batch_stats = False
            mean1, var1, mean2, var2 = running_mean1, running_var1, running_mean2, running_var2
        stat_dtype = mean1.dtype
        inv1, inv2 = torch.rsqrt(var1 + eps1), torch.rsqrt(var2 + eps2)
        scale1, shift1 = _affine(mean1, inv1, weight1, bias1)
        scale2, shift2 = _affine(mean2, inv2, weight2, bias2)
        zbar1 = z1.mean((2, 3), dtype=stat_dtype)
        zbar2 = z2.mean((2, 3), dtype=stat_dtype)
        w = _gate((zbar1 * scale1 + shift1) - (zbar2 * scale2 + shift2), gate_scale)
        p = (w * scale1).to(z1.dtype)[:, :, None, None]
        q = ((1 - w) * scale2).to(z1.dtype)[:, :, None, None]
        r = torch.lerp(shift2, shift1, w).to(z1.dtype)[:, :, None, None]
        y = torch.addcmul(r, z1, p)
        y.addcmul_(z2, q)

        ctx.batch_stats = batch_stats
        ctx.has_weight = (weight1 is not None, weight2 is not None)
        ctx.has_bias = (bias1 is not None, bias2 is not None)
        ctx.save_for_backward(z1, z2, w, zbar1, zbar2, mean1, inv1, scale1, shift1, mean2, inv2, scale2, shift2,
                              gate_scale)
        return y, _statistics(ctx, mean1, var1, mean2, var2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor, _grad_stats: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        (z1, z2, w, zbar1, zbar2, mean1, inv1, scale1, shift1, mean2, inv2, scale2, shift2,
         gate_scale) = ctx.saved_tensors
        n, _, h, width = z1.shape
        hw, m = h * width, n * h * width
        dtype = w.dtype
        sum_g = grad.sum((2, 3), dtype=dtype)
        sum_gz1 = (grad * z1).sum((2, 3), dtype=dtype)
        sum_gz2 = (grad * z2).sum((2, 3), dtype=dtype)
        dlogit = _gate_grad(scale1 * sum_gz1 - scale2 * sum_gz2 + (shift1 - shift2) * sum_g, w, gate_scale)
        grads: list[torch.Tensor | None] = []
        param_grads: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []
        for i, (z, zbar, sum_gz, mean, inv, scale, gate, dmean) in enumerate((
                (z1, zbar1, sum_gz1, mean1, inv1, scale1, w, dlogit),
                (z2, zbar2, sum_gz2, mean2, inv2, scale2, 1 - w, -dlogit))):
            g = _branch_grads(sum_g, sum_gz - mean * sum_g, zbar - mean, inv, scale, gate, dmean, hw, m,
                              ctx.batch_stats)
            grads.append(_input_grad(grad, z, mean, g) if ctx.needs_input_grad[i] else None)
            param_grads.append((g.dweight if ctx.has_weight[i] else None, g.dbias if ctx.has_bias[i] else None))
        return (grads[0], grads[1], *param_grads[0], None, None, None, *param_grads[1], None, None, None, None)


class GemmBranchFusion(torch.autograd.Function):
    """``BranchFusion`` with the redundant branch's 1x1 conv inside, never materialised.

    ``z2 = W u + b`` is linear in the (pooled) redundant input ``u``, so everything the fusion
    needs from it is small: its batch mean and variance are ``W mean(u) + b`` and
    ``diag(W cov(u) W^T)`` (``cov(u)``: an ``r x r`` Gram matrix of the input), its per-sample
    means are ``W mean_hw(u) + b``, and its weighted contribution to the output,
    ``(1 - w) * bn2(z2)``, is a per-sample 1x1 conv with the gate and the norm folded into the
    weights, accumulated in place into ``y`` by one batched GEMM. The backward likewise needs
    ``sum_hw grad u^T`` (one batched GEMM) instead of the full-size ``dz2`` and a conv backward.
    Per layer this saves writing and reading ``z2`` (five full-size passes forward and backward)
    and storing it.

    Inputs: ``z1`` (the representative conv output), ``u`` (the redundant branch's input,
    already pooled at stride > 1; may be a channel slice of the layer input), the 1x1 conv's
    weight and bias, then as ``BranchFusion``: per branch the norm's weight, bias, running mean,
    running variance (None: batch statistics) and eps, and the gate scale.

    Outputs: ``y`` (laid out like ``z1``) and the ``(4, C)`` statistics, as ``BranchFusion``.
    The variance of the redundant branch comes from ``E[u u^T] - E[u] E[u]^T`` in float32 (or
    float64 for float64 inputs), which loses precision when an input channel's mean is orders
    of magnitude above its spread; layer inputs after BN + ReLU are far from that.
    """

    @staticmethod
    def forward(ctx: Any, z1: torch.Tensor, u: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor | None,
                weight1: torch.Tensor | None, bias1: torch.Tensor | None,
                running_mean1: torch.Tensor | None, running_var1: torch.Tensor | None, eps1: float,
                weight2: torch.Tensor | None, bias2: torch.Tensor | None,
                running_mean2: torch.Tensor | None, running_var2: torch.Tensor | None, eps2: float,
                gate_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        channels_last = is_channels_last(z1)
        if not channels_last and not z1.is_contiguous():
            z1 = z1.contiguous()
        n, c, h, width = z1.shape
        m = n * h * width
        st = torch.promote_types(z1.dtype, torch.float32)
        w_red = conv_weight.reshape(c, -1).to(st)
        b_red = conv_bias.to(st) if conv_bias is not None else torch.zeros(c, dtype=st, device=z1.device)
        u_mat = as_mat(u, channels_last)
        u_mean = u.mean((2, 3), dtype=st)
        mu_u = u_mean.mean(0)
        if running_mean1 is None or running_var1 is None or running_mean2 is None or running_var2 is None:
            batch_stats = True
            mean1, var1 = branch_norm_stats(z1)
            if channels_last:
                u_rows = u_mat.reshape(m, -1)
                gram = (u_rows.t() @ u_rows).to(st) / m
            else:
                gram = (u_mat @ u_mat.transpose(1, 2)).sum(0).to(st) / m
            cov = gram - torch.outer(mu_u, mu_u)
            mean2 = w_red @ mu_u + b_red
            var2 = ((w_red @ cov) * w_red).sum(1).clamp_min(0)
            delta = -(w_red @ mu_u)
        else:
            batch_stats = False
            mean1, var1, mean2, var2 = running_mean1, running_var1, running_mean2, running_var2
            gram = torch.zeros(0, dtype=st, device=z1.device)
            delta = b_red - mean2
        inv1, inv2 = torch.rsqrt(var1 + eps1), torch.rsqrt(var2 + eps2)
        scale1, shift1 = _affine(mean1, inv1, weight1, bias1)
        # bn2(z2) = scale2 * (W u) + shift2
        scale2 = inv2 if weight2 is None else inv2 * weight2
        shift2 = scale2 * delta if bias2 is None else scale2 * delta + bias2
        zbar1 = z1.mean((2, 3), dtype=st)
        wu_mean = u_mean @ w_red.t()
        w = _gate((zbar1 * scale1 + shift1) - (wu_mean * scale2 + shift2), gate_scale)
        dt = z1.dtype
        y = torch.addcmul(torch.lerp(shift2, shift1, w).to(dt)[:, :, None, None], z1,
                          (w * scale1).to(dt)[:, :, None, None])
        per_sample = (((1 - w) * scale2)[:, :, None] * w_red).to(dt)
        y_mat, u_mat_d = as_mat(y, channels_last), u_mat.to(dt)
        if channels_last:
            y_mat.baddbmm_(u_mat_d, per_sample.transpose(1, 2))
        else:
            y_mat.baddbmm_(per_sample, u_mat_d)

        ctx.batch_stats, ctx.channels_last = batch_stats, channels_last
        ctx.has = (weight1 is not None, bias1 is not None, weight2 is not None, bias2 is not None,
                   conv_bias is not None)
        ctx.save_for_backward(z1, u, w_red, w, zbar1, u_mean, mean1, inv1, scale1, shift1, inv2, scale2, shift2,
                              delta, gram, gate_scale)
        return y, _statistics(ctx, mean1, var1, mean2, var2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor, _grad_stats: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        (z1, u, w_red, w, zbar1, u_mean, mean1, inv1, scale1, shift1, inv2, scale2, shift2, delta, gram,
         gate_scale) = ctx.saved_tensors
        cl = ctx.channels_last
        n, c, h, width = z1.shape
        hw, m = h * width, n * h * width
        st = w.dtype
        grad = grad.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        g_mat, u_mat = as_mat(grad, cl), as_mat(u, cl).to(grad.dtype)
        sum_g = grad.sum((2, 3), dtype=st)
        sum_gz1 = (grad * z1).sum((2, 3), dtype=st)
        # sum_hw g u^T, (N, C, r); computed as (u^T g)^T, which MKL runs 2x faster for small r
        g_u = ((u_mat.transpose(1, 2) @ g_mat).transpose(1, 2) if cl else g_mat @ u_mat.transpose(1, 2)).to(st)
        sum_gwu = (g_u * w_red).sum(2)  # sum_hw g * (W u)
        dlogit = _gate_grad(scale1 * sum_gz1 + shift1 * sum_g - scale2 * sum_gwu - shift2 * sum_g, w, gate_scale)

        rep = _branch_grads(sum_g, sum_gz1 - mean1 * sum_g, zbar1 - mean1, inv1, scale1, w, dlogit, hw, m,
                            ctx.batch_stats)
        dz1 = _input_grad(grad, z1, mean1, rep) if ctx.needs_input_grad[0] else None

        # redundant branch: bn2's input z2 = W u + b, centred z2 - mean2 = W u + delta
        wu_mean = u_mean @ w_red.t()
        red = _branch_grads(sum_g, sum_gwu + delta * sum_g, wu_mean + delta, inv2, scale2, 1 - w, -dlogit, hw, m,
                            ctx.batch_stats)
        # d loss / d z2 = d1 * grad + e * (W u) + f
        d1, e = red.coef_g, red.coef_z
        f = red.const if e is None else red.const + e * delta
        du = None
        if ctx.needs_input_grad[1]:
            gd = (d1[:, :, None] * w_red).to(grad.dtype)  # (N, C, r)
            fw = (f @ w_red).to(grad.dtype)  # W^T f, (N, r)
            if cl:
                du_mat = torch.baddbmm(fw[:, None, :], g_mat, gd)
            else:
                du_mat = torch.baddbmm(fw[:, :, None], gd.transpose(1, 2), g_mat)
            if e is not None:  # + (W^T diag(e) W) u: the same weight for every sample, one GEMM
                q = (w_red.t() @ (e[:, None] * w_red)).to(grad.dtype)
                if cl:
                    du_mat.view(m, -1).addmm_(u_mat.reshape(m, -1), q)
                else:
                    du_mat.baddbmm_(q.expand(n, -1, -1), u_mat)
            r = w_red.shape[1]
            du = (du_mat.view(n, h, width, r).permute(0, 3, 1, 2) if cl else du_mat.view(n, r, h, width)).to(u.dtype)
        dconv_w = (d1[:, :, None] * g_u).sum(0) + hw * f.t() @ u_mean
        dconv_b = (d1 * sum_g).sum(0) + hw * f.sum(0)
        if e is not None:
            dconv_w = dconv_w + e[:, None] * (w_red @ (m * gram))
            dconv_b = dconv_b + e * (w_red @ (m * u_mean.mean(0)))
        has_w1, has_b1, has_w2, has_b2, has_cb = ctx.has
        return (dz1, du, dconv_w.view(c, -1, 1, 1), dconv_b if has_cb else None,
                rep.dweight if has_w1 else None, rep.dbias if has_b1 else None, None, None, None,
                red.dweight if has_w2 else None, red.dbias if has_b2 else None, None, None, None, None)
