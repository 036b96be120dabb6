"""Budgets: check them against the space before a search, and turn a candidate's costs into constraints.

A constraint is the relative excess ``cost / budget - 1`` (feasible when <= 0, Optuna's rule), so
MACs, parameters and milliseconds weigh alike in the sum of violations that TPE and NSGA-II rank
infeasible trials by. Constraints are recorded with ``trial.set_constraint`` (Optuna 5) on every
trial that gets a cost, before any training.

Latency is measured on the target device with ``spsearch.cost.latency.measure_latency`` (eval,
inference mode, warm-up, synchronisation, median of repeats, batch norms folded) and cached per
configuration, device and protocol in a JSON file of the output folder.
"""
from __future__ import annotations

import json
import os
import random
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import atomic_write_json
from ..space import Architecture, SearchSpace

__all__ = [
    'BUDGET_FLAGS', 'Costs', 'LatencyCache', 'best_uniform', 'check_latency_budget', 'check_space_budgets',
    'constraints', 'describe_budgets', 'latency_bounds', 'latency_protocol', 'measure_config_latency',
    'random_in_budget', 'violations', 'within_budgets',
]

BUDGET_FLAGS = {'gmacs': '--budget-gflops', 'mparams': '--budget-params', 'latency_ms': '--budget-latency-ms'}
_UNITS = {'gmacs': 'GMACs', 'mparams': 'M params', 'latency_ms': 'ms'}


@dataclass(frozen=True)
class Costs:
    """A candidate's costs: GMACs (1e9 multiply-accumulates), millions of parameters, latency (ms, if measured)."""

    gmacs: float
    mparams: float
    latency_ms: float | None = None

    def get(self, key: str) -> float | None:
        return getattr(self, key)


def describe_budgets(budgets: dict[str, float]) -> str:
    """``2 GMACs, 40 ms`` (or ``none``), for logs and reports."""
    return ', '.join(f'{v:g} {_UNITS[k]}' for k, v in budgets.items()) or 'none'


def check_space_budgets(space: SearchSpace, budgets: dict[str, float]) -> list[str]:
    """Refuse budgets no configuration meets; return notes for budgets every configuration meets.

    Only the MAC and parameter budgets are checked here: both are exact table look-ups (the
    space's extremes are exact). Latency has no exact extreme without timing every configuration.

    Raises:
        ConfigError: A budget below the space's minimum, with that minimum and its configuration.
    """
    notes = []
    size = 'x'.join(map(str, space.input_size[1:]))
    for key, metric, scale in (('gmacs', 'macs', 1e9), ('mparams', 'params', 1e6)):
        budget = budgets.get(key)
        if budget is None:
            continue
        (low, low_config), (high, _) = space.bounds(metric)
        if low / scale > budget:
            raise ConfigError(
                f'{BUDGET_FLAGS[key]} {budget:g} is below the minimum of the search space, {low / scale:.4g} '
                f'{_UNITS[key]} ({space.model} at {size}: {space.format(low_config)}); raise the budget or '
                f'widen --alphas/--groups')
        if high / scale <= budget:
            notes.append(f'every configuration meets {BUDGET_FLAGS[key]} {budget:g} (the space spans '
                         f'{low / scale:.4g}-{high / scale:.4g} {_UNITS[key]}): it constrains nothing')
    return notes


def within_budgets(space: SearchSpace, arch: Architecture, budgets: dict[str, float]) -> bool:
    """Whether ``arch`` meets the MAC and parameter budgets (a table look-up; latency needs a measurement)."""
    cost = space.cost(arch)
    return all(v <= 0 for v in constraints(Costs(cost.macs / 1e9, cost.params / 1e6), budgets).values())


def best_uniform(space: SearchSpace, budgets: dict[str, float]) -> Architecture | None:
    """The uniform architecture (one choice in every stage) that uses the most of the MAC budget.

    The equal-budget baseline a per-stage search must beat: of the choices every stage allows, the
    one whose uniform architecture meets the MAC and parameter budgets with the most MACs (ties:
    fewer parameters). None when no uniform architecture fits.
    """
    common = [c for c in space.choices[0] if all(c in allowed for allowed in space.choices[1:])]
    fitting = [arch for arch in ((c,) * space.num_stages for c in common) if within_budgets(space, arch, budgets)]
    if not fitting:
        return None
    return max(fitting, key=lambda a: (space.cost(a).macs, -space.cost(a).params))


