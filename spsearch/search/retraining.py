"""Retrain the winners of a study, and the paper's alpha 1/2 baseline, with the full recipe.

Each run is ``accelerate launch -m spsearch.train -c <name>.yaml`` in a subprocess (a clean process
per run: no memory carried over, the library's own training entry point, which an installed copy
has too), in ``<output>/retrain/<name>/``.
A run that finished is skipped; an interrupted one continues with ``--resume``. The
final accuracies go side by side into ``retrain.csv`` (and ``summary.md``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..io import atomic_write_text, atomic_write_yaml
from ..space import Architecture
from .record import TrialRecord
from .reports import best_trials, csv_text, proxy_top1
from .study import OpenStudy

__all__ = ['clean_env', 'launch_command', 'retrain_winners']


def launch_command(config_yaml: Path, processes: int, resume: bool) -> list[str]:
    """``accelerate launch -m spsearch.train -c config_yaml``, launcher settings explicit (no config file needed)."""
    cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--num_processes', str(processes),
           '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no']
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


def _default_processes() -> int:
    import torch
    return max(1, torch.cuda.device_count())


def _finished(run_dir: Path, recipe: dict[str, Any]) -> dict[str, Any] | None:
    summary = run_dir / 'summary.json'
    if not summary.exists():
        return None
    try:
        data = json.loads(summary.read_text())
    except (OSError, ValueError):
        return None
    if data.get('epochs_run') == recipe['epochs'] and data.get('config', {}).get('model_kwargs') == \
            recipe['model_kwargs'] and not data.get('stopped_by'):
        return data
    return None


def retrain_winners(opened: OpenStudy, log: Callable[[str], None], top: int | None = None) -> list[dict[str, Any]]:
    """Retrain the ``top`` best feasible architectures of a study and the paper's; write ``retrain.csv``."""
    cfg, space = opened.cfg, opened.space
    top = cfg.retrain_top if top is None else top
    trials = opened.trials()
    jobs: list[tuple[str, Architecture, Any]] = [(f'trial-{t.number}', space.from_optuna_params(t.params), t)
                                           for t in best_trials(trials, top)]
    paper = space.paper_arch()
    if not any(config == paper for _, config, _ in jobs):
        paper_trial = next((t for t in trials if TrialRecord.of(t).baseline), None)
        jobs.append(('paper', paper, paper_trial))
    if not jobs:
        return []
    processes = cfg.retrain_processes or _default_processes()
    root = opened.output / 'retrain'
    rows = []
    for name, config, trial in jobs:
        run_dir = root / name
        kwargs = {k: list(v) for k, v in space.model_kwargs(config).items()}
        recipe = cfg.retrain_train_config(kwargs, str(run_dir), experiment=f'search {opened.study.study_name} {name}')
        recipe_dict = recipe.to_dict()
        done = _finished(run_dir, recipe_dict)
        status = 'done before'
        if done is None:
            config_yaml = root / f'{name}.yaml'
            atomic_write_yaml(config_yaml, recipe_dict)
            resume = (run_dir / 'last.pth').exists()
            cmd = launch_command(config_yaml, processes, resume)
            log(f'retrain {name}: {space.format(config)} | {" ".join(cmd[1:])}')
            env = {**clean_env(), 'PYTHONUNBUFFERED': '1'}
            code = subprocess.run(cmd, env=env, check=False).returncode
            done = _finished(run_dir, recipe_dict)
            status = 'trained' if done is not None else f'failed (exit code {code})'
        cost = space.cost(config)
        row = {
            'name': name, 'trial': getattr(trial, 'number', ''), 'paper_baseline': config == paper,
            'config': space.format(config), 'gmacs': round(cost.macs / 1e9, 4), 'mparams': round(cost.params / 1e6, 4),
            'latency_ms': '' if trial is None or TrialRecord.of(trial).latency_ms is None
            else round(TrialRecord.of(trial).latency_ms or 0, 3),
            'proxy_top1': '' if trial is None or proxy_top1(trial) is None else round(proxy_top1(trial) or 0, 2),
            'final_top1': '' if done is None else round(done['final_top1'], 2),
            'best_top1': '' if done is None else round(done['best_top1'], 2),
            'epochs': '' if done is None else done['epochs_run'],
            'wall_s': '' if done is None else round(done['wall_s'], 1),
            'status': status, 'output': str(run_dir),
        }
        rows.append(row)
        log(f'retrain {name}: {status}' + (f', final top1 {row["final_top1"]}' if done else ''))
    atomic_write_text(opened.output / 'retrain.csv', csv_text(rows))
    return rows
