"""Timing and memory primitives: clocks around steps, spans inside a forward pass, peak memory.

The one place SPSearch reads a clock or a memory high-water mark. It sits below every other
package (it imports only torch and the standard library), so the operator's ``autotune``, the
latency protocol of ``spsearch.cost.latency``, the search's latency budgets, the training loop
and the benchmark scripts all measure the same way:

- ``time_interleaved``: several step functions, one step of each in turn, the order reversing
  every round, synchronised before and after each step (drift of a noisy machine hits them alike);
- ``time_spans``: stretches of one forward pass (a stage, a block), timed by synchronised hooks;
- ``capture_inputs``: the input of named submodules, for timing a layer alone on what it sees;
- ``peak_memory_mb`` (one step's growth) and ``process_peak_memory_mb`` (the whole process).
"""
from __future__ import annotations

import contextlib
import gc
import resource
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    'LatencyStats', 'capture_inputs', 'peak_memory_mb', 'process_peak_memory_mb', 'summarize', 'synchronize',
    'time_interleaved', 'time_spans',
]


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


def synchronize(device: torch.device | str) -> None:
    """Wait for the work queued on ``device`` (CUDA); a no-op on devices that run synchronously."""
    device = torch.device(device)
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
            synchronize(device)
            start = clock()
            steps[name]()
            synchronize(device)
            if round_idx >= warmup:
                times[name].append(clock() - start)
    return times


def time_spans(
        model: nn.Module,
        x: torch.Tensor,
        spans: Sequence[tuple[str, str]],
        warmup: int = 3,
        repeats: int = 10,
        clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[float], float]:
    """Median ms of stretches of ``model``'s forward pass, and of the rest of it.

    A span ``(first, last)`` runs from the start of submodule ``first`` to the end of submodule
    ``last`` (a forward pre-hook and a forward hook, both synchronising ``x``'s device); ``(name,
    name)`` times one submodule. A span entered more than once per forward counts each time. The
    forward passes run under ``inference_mode``; the rest (everything outside the spans, hooks
    included) is taken per step, so noise between steps does not leak into it.

    Args:
        model: The model, prepared as it will run.
        x: Its input.
        spans: ``(first, last)`` submodule names per span, in any order; they should not overlap.
        warmup: Untimed forward passes.
        repeats: Timed forward passes.
        clock: As in ``time_interleaved``.

    Returns:
        Per span its median milliseconds, and the median milliseconds of the rest (>= 0).
    """
    device = x.device
    elapsed = [0.0] * len(spans)
    started = [0.0] * len(spans)

    def enter(i: int) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            synchronize(device)
            started[i] = clock()
        return hook

    def leave(i: int) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            synchronize(device)
            elapsed[i] += clock() - started[i]
        return hook

    handles = [h for i, (first, last) in enumerate(spans)
               for h in (model.get_submodule(first).register_forward_pre_hook(enter(i)),
                         model.get_submodule(last).register_forward_hook(leave(i)))]
    per_span: list[list[float]] = [[] for _ in spans]
    rest: list[float] = []
    try:
        with torch.inference_mode():
            for step in range(warmup + repeats):
                elapsed[:] = [0.0] * len(spans)
                synchronize(device)
                start = clock()
                model(x)
                synchronize(device)
                total = clock() - start
                if step >= warmup:
                    for times, t in zip(per_span, elapsed, strict=True):
                        times.append(t)
                    rest.append(total - sum(elapsed))
    finally:
        for h in handles:
            h.remove()
    return [statistics.median(t) * 1000 for t in per_span], max(0.0, statistics.median(rest) * 1000)


def capture_inputs(model: nn.Module, example_input: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The input of each named submodule in one no-grad forward of ``model``.

    Each is a detached copy in its own memory format, so it outlives the forward and a
    train-mode model's later steps. A submodule called more than once keeps its last input;
    one the forward does not call is missing from the result.

    Args:
        model: The model, prepared as it will run.
        example_input: Its input.
        names: Submodule names (as ``named_modules`` gives them).

    Returns:
        ``{name: input}`` in the order of ``names``.
    """
    inputs: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            inputs[name] = args[0].detach().clone(memory_format=torch.preserve_format)
        return hook

    handles = [model.get_submodule(name).register_forward_pre_hook(keep(name)) for name in names]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return {name: inputs[name] for name in names if name in inputs}


def _cuda_peak_mb(device: torch.device, base: int = 0) -> float:
    return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20


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
        return _cuda_peak_mb(device, base)
    try:
        with _cpu_peak_tracker() as result:
            step()
    except OSError:
        return None
    return result()


def process_peak_memory_mb(device: torch.device | str = 'cpu') -> float:
    """Peak memory (MiB) of this process so far, as a training run reports it.

    On CUDA: ``torch.cuda.max_memory_allocated`` (since the last reset of CUDA's peak statistics,
    which ``peak_memory_mb`` does). Elsewhere: the peak resident set size (``ru_maxrss``, KiB on
    Linux), allocator caches and libraries included.
    """
    device = torch.device(device)
    if device.type == 'cuda':
        return _cuda_peak_mb(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
