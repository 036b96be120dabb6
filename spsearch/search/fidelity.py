"""Proxy fidelity: does the search's short proxy training rank architectures the way longer training does?

A *fidelity study* trains a fixed set of in-budget architectures (the paper's alpha 1/2, the best uniform
one and random in-budget ones) under several *protocols*: the search's proxy, alternative proxies of
about the same cost, and a longer *target* protocol scored on the test split, each with the same paired
seeds. Every training records, after each epoch, top-1 and validation loss with precise BN and with the
running BatchNorm statistics it replaces (``TrainConfig.stale_bn_eval``), so one set of runs answers:

- Kendall tau between each proxy score (per epoch = pruning rung, top-1 or loss, with or without precise
  BN) and the target's seed-mean top-1, with a bootstrap 95 % interval over architectures;
- the target's and each proxy's own seed-to-seed tau (the ceiling any proxy can reach) and seed noise.

Kendall tau-b (``scipy.stats.kendalltau``) is the rank correlation the NAS literature reports for proxy
fidelity (e.g. Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021); its interval is
the percentile bootstrap over architectures (2,000 resamples, seed 0), following
``shared/reference/search-quality.md``.

The study is a folder: ``plan.json`` (architectures, protocols, seeds, the search settings) and one JSON
file per finished training under ``units/``, each written atomically. Running it again skips what is
done, so a study can be spread over several runs (``max_minutes``) and survives a kill.
"""
from __future__ import annotations

import functools
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import atomic_write_json
from ..space import Architecture, SearchSpace, StageChoice
from .budgets import best_uniform, random_in_budget, within_budgets
from .config import SearchConfig

__all__ = ['DEFAULT_PROTOCOLS', 'FidelityPlan', 'Protocol', 'ScoreRow', 'analyze', 'bootstrap_tau', 'kendall_tau',
           'plan_study', 'run_study', 'unit_key']


@dataclass(frozen=True)
class Protocol:
    """One way to train and score a candidate.

    Attributes:
        name: Short identifier (file names, tables).
        img_size: Training and evaluation resolution (px).
        train_samples: Training images (a seeded subset of the training split, minus the holdout for proxies).
        epochs: Epochs (cosine schedule over them).
        target: True: trained on the training split and scored on the test split (the reference
            ranking); False: a proxy, scored on the search's holdout (training images, seed 0).
        val_samples: Images scored (a fixed seeded subset; None: all of the holdout or test split).
        about: One line for the report.
    """

    name: str
    img_size: int
    train_samples: int
    epochs: int
    target: bool = False
    val_samples: int | None = None
    about: str = ''

    @property
    def images(self) -> int:
        """Training images seen (``train_samples * epochs``): the cost unit of a protocol."""
        return self.train_samples * self.epochs


DEFAULT_PROTOCOLS: tuple[Protocol, ...] = (
    Protocol('proxy', 32, 4000, 3, about="the search's default proxy: 4,000 images x 3 epochs at 32 px"),
    Protocol('proxy-12k-1ep', 32, 12000, 1, about='the same images seen, spent on more images: 12,000 x 1 epoch'),
    Protocol('target', 32, 10000, 4, target=True, val_samples=5000,
             about='2.5x the images and 4/3 the epochs of the proxy, scored on 5,000 test images (seed 0)'),
)
"""The protocols of ``tools/proxy_fidelity.py`` unless ``--protocols`` names others (see ``PROTOCOLS``)."""

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    *DEFAULT_PROTOCOLS,
    Protocol('proxy-64px', 64, 4000, 3, about='the default proxy at 64 px (stage maps 16/8/4/2 px; ~4x MACs)'),
    Protocol('proxy-2k', 32, 2000, 3, about='half the default proxy: 2,000 images x 3 epochs'),
)}
"""Every protocol the command knows, by name."""


