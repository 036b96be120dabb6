"""Verify a study's answer: retrain its finalists, its baselines and a random control on paired seeds.

The candidates: the ``retrain_top`` best feasible architectures (proxy ranking), the paper's alpha
1/2, G 2, the best uniform architecture within the budgets (``budgets.best_uniform``: one alpha and
G in every stage, using the most of the MAC budget) and one random in-budget architecture (the
control a search must beat to be worth its cost). Each is retrained ``retrain_seeds`` times with
the same seeds (``seed``, ``seed + 1``, ...), so runs with one seed form pairs, on the training split
(the proxy holdout included) and judged by the final epoch's top-1 on the test split, which no
selection has seen. ``stats`` turns the runs into means with 95 % intervals and paired comparisons
of the best finalist against each baseline (``verify.csv``, ``comparisons.csv``; ``reports`` puts
them in ``summary.md`` with a plot).

Each run is ``accelerate launch -m spsearch.train -c <run>.yaml`` in a subprocess (a clean process
per run: no memory carried over, the library's own training entry point, which an installed copy
has too), in ``<output>/retrain/<candidate>/seed-<seed>/``. A run that finished is skipped; an
interrupted one continues with ``--resume``. Every run is a row of ``retrain.csv``. The run's processes
end with the search however it ends (``processes.run_child``), and a run folder is trained by one
process at a time (its lock, ``spsearch.io.lock_folder``).
"""
from __future__ import annotations

import json
import math
import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial

from ..errors import RunFailed
from ..io import atomic_write_text, atomic_write_yaml
from ..space import Architecture
from ..train import TrainConfig
from ..train.launch import tracker_names
from ..train.loop import resolve_precision
from .budgets import best_uniform, random_in_budget
from .processes import run_child
from .record import TrialRecord
from .reports import best_trials, csv_text, proxy_value
from .stats import compare, estimate, holm
from .study import OpenStudy

__all__ = ['Candidate', 'candidates', 'check_retrains', 'clean_env', 'launch_command', 'launch_settings',
           'retrain_winners']


@dataclass(frozen=True)
class Candidate:
    """An architecture to verify, and why: ``finalist`` (of the search), ``paper``, ``uniform`` or ``random``;
    its cost (GMACs, millions of parameters), counted once."""

    name: str
    role: str
    arch: Architecture
    gmacs: float
    mparams: float
    trial: FrozenTrial | None = None


def candidates(opened: OpenStudy, top: int) -> list[Candidate]:
    """The finalists, then the baselines and the random control (an architecture appears once, first role)."""
    cfg, space = opened.cfg, opened.space
    trials = opened.trials()
    by_baseline = {kind: t for t in reversed(trials) if (kind := TrialRecord.of(t).baseline)}
    wanted: list[tuple[str, str, Architecture | None, FrozenTrial | None]] = [
        (f'trial-{t.number}', 'finalist', space.from_optuna_params(t.params), t)
        for t in best_trials(trials, top, score=cfg.score)]
    wanted += [('paper', 'paper', space.paper_arch(), by_baseline.get('paper')),
               ('uniform', 'uniform', best_uniform(space, cfg.budgets), by_baseline.get('uniform')),
               ('random', 'random', random_in_budget(space, cfg.budgets, random.Random(cfg.seed)), None)]
    out: list[Candidate] = []
    for name, role, arch, trial in wanted:
        if arch is not None and all(c.arch != arch for c in out):
            count = space.cost(arch) if space.contains(arch) else space.cost_direct(arch)
            out.append(Candidate(name, role, arch, round(count.macs / 1e9, 4), round(count.params / 1e6, 4), trial))
    return out


def launch_command(config_yaml: Path, processes: int, resume: bool, mixed_precision: str = 'no',
                   dynamo_backend: str = 'no') -> list[str]:
    """``accelerate launch -m spsearch.train -c config_yaml``, launcher settings explicit (no config file needed):
    the search's own (``launch_settings``), so a retrain runs as the search's proxy trainings did."""
    cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--num_processes', str(processes),
           '--num_machines', '1', '--mixed_precision', mixed_precision, '--dynamo_backend', dynamo_backend]
    if processes > 1:
        cmd.append('--multi_gpu')  # also the way to get several CPU processes (gloo), see the README
    cmd += ['--module', 'spsearch.train', '-c', str(config_yaml)]
    if resume:
        cmd.append('--resume')
    return cmd


_LAUNCH_VARS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'GROUP_RANK', 'GROUP_WORLD_SIZE', 'ROLE_RANK',
                'ROLE_WORLD_SIZE', 'ROLE_NAME', 'MASTER_ADDR', 'MASTER_PORT')


