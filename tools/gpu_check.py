"""Every check that needs a CUDA GPU, in one run: ``make gpu-check`` writes ``results/gpu_check.md``.

Without a GPU it prints one line saying nothing was measured and exits 0 (the file is left as it is).
With one, within ``--max-seconds`` (default 450: 7.5 minutes, so the whole check with set-up fits in 8 on
an H100/H200), each step in its own process with its own time limit (cut to what is left of the whole),
and a step that fails or times out is reported as such without stopping the others. The report is
rewritten (atomically) after every step, so a check that is killed still leaves what it measured:

1. the ``gpu``-marked tests (``pytest -m gpu``);
2. ``benchmark.py``: SP-ResNet-50 vs ResNet-50 and SP-ResNet-34 vs ResNet-34 (alpha 1/2), batch 1, 64 and
   256, fp32 and bf16, channels_last, inference (BN folded) and training, with peak memory, in the
   SPConv implementation ``auto`` picks on CUDA;
3. a 5-trial search under a CUDA latency budget;
4. one epoch of ImageFolder training through DALI ``mixed`` decoding (Fashion-MNIST written as PNGs),
   when ``nvidia.dali`` imports;
5. the 2-process ``accelerate launch`` training path, when more than one GPU exists;
6. SP-ResNet-50 in bf16 with each fast SPConv implementation pinned (``--sp-impl split`` and ``dense``),
   so the per-device ``auto`` rule (``spsearch.ops.fast_paths.dispatch.auto_impl``) can be set from
   measurements: each row's ratio is against ResNet-50 timed in the same process.

The GPU machine has torch, timm and accelerate but no package registry: ``make gpu-wheels``
(``--prepare``) downloads the other pure-Python wheels the checks need into ``wheels/``, writes a
Fashion-MNIST subset (12,000 training and the 10,000 test images, 9 MB) to ``data/fashion-mnist/`` and
records the commit in ``.source-commit`` (a copied tree has no ``.git``); carry the three. This script
installs the wheels (``pip install --no-index``) into ``.gpu-site/`` when an import fails. DALI's own
wheels (about 230 MB with nvImageCodec and nvJPEG) are too large for some transfer limits: install them
anywhere on ``PYTHONPATH`` and the DALI step runs.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEEDED = ('optuna', 'thop', 'scipy', 'yaml', 'safetensors', 'matplotlib')
"""Modules the checks import beyond torch, timm and accelerate."""
WHEELS = ('optuna', 'thop', 'alembic', 'sqlalchemy', 'colorlog', 'mako', 'markupsafe', 'greenlet')
"""``--prepare`` downloads these (no dependencies: the GPU machine's own packages serve the rest)."""
SUBSET_TRAIN = 12_000
"""Training images ``--prepare`` keeps (the search's proxy and validation sets and the DALI epoch fit)."""


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def prepare() -> int:
    """``make gpu-wheels``: wheels/, the Fashion-MNIST subset in data/fashion-mnist/, .source-commit."""
    sys.path.insert(0, str(ROOT))
    from spsearch.data.datasets import find_fashion_mnist
    from spsearch.io import atomic_write_text
    from spsearch.provenance import SOURCE_COMMIT_FILE, git_commit
    subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', '--only-binary=:all:',
                    '--python-version', '3.12', '-d', str(ROOT / 'wheels'), *WHEELS], check=True)
    target = ROOT / 'data' / 'fashion-mnist'
    write_fashion_subset(find_fashion_mnist(), target, SUBSET_TRAIN)
    atomic_write_text(ROOT / SOURCE_COMMIT_FILE, git_commit() + '\n')
    print(f'gpu-wheels: wheels/ ({len(list((ROOT / "wheels").glob("*.whl")))} wheels), {target} '
          f'({SUBSET_TRAIN} training + test images), {SOURCE_COMMIT_FILE} ({git_commit()}); carry the three')
    return 0


