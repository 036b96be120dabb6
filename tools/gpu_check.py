"""Every check that needs a CUDA GPU, in one run: ``make gpu-check`` writes ``results/gpu_check.md``.

Without a GPU it prints one line saying nothing was measured and exits 0 (the file is left as it is).
With one, within about 8 minutes on an H100/H200 (set-up included), each step in its own process with
its own time limit, and a step that fails or times out is reported as such without stopping the others:

1. the ``gpu``-marked tests (``pytest -m gpu``);
2. ``benchmark.py``: SP-ResNet-50 vs ResNet-50 and SP-ResNet-34 vs ResNet-34 (alpha 1/2), batch 1, 64 and
   256, fp32 and bf16, channels_last, inference (fused) and training, with peak memory;
3. one epoch of ImageFolder training through DALI ``mixed`` decoding (Fashion-MNIST written as PNGs),
   when ``nvidia.dali`` imports (its wheel is too large to carry to a machine without a registry);
4. a 5-trial search under a CUDA latency budget;
5. the 2-process ``accelerate launch`` training path, when more than one GPU exists.

The GPU machine has torch, timm and accelerate but no package registry: ``make gpu-wheels`` downloads
the other pure-Python wheels the checks need into ``wheels/`` (carried with the working tree), and this
script installs them from there (``pip install --no-index``) into ``.gpu-site/`` when an import fails.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEEDED = ('optuna', 'thop', 'scipy', 'yaml', 'safetensors', 'matplotlib')
"""Modules the checks import beyond torch, timm and accelerate."""


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _ensure_packages(site: Path) -> list[str]:
    """Install missing modules from ``wheels/`` into ``site`` (added to sys.path and PYTHONPATH); notes."""
    missing = [m for m in NEEDED if not _importable(m)]
    notes = []
    if missing and (ROOT / 'wheels').is_dir():
        # --no-deps: the wheels are the packages the machine lacks (make gpu-wheels), its own ones serve the rest
        done = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--no-deps', '--target',
                               str(site), *map(str, sorted((ROOT / 'wheels').glob('*.whl')))],
                              capture_output=True, text=True)
        notes.append(f'installed {", ".join(missing)} from wheels/: ' + ('ok' if done.returncode == 0 else
                                                                        done.stderr.strip().splitlines()[-1]))
        sys.path.insert(0, str(site))
    still = [m for m in NEEDED if not _importable(m)]
    if still:
        notes.append(f'missing modules {", ".join(still)}: steps that need them fail (run make gpu-wheels on a '
                     f'machine with a registry and carry wheels/)')
    return notes


def _importable(module: str) -> bool:
    done = subprocess.run([sys.executable, '-c', f'import {module}'], capture_output=True,
                          env={**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path)})
    return done.returncode == 0


def _step(name: str, cmd: list[str], limit_s: float, env: dict[str, str], log: Path) -> dict[str, object]:
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit_s, cwd=ROOT, env=env)
        status = 'ok' if done.returncode == 0 else f'failed (exit {done.returncode})'
        out = done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        status = f'timed out after {limit_s:.0f} s'
        out = (e.stdout or b'').decode(errors='replace') if isinstance(e.stdout, bytes) else (e.stdout or '')
    wall = time.perf_counter() - started
    log.write_text(log.read_text() + f'\n\n===== {name}: {" ".join(cmd)}\n{out}' if log.exists() else out)
    print(f'gpu-check: {name}: {status} ({wall:.0f} s)', flush=True)
    return {'name': name, 'command': ' '.join(cmd), 'status': status, 'wall_s': round(wall, 1),
            'tail': '\n'.join(out.strip().splitlines()[-25:])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python tools/gpu_check.py', description=__doc__.split('\n\n')[0])
    parser.add_argument('--output', default='results/gpu_check.md', help='markdown report')
    parser.add_argument('--work', default='runs/gpu_check', help='scratch folder (logs, data, runs)')
    args = parser.parse_args(argv)
    if not _has_cuda():
        print('gpu-check: no CUDA GPU here; nothing was measured (results/gpu_check.md left as it is)')
        return 0
    import torch
    work = ROOT / args.work
    work.mkdir(parents=True, exist_ok=True)
    notes = _ensure_packages(ROOT / '.gpu-site')
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), str(ROOT / '.gpu-site'), *sys.path[1:]]),
           'TQDM_DISABLE': '1'}
    py = sys.executable
    carried = ROOT / 'data' / 'fashion-mnist'  # make gpu-wheels copies the data set here (the GPU machine has none)
    data = ['--data-dir', str(carried)] if carried.is_dir() else []
    log = work / 'gpu_check.log'
    log.write_text('')
    steps = [_step('gpu tests', [py, '-m', 'pytest', '-q', '-m', 'gpu', '-p', 'no:cacheprovider', 'tests'], 120,
                   env, log)]
    bench_json = work / 'bench.jsonl'
    rows: list[dict[str, object]] = []
    for model, baseline in (('sp_resnet50', 'resnet50'), ('sp_resnet34', 'resnet34')):
        for amp in ('no', 'bf16'):
            step = _step(f'benchmark {model} amp={amp}', [
                py, 'benchmark.py', '--model', model, '--model-kwargs', 'sp_alpha=0.5', '--baseline', baseline,
                '--batch-size', '1', '64', '256', '--device', 'cuda', '--bench', 'both', '--fused', '--channels-last',
                '--amp', amp, '--json', '--csv-dir', str(work / 'bench')], 75, env, log)
            steps.append(step)
            for line in str(step['tail']).splitlines():
                if line.startswith('{'):
                    rows.append(json.loads(line))
    bench_json.write_text('\n'.join(json.dumps(r) for r in rows))
    if _importable('nvidia.dali'):
        steps.append(_dali_step(py, work, env, log, carried if carried.is_dir() else None))
    else:
        steps.append({'name': 'DALI mixed ImageFolder epoch', 'command': '-', 'status': 'skipped: nvidia.dali is '
                      'not installed here (its wheel is too large to carry)', 'wall_s': 0, 'tail': ''})
    steps.append(_step('5-trial search, CUDA latency budget', [
        py, 'search.py', '--budget-latency-ms', '5', '--latency-device', 'cuda', '--n-trials', '5',
        '--proxy-epochs', '1', '--train-samples', '2000', '--retrain-top', '0', '--timeout', '0',
        '--output', str(work / 'search'), '--resume', *data], 120, env, log))
    if torch.cuda.device_count() > 1:
        steps.append(_step('2-process training', [
            py, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2', 'train.py',
            '--model', 'sp_resnet20', '--dataset', 'fashion-mnist', '--epochs', '1', '--train-samples', '4096',
            '--output', str(work / 'ddp'), *data], 90, env, log))
    _write(args.output, torch, steps, rows, notes)
    return 0


def _dali_step(py: str, work: Path, env: dict[str, str], log: Path, data_dir: Path | None) -> dict[str, object]:
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    from train_throughput import export_image_folder  # the benchmarks' Fashion-MNIST ImageFolder (cached, atomic)
    folder = export_image_folder(work / 'fmnist_png', train_samples=6000, val_samples=1000,
                                 data_dir=str(data_dir) if data_dir else None)
    return _step('DALI mixed ImageFolder epoch', [
        py, 'train.py', '--model', 'sp_resnet20', '--dataset', 'imagefolder', '--data-dir', str(folder),
        '--loader', 'dali', '--epochs', '1', '--img-size', '32', '--output', str(work / 'dali')], 90, env, log)


def _write(output: str, torch: object, steps: list[dict[str, object]], rows: list[dict[str, object]],
           notes: list[str]) -> None:
    sys.path.insert(0, str(ROOT))
    from spsearch.io import atomic_write_text
    from spsearch.provenance import markdown_header
    lines = [markdown_header('GPU check'), '', 'Command: `make gpu-check` (`python tools/gpu_check.py`).', '']
    lines += [f'- {n}' for n in notes]
    lines += ['', '| step | status | s |', '|---|---|---|']
    lines += [f'| {s["name"]} | {s["status"]} | {s["wall_s"]} |' for s in steps]
    if rows:
        keys = ['model', 'bench', 'batch_size', 'amp', 'fused', 'ratio', 'throughput_ratio', 'model_images_per_s',
                'baseline_images_per_s', 'model_peak_mb', 'baseline_peak_mb']
        keys = [k for k in keys if any(k in r for r in rows)]
        lines += ['', '## benchmark.py (SP model / vanilla, interleaved in one process)', '',
                  '| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)]
        lines += ['| ' + ' | '.join(str(r.get(k, '')) for k in keys) + ' |' for r in rows]
    for s in steps:
        if s['status'] != 'ok' and s['tail']:
            lines += ['', f'### {s["name"]}: last lines', '', '```', str(s['tail']), '```']
    atomic_write_text(output, '\n'.join(lines) + '\n')
    print(f'gpu-check: wrote {output}')


if __name__ == '__main__':
    raise SystemExit(main())
