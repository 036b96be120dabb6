"""Measured latency with a fixed protocol, for benchmarks and latency budgets.

Protocol: the model in eval mode (or train mode for training steps) on the target device, BNs
folded when ``fused``, channels_last optional, autocast optional; inputs made once; ``warmup``
untimed steps; then ``repeats`` timed steps, each synchronised on CUDA before the clock is read;
the median is the figure, the quartiles its spread. Several models are timed *interleaved* (one
step of each in turn, the order alternating every round) so that drift of a noisy machine hits
them alike and their ratio is fair. The clocks and memory probes themselves are in
``spsearch.timing`` (``time_interleaved``, ``summarize``, ``peak_memory_mb``).
"""
from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..ops import fold_batchnorms
from ..timing import LatencyStats, summarize, time_interleaved

__all__ = ['autocast_context', 'make_step', 'measure_latency', 'prepare_model']

_AMP_DTYPES = {'no': None, 'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def autocast_context(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``amp`` in {bf16, fp16}; a no-op for None/'no'/'fp32'."""
    dtype = _AMP_DTYPES[amp or 'no']
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def prepare_model(
        model: nn.Module,
        device: torch.device | str = 'cpu',
        *,
        train: bool = False,
        fused: bool = False,
        channels_last: bool = False,
        compile: bool = False,
) -> nn.Module:
    """Return a copy of ``model`` ready to time: moved, folded, laid out and compiled as asked.

    Args:
        model: The model (left untouched).
        device: Target device.
        train: Prepare for training steps (train mode; ``fused`` is then not allowed).
        fused: Fold every batch norm (``fold_batchnorms``) for inference.
        channels_last: Use NHWC memory format.
        compile: Wrap in ``torch.compile``.

    On CUDA it turns on cuDNN's algorithm search (``torch.backends.cudnn.benchmark``, for the whole
    process, as timm's ``benchmark.py`` and ``train.py`` do): fixed shapes, so the warm-up steps pick
    each conv's fastest kernel for every model alike.
    """
    if torch.device(device).type == 'cuda':
        torch.backends.cudnn.benchmark = True
    if train and fused:
        raise ValueError('fused=True folds batch norms for inference; it cannot be combined with train=True')
    model = copy.deepcopy(model).to(device)
    model = fold_batchnorms(model, inplace=True) if fused else model
    model.train(train)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)  # type: ignore[assignment]
    return model


def make_step(
        model: nn.Module,
        x: torch.Tensor,
        *,
        train: bool = False,
        amp: str | None = None,
        lr: float = 0.01,
) -> Callable[[], None]:
    """One inference step (``inference_mode``) or training step (forward, cross-entropy, backward, SGD)."""
    device = x.device
    if not train:
        def infer() -> None:
            with torch.inference_mode(), autocast_context(device, amp):
                model(x)
        return infer

    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    # no probing forward here: a fresh process' first step must be the one timing.peak_memory_mb measures
    target = torch.randint(0, int(getattr(model, 'num_classes', 1)) or 1, (x.shape[0],), device=device)

    def train_step() -> None:
        with autocast_context(device, amp):
            loss = nn.functional.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return train_step


def measure_latency(
        model: nn.Module,
        input_size: tuple[int, int, int],
        batch_size: int = 1,
        device: torch.device | str = 'cpu',
        *,
        warmup: int = 3,
        repeats: int = 10,
        fused: bool = True,
        channels_last: bool = False,
        amp: str | None = None,
) -> LatencyStats:
    """Inference latency of one model under the protocol above (fused by default)."""
    device = torch.device(device)
    prepared = prepare_model(model, device, fused=fused, channels_last=channels_last)
    x = torch.randn(batch_size, *input_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    times = time_interleaved({'model': make_step(prepared, x, amp=amp)}, device, warmup, repeats)
    return summarize(times['model'], batch_size)
