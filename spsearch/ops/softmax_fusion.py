"""Parameter-free softmax fusion of two feature maps (the merge step of SPConv).

Each branch is global-average-pooled to one statistic per sample and channel; a softmax across
the two branches turns the statistics into weights that sum to one, and the output is the
weighted sum of the branches. A softmax over two values is the sigmoid of their difference,
which is what is computed here (one op instead of stack + softmax + two slices), and the
weighted sum ``w * a + (1 - w) * b`` is one ``torch.lerp``.

Paper: `Split to Be Slim: An Overlooked Redundancy in Vanilla Convolution`, IJCAI 2020
(https://arxiv.org/abs/2006.12085), Section 3.3.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ['SoftmaxFusion']


class SoftmaxFusion(nn.Module):
    """Merge two ``(N, C, H, W)`` maps with per-sample, per-channel softmax weights.

    It has no parameters. It is a module (not a function inside ``SPConv2d.forward``) so that
    the operation counter can see it: thop skips anything computed inside a parent's ``forward``.

    After ``fold_output_affine`` (used when the batch norm that follows SPConv is folded into
    it for inference) the branches arrive scaled by that norm, and a per-channel ``gate_scale``
    buffer undoes the scale on the statistics so the weights stay exactly as before.
    """

    gate_scale: torch.Tensor | None

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer('gate_scale', None)

    def forward(self, rep: torch.Tensor, red: torch.Tensor) -> torch.Tensor:
        """Return ``w * rep + (1 - w) * red`` with ``w = softmax(GAP(rep), GAP(red))[0]``.

        Args:
            rep: Output of the representative branch.
            red: Output of the redundant branch, same shape as ``rep``.

        Returns:
            The fused map, same shape as the inputs.
        """
        logit = rep.mean((2, 3), keepdim=True) - red.mean((2, 3), keepdim=True)
        if self.gate_scale is not None:
            logit = logit * self.gate_scale
        # the weight in the maps' dtype: under autocast the maps are bf16/fp16 while an fp32 gate_scale (a folded
        # model) makes the logit fp32, and lerp takes one dtype (seen on CUDA, bf16, BN folded)
        return torch.lerp(red, rep, torch.sigmoid(logit).to(rep.dtype))

    @torch.no_grad()
    def fold_output_affine(self, scale: torch.Tensor) -> None:
        """Account for both inputs having been multiplied per channel by ``scale`` (shifts cancel).

        Since the weights sum to one, ``scale * fuse(a, b) + shift == fuse(scale*a + shift,
        scale*b + shift)`` as long as the weights are computed from the unscaled statistics,
        i.e. with the logit divided by ``scale``. A zero scale makes the channel constant, so its
        weight does not matter and is left unscaled.
        """
        inverse = torch.where(scale != 0, 1 / torch.where(scale != 0, scale, 1), 0).view(1, -1, 1, 1)
        self.gate_scale = inverse if self.gate_scale is None else self.gate_scale * inverse
