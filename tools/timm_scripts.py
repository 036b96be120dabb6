#!/usr/bin/env python3
"""Regenerate ``results/timm_scripts.md``: the README's "Coming from timm, Optuna or accelerate" commands, run.

Usage: ``python tools/timm_scripts.py --timm-scripts DIR [--timm-scripts-source TEXT]``

``DIR`` holds timm's own ``train.py``, ``validate.py``, ``benchmark.py`` (and, optionally, ``inference.py``):
they are in neither the timm wheel nor its sdist, so they come from a pytorch-image-models checkout (or any
copy of its files) outside this repository; ``--timm-scripts-source`` says where (repository, commit), and the
report names it with each file's sha256. Every command runs as its own subprocess on the CPU
(``OMP_NUM_THREADS=1``) with tiny settings, in ``--work-dir``:

1. our ``train.py``, 1 epoch of SP-ResNet-20 on a 200/50-image ImageFolder of Fashion-MNIST PNGs
   (``benchmarks/train_throughput.export_image_folder``): the run folder the other commands read;
2. timm's ``train.py`` with ``--device-modules timm_plugins``, then through ``python -m timm_plugins.run``;
3. timm's ``validate.py`` through ``timm_plugins.run`` on the run's ``last.pth`` and on ``local-dir:RUN``,
   each compared with the run's own last-epoch top-1/top-5;
4. timm's ``benchmark.py`` and ``inference.py`` through ``timm_plugins.run``;
5. a 3-trial search (``search.py``, the tests' tiny settings), then ``optuna studies``, ``optuna trials`` and
   ``optuna-dashboard`` (started, asked ``GET /api/studies``, stopped) on its storage;
6. our ``train.py --log-with tensorboard``.

A command that fails is recorded as it failed (exit code, wall seconds, its last output lines), never
retried with other flags; the report says which flags each timm script lacks, so a failure from an older
script is told apart from one of ours. The report is written atomically, once, at the end.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spsearch.cli import CliError, run_cli  # noqa: E402
from spsearch.io import atomic_write_text  # noqa: E402
from spsearch.provenance import markdown_header, provenance  # noqa: E402

SCRIPTS = ('train.py', 'validate.py', 'benchmark.py', 'inference.py')
REQUIRED = SCRIPTS[:3]
FLAGS = ('--device', '--device-modules', '--model-kwargs')
"""The flags of timm's scripts the README's commands use; older scripts lack some (see ``script_flags``)."""
TAIL_LINES = 8
TRAIN_SAMPLES, VAL_SAMPLES = 200, 50
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT), 'PYTHONUNBUFFERED': '1'}


@dataclass
class Step:
    """One recorded command.

    Attributes:
        name: What the step checks, for the summary table.
        cmd: The command as run (placeholders ``$TIMM``/``$WORK`` in the report).
        code: Exit code (None: not started, ``note`` says why).
        wall_s: Wall-clock seconds of the subprocess.
        tail: Its last output lines (stdout and stderr together).
        note: One line read from the outcome (a result, or the error that stopped it).
    """

    name: str
    cmd: list[str]
    code: int | None = None
    wall_s: float = 0.0
    tail: list[str] = field(default_factory=list)
    note: str = ''


def check_scripts(folder: Path) -> dict[str, Path]:
    """The timm scripts found in ``folder``.

    Returns:
        ``{'train.py': path, ...}``: the three required ones and ``inference.py`` when present.

    Raises:
        CliError: ``folder`` is not a folder or lacks a required script.
    """
    if not folder.is_dir():
        raise CliError(f'--timm-scripts {folder} is not a folder: give the folder holding timm\'s train.py, '
                       'validate.py and benchmark.py (a pytorch-image-models checkout)')
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        raise CliError(f'--timm-scripts {folder} has no {", ".join(missing)}: give the root of a '
                       'pytorch-image-models checkout (timm\'s scripts are not in the timm wheel)')
    return {name: folder / name for name in SCRIPTS if (folder / name).is_file()}


def script_flags(path: Path) -> dict[str, bool]:
    """Which of ``FLAGS`` the script's argument parser defines (read from its source, not run).

    Args:
        path: A timm script.

    Returns:
        ``{flag: defined}``; e.g. a timm-0.9 ``train.py`` defines neither ``--device`` nor ``--device-modules``.
    """
    text = path.read_text(encoding='utf-8', errors='replace')
    return {flag: re.search(r"add_argument\([^)]*['\"]" + re.escape(flag) + r"['\"]", text) is not None
            for flag in FLAGS}


def tail(text: str, lines: int = TAIL_LINES, width: int = 220) -> list[str]:
    """The last ``lines`` non-empty lines of ``text``, each cut to ``width`` characters."""
    kept = [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]
    return [line if len(line) <= width else line[:width - 3] + '...' for line in kept]


def _text(data: str | bytes | None) -> str:
    return data.decode(errors='replace') if isinstance(data, bytes) else (data or '')


def run_step(step: Step, cwd: Path, timeout: float = 600) -> str:
    """Run ``step.cmd`` in ``cwd``, filling in its exit code, wall time and last lines (stdout and stderr).

    Returns:
        Its standard output alone (where timm's scripts and ``optuna -f json`` print their results).
    """
    print('+', ' '.join(step.cmd), flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(step.cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
        stdout, stderr, step.code = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        stdout, stderr = _text(e.stdout), _text(e.stderr)
        step.code, step.note = 124, f'killed after {timeout:.0f} s'
    step.wall_s = time.perf_counter() - start
    step.tail = tail(stdout + '\n' + stderr)
    if step.code and not step.note:
        errors = [line for line in step.tail if re.match(r'^(\w+(\.\w+)*(Error|Exception)\b|error:|\S+: error:)', line)]
        step.note = errors[-1] if errors else (step.tail[-1] if step.tail else '')
    return stdout


def timm_result(output: str) -> Any:
    """The JSON timm's validate.py/benchmark.py print after ``--result`` (None when absent or unreadable)."""
    if '--result' not in output:
        return None
    try:
        return json.loads(output.split('--result', 1)[1])
    except ValueError:
        return None


def run_metrics(run: Path) -> dict[str, float]:
    """The last epoch's top-1 and top-5 (percent) that our ``train.py`` logged in ``run/log.csv``."""
    rows = (run / 'log.csv').read_text().splitlines()
    last = dict(zip(rows[0].split(','), rows[-1].split(','), strict=True))
    return {'top1': float(last['top1']), 'top5': float(last['top5'])}


def compare_with_run(result: Any, ours: dict[str, float]) -> str:
    """One line: validate.py's top-1/top-5 next to the run's, and whether they agree (to 0.01 points)."""
    if not isinstance(result, dict) or 'top1' not in result:
        return 'no --result JSON'
    same = all(abs(float(result[k]) - ours[k]) < 0.01 for k in ('top1', 'top5'))
    return (f"top-1 {result['top1']:.2f} / top-5 {result['top5']:.2f}; the run logged "
            f"{ours['top1']:.2f} / {ours['top5']:.2f}: {'the same' if same else 'DIFFERENT'}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return int(sock.getsockname()[1])


def dashboard_step(storage: str, cwd: Path, wait_s: float = 60) -> Step:
    """Start ``optuna-dashboard STORAGE``, ask it ``GET /api/studies``, stop it; the step says what it answered."""
    exe = shutil.which('optuna-dashboard', path=str(Path(sys.executable).parent)) or 'optuna-dashboard'
    port = free_port()
    step = Step('optuna-dashboard serves the study', [exe, storage, '--host', '127.0.0.1', '--port', str(port)])
    print('+', ' '.join(step.cmd), flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.Popen(step.cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    except OSError as e:
        step.code, step.note = 127, f'not started: {e}'
        return step
    url = f'http://127.0.0.1:{port}/api/studies'
    answer = ''
    try:
        while time.perf_counter() - start < wait_s and proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    studies = json.loads(response.read())['study_summaries']
                answer = (f'GET /api/studies -> {response.status}: {len(studies)} study(ies) '
                          f'({", ".join(s["study_name"] for s in studies)})')
                break
            except (OSError, ValueError, KeyError):
                time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    step.wall_s = time.perf_counter() - start
    step.tail = tail(output or '')
    step.code = 0 if answer else (proc.returncode if proc.returncode not in (None, -15) else 1)
    step.note = answer or f'no answer from {url} within {wait_s:.0f} s'
    return step


def run_all(scripts: dict[str, Path], work: Path) -> tuple[list[Step], dict[str, Any]]:
    """Every step, in order (see the module docstring); returns them and facts the report quotes."""
    from benchmarks.train_throughput import export_image_folder

    py = sys.executable
    bin_dir = Path(py).parent
    data = export_image_folder(work / 'fmnist_imagefolder', train_samples=TRAIN_SAMPLES, val_samples=VAL_SAMPLES)
    run = work / 'run'
    shutil.rmtree(run, ignore_errors=True)
    steps: list[Step] = []
    facts: dict[str, Any] = {}

    def add(step: Step, **kwargs: Any) -> str:
        steps.append(step)
        return run_step(step, work, **kwargs)

    add(Step('our train.py: a run folder', [py, str(ROOT / 'train.py'), '--model', 'sp_resnet20', '--dataset',
                                            'imagefolder', '--data-dir', str(data), '--img-size', '32', '--epochs', '1',
                                            '--batch-size', '32', '--workers', '0', '--device', 'cpu', '--output',
                                            str(run), '--no-progress']))
    ours = run_metrics(run) if steps[-1].code == 0 else None
    if ours:
        steps[-1].note = f"last epoch top-1 {ours['top1']:.2f} / top-5 {ours['top5']:.2f} (log.csv)"
    facts['run'] = ours

    timm_train = ['--data-dir', str(data), '--model', 'sp_resnet20', '--num-classes', '10', '--img-size', '32',
                  '-b', '32', '--epochs', '1', '-j', '0', '--device', 'cpu', '--output', str(work / 'timm_train')]
    for name, cmd in (('timm train.py --device-modules timm_plugins',
                       [py, str(scripts['train.py']), *timm_train, '--experiment', 'device-modules',
                        '--device-modules', 'timm_plugins']),
                      ('timm train.py through timm_plugins.run',
                       [py, '-m', 'timm_plugins.run', str(scripts['train.py']), *timm_train, '--experiment', 'run'])):
        add(Step(name, cmd))

    validate = [py, '-m', 'timm_plugins.run', str(scripts['validate.py'])]
    data_args = ['--data-dir', str(data), '--split', 'validation', '--device', 'cpu', '-j', '0', '-b', '25']
    for name, model_args in (('timm validate.py, --checkpoint RUN/last.pth',
                              ['--model', 'sp_resnet20', '--num-classes', '10', '--img-size', '32', '--checkpoint',
                               str(run / 'last.pth')]),
                             ('timm validate.py, --model local-dir:RUN', ['--model', f'local-dir:{run}'])):
        output = add(Step(name, [*validate, *model_args, *data_args]))
        if steps[-1].code == 0 and ours:
            steps[-1].note = compare_with_run(timm_result(output), ours)

    output = add(Step('timm benchmark.py', [py, '-m', 'timm_plugins.run', str(scripts['benchmark.py']), '--model',
                                            'sp_resnet20', '--model-kwargs', 'sp_alpha=0.5', '--img-size', '32',
                                            '-b', '2', '--bench', 'inference', '--num-warm-iter', '1',
                                            '--num-bench-iter', '3', '--device', 'cpu']))
    result = timm_result(output)
    if steps[-1].code == 0 and isinstance(result, dict):
        steps[-1].note = (f"{result.get('infer_samples_per_sec')} images/s, "
                          f"{result.get('infer_step_time')} ms per batch of 2 (3 steps: a smoke check)")
    if 'inference.py' in scripts:
        add(Step('timm inference.py', [py, '-m', 'timm_plugins.run', str(scripts['inference.py']), '--model',
                                       f'local-dir:{run}', *data_args, '--topk', '3', '--label-type', 'none',
                                       '--results-dir', str(work / 'inference')]))

    search_out = work / 'search'
    shutil.rmtree(search_out, ignore_errors=True)
    add(Step('search.py: a 3-trial study', [py, str(ROOT / 'search.py'), '--model', 'sp_resnet20', '--dataset',
                                            'synthetic', '--train-samples', '64', '--val-samples', '64',
                                            '--proxy-epochs', '1', '--batch-size', '32', '--proxy-img-size', '16',
                                            '--workers', '0', '--no-measure-latency', '--retrain-top', '0',
                                            '--no-progress', '--budget-gflops', '0.03', '--n-trials', '3',
                                            '--output', str(search_out), '--study', 'tiny']))
    storage = f'sqlite:///{search_out}/study.db'
    optuna_cli = str(bin_dir / 'optuna')
    output = add(Step('optuna studies', [optuna_cli, 'studies', '--storage', storage, '-f', 'json']))
    if steps[-1].code == 0:
        studies = json.loads(output[output.index('['):]) if '[' in output else []
        steps[-1].note = f'{len(studies)} study(ies); user attributes: ' + '; '.join(
            json.dumps(s.get('user_attrs', {}), sort_keys=True) for s in studies)
    output = add(Step('optuna trials', [optuna_cli, 'trials', '--storage', storage, '--study-name', 'tiny', '-f',
                                        'json']))
    if steps[-1].code == 0:
        trials = json.loads(output[output.index('['):]) if '[' in output else []
        steps[-1].note = f'{len(trials)} trial(s): ' + ', '.join(str(t.get('state')) for t in trials)
    steps.append(dashboard_step(storage, work))

    tb = work / 'tensorboard_run'
    shutil.rmtree(tb, ignore_errors=True)
    add(Step('our train.py --log-with tensorboard', [py, str(ROOT / 'train.py'), '--model', 'sp_resnet20',
                                                     '--dataset', 'synthetic', '--train-samples', '64',
                                                     '--val-samples', '32', '--img-size', '16', '--epochs', '1',
                                                     '--batch-size', '32', '--workers', '0', '--device', 'cpu',
                                                     '--output', str(tb), '--no-progress', '--log-with',
                                                     'tensorboard']))
    if steps[-1].code == 0:
        events = sorted(p.relative_to(tb) for p in tb.rglob('events.out.tfevents.*'))
        steps[-1].note = f'{len(events)} TensorBoard event file(s): ' + ', '.join(map(str, events))
    facts['tensorboard_cli'] = shutil.which('tensorboard', path=str(bin_dir)) is not None
    return steps, facts


def shown(cmd: list[str], scripts_dir: Path, work: Path) -> str:
    """``cmd`` as a shell line with the machine's paths as ``$TIMM``, ``$WORK``, ``python`` and the repository root."""
    bin_dir = str(Path(sys.executable).parent) + '/'
    line = ' '.join(cmd).replace(sys.executable, 'python').replace(bin_dir, '')
    return line.replace(str(scripts_dir), '$TIMM').replace(str(work), '$WORK').replace(str(ROOT) + '/', '')


def missing_flags(cmd: list[str], scripts: dict[str, Path]) -> list[str]:
    """The flags ``cmd`` passes to one of timm's ``scripts`` that the script does not define (an older version)."""
    used = [path for path in scripts.values() if str(path) in cmd]
    if not used:
        return []
    flags = script_flags(used[0])
    return [flag for flag in FLAGS if flag in cmd and not flags[flag]]


def render(steps: list[Step], facts: dict[str, Any], scripts: dict[str, Path], scripts_dir: Path, work: Path,
           source: str, prov: dict[str, Any]) -> str:
    """The report: header, the scripts' source and flags, a summary table, then each command with its output."""
    lines = [markdown_header('timm\'s own scripts, the Optuna CLI and dashboard, and trackers on SPSearch', prov), '']
    lines.append(f'- timm scripts: {source or "(source not given: pass --timm-scripts-source)"}; copied from outside '
                 'this repository (they are in neither the timm wheel nor its sdist) and run unmodified; '
                 '`$TIMM` below is their folder.')
    for name, path in scripts.items():
        flags = script_flags(path)
        lacks = [f for f, ok in flags.items() if not ok]
        lines.append(f'  - `{name}`: sha256 `{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}`; '
                     + (f'has no {", ".join(f"`{f}`" for f in lacks)}' if lacks else f'has {", ".join(FLAGS)}'))
    lines.append(f'- `$WORK`: a scratch folder; the data is a {TRAIN_SAMPLES}/{VAL_SAMPLES}-image ImageFolder of '
                 'Fashion-MNIST PNGs (`benchmarks/train_throughput.export_image_folder`); CPU, `OMP_NUM_THREADS=1`.')
    lines.append('- `tensorboard` command: ' + ('installed' if facts.get('tensorboard_cli') else
                                                'not installed here, so `tensorboard --logdir RUN` was not run'))
    lines += ['', '| step | exit | wall s | outcome |', '|---|---:|---:|---|']
    for step in steps:
        outcome = step.note or ('ok' if step.code == 0 else '')
        lacking = missing_flags(step.cmd, scripts)
        if step.code and lacking:
            outcome += f' (this copy of the script predates {", ".join(lacking)}: older than the installed timm)'
        outcome = outcome.replace('|', '\\|')
        lines.append(f'| {step.name} | {step.code} | {step.wall_s:.1f} | {outcome} |')
    for i, step in enumerate(steps, 1):
        lines += ['', f'## {i}. {step.name}', '', f'`{shown(step.cmd, scripts_dir, work)}`', '',
                  f'exit {step.code}, {step.wall_s:.1f} s. Last lines:', '', '```']
        lines += [shown([line], scripts_dir, work) for line in step.tail] or ['(no output)']
        lines.append('```')
    lines.append('')
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--timm-scripts', required=True, metavar='DIR',
                        help='folder with timm\'s train.py, validate.py, benchmark.py (and inference.py)')
    parser.add_argument('--timm-scripts-source', default='', metavar='TEXT',
                        help='where they came from (repository, commit), quoted in the report')
    parser.add_argument('--work-dir', default='runs/timm_scripts', metavar='DIR', help='scratch folder')
    parser.add_argument('--report', default='results/timm_scripts.md', metavar='FILE')
    args = parser.parse_args(argv)
    if not args.timm_scripts.strip():
        raise CliError('--timm-scripts is empty: give the folder of a pytorch-image-models checkout of your '
                       'timm\'s version (make timm-scripts TIMM_SCRIPTS=DIR)')
    scripts_dir = Path(args.timm_scripts).resolve()
    scripts = check_scripts(scripts_dir)
    prov = provenance()
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    steps, facts = run_all(scripts, work)
    report = Path(args.report)
    atomic_write_text(report if report.is_absolute() else ROOT / report,
                      render(steps, facts, scripts, scripts_dir, work, args.timm_scripts_source, prov))
    print(f'wrote {args.report}')
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