@dataclass(frozen=True)
class FidelityPlan:
    """What a study trains: architectures x protocols x seeds, under one search's settings."""

    search: dict[str, Any]
    architectures: list[list[str]]
    roles: list[str]
    protocols: list[Protocol]
    seeds: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {'search': self.search, 'architectures': self.architectures, 'roles': self.roles,
                'protocols': [asdict(p) for p in self.protocols], 'seeds': self.seeds}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FidelityPlan:
        return cls(d['search'], [list(a) for a in d['architectures']], list(d['roles']),
                   [Protocol(**p) for p in d['protocols']], [int(s) for s in d['seeds']])

    def units(self) -> list[tuple[Protocol, int, int]]:
        """Every (protocol, architecture index, seed), architecture-major: a partial study has whole architectures."""
        return [(p, i, s) for i in range(len(self.architectures)) for s in self.seeds for p in self.protocols]


def unit_key(protocol: Protocol, index: int, seed: int) -> str:
    """``proxy-a03-s1``: the file name (without ``.json``) of one training."""
    return f'{protocol.name}-a{index:02d}-s{seed}'


def _json(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def plan_study(cfg: SearchConfig, space: SearchSpace, n_architectures: int, protocols: Sequence[Protocol],
               seeds: Sequence[int], arch_seed: int = 0) -> FidelityPlan:
    """The architectures: the paper's alpha 1/2 G 2, the best uniform one, then distinct random in-budget ones.

    Raises:
        ConfigError: Fewer than ``n_architectures`` distinct in-budget architectures exist, or no target.
    """
    if sum(p.target for p in protocols) != 1:
        raise ConfigError('a fidelity study needs exactly one target protocol (e.g. --protocols proxy target)')
    if len(seeds) < 2:
        raise ConfigError('a fidelity study needs >= 2 seeds (seed-to-seed tau and noise); e.g. --seeds 0 1')
    archs: list[Architecture] = []
    roles: list[str] = []
    paper = space.paper_arch()
    if space.contains(paper) and within_budgets(space, paper, cfg.budgets):
        archs.append(paper)
        roles.append('paper')
    uniform = best_uniform(space, cfg.budgets)
    if uniform is not None and uniform in archs:
        roles[archs.index(uniform)] += ' = best uniform'
    elif uniform is not None:
        archs.append(uniform)
        roles.append('best uniform')
    rng = random.Random(arch_seed)
    misses = 0
    while len(archs) < n_architectures:
        arch = random_in_budget(space, cfg.budgets, rng)
        if arch is None or misses > 10_000:
            raise ConfigError(f'found only {len(archs)} distinct in-budget architectures; lower --architectures')
        if arch in archs:
            misses += 1
            continue
        archs.append(arch)
        roles.append('random')
    labels = [[c.label for c in a] for a in archs]
    return FidelityPlan(_json(cfg.to_dict()), labels, roles, list(protocols), list(seeds))


@functools.lru_cache(maxsize=4)
def _settings(search_json: str) -> tuple[SearchConfig, SearchSpace]:
    """The search settings and space of a plan (built once per process: each build counts every stage)."""
    cfg = SearchConfig.from_dict(json.loads(search_json))
    return cfg, SearchSpace.build(cfg.model, cfg.alphas, cfg.groups, cfg.eval_img_size)


def _plan_settings(plan: FidelityPlan) -> tuple[SearchConfig, SearchSpace]:
    return _settings(json.dumps(plan.search, sort_keys=True))


def _train_unit(search: dict[str, Any], labels: list[str], protocol: Protocol, seed: int, threads: int,
                path: str) -> dict[str, Any]:
    """Train one (architecture, protocol, seed) and write its per-epoch metrics to ``path`` (a worker process)."""
    import torch

    from ..train import train
    torch.set_num_threads(threads)
    cfg, space = _settings(json.dumps(search, sort_keys=True))
    arch = tuple(StageChoice.from_label(label) for label in labels)
    changes: dict[str, Any] = dict(img_size=protocol.img_size, train_samples=protocol.train_samples,
                                   epochs=protocol.epochs, seed=seed, stale_bn_eval=True)
    if protocol.target:
        changes.update(holdout=None, val_samples=protocol.val_samples)
    elif protocol.val_samples is not None:
        changes.update(val_samples=protocol.val_samples)
    train_cfg = cfg.proxy_train_config(space.model_kwargs(arch)).replace(**changes)
    result = train(train_cfg)
    from ..provenance import git_commit
    keep = ('epoch', 'train_loss', 'top1', 'val_loss', 'stale_top1', 'stale_val_loss')
    record = {'architecture': labels, 'protocol': protocol.name, 'seed': seed, 'threads': threads,
              'wall_s': round(result.wall_s, 2), 'stopped_by': result.stopped_by, 'commit': git_commit(),
              'history': [{k: row[k] for k in keep if k in row} for row in result.history]}
    atomic_write_json(path, record)
    return record


def run_study(plan: FidelityPlan, folder: str | os.PathLike[str], *, jobs: int = 1, max_minutes: float | None = None,
              log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Train every unit of ``plan`` not yet in ``folder`` (``jobs`` processes, one thread each when > 1).

    ``plan.json`` is written first; a folder holding another plan is refused. No new unit starts after
    ``max_minutes``; the ones running finish. Returns every finished unit, by ``unit_key``.

    Raises:
        ConfigError: ``folder`` holds a different plan.
    """
    root = Path(folder)
    plan_path = root / 'plan.json'
    if plan_path.exists():
        stored = _read_json(plan_path)
        if stored != _json(plan.to_dict()):
            raise ConfigError(f'{root} holds another fidelity plan (other settings, architectures or seeds); '
                              f'give a new --output, or the same options as the run that made it')
    else:
        atomic_write_json(plan_path, plan.to_dict())
    (root / 'units').mkdir(parents=True, exist_ok=True)
    done = load_units(plan, root)
    todo = [u for u in plan.units() if unit_key(*u) not in done]
    log(f'fidelity study in {root}: {len(done)} of {len(plan.units())} trainings done, {len(todo)} to go, '
        f'{jobs} job(s)')
    if not todo:
        return done
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    threads = max(1, cores // jobs)
    deadline = None if not max_minutes else time.monotonic() + 60 * max_minutes
    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context('spawn')) as pool:
        running: dict[Future[dict[str, Any]], str] = {}
        queue = list(todo)
        while queue or running:
            while queue and len(running) < jobs and (deadline is None or time.monotonic() < deadline):
                protocol, index, seed = queue.pop(0)
                key = unit_key(protocol, index, seed)
                future = pool.submit(_train_unit, plan.search, plan.architectures[index], protocol, seed, threads,
                                     str(root / 'units' / f'{key}.json'))
                running[future] = key
            if not running:
                log(f'--max-minutes {max_minutes:g} reached: {len(queue)} training(s) left for the next run')
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                key = running.pop(future)
                record = future.result()
                done[key] = record
                last = record['history'][-1] if record['history'] else {}
                log(f'  {key}: top1 {last.get("top1", math.nan):.2f} (running stats '
                    f'{last.get("stale_top1", math.nan):.2f}) in {record["wall_s"]:.0f} s | '
                    f'{len(done)}/{len(plan.units())} after '
                    f'{(time.monotonic() - started) / 60:.1f} min')
    return done


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f'cannot read {path}: {e}; delete it and run again (that training is repeated)') from None


def load_units(plan: FidelityPlan, folder: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The finished units of ``plan`` stored in ``folder`` (JSON only; nothing is unpickled)."""
    found = {}
    for unit in plan.units():
        path = Path(folder) / 'units' / f'{unit_key(*unit)}.json'
        if path.exists():
            found[unit_key(*unit)] = _read_json(path)
    return found


# -- analysis ----------------------------------------------------------------------------------------------------

def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall tau-b of two paired sequences (nan when either is constant or shorter than 2)."""
    from scipy import stats
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return float(stats.kendalltau(x, y).statistic)


def bootstrap_tau(columns: Sequence[Sequence[float]], target: Sequence[float], resamples: int = 2000,
                  seed: int = 0, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean tau of each column against ``target``, with a percentile bootstrap interval over architectures.

    Args:
        columns: One or more score sequences (e.g. one proxy score per seed), each aligned with ``target``;
            the statistic is the mean of their taus (the tau a single-seed proxy gets, on average).
        target: The reference scores.

    Returns:
        (tau, low, high); nan bounds when fewer than 3 architectures.
    """
    import numpy as np
    n = len(target)

    def stat(idx: Sequence[int]) -> float:
        taus = [kendall_tau([c[i] for i in idx], [target[i] for i in idx]) for c in columns]
        taus = [t for t in taus if not math.isnan(t)]
        return sum(taus) / len(taus) if taus else math.nan

    point = stat(range(n))
    if n < 3:
        return point, math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = [stat(rng.integers(0, n, n).tolist()) for _ in range(resamples)]
    draws = [d for d in draws if not math.isnan(d)]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha]).tolist() if draws else (math.nan, math.nan)
    return point, float(low), float(high)


