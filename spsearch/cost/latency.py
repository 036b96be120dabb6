"""Measured latency and memory with a fixed protocol, for benchmarks and latency budgets.

Protocol: the model in eval mode (or train mode for training steps) on the target device, BNs
folded when ``fused``, channels_last optional, autocast optional; inputs made once; ``warmup``
untimed steps; then ``repeats`` timed steps, each synchronised on CUDA before the clock is read;
the median is the figure, the quartiles its spread. Several models are timed *interleaved* (one
step of each in turn, the order alternating every round) so that drift of a noisy machine hits
them alike and their ratio is fair.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..ops import fold_batchnorms

__all__ = [
    'LatencyStats', 'autocast_context', 'make_step', 'measure_latency', 'peak_memory_mb', 'prepare_model',
    'summarize', 'time_interleaved',
]

_AMP_DTYPES = {'no': None, 'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


@dataclass(frozen=True)
class LatencyStats:
    """Per-step latency of one model at one batch size (milliseconds)."""

    median_ms: float
    p25_ms: float
    p75_ms: float
    min_ms: float
    repeats: int
    batch_size: int

    @property
    def images_per_s(self) -> float:
        return self.batch_size / self.median_ms * 1000

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), 'images_per_s': self.images_per_s}


def summarize(times_s: list[float], batch_size: int) -> LatencyStats:
    """Median, quartiles and minimum of step times given in seconds."""
    ms = sorted(t * 1000 for t in times_s)
    q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return LatencyStats(statistics.median(ms), q[0], q[2], ms[0], len(ms), batch_size)


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
    """
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
    # no probing forward here: a fresh process' first step must be the one peak_memory_mb measures
    target = torch.randint(0, int(getattr(model, 'num_classes', 1)) or 1, (x.shape[0],), device=device)

    def train_step() -> None:
        with autocast_context(device, amp):
            loss = nn.functional.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return train_step


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_interleaved(
        steps: dict[str, Callable[[], None]],
        device: torch.device | str = 'cpu',
        warmup: int = 3,
        repeats: int = 10,
        clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Time several step functions interleaved; return each one's per-step seconds.

    Every round runs one timed step of each function, in an order that reverses every round
    (A B, B A, A B, ...), after ``warmup`` untimed rounds. ``clock`` is wall time by default;
    ``time.process_time`` (CPU time of this process) is steadier on a machine shared with other
    jobs, but counts every thread's time, so it equals latency only with one thread.
    """
    device = torch.device(device)
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_idx in range(warmup + repeats):
        order = names if round_idx % 2 == 0 else names[::-1]
        for name in order:
            _sync(device)
            start = clock()
            steps[name]()
            _sync(device)
            if round_idx >= warmup:
                times[name].append(clock() - start)
    return times


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


def _proc_status_kib(field: str) -> int:
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field + ':'):
            return int(line.split()[1])
    raise OSError(f'{field} not in /proc/self/status')


@contextlib.contextmanager
def _cpu_peak_tracker() -> Iterator[Callable[[], float]]:
    """Peak resident memory growth (MiB) of this process inside the block.

    Resets the kernel's high-water mark (``/proc/self/clear_refs``, Linux >= 4.0) at entry.
    """
    gc.collect()
    start = _proc_status_kib('VmRSS')
    Path('/proc/self/clear_refs').write_text('5')
    peak: list[float] = [0.0]
    yield lambda: peak[0]
    peak[0] = max(0, _proc_status_kib('VmHWM') - start) / 1024


def peak_memory_mb(step: Callable[[], None], device: torch.device | str = 'cpu') -> float | None:
    """Peak memory (MiB) that one call of ``step`` needs beyond what is allocated before it.

    On CUDA: ``torch.cuda.max_memory_allocated`` growth. On CPU: growth of the process' peak
    resident set, which is exact for the first step after the model and inputs were created in
    a fresh process (later steps reuse memory the allocator kept); call it there. Returns None
    where neither is available.
    """
    device = torch.device(device)
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    try:
        with _cpu_peak_tracker() as result:
            step()
    except OSError:
        return None
    return result()
