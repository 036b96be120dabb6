"""``profile_model``: exact parameters and MACs of a model, counted two independent ways.

Convention: in SPSearch "GFLOPs" means 10^9 multiply-accumulates (MACs), as in the SPConv paper
and thop (ResNet-50 = 4.13). Where 2 x MACs (the other common FLOP convention) is shown it is
labelled as such.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from .analytic import UnsupportedModuleError, analytic_count
from .thop_count import thop_count

__all__ = ['ModelCost', 'profile_model']


@dataclass(frozen=True)
class ModelCost:
    """Cost of a model for one image of ``input_size``.

    Attributes:
        params: Exact parameter count (``sum(p.numel())``).
        macs: Multiply-accumulates counted by thop with SPSearch's rules for its own modules.
        analytic_macs: MACs from the configuration-only count; ``None`` if the model holds a
            module it has no rule for. Equal to ``macs`` for every supported model.
        analytic_params: Parameters from the configuration-only count (``None`` likewise).
        input_size: ``(C, H, W)``.
    """

    params: int
    macs: int
    analytic_macs: int | None
    analytic_params: int | None
    input_size: tuple[int, int, int]

    @property
    def gmacs(self) -> float:
        """10^9 MACs: the "GFLOPs" of the SPConv paper and of this project."""
        return self.macs / 1e9

    @property
    def gflops_2x(self) -> float:
        """10^9 x 2 x MACs, for comparison with tools that count a MAC as two FLOPs."""
        return 2 * self.macs / 1e9

    def summary(self) -> str:
        """One line for humans, with the convention spelled out."""
        c, h, w = self.input_size
        return (f'{self.params / 1e6:.3f}M params, {self.gmacs:.4f} GMACs (= GFLOPs as in the SPConv paper; '
                f'{self.gflops_2x:.4f} G as 2xMACs) at {c}x{h}x{w}')

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), 'gmacs': self.gmacs, 'gflops_2x': self.gflops_2x}


def profile_model(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> ModelCost:
    """Count the parameters and MACs of ``model`` for one image.

    Runs thop on a deep copy (one forward pass at batch 1, eval mode) and the analytic count on
    the configuration; the model itself is left untouched.

    Args:
        model: Any ``nn.Module`` taking a ``(N, C, H, W)`` tensor.
        input_size: ``(C, H, W)`` of one input image.

    Returns:
        The counts; see ``ModelCost``.
    """
    input_size = (int(input_size[0]), int(input_size[1]), int(input_size[2]))
    macs, _ = thop_count(model, input_size)
    analytic_macs: int | None
    analytic_params: int | None
    try:
        analytic = analytic_count(model, input_size)
        analytic_macs, analytic_params = analytic.macs, analytic.params
    except UnsupportedModuleError:
        analytic_macs = analytic_params = None
    return ModelCost(
        params=sum(p.numel() for p in model.parameters()),
        macs=macs,
        analytic_macs=analytic_macs,
        analytic_params=analytic_params,
        input_size=input_size,
    )