def random_in_budget(space: SearchSpace, budgets: dict[str, float], rng: random.Random,
                     tries: int = 100_000) -> Architecture | None:
    """A uniformly random architecture of the space within the MAC and parameter budgets (rejection
    sampling; None if ``tries`` draws find none)."""
    for _ in range(tries):
        arch = space.sample(rng)
        if within_budgets(space, arch, budgets):
            return arch
    return None


def constraints(costs: Costs, budgets: dict[str, float]) -> dict[str, float]:
    """``{name: cost / budget - 1}`` for each budget whose cost is known."""
    out = {}
    for key, budget in budgets.items():
        value = costs.get(key)
        if value is not None:
            out[key] = value / budget - 1
    return out


def violations(costs: Costs, budgets: dict[str, float]) -> list[str]:
    """Human descriptions of the exceeded budgets, e.g. ``2.31 GMACs > 2``."""
    return [f'{costs.get(k):.4g} {_UNITS[k]} > {budgets[k]:g}' for k, v in constraints(costs, budgets).items() if v > 0]


class LatencyCache:
    """Measured latencies keyed by configuration, device and protocol, in a JSON file (atomic writes).

    Several processes may share the file: each write re-reads it and merges before replacing it.

    Args:
        path: The cache file (None: in memory only).
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._data: dict[str, dict[str, Any]] = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # a damaged cache only costs re-measuring
        return data if isinstance(data, dict) else {}

    @staticmethod
    def key(space: SearchSpace, config: Architecture, protocol: dict[str, Any]) -> str:
        return json.dumps({'model': space.model, 'input_size': list(space.input_size),
                           'num_classes': space.num_classes, 'config': [c.label for c in config], **protocol},
                          sort_keys=True)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._data.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._data = {**self._read(), **self._data, key: value}
            if self.path is not None:
                atomic_write_json(self.path, self._data)

    def __len__(self) -> int:
        return len(self._data)


def latency_protocol(device: str, batch_size: int, warmup: int, repeats: int) -> dict[str, Any]:
    """The protocol's settings and the device it runs on (part of every cache key)."""
    import torch

    from ..provenance import machine
    if device == 'cuda':
        if not torch.cuda.is_available():
            raise ConfigError('--latency-device cuda needs a CUDA GPU, and torch sees none; use --latency-device cpu')
        device_name = torch.cuda.get_device_name(torch.cuda.current_device())
    else:
        device_name = machine()['cpu']
    return {'device': device, 'device_name': device_name, 'batch_size': batch_size, 'warmup': warmup,
            'repeats': repeats, 'threads': torch.get_num_threads() if device == 'cpu' else None,
            'fused': True, 'torch': torch.__version__}


STABLE_SPREAD = 0.25
"""A latency measurement is stable when its interquartile range is at most this fraction of its median."""
LATENCY_ATTEMPTS = 3
"""Measurements of one architecture before an unstable one is accepted (and flagged, and never cached)."""