@dataclass
class ScoreRow:
    """Fidelity of one proxy score: how a proxy protocol, rung and scoring rule ranks against the target."""

    protocol: str
    score: str
    epoch: int
    tau: float
    low: float
    high: float
    tau_mean_of_seeds: float
    seed_tau: float
    seed_sd: float
    spread_sd: float
    images: int
    wall_s: float
    n: int = 0
    beyond_macs: tuple[float, float, float] = (math.nan, math.nan, math.nan)


SCORES: dict[str, tuple[str, float]] = {
    'top-1, precise BN': ('top1', 1.0),
    'top-1, running BN stats': ('stale_top1', 1.0),
    'val. loss, precise BN': ('val_loss', -1.0),
    'val. loss, running BN stats': ('stale_val_loss', -1.0),
}
"""Scoring rules: label -> (history column, sign so that higher is better)."""


def _pooled_sd(per_seed: Sequence[Sequence[float]]) -> float:
    """Root mean over architectures of the seed variance (the noise of one training's score)."""
    variances = []
    for values in zip(*per_seed, strict=True):
        mean = sum(values) / len(values)
        variances.append(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return math.sqrt(sum(variances) / len(variances)) if variances else math.nan


def _sd(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan


def analyze(plan: FidelityPlan, units: dict[str, dict[str, Any]], resamples: int = 2000) -> dict[str, Any]:
    """Every fidelity number of the report, over the architectures that have all their trainings.

    Returns:
        ``{'complete': [architecture indices], 'target': {...}, 'rows': [ScoreRow, ...]}``; the target
        entry holds its seed-mean top-1 per architecture, its seed-to-seed tau and its seed noise.
    """
    complete = [i for i in range(len(plan.architectures))
                if all(unit_key(p, i, s) in units for p in plan.protocols for s in plan.seeds)]
    target = next(p for p in plan.protocols if p.target)
    out: dict[str, Any] = {'complete': complete, 'rows': []}
    if len(complete) < 3:
        return out

    def column(protocol: Protocol, seed: int, key: str, epoch: int) -> list[float]:
        return [float(units[unit_key(protocol, i, seed)]['history'][epoch - 1][key]) for i in complete]

    def wall(protocol: Protocol) -> float:
        return sum(units[unit_key(protocol, i, s)]['wall_s'] for i in complete for s in plan.seeds) / (
            len(complete) * len(plan.seeds))

    t_seeds = [column(target, s, 'top1', target.epochs) for s in plan.seeds]
    t_mean = [sum(v) / len(v) for v in zip(*t_seeds, strict=True)]
    out['target'] = {
        'protocol': target, 'mean': t_mean, 'per_seed': t_seeds, 'wall_s': wall(target),
        'seed_tau': _mean_pairwise_tau(t_seeds), 'seed_sd': _pooled_sd(t_seeds), 'spread_sd': _sd(t_mean),
        'stale_seed_sd': _pooled_sd([column(target, s, 'stale_top1', target.epochs) for s in plan.seeds]),
        'stale_mean': [sum(v) / len(v) for v in zip(*[column(target, s, 'stale_top1', target.epochs)
                                                      for s in plan.seeds], strict=True)],
    }
    _, space = _plan_settings(plan)
    archs = [tuple(StageChoice.from_label(x) for x in plan.architectures[i]) for i in complete]
    gmacs = [space.cost(a).macs / 1e9 for a in archs]
    t_resid = _residuals(t_mean, gmacs)
    out['target']['seed_tau_beyond_macs'] = _mean_pairwise_tau([_residuals(c, gmacs) for c in t_seeds])
    out['target']['macs_tau'] = kendall_tau(gmacs, t_mean)
    for label, values in (('GMACs (no training)', gmacs),
                          ('parameters (no training)', [space.cost(a).params / 1e6 for a in archs])):
        tau, low, high = bootstrap_tau([values], t_mean, resamples=resamples)
        out['rows'].append(ScoreRow('cost only', label, 0, tau, low, high, tau, math.nan, 0.0, _sd(values), 0, 0.0,
                                    n=len(complete)))
    for protocol in plan.protocols:
        if protocol.target:
            continue
        for epoch in range(1, protocol.epochs + 1):
            for label, (key, sign) in SCORES.items():
                if epoch < protocol.epochs and label == 'val. loss, running BN stats':
                    continue  # rungs: top-1 with and without precise BN, and the loss the search could use
                per_seed = [[sign * v for v in column(protocol, s, key, epoch)] for s in plan.seeds]
                tau, low, high = bootstrap_tau(per_seed, t_mean, resamples=resamples)
                mean_score = [sum(v) / len(v) for v in zip(*per_seed, strict=True)]
                beyond = bootstrap_tau([_residuals(c, gmacs) for c in per_seed], t_resid, resamples=resamples)
                out['rows'].append(ScoreRow(
                    protocol.name, label, epoch, tau, low, high, kendall_tau(mean_score, t_mean),
                    _mean_pairwise_tau(per_seed), _pooled_sd(per_seed), _sd(mean_score), protocol.images,
                    wall(protocol), n=len(complete), beyond_macs=beyond))
    return out


def _residuals(y: Sequence[float], x: Sequence[float]) -> list[float]:
    """``y`` minus its least-squares line in ``x``: what a score says beyond the architecture's GMACs."""
    n = len(y)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sxx if sxx else 0.0
    return [b - my - slope * (a - mx) for a, b in zip(x, y, strict=True)]


def _mean_pairwise_tau(per_seed: Sequence[Sequence[float]]) -> float:
    taus = [kendall_tau(per_seed[a], per_seed[b]) for a in range(len(per_seed)) for b in range(a + 1, len(per_seed))]
    taus = [t for t in taus if not math.isnan(t)]
    return sum(taus) / len(taus) if taus else math.nan


# -- report ------------------------------------------------------------------------------------------------------

def _f(x: float, digits: int = 2) -> str:
    return 'n/a' if math.isnan(x) else f'{x:.{digits}f}'


def render(plan: FidelityPlan, units: dict[str, dict[str, Any]], header: str, command: str,
           resamples: int = 2000) -> str:
    """``results/proxy_fidelity.md``: the plan, the target's noise, one row per proxy score, the per-architecture
    table and what the numbers say (computed, not written by hand)."""
    result = analyze(plan, units, resamples=resamples)
    cfg, space = _plan_settings(plan)
    total = len(plan.units())
    lines = [header, '',
             f'Regenerate (resumes; spread it over runs with `--max-minutes`): `{command}`', '',
             f'Trainings ran at commit(s) {", ".join(sorted({str(u.get("commit")) for u in units.values()}))}.',
             '',
             f'{len(units)} of {total} trainings done; {len(result["complete"])} of {len(plan.architectures)} '
             f'architectures complete (all protocols and seeds).', '',
             '## Setup', '',
             f'- Space: {cfg.model}, alphas {", ".join(cfg.alphas)}, groups {", ".join(map(str, cfg.groups))}; '
             f'budget {cfg.budget_gflops} GMACs at 224 px. Architectures: the paper\'s alpha 1/2 G 2, the best '
             f'uniform one, then random in-budget ones (seed 0).',
             f'- Seeds {", ".join(map(str, plan.seeds))} for every architecture and protocol (paired). Training '
             f'recipe: the search\'s (SGD {cfg.train.lr} cosine, batch {cfg.train.data.batch_size}, precise BN on '
             f'{cfg.train.precise_bn_batches} batches), on {cfg.train.data.dataset}.',
             '- Proxies are scored on the search\'s holdout (2,000 training images, seed 0, never trained on); the '
             'target on test images (a fixed subset): the ranking a user would see after retraining.', '',
             '| protocol | images x epochs | px | scored on | about |', '|---|---|---|---|---|']
    for p in plan.protocols:
        lines.append(f'| {p.name} | {p.train_samples:,} x {p.epochs} | {p.img_size} | '
                     f'{"test split" if p.target else "holdout"} | {p.about} |')
    if len(result['complete']) < 3:
        lines += ['', 'Too few complete architectures (< 3) for any statistic yet.']
        return '\n'.join(lines) + '\n'
    t = result['target']
    lines += ['', '## The target ranking and its noise', '',
              f'- Target top-1 (precise BN) over {len(result["complete"])} architectures: spread (sd of the seed '
              f'means) {_f(t["spread_sd"])} points; seed noise (sd of one training) {_f(t["seed_sd"])} points; '
              f'seed-to-seed Kendall tau {_f(t["seed_tau"])} (the ceiling of any proxy\'s tau against one '
              f'training). Mean {t["wall_s"]:.0f} s per training.',
              f'- Beyond GMACs (a straight line in GMACs taken out), the target\'s seed-to-seed tau is '
              f'{_f(t["seed_tau_beyond_macs"])}: how much of the ranking among architectures of equal cost one '
              f'target training can reproduce.',
              f'- Without precise BN (running statistics) the same target trainings score a seed noise of '
              f'{_f(t["stale_seed_sd"])} points.', '',
              '## Fidelity of each proxy score', '',
              'tau: mean over seeds of Kendall tau-b between one proxy training\'s score and the target\'s seed-mean '
              'top-1 (what a search that trains each candidate once gets), with its 95 % bootstrap interval over '
              'architectures; "tau of mean": the proxy averaged over the seeds first; "seed tau": the proxy\'s own '
              'seed-to-seed tau; "seed sd" / "spread sd": noise of one proxy training and spread of the architectures '
              '(score units: points of top-1, or nats of loss); "beyond GMACs": tau between the proxy and the target '
              'after a straight line in GMACs is taken out of each (does the proxy know more than the cost?), '
              'with its bootstrap interval (residuals fitted once on all architectures).', '',
              '| protocol | epoch (rung) | score | tau [95 % CI] | tau of mean | seed tau | seed sd | spread sd | '
              'beyond GMACs [95 % CI] | images | s / training |', '|---|---|---|---|---|---|---|---|---|---|---|']
    for r in result['rows']:
        lines.append(f'| {r.protocol} | {r.epoch or "-"} | {r.score} | {_f(r.tau)} [{_f(r.low)}, {_f(r.high)}] | '
                     f'{_f(r.tau_mean_of_seeds)} | {_f(r.seed_tau)} | {_f(r.seed_sd, 3)} | {_f(r.spread_sd, 3)} | '
                     f'{_f(r.beyond_macs[0])} [{_f(r.beyond_macs[1])}, {_f(r.beyond_macs[2])}] | '
                     f'{r.images:,} | {r.wall_s:.0f} |')
    epochs = {p.name: p.epochs for p in plan.protocols}
    finals = [r for r in result['rows'] if r.epoch == epochs.get(r.protocol)]
    best = max(finals, key=lambda r: (-math.inf if math.isnan(r.tau) else r.tau))
    lines += ['', '## What it says', '',
              f'- Highest single-training tau at a final epoch: **{best.protocol}, {best.score}: {_f(best.tau)} '
              f'[{_f(best.low)}, {_f(best.high)}]** (target seed-to-seed tau {_f(t["seed_tau"])}).']
    for r in result['rows']:
        if r.protocol == 'cost only':
            lines.append(f'- Ranking by {r.score.split(" (")[0]} alone, without training: tau {_f(r.tau)} '
                         f'[{_f(r.low)}, {_f(r.high)}]; a proxy is worth its training only above this.')
    for proto in plan.protocols:
        if proto.target:
            continue
        rows = {(r.score, r.epoch): r for r in result['rows'] if r.protocol == proto.name}
        precise, stale = rows.get(('top-1, precise BN', proto.epochs)), rows.get(('top-1, running BN stats',
                                                                                  proto.epochs))
        loss = rows.get(('val. loss, precise BN', proto.epochs))
        if precise and stale:
            lines.append(f'- {proto.name}: precise BN tau {_f(precise.tau)} vs running statistics {_f(stale.tau)}; '
                         f'seed sd {_f(precise.seed_sd)} vs {_f(stale.seed_sd)} points.')
        if precise and loss:
            lines.append(f'- {proto.name}: top-1 tau {_f(precise.tau)} vs validation loss {_f(loss.tau)}; beyond '
                         f'GMACs {_f(precise.beyond_macs[0])} [{_f(precise.beyond_macs[1])}, '
                         f'{_f(precise.beyond_macs[2])}] vs {_f(loss.beyond_macs[0])} [{_f(loss.beyond_macs[1])}, '
                         f'{_f(loss.beyond_macs[2])}].')
        for epoch in range(1, proto.epochs):
            rung, stale_rung = rows.get(('top-1, precise BN', epoch)), rows.get(('top-1, running BN stats', epoch))
            if rung:
                verdict = ('ranks (interval above 0)' if rung.low > 0 else 'does not rank reliably (interval '
                           'includes 0)')
                lines.append(f'- {proto.name}: rung at epoch {epoch}: tau {_f(rung.tau)} [{_f(rung.low)}, '
                             f'{_f(rung.high)}]: {verdict}'
                             + (f'; with the running statistics tau {_f(stale_rung.tau)}, seed sd '
                                f'{_f(stale_rung.seed_sd)} vs {_f(rung.seed_sd)} points.' if stale_rung else '.'))
    lines += ['', '## Per architecture', '',
              '| # | role | architecture | GMACs | ' + ' | '.join(
                  f'{p.name} top-1 (mean of {len(plan.seeds)})' for p in plan.protocols) + ' |',
              '|---|---|---|---|' + '---|' * len(plan.protocols)]
    for i in result['complete']:
        arch = tuple(StageChoice.from_label(x) for x in plan.architectures[i])
        cells = []
        for p in plan.protocols:
            vals = [units[unit_key(p, i, s)]['history'][-1]['top1'] for s in plan.seeds]
            cells.append(f'{sum(vals) / len(vals):.2f}')
        lines.append(f'| {i} | {plan.roles[i]} | {space.format(arch)} | {space.cost(arch).macs / 1e9:.3f} | '
                     + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'