def clean_env() -> dict[str, str]:
    """This process' environment without the variables of its own launch (``accelerate launch``/torchrun).

    A search run with several processes retrains from its main process; a child launch that
    inherited RANK/WORLD_SIZE/MASTER_PORT or ACCELERATE_* would join (and hang on) the parent's group.
    """
    return {k: v for k, v in os.environ.items()
            if k not in _LAUNCH_VARS and not k.startswith(('ACCELERATE_', 'TORCHELASTIC_'))}


def _default_processes(environ: dict[str, str] | None = None) -> int:
    """The search's own launch size (``accelerate launch --num_processes N search.py``), else the GPUs, else 1."""
    import torch
    env = os.environ if environ is None else environ
    launched = int(env.get('WORLD_SIZE', '1') or 1)
    return launched if launched > 1 else max(1, torch.cuda.device_count())


def launch_settings(train_cfg: TrainConfig, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The accelerate settings of the search's launch that its retrains keep (``clean_env`` drops the variables).

    Returns:
        ``mixed_precision`` (``resolve_precision``: the flag, else ``accelerate launch``'s or its config's),
        ``device`` (``cpu`` under ``accelerate launch --cpu`` or ``--device cpu``, else ``auto``) and
        ``dynamo_backend`` (accelerate's, lower case).

    Raises:
        ConfigError: A precision this machine cannot run (``resolve_precision``).
    """
    env = os.environ if environ is None else environ
    precision, _ = resolve_precision(train_cfg, dict(env))
    cpu = train_cfg.device == 'cpu' or env.get('ACCELERATE_USE_CPU', '').strip().lower() in ('1', 'true', 'yes')
    return {'mixed_precision': precision, 'device': 'cpu' if cpu else 'auto',
            'dynamo_backend': (env.get('ACCELERATE_DYNAMO_BACKEND') or 'no').lower()}


def _finished(run_dir: Path, recipe: dict[str, Any]) -> dict[str, Any] | None:
    summary = run_dir / 'summary.json'
    if not summary.exists():
        return None
    try:
        data = json.loads(summary.read_text())
    except (OSError, ValueError):
        return None
    config = data.get('config', {})
    if data.get('epochs_run') == recipe['epochs'] and config.get('model_kwargs') == recipe['model_kwargs'] \
            and config.get('seed') == recipe['seed'] and not data.get('stopped_by'):
        return data
    return None


def _run(opened: OpenStudy, cand: Candidate, seed: int, processes: int, log: Callable[[str], None]
         ) -> tuple[Path, dict[str, Any] | None, str]:
    """One retrain of ``cand`` with ``seed`` (skipped when done, resumed when interrupted)."""
    cfg, space = opened.cfg, opened.space
    run_dir = opened.output / 'retrain' / cand.name / f'seed-{seed}'
    kwargs = {k: list(v) for k, v in space.model_kwargs(cand.arch).items()}
    launch = launch_settings(cfg.train)
    recipe = cfg.retrain_train_config(kwargs, str(run_dir), experiment=f'search {opened.study.study_name} '
                                      f'{cand.name} seed {seed}', seed=seed).replace(
        mixed_precision=launch['mixed_precision'], device=launch['device']).to_dict()
    done = _finished(run_dir, recipe)
    if done is not None:
        return run_dir, done, 'done before'
    config_yaml = run_dir.parent / f'seed-{seed}.yaml'
    atomic_write_yaml(config_yaml, recipe)
    cmd = launch_command(config_yaml, processes, resume=(run_dir / 'last.pth').exists(),
                         mixed_precision=launch['mixed_precision'], dynamo_backend=launch['dynamo_backend'])
    log(f'retrain {cand.name} ({cand.role}) seed {seed}: {space.format(cand.arch)} | {" ".join(cmd[1:])}')
    code = run_child(cmd, env={**clean_env(), 'PYTHONUNBUFFERED': '1'})
    done = _finished(run_dir, recipe)
    return run_dir, done, 'trained' if done is not None else f'failed (exit code {code})'


def retrain_winners(opened: OpenStudy, log: Callable[[str], None], top: int | None = None) -> list[dict[str, Any]]:
    """Retrain the candidates (``candidates``) on ``retrain_seeds`` paired seeds; write ``retrain.csv`` (a row per
    run), ``verify.csv`` (a row per candidate: mean top-1 and its 95 % interval) and ``comparisons.csv`` (the best
    finalist against each baseline: paired difference, tests, Holm-adjusted p, verdict)."""
    cfg = opened.cfg
    cands = candidates(opened, cfg.retrain_top if top is None else top)
    if not cands:
        return []
    tracker_names(cfg.train.log_with, str(opened.output))  # bad settings: one line before any launch
    launch_settings(cfg.train)
    processes = cfg.retrain_processes or _default_processes()
    seeds = [cfg.seed + i for i in range(cfg.retrain_seeds)]
    rows, scores = [], {}
    for cand in cands:
        record = TrialRecord.of(cand.trial) if cand.trial is not None else TrialRecord()
        proxy = proxy_value(cand.trial) if cand.trial is not None else None
        finals = []
        for seed in seeds:
            run_dir, done, status = _run(opened, cand, seed, processes, log)
            rows.append({
                'name': cand.name, 'role': cand.role, 'seed': seed, 'trial': getattr(cand.trial, 'number', ''),
                'config': opened.space.format(cand.arch), 'gmacs': cand.gmacs, 'mparams': cand.mparams,
                'latency_ms': '' if record.latency_ms is None else round(record.latency_ms, 3),
                'proxy_score': '' if proxy is None else round(proxy, 4),
                'final_top1': '' if done is None else round(done['final_top1'], 2),
                'best_top1': '' if done is None else round(done['best_top1'], 2),
                'epochs': '' if done is None else done['epochs_run'],
                'wall_s': '' if done is None else round(done['wall_s'], 1), 'status': status, 'output': str(run_dir)})
            log(f'retrain {cand.name} seed {seed}: {status}'
                + (f', final top1 {done["final_top1"]:.2f}' if done else ''))
            if done is not None:
                finals.append(float(done['final_top1']))
        if len(finals) == len(seeds):
            scores[cand.name] = finals
    atomic_write_text(opened.output / 'retrain.csv', csv_text(rows))
    _write_statistics(opened, cands, scores)
    return rows


def check_retrains(opened: OpenStudy, rows: list[dict[str, Any]]) -> None:
    """Raise when a retrain of ``rows`` (``retrain_winners``' result) failed: the verification is then incomplete
    and its verdicts missing, which must not end as a success.

    Raises:
        RunFailed: One line naming how many failed, the first one's folder, and how to continue.
    """
    failed = [r for r in rows if str(r['status']).startswith('failed')]
    if failed:
        first = failed[0]
        raise RunFailed(f'{len(failed)} of {len(rows)} retrains failed (first: {first["name"]} seed {first["seed"]}, '
                        f'{first["status"]}; its error is printed above, its folder is {first["output"]}); the '
                        f'search\'s reports are in {opened.output}; fix the cause and run the same command with '
                        '--resume (finished retrains are kept)')


def _write_statistics(opened: OpenStudy, cands: list[Candidate], scores: dict[str, list[float]]) -> None:
    """``verify.csv`` and ``comparisons.csv`` from the final top-1 of every candidate's runs."""
    per = []
    for cand in cands:
        if cand.name not in scores:
            continue
        est = estimate(scores[cand.name])
        per.append({'name': cand.name, 'role': cand.role, 'config': opened.space.format(cand.arch),
                    'gmacs': cand.gmacs, 'mparams': cand.mparams, 'seeds': est.n, 'mean_top1': round(est.mean, 3),
                    'ci95_low': round(est.low, 3), 'ci95_high': round(est.high, 3),
                    'top1_per_seed': ' '.join(f'{v:.2f}' for v in scores[cand.name])})
    atomic_write_text(opened.output / 'verify.csv', csv_text(per))
    best = next((c for c in cands if c.role == 'finalist' and c.name in scores), None)
    baselines = [c for c in cands if c.role != 'finalist' and c.name in scores]
    if best is None or not baselines:
        atomic_write_text(opened.output / 'comparisons.csv', '')
        return
    results = [compare(scores[best.name], scores[b.name]) for b in baselines]
    adjusted = holm([r.p_t for r in results])
    rows = []
    for base, result, p_holm in zip(baselines, results, adjusted, strict=True):
        d = result.difference
        rows.append({'finalist': best.name, 'baseline': base.name, 'finalist_gmacs': best.gmacs,
                     'baseline_gmacs': base.gmacs, 'macs_ratio': round(best.gmacs / base.gmacs, 4),
                     'seeds': d.n, 'difference': round(d.mean, 3), 'ci95_low': round(d.low, 3),
                     'ci95_high': round(d.high, 3), 'p_t': _p(result.p_t), 'p_wilcoxon': _p(result.p_wilcoxon),
                     'p_holm': _p(p_holm), 'verdict': result.verdict})
    atomic_write_text(opened.output / 'comparisons.csv', csv_text(rows))


def _p(value: float) -> Any:
    return '' if math.isnan(value) else round(value, 4)