def measure_config_latency(space: SearchSpace, config: Architecture, protocol: dict[str, Any]) -> dict[str, Any]:
    """Median latency (and quartiles) of ``config`` under ``protocol``; a fresh randomly initialised model.

    On a shared machine other jobs stretch some steps (the same architecture measured 5-1554 ms under
    load), so the spread of the repeats is checked: a measurement whose interquartile range exceeds
    ``STABLE_SPREAD`` of its median is repeated, up to ``LATENCY_ATTEMPTS`` times, and the steadiest one
    kept. The result says whether it is ``stable``, with the fastest step (``min_ms``), the attempts and
    the system load, so that callers never cache an unstable value.
    """
    import timm
    import torch

    from ..cost.latency import measure_latency
    kwargs: dict[str, Any] = dict(space.model_kwargs(config))
    if space.num_classes is not None:
        kwargs['num_classes'] = space.num_classes
    model = timm.create_model(space.model, **kwargs)
    device = torch.device(protocol['device'], torch.cuda.current_device()) if protocol['device'] == 'cuda' else 'cpu'
    measured: list[tuple[float, Any]] = []
    while len(measured) < LATENCY_ATTEMPTS and (not measured or measured[-1][0] > STABLE_SPREAD):
        stats = measure_latency(model, space.input_size, protocol['batch_size'], device, warmup=protocol['warmup'],
                                repeats=protocol['repeats'], fused=True)
        measured.append(((stats.p75_ms - stats.p25_ms) / stats.median_ms, stats))
    spread, stats = min(measured, key=lambda m: m[0])
    attempt = len(measured)
    return {'median_ms': stats.median_ms, 'p25_ms': stats.p25_ms, 'p75_ms': stats.p75_ms, 'min_ms': stats.min_ms,
            'stable': spread <= STABLE_SPREAD, 'attempts': attempt, 'load_1min': round(os.getloadavg()[0], 2),
            'device_name': protocol['device_name'], 'batch_size': protocol['batch_size']}


def latency_bounds(space: SearchSpace, protocol: dict[str, Any]) -> tuple[float, float]:
    """Estimated minimum and maximum latency (ms) over the space, from per-stage timings.

    Latency has no exact extreme short of timing every architecture, but stages run one after
    another, so an architecture's latency is close to the stem and head's time plus each stage's
    time for its choice. For every distinct choice one model with that choice in every stage that
    allows it is timed under the protocol, each stage (the modules of its ``StageSpec``) timed
    inside the same forward pass (synchronised hooks); the bounds add up the fastest and the
    slowest choice per stage.

    Returns:
        ``(low, high)`` in ms.
    """
    import timm
    import torch

    from ..cost.latency import prepare_model
    from ..timing import time_spans

    device = torch.device(protocol['device'], torch.cuda.current_device()) if protocol['device'] == 'cuda' \
        else torch.device('cpu')
    extra: dict[str, Any] = {} if space.num_classes is None else {'num_classes': space.num_classes}
    distinct = sorted({c for choices in space.choices for c in choices}, key=lambda c: c.label)
    per_stage: list[dict[Any, float]] = [{} for _ in space.stages]
    rest: list[float] = []
    x = torch.randn(protocol['batch_size'], *space.input_size, device=device)
    for choice in distinct:
        arch = tuple(choice if choice in choices else choices[0] for choices in space.choices)
        model = prepare_model(timm.create_model(space.model, **space.model_kwargs(arch), **extra), device, fused=True)
        spans = [(stage.modules[0], stage.modules[-1]) for stage in space.stages]
        medians, other = time_spans(model, x, spans, protocol['warmup'], protocol['repeats'])
        for i, c in enumerate(arch):
            per_stage[i][c] = min(per_stage[i].get(c, float('inf')), medians[i])
        rest.append(other)
    base = min(rest)
    low = base + sum(min(s.values()) for s in per_stage)
    high = base + sum(max(s.values()) for s in per_stage)
    return low, high


def check_latency_budget(space: SearchSpace, budget: float, protocol: dict[str, Any]) -> list[str]:
    """Refuse a latency budget clearly below the space's estimated minimum; note one above its maximum.

    The estimate (``latency_bounds``) carries timing noise, so the refusal keeps a 10% margin.

    Raises:
        ConfigError: ``budget`` < 0.9 x the estimated minimum, with that minimum.
    """
    low, high = latency_bounds(space, protocol)
    where = f'on {protocol["device_name"]} ({protocol["device"]}) at batch {protocol["batch_size"]}'
    if budget < 0.9 * low:
        raise ConfigError(f'--budget-latency-ms {budget:g} is below the minimum latency of the search space, about '
                          f'{low:.3g} ms {where} (fastest choice per stage, timed per stage); raise the budget or '
                          f'use --latency-device/--latency-batch-size of your target')
    notes = [f'the space spans about {low:.3g}-{high:.3g} ms {where} (per-stage estimate)']
    if budget > 1.1 * high:
        notes.append(f'every configuration meets --budget-latency-ms {budget:g}: it constrains nothing')
    return notes
