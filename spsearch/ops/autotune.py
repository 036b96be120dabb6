"""Choose each SPConv layer's implementation by measuring it on the target device.

``impl='auto'`` applies a fixed rule measured on one CPU, on CPU only (``fast_paths.auto_impl``;
elsewhere it keeps the reference). Which of the two fast paths wins, one dense k x k conv or a
grouped conv + a 1x1 conv, depends on the device, the library kernels, the shapes and inference
vs. training, so ``autotune`` times both on every layer with the layer's own input shape and
keeps the faster. Like cuDNN's benchmark mode, it costs a few steps per layer once.

Example:
    >>> model = timm.create_model('sp_resnet50').eval()
    >>> x = torch.randn(16, 3, 224, 224)
    >>> report = autotune(model, x)           # {'layer1.0.conv2': {'split': 9.1, 'dense': 7.8, 'chosen': 'dense'}, ...}
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..timing import capture_inputs, time_interleaved
from . import fast_paths
from .spconv import SPConv2d

__all__ = ['autotune', 'set_spconv_impl']


def set_spconv_impl(model: nn.Module, impl: str | None = None, recompute: bool | None = None) -> int:
    """Set ``impl`` and/or ``recompute`` on every ``SPConv2d`` of ``model``; return how many.

    Args:
        model: Any module.
        impl: ``'reference'``, ``'split'``, ``'dense'`` or ``'auto'``; None leaves it.
        recompute: Recompute the branch convs in backward (training memory); None leaves it.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, SPConv2d):
            if impl is not None:
                module.set_impl(impl)
            if recompute is not None:
                module.recompute = recompute
            count += 1
    return count


def _step(module: nn.Module, x: torch.Tensor, train: bool) -> Any:
    if not train:
        def infer() -> None:
            with torch.inference_mode():
                module(x)
        return infer
    x = x.requires_grad_()

    def train_step() -> None:
        module(x).sum().backward()
    return train_step


def autotune(
        model: nn.Module,
        example_input: torch.Tensor,
        *,
        train: bool | None = None,
        candidates: tuple[str, ...] = ('split', 'dense'),
        warmup: int = 2,
        repeats: int = 7,
) -> dict[str, dict[str, Any]]:
    """Time each SPConv layer under each candidate implementation and keep the fastest.

    Each layer is timed alone, on a copy (its batch-norm statistics are untouched), with its
    own input from one forward of ``example_input``, candidates interleaved
    (``spsearch.timing.time_interleaved``), the median deciding. Prepare the model first
    as it will run (device, ``channels_last``, BN folding), and give the batch size it will see.

    Args:
        model: The model; its SPConv layers get ``set_impl(fastest)``.
        example_input: A batch like the ones the model will see.
        train: Time training steps (forward + backward) instead of inference; default: the
            model's mode.
        candidates: Implementations to compare (``'dense'`` is skipped where unsupported).
        warmup: Untimed rounds per layer.
        repeats: Timed rounds per layer.

    Returns:
        Per layer name: the median milliseconds of each candidate and the ``'chosen'`` one.
    """
    train = model.training if train is None else train
    device = example_input.device
    report: dict[str, dict[str, Any]] = {}
    sites = [name for name, module in model.named_modules() if isinstance(module, SPConv2d)]
    for name, x in capture_inputs(model, example_input, sites).items():
        site = model.get_submodule(name)
        assert isinstance(site, SPConv2d)
        usable = [c for c in candidates if c != 'dense' or (
            fast_paths.dense_supported(site.kernel_size, site.stride, site.dilation)
            and x.shape[-2] % site.stride == 0 and x.shape[-1] % site.stride == 0)]
        steps = {}
        for impl in usable:
            trial = copy.deepcopy(site).train(train)
            trial.set_impl(impl)
            steps[impl] = _step(trial, x.clone(memory_format=torch.preserve_format), train)
        times = time_interleaved(steps, device, warmup, repeats)
        medians = {impl: sorted(t)[len(t) // 2] * 1000 for impl, t in times.items()}
        chosen = min(medians, key=lambda impl: medians[impl])
        site.set_impl(chosen)
        report[name] = {**medians, 'chosen': chosen}
    return report