def write_fashion_subset(source: Path, target: Path, train_images: int) -> None:
    """Write the first ``train_images`` training images and labels and the whole test split as gzipped IDX.

    Raises:
        DataError: If ``source`` holds no readable Fashion-MNIST.
    """
    sys.path.insert(0, str(ROOT))
    from spsearch.data.datasets import FASHION_MNIST_FILES, _idx_file, read_idx
    from spsearch.io import atomic_write_bytes
    for split, stems in FASHION_MNIST_FILES.items():
        for stem, ndim in zip(stems, (3, 1), strict=True):
            path = _idx_file(source, stem)
            assert path is not None
            dims, data = read_idx(path, ndim)
            assert data is not None
            keep = data[:train_images] if split == 'train' else data
            header = bytes([0, 0, 8, ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in (len(keep), *dims[1:]))
            atomic_write_bytes(target / f'{stem}.gz', gzip.compress(header + keep.tobytes(), mtime=0))


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


class Check:
    """The steps run so far, the deadline they share, and the report rewritten after each."""

    def __init__(self, output: str, work: Path, max_seconds: float, env: dict[str, str], notes: list[str]):
        self.output, self.work, self.env, self.notes = output, work, env, notes
        self.deadline = time.perf_counter() + max_seconds
        self.steps: list[dict[str, object]] = []
        self.rows: list[dict[str, object]] = []
        self.log = work / 'gpu_check.log'
        self.log.write_text('')

    def step(self, name: str, cmd: list[str], limit_s: float) -> dict[str, object]:
        left = self.deadline - time.perf_counter()
        if left < 10:
            result: dict[str, object] = {'name': name, 'command': ' '.join(cmd), 'status': 'not run: the check\'s '
                                         'time was used up', 'wall_s': 0, 'tail': '', 'out': ''}
            print(f'gpu-check: {name}: not run (time used up)', flush=True)
            return self.add(result)
        limit = min(limit_s, left)
        started = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, cwd=ROOT, env=self.env)
            status = 'ok' if done.returncode == 0 else f'failed (exit {done.returncode})'
            out = done.stdout + done.stderr
        except subprocess.TimeoutExpired as e:
            status = f'timed out after {limit:.0f} s'
            out = ''.join(part.decode(errors='replace') if isinstance(part, bytes) else (part or '')
                          for part in (e.stdout, e.stderr))
        wall = time.perf_counter() - started
        with self.log.open('a') as f:
            f.write(f'\n\n===== {name}: {" ".join(cmd)}\n{out}')
        print(f'gpu-check: {name}: {status} ({wall:.0f} s)', flush=True)
        return self.add({'name': name, 'command': ' '.join(cmd), 'status': status, 'wall_s': round(wall, 1),
                         'tail': '\n'.join(out.strip().splitlines()[-25:]), 'out': out})

    def add(self, result: dict[str, object]) -> dict[str, object]:
        self.steps.append(result)
        for line in str(result['out']).splitlines():
            if line.startswith('{"condition"'):
                self.rows.append(json.loads(line))
        self.write()
        return result

    def write(self) -> None:
        import torch
        sys.path.insert(0, str(ROOT))
        from spsearch.io import atomic_write_text
        from spsearch.provenance import markdown_header
        props = torch.cuda.get_device_properties(0)
        lines = [markdown_header('GPU check'), '',
                 'Command: `make gpu-check` (`python tools/gpu_check.py`): what each step ran is in its row below; '
                 'every ratio is SP model / vanilla, both timed interleaved in one process.', '',
                 f'- Device: {props.name}, {props.total_memory / 2 ** 30:.0f} GiB, {props.multi_processor_count} SMs, '
                 f'CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.device_count()} '
                 'GPU(s)']
        lines += [f'- {n}' for n in self.notes]
        lines += ['', '| step | status | s | command |', '|---|---|---|---|']
        lines += [f'| {s["name"]} | {s["status"]} | {s["wall_s"]} | `{_short(str(s["command"]))}` |'
                  for s in self.steps]
        if self.rows:
            keys = ['model', 'bench', 'batch_size', 'amp', 'fused', 'sp_impl', 'latency_ms', 'baseline_latency_ms',
                    'ratio', 'macs_ratio', 'images_per_s', 'baseline_images_per_s', 'peak_mem_mb',
                    'baseline_peak_mem_mb']
            lines += ['', '## benchmark.py: SP model / vanilla, interleaved in one process', '',
                      'latency: median ms per step (inference: forward; train: forward + backward + optimizer); '
                      'ratio below 1: the SP model is faster.', '',
                      '| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)]
            lines += ['| ' + ' | '.join(_cell(r.get(k)) for k in keys) + ' |' for r in self.rows]
        for s in self.steps:
            if s['status'] not in ('ok',) and s['tail']:
                lines += ['', f'### {s["name"]}: last lines', '', '```', str(s['tail']), '```']
        atomic_write_text(self.output, '\n'.join(lines) + '\n')


def _short(command: str) -> str:
    return command.replace(str(ROOT) + '/', '').replace(sys.executable, 'python')


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f'{v:.3f}' if abs(v) < 10 else f'{v:.1f}'
    return '-' if v is None else str(v).replace('sp_alpha=0.5', 'α=1/2')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python tools/gpu_check.py', description=__doc__.split('\n\n')[0])
    parser.add_argument('--output', default='results/gpu_check.md', help='markdown report')
    parser.add_argument('--work', default='runs/gpu_check', help='scratch folder (logs, data, runs)')
    parser.add_argument('--max-seconds', type=float, default=450, help='time for all steps together')
    parser.add_argument('--prepare', action='store_true',
                        help='on a machine with a registry: wheels/, data/fashion-mnist/, .source-commit to carry')
    args = parser.parse_args(argv)
    if args.prepare:
        return prepare()
    if not _has_cuda():
        print('gpu-check: no CUDA GPU here; nothing was measured (results/gpu_check.md left as it is)')
        return 0
    import torch
    work = ROOT / args.work
    work.mkdir(parents=True, exist_ok=True)
    notes = _ensure_packages(ROOT / '.gpu-site')
    sys.path.insert(0, str(ROOT))
    from spsearch.provenance import SOURCE_COMMIT_ENV, SOURCE_COMMIT_FILE
    if (ROOT / SOURCE_COMMIT_FILE).is_file():  # a copied tree: name the code make gpu-wheels recorded
        os.environ[SOURCE_COMMIT_ENV] = (ROOT / SOURCE_COMMIT_FILE).read_text().strip()
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), str(ROOT / '.gpu-site'), *sys.path[1:]]),
           'TQDM_DISABLE': '1', 'PYTHONUNBUFFERED': '1'}
    py = sys.executable
    carried = ROOT / 'data' / 'fashion-mnist'  # make gpu-wheels writes the data here (the GPU machine has none)
    data = ['--data-dir', str(carried)] if carried.is_dir() else []
    check = Check(args.output, work, args.max_seconds, env, notes)
    check.step('gpu tests', [py, '-m', 'pytest', '-q', '-m', 'gpu', '-p', 'no:cacheprovider',
                             '--continue-on-collection-errors', 'tests'], 90)
    bench = [py, 'benchmark.py', '--model-kwargs', 'sp_alpha=0.5', '--device', 'cuda', '--bench', 'both',
             '--fused', '--channels-last', '--warmup', '5', '--repeats', '20', '--json',
             '--csv-dir', str(work / 'bench')]
    for model, baseline in (('sp_resnet50', 'resnet50'), ('sp_resnet34', 'resnet34')):
        for amp in ('no', 'bf16'):
            check.step(f'benchmark {model} amp={amp}', [*bench, '--model', model, '--baseline', baseline,
                                                       '--batch-size', '1', '64', '256', '--amp', amp], 75)
    check.step('5-trial search, CUDA latency budget', [
        py, 'search.py', '--budget-latency-ms', '5', '--latency-device', 'cuda', '--n-trials', '5',
        '--proxy-epochs', '1', '--train-samples', '2000', '--retrain-top', '0', '--timeout', '0',
        '--output', str(work / 'search'), *data], 120)
    if _importable('nvidia.dali'):
        sys.path.insert(0, str(ROOT / 'benchmarks'))
        from train_throughput import export_image_folder  # the benchmarks' Fashion-MNIST ImageFolder (cached)
        folder = export_image_folder(work / 'fmnist_png', train_samples=6000, val_samples=1000,
                                     data_dir=str(carried) if carried.is_dir() else None)
        check.step('DALI mixed ImageFolder epoch', [
            py, 'train.py', '--model', 'sp_resnet20', '--dataset', 'imagefolder', '--data-dir', str(folder),
            '--loader', 'dali', '--epochs', '1', '--img-size', '32', '--output', str(work / 'dali')], 90)
    else:
        check.add({'name': 'DALI mixed ImageFolder epoch', 'command': '-', 'status': 'skipped: nvidia.dali is not '
                   'installed here (no registry; its wheels were not carried)', 'wall_s': 0, 'tail': '', 'out': ''})
    if torch.cuda.device_count() > 1:
        check.step('2-process training', [
            py, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2', 'train.py',
            '--model', 'sp_resnet20', '--dataset', 'fashion-mnist', '--epochs', '1', '--train-samples', '4096',
            '--output', str(work / 'ddp'), *data], 90)
    for impl in ('split', 'dense'):
        check.step(f'benchmark sp_resnet50 amp=bf16 sp-impl={impl}', [
            *bench, '--model', 'sp_resnet50', '--baseline', 'resnet50', '--batch-size', '64', '256', '--amp', 'bf16',
            '--sp-impl', impl, '--no-memory'], 60)
    print(f'gpu-check: wrote {args.output}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
