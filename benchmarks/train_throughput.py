#!/usr/bin/env python3
"""Training throughput of our loop against timm's own ``train.py``: same model, batch and images, side by side.

Example:
    git clone https://github.com/huggingface/pytorch-image-models runs/pytorch-image-models
    python benchmarks/train_throughput.py --timm-train runs/pytorch-image-models/train.py \\
        --rounds 3 --report results/train_throughput.md

Rows (each a fresh process, run alternately A B C A B C ... for ``--rounds`` rounds, medians reported,
because a shared machine drifts):

  timm    timm's ``train.py``, unmodified, on an ImageFolder of PNGs (its dataset, transforms,
          DataLoader and prefetcher).
  torch   our ``train.py`` on the same ImageFolder with ``--loader torch`` (PIL + timm transforms in
          DataLoader workers): the like-for-like pipeline.
  memory  our ``train.py`` on the same images read from the Fashion-MNIST IDX files with
          ``--loader memory`` (one uint8 tensor, batches cropped/flipped/normalised on the device):
          what users get by default.

The images are a seeded subset of the real Fashion-MNIST (``--train-samples``/``--val-samples``,
``--seed``), exported once as ``train/<class>/*.png`` and ``validation/<class>/*.png`` under
``--work-dir``; the ``memory`` row selects the same subset from the IDX files. timm's ``train.py``
is not in the timm wheel: clone pytorch-image-models and pass its path (``--timm-train`` or
``TIMM_TRAIN_PY``). The file is not edited: it is loaded as a module and its ``main()`` called after
``import timm_plugins`` (which registers the SP models), with ``device: cpu`` (``cuda`` where there is a
GPU) given through its own ``-c`` YAML (the 0.9-era script has no ``--device`` flag; its ``set_defaults``
puts the key on the namespace), and its ``validate()`` given that device (that version calls it without
one, and the default ``cuda`` calls ``torch.cuda.synchronize()`` on a CPU run). Every process gets the
same torch thread count (``--threads``) and DataLoader workers (``--workers``).

Measured, per training epoch and the same way for both sides: the wall time of the epoch function
(timm's ``train_one_epoch``, our loop's ``train_epoch``; wrapped, not edited), the images it trained
on, and the time spent waiting for the next batch (the loader is wrapped in a timer). Reported:
images/s over the epochs after the first (the first includes worker start-up and one-time
initialisation), each side's own throughput figure (timm's log line ``Time: ... (avg s, N/s)``
with ``--log-interval 1``; our ``images_per_s``), CPU time per image of the training process and of
its DataLoader workers, and the ratios ours/timm of the medians and of the fastest runs. Validation
and checkpoint writing are outside the timed epochs. ``--profile`` adds, measured in this process, each
data pipeline's CPU cost per image and the model's compute-only throughput, to explain the rows.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere: spsearch, timm_plugins and train.py live at the root
    sys.path.insert(0, str(ROOT))

from spsearch.cli import CliError, run_cli  # noqa: E402
from spsearch.io import atomic_write_json, atomic_write_text  # noqa: E402

ROWS = ('timm', 'torch', 'memory')
ROW_LABELS = {
    'timm': "timm train.py, ImageFolder (its DataLoader + prefetcher)",
    'torch': 'ours, ImageFolder, --loader torch',
    'memory': 'ours, Fashion-MNIST IDX, --loader memory',
}
TIMM_ENV = 'TIMM_TRAIN_PY'
TIMM_HOWTO = ('timm\'s train.py is not part of the timm package: clone https://github.com/huggingface/'
              'pytorch-image-models and pass --timm-train PATH/train.py (or set TIMM_TRAIN_PY)')
FASHION_CLASS_DIRS = ('0_T-shirt_top', '1_Trouser', '2_Pullover', '3_Dress', '4_Coat', '5_Sandal', '6_Shirt',
                      '7_Sneaker', '8_Bag', '9_Ankle_boot')
# Fashion-MNIST statistics, repeated for the 3 channels the model takes; given to every row explicitly
MEAN, STD = (0.2860,) * 3, (0.3530,) * 3

_TRAIN_LINE = re.compile(r'Train:\s*(\d+)\s*\[\s*(\d+)/(\d+)')
_TIME = re.compile(r'Time:\s*([0-9.]+)s,\s*([0-9.]+)/s\s*\(([0-9.]+)s,\s*([0-9.]+)/s\)')
_DATA = re.compile(r'Data:\s*([0-9.]+)\s*\(([0-9.]+)\)')


# ----------------------------------------------------------------------------------------------- data


def export_image_folder(dest: str | os.PathLike[str], *, train_samples: int, val_samples: int, seed: int = 0,
                        data_dir: str | None = None) -> Path:
    """Write a seeded Fashion-MNIST subset as an ImageFolder of PNGs (cached: an existing export is reused).

    The subset is the one ``--dataset fashion-mnist --train-samples N --val-samples M --seed S``
    trains on (``spsearch.data.datasets.subset_splits``), so the ``memory`` row sees the same images.
    Layout: ``dest/train/<k>_<class>/<i>.png`` and ``dest/validation/<k>_<class>/<i>.png`` (8-bit grey,
    28x28, as stored). The folder is built under a temporary name and renamed when complete.

    Returns:
        ``dest`` as a ``Path``.

    Raises:
        DataError: Fashion-MNIST not found, more samples asked for than it has, or a validation class
            without training images.
    """
    from PIL import Image

    from spsearch.data import DataConfig, find_fashion_mnist
    from spsearch.data.datasets import ArraySplit, load_fashion_mnist, subset_splits
    from spsearch.errors import DataError

    dest = Path(dest)
    stamp = {'dataset': 'fashion-mnist', 'train_samples': train_samples, 'val_samples': val_samples, 'seed': seed,
             'classes': list(FASHION_CLASS_DIRS)}
    marker = dest / 'export.json'
    if marker.is_file():
        try:
            done = json.loads(marker.read_text())
        except ValueError:
            done = None
        if isinstance(done, dict) and {k: done.get(k) for k in stamp} == stamp:
            return dest
    source = find_fashion_mnist(data_dir)
    cfg = DataConfig('fashion-mnist', train_samples=train_samples, val_samples=val_samples, seed=seed)
    train, val = subset_splits(cfg, *load_fashion_mnist(source), 'fashion-mnist')
    assert isinstance(train, ArraySplit) and isinstance(val, ArraySplit)
    unseen = sorted(set(val.labels.tolist()) - set(train.labels.tolist()))
    if unseen:
        raise DataError(f'the {train_samples} training images hold no image of class(es) '
                        f'{", ".join(FASHION_CLASS_DIRS[k] for k in unseen)} that validation has; '
                        'use more --train-samples')
    tmp = dest.with_name(f'.{dest.name}.partial')
    shutil.rmtree(tmp, ignore_errors=True)
    for split_name, split in (('train', train), ('validation', val)):
        images = split.images[:, 0].numpy()  # (N, 28, 28) uint8
        for i, (image, label) in enumerate(zip(images, split.labels.tolist(), strict=True)):
            folder = tmp / split_name / FASHION_CLASS_DIRS[label]  # only classes with images: empty ones are errors
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode='L').save(folder / f'{i:05d}.png')
    atomic_write_json(tmp / 'export.json', {**stamp, 'source': str(source), 'num_train': len(train),
                                            'num_val': len(val)})
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    return dest


# ----------------------------------------------------------------------------------------------- logs


def parse_timm_log(text: str) -> dict[int, dict[str, float]]:
    """timm ``train.py``'s own throughput per epoch, from the last ``Train:`` line logged in each epoch.

    The line reads ``Train: E [ i/n (p%)]  Loss: ...  Time: s, N/s  (avg_s, avg_N/s)  LR: ...  Data: s (avg_s)``;
    the averages run over the epoch's updates so far, so with ``--log-interval 1`` the last line covers
    the whole epoch.

    Returns:
        ``{epoch: {'update', 'updates', 'step_s', 'images_per_s', 'data_s'}}`` (averages of the last line;
        ``data_s`` is absent where the line has no ``Data:`` part).
    """
    out: dict[int, dict[str, float]] = {}
    for line in text.splitlines():
        head = _TRAIN_LINE.search(line)
        timing = _TIME.search(line)
        if head is None or timing is None:
            continue
        row = {'update': float(head.group(2)), 'updates': float(head.group(3)),
               'step_s': float(timing.group(3)), 'images_per_s': float(timing.group(4))}
        data = _DATA.search(line)
        if data is not None:
            row['data_s'] = float(data.group(2))
        out[int(head.group(1))] = row
    return out


def read_epoch_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The per-epoch records a child process appended (one JSON object per line); none if the file is missing."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------- child process


class TimedLoader:
    """Wraps a loader: counts the images it yields and the time spent waiting in ``next()``."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader
        self.wait_s = 0.0
        self.images = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[Any]:
        it = iter(self._loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                self.wait_s += time.perf_counter() - start
                return
            self.wait_s += time.perf_counter() - start
            self.images += len(batch[0])
            yield batch


def process_cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) of this process, and of its child processes (DataLoader workers) alive or
    exited; live children are read from ``/proc/<pid>/stat`` (Linux), so the split is 0 elsewhere."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    live = 0.0
    me, tick = str(os.getpid()), os.sysconf('SC_CLK_TCK') if hasattr(os, 'sysconf') else 100
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()  # after the command name: state, ppid, ...
        except (OSError, IndexError):
            continue  # exited meanwhile
        if len(fields) > 12 and fields[1] == me:
            live += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return own.ru_utime + own.ru_stime, live + reaped.ru_utime + reaped.ru_stime


def _append_record(path: str, record: dict[str, Any]) -> None:
    with open(path, 'a') as f:  # one short line per epoch: a crash loses at most the epoch being written
        f.write(json.dumps(record) + '\n')


def _load_module(path: str, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CliError(f'cannot load {path} as a Python module')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_child(spec: dict[str, Any]) -> int:
    """One row's training run in this process (``--child SPEC.json``): threads set, epochs timed, then run.

    ``spec`` keys: ``side`` (``timm`` or ``ours``), ``script`` (the ``train.py`` to run), ``argv``,
    ``threads``, ``record`` (JSONL file receiving one record per epoch).
    """
    import torch

    torch.set_num_threads(int(spec['threads']))
    import timm_plugins  # noqa: F401  (registers the SP models; timm's train.py does not import them)

    record_path = str(spec['record'])

    def record(epoch: int, seconds: float, loader: TimedLoader, cpu_start: tuple[float, float], **extra: Any) -> None:
        cpu_end = process_cpu_seconds()
        _append_record(record_path, {'epoch': epoch, 'seconds': seconds, 'images': loader.images,
                                     'data_wait_s': loader.wait_s, 'main_cpu_s': cpu_end[0] - cpu_start[0],
                                     'workers_cpu_s': cpu_end[1] - cpu_start[1], **extra})

    saved_argv = sys.argv
    sys.argv = [str(spec['script']), *spec['argv']]
    try:
        if spec['side'] == 'timm':
            return _run_timm(str(spec['script']), record)
        return _run_ours(str(spec['script']), list(spec['argv']), record)
    finally:
        sys.argv = saved_argv


def _run_timm(script: str, record: Any) -> int:
    import torch

    module = _load_module(script, 'timm_train_script')
    original_epoch, original_validate = module.train_one_epoch, module.validate

    def timed_train_one_epoch(epoch: int, model: Any, loader: Any, *args: Any, **kwargs: Any) -> Any:
        timed = TimedLoader(loader)
        cpu = process_cpu_seconds()
        start = time.perf_counter()
        result = original_epoch(epoch, model, timed, *args, **kwargs)
        record(epoch, time.perf_counter() - start, timed, cpu)
        return result

    def validate_on_run_device(model: Any, loader: Any, loss_fn: Any, args: Any, *rest: Any, **kwargs: Any) -> Any:
        # train.py of timm 0.9 calls validate() without device=, whose default cuda makes it call
        # torch.cuda.synchronize() on a CPU run; later versions pass the run's device, as done here
        if not rest:
            kwargs.setdefault('device', torch.device(args.device))
        return original_validate(model, loader, loss_fn, args, *rest, **kwargs)

    module.train_one_epoch = timed_train_one_epoch
    module.validate = validate_on_run_device
    module.main()
    return 0


def _run_ours(script: str, argv: list[str], record: Any) -> int:
    from spsearch.train import loop

    original_epoch = loop._Run.train_epoch

    def timed_train_epoch(self: Any, epoch: int) -> tuple[dict[str, float], bool]:
        real = self.loaders.train
        timed = TimedLoader(real)
        self.loaders.train = timed
        cpu = process_cpu_seconds()
        start = time.perf_counter()
        try:
            metrics, bad = original_epoch(self, epoch)
        finally:
            self.loaders.train = real
        record(epoch, time.perf_counter() - start, timed, cpu, self_images_per_s=metrics.get('images_per_s'))
        return metrics, bad

    loop._Run.train_epoch = timed_train_epoch  # type: ignore[method-assign]
    try:
        module = _load_module(script, 'spsearch_train_script')
        return int(run_cli(lambda: module.main(argv)))
    finally:
        loop._Run.train_epoch = original_epoch  # type: ignore[method-assign]


# ----------------------------------------------------------------------------------------------- commands


@dataclass
class Setup:
    """What every row shares."""

    model: str
    model_kwargs: list[str]
    batch_size: int
    img_size: int
    epochs: int
    workers: int
    threads: int
    seed: int
    lr: float
    momentum: float
    weight_decay: float
    train_samples: int
    val_samples: int
    image_folder: Path
    fashion_dir: str | None
    device: str = 'cpu'


def timm_argv(s: Setup, config_yaml: Path, output: Path, name: str) -> list[str]:
    """Arguments for timm's ``train.py`` matching our loop's defaults: SGD (Nesterov, as timm's ``sgd``),
    per-step cosine schedule without warm-up, no label smoothing, RandomResizedCrop + flip, no colour jitter,
    bilinear resizing, validation crop 0.875, prefetcher on."""
    argv = ['-c', str(config_yaml), '--data-dir', str(s.image_folder), '--model', s.model, '--num-classes', '10',
            '--input-size', '3', str(s.img_size), str(s.img_size), '--mean', *map(str, MEAN), '--std', *map(str, STD),
            '-b', str(s.batch_size), '-vb', str(2 * s.batch_size), '--epochs', str(s.epochs),
            '--opt', 'sgd', '--lr', str(s.lr), '--momentum', str(s.momentum), '--weight-decay', str(s.weight_decay),
            '--sched', 'cosine', '--sched-on-updates', '--warmup-epochs', '0', '--smoothing', '0',
            '--color-jitter', '0', '--train-interpolation', 'bilinear', '--interpolation', 'bilinear',
            '--crop-pct', '0.875', '-j', str(s.workers), '--seed', str(s.seed), '--log-interval', '1',
            '--checkpoint-hist', '1', '--output', str(output), '--experiment', name]
    if s.model_kwargs:
        argv += ['--model-kwargs', *s.model_kwargs]
    return argv


def ours_argv(s: Setup, row: str, output: Path) -> list[str]:
    """Arguments for our ``train.py`` (its defaults are the optimiser settings ``timm_argv`` mirrors)."""
    argv = ['--model', s.model, '--batch-size', str(s.batch_size), '--img-size', str(s.img_size),
            '--epochs', str(s.epochs), '--opt', 'sgd', '--lr', str(s.lr), '--momentum', str(s.momentum),
            '--weight-decay', str(s.weight_decay), '--sched', 'cosine', '--warmup-epochs', '0',
            '--label-smoothing', '0', '--workers', str(s.workers), '--seed', str(s.seed),
            '--mean', *map(str, MEAN), '--std', *map(str, STD), '--output', str(output), '--no-progress']
    if row == 'torch':
        argv += ['--dataset', 'imagefolder', '--data-dir', str(s.image_folder), '--loader', 'torch']
    else:
        argv += ['--dataset', 'fashion-mnist', '--train-samples', str(s.train_samples),
                 '--val-samples', str(s.val_samples), '--loader', 'memory']
        if s.fashion_dir:
            argv += ['--data-dir', s.fashion_dir]
    if s.model_kwargs:
        argv += ['--model-kwargs', *s.model_kwargs]
    return argv


# ----------------------------------------------------------------------------------------------- runs


@dataclass
class RunResult:
    """One row's run in one round."""

    row: str
    variant: str
    round: int
    epochs: list[dict[str, Any]]
    self_reported: list[float] = field(default_factory=list)
    log: str = ''
    load: tuple[float, float] = (0.0, 0.0)

    def measured(self) -> list[dict[str, Any]]:
        """The epochs counted: all but the first when there are several."""
        return self.epochs[1:] if len(self.epochs) > 1 else self.epochs

    @property
    def images_per_s(self) -> float:
        m = self.measured()
        return sum(e['images'] for e in m) / sum(e['seconds'] for e in m)

    @property
    def data_wait_share(self) -> float:
        m = self.measured()
        return sum(e['data_wait_s'] for e in m) / sum(e['seconds'] for e in m)

    def cpu_ms_per_image(self, key: str) -> float | None:
        """``main_cpu_s`` (the training process) or ``workers_cpu_s`` (its DataLoader workers) per image."""
        m = self.measured()
        if any(key not in e for e in m):
            return None
        return 1e3 * sum(e[key] for e in m) / sum(e['images'] for e in m)

    @property
    def self_images_per_s(self) -> float | None:
        values = self.self_reported[1:] if len(self.self_reported) > 1 else self.self_reported
        return statistics.fmean(values) if values else None


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for key in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
        env[key] = str(threads)
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT), *filter(None, [env.get('PYTHONPATH')])])
    return env


def run_row(row: str, variant: str, rnd: int, s: Setup, work: Path, timm_script: Path | None,
            timeout: float) -> RunResult:
    """Run one row in a fresh process and collect its epoch records (and, for timm, its own log figures)."""
    name = f'r{rnd}-{variant}-{row}'
    run_dir = work / 'runs' / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    record = run_dir / 'epochs.jsonl'
    spec: dict[str, Any]
    if row == 'timm':
        assert timm_script is not None
        config = run_dir / 'timm_device.yaml'
        atomic_write_text(config, f'device: {s.device}\n')
        spec = {'side': 'timm', 'script': str(timm_script), 'argv': timm_argv(s, config, run_dir / 'output', name)}
    else:
        spec = {'side': 'ours', 'script': str(ROOT / 'train.py'), 'argv': ours_argv(s, row, run_dir / 'output')}
    spec.update(threads=s.threads, record=str(record))
    spec_path = run_dir / 'spec.json'
    atomic_write_json(spec_path, spec)
    log_path = run_dir / 'log.txt'
    load_before = os.getloadavg()[0]  # other work on the machine, for judging the noise
    with open(log_path, 'w') as log:
        try:
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()), '--child', str(spec_path)],
                                  stdout=log, stderr=subprocess.STDOUT, env=_child_env(s.threads), cwd=ROOT,
                                  timeout=timeout)
            rc = done.returncode
        except subprocess.TimeoutExpired:
            rc = -1
    text = log_path.read_text(errors='replace')
    epochs = read_epoch_records(record)
    if rc != 0 or len(epochs) != s.epochs:
        last = next((ln for ln in reversed(text.strip().splitlines()) if ln.strip()), '(no output)')
        what = f'timed out after {timeout:.0f}s' if rc == -1 else f'exit code {rc}'
        raise CliError(f'the {row} run ({variant}, round {rnd}) failed ({what}, {len(epochs)}/{s.epochs} epochs '
                       f'timed): {last.strip()[:300]}; full log: {log_path}')
    if row == 'timm':
        own = parse_timm_log(text)
        self_reported = [own[e['epoch']]['images_per_s'] for e in epochs if e['epoch'] in own]
    else:
        self_reported = [e['self_images_per_s'] for e in epochs if e.get('self_images_per_s')]
    return RunResult(row, variant, rnd, epochs, self_reported, str(log_path), (load_before, os.getloadavg()[0]))


# ----------------------------------------------------------------------------------------------- profile


def _cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (DataLoader workers, once shut down)."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timm_train_loader(folder: Path, batch_size: int, img_size: int, seed: int, workers: int) -> Any:
    """The training loader timm's ``train.py`` builds for the ``timm`` row (same library calls, same arguments)."""
    import torch
    from timm.data import create_dataset, create_loader

    dataset = create_dataset('', root=str(folder), split='train', is_training=True, batch_size=batch_size, seed=seed)
    return create_loader(dataset, input_size=(3, img_size, img_size), batch_size=batch_size, is_training=True,
                         use_prefetcher=True, no_aug=False, re_prob=0.0, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                         hflip=0.5, vflip=0.0, color_jitter=0.0, auto_augment=None, interpolation='bilinear',
                         mean=MEAN, std=STD, num_workers=workers, persistent_workers=False,
                         device=torch.device('cpu'))


def _our_train_loader(row: str, folder: Path, batch_size: int, img_size: int, seed: int, workers: int,
                      train_samples: int, data_dir: str | None) -> Any:
    from spsearch.data import DataConfig, create_loaders

    if row == 'torch':
        cfg = DataConfig('imagefolder', data_dir=str(folder), loader='torch', batch_size=batch_size, workers=workers,
                         seed=seed)
    else:
        cfg = DataConfig('fashion-mnist', data_dir=data_dir, loader='memory', batch_size=batch_size, workers=workers,
                         seed=seed, train_samples=train_samples)
    loader = create_loaders(cfg, input_size=(3, img_size, img_size), mean=MEAN, std=STD).train
    loader.set_epoch(1)
    return loader


class _Uint8FileLoader:
    """What-if, for the profile only: our ``TorchFileLoader`` with timm's prefetcher-style transform (its
    workers send uint8 CHW arrays, not normalised float tensors) and the batch normalised afterwards in
    this process, as timm's ``PrefetchLoader`` does."""

    def __init__(self, folder: Path, batch_size: int, img_size: int, seed: int, workers: int) -> None:
        import torch
        from timm.data import create_transform

        from spsearch.data import scan_image_folder
        from spsearch.data.loaders import TorchFileLoader

        transform = create_transform((3, img_size, img_size), is_training=True, color_jitter=0.0,
                                     interpolation='bilinear', use_prefetcher=True)
        self.loader = TorchFileLoader(scan_image_folder(folder).train, transform, chans=3, batch_size=batch_size,
                                      train=True, seed=seed, workers=workers)
        self.loader.set_epoch(1)
        self.mean = torch.tensor([255 * m for m in MEAN]).view(1, 3, 1, 1)
        self.std = torch.tensor([255 * v for v in STD]).view(1, 3, 1, 1)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        for images, targets in self.loader:
            yield images.float().sub_(self.mean).div_(self.std), targets


def data_cpu_cost(make_loader: Any, batches: int) -> tuple[float, int]:
    """CPU seconds (this process + its workers) to produce ``batches`` training batches, and the images.

    The loader is built (not counted: a folder scan, reading the IDX files), then iterated (workers start
    here) and dropped, so its worker processes have exited, and are counted in ``RUSAGE_CHILDREN``,
    when the clock is read again.
    """
    import gc

    loader = make_loader()
    start = _cpu_seconds()
    images = 0
    for i, (x, _) in enumerate(loader):
        images += len(x)
        if i + 1 == batches:
            break
    del loader, x
    gc.collect()
    return _cpu_seconds() - start, images


def compute_only_images_per_s(model_name: str, model_kwargs: dict[str, Any], batch_size: int, img_size: int,
                              steps: int) -> float:
    """Training steps (forward, backward, SGD) of the model on one fixed batch: the ceiling of both loops."""
    import timm
    import torch

    import timm_plugins  # noqa: F401

    model = timm.create_model(model_name, num_classes=10, **model_kwargs)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x, y = torch.randn(batch_size, 3, img_size, img_size), torch.randint(0, 10, (batch_size,))
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times[2:])


def profile(args: argparse.Namespace, folder: Path, variants: list[list[str]]) -> str:
    """Where the time of the ImageFolder rows goes: the data pipelines' CPU cost per image and the model's
    compute-only throughput, each measured interleaved ``--profile-repeats`` times, medians."""
    import torch

    from spsearch.cli import parse_kwargs

    batches = max(1, min(args.profile_batches, args.train_samples // args.batch_size))
    makers = {
        'timm': lambda: _timm_train_loader(folder, args.batch_size, args.img_size, args.seed, 1),
        'torch': lambda: _our_train_loader('torch', folder, args.batch_size, args.img_size, args.seed, 1,
                                           args.train_samples, args.data_dir),
        'memory': lambda: _our_train_loader('memory', folder, args.batch_size, args.img_size, args.seed, 0,
                                            args.train_samples, args.data_dir),
        'torch-uint8': lambda: _Uint8FileLoader(folder, args.batch_size, args.img_size, args.seed, 1),
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU seconds per image, as one DataLoader worker spends them
    cost: dict[str, list[float]] = {k: [] for k in makers}
    try:
        for _ in range(args.profile_repeats):
            for name, make in makers.items():
                seconds, images = data_cpu_cost(make, batches)
                cost[name].append(1e3 * seconds / images)
    finally:
        torch.set_num_threads(threads)
    torch.set_num_threads(args.threads)
    compute = {_variant_name(kw): statistics.median(
        compute_only_images_per_s(args.model, parse_kwargs(kw), args.batch_size, args.img_size, 10)
        for _ in range(args.profile_repeats)) for kw in variants}
    lines = [f'Data pipelines, CPU time per training image (this process + its DataLoader worker, 1 torch thread; '
             f'{batches} batches of {args.batch_size}, median of {args.profile_repeats} interleaved repeats):', '',
             '| pipeline | CPU ms / image |', '|---|---:|']
    labels = {**ROW_LABELS, 'torch-uint8': 'what-if: ours, ImageFolder, --loader torch with uint8 from the '
              'workers and the batch normalised after (not shipped)'}
    lines += [f'| {labels[k]} | {statistics.median(v):.3f} |' for k, v in cost.items()]
    lines += ['', f'Model alone (forward + backward + SGD on one fixed batch, {args.threads} torch threads, '
              f'no data loading; median of {args.profile_repeats}): '
              + ', '.join(f'{k} {v:.1f} img/s' for k, v in compute.items())]
    return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------- summary


def summarize(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Per (variant, row): medians over rounds, and ratios ours/timm of the medians (and of the fastest runs)
    where timm ran."""
    rows: list[dict[str, Any]] = []
    for variant in dict.fromkeys(r.variant for r in results):
        timm_median = timm_best = None
        for row in ROWS:
            runs = [r for r in results if r.variant == variant and r.row == row]
            if not runs:
                continue
            ips = [r.images_per_s for r in runs]
            selfs = [v for v in (r.self_images_per_s for r in runs) if v is not None]
            entry: dict[str, Any] = {'variant': variant, 'row': row, 'pipeline': ROW_LABELS[row], 'rounds': len(runs),
                     'images_per_s': statistics.median(ips), 'images_per_s_min': min(ips),
                     'images_per_s_max': max(ips), 'images_per_s_runs': ips,
                     'self_reported_images_per_s': statistics.median(selfs) if selfs else None,
                     'data_wait_share': statistics.median(r.data_wait_share for r in runs)}
            for key, name in (('main_cpu_s', 'main_cpu_ms_per_image'), ('workers_cpu_s', 'workers_cpu_ms_per_image')):
                values = [v for v in (r.cpu_ms_per_image(key) for r in runs) if v is not None]
                entry[name] = statistics.median(values) if values else None
            if row == 'timm':
                timm_median, timm_best = entry['images_per_s'], entry['images_per_s_max']
            entry['ratio_vs_timm'] = entry['images_per_s'] / timm_median if timm_median else None
            # other work on a shared machine only ever slows a run down: the fastest runs are the least disturbed
            entry['ratio_best_vs_timm'] = entry['images_per_s_max'] / timm_best if timm_best else None
            rows.append(entry)
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of ``summarize``'s rows."""
    lines = ['| model | row | images/s (median) | min - max | own figure | waiting for data | CPU ms / image: '
             'training process + workers | ours / timm (medians) | ours / timm (fastest runs) |',
             '|---|---|---:|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        own = f"{r['self_reported_images_per_s']:.1f}" if r['self_reported_images_per_s'] else '-'
        ratio = f"{r['ratio_vs_timm']:.2f}x" if r['ratio_vs_timm'] and r['row'] != 'timm' else '-'
        best = f"{r['ratio_best_vs_timm']:.2f}x" if r['ratio_best_vs_timm'] and r['row'] != 'timm' else '-'
        main_cpu, workers_cpu = r.get('main_cpu_ms_per_image'), r.get('workers_cpu_ms_per_image')
        cpu = f'{main_cpu:.2f} + {workers_cpu:.2f}' if main_cpu is not None and workers_cpu is not None else '-'
        lines.append(f"| {r['variant']} | {r['pipeline']} | {r['images_per_s']:.1f} | "
                     f"{r['images_per_s_min']:.1f} - {r['images_per_s_max']:.1f} | {own} | "
                     f"{100 * r['data_wait_share']:.0f}% | {cpu} | {ratio} | {best} |")
    return '\n'.join(lines)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _variant_name(model_kwargs: list[str]) -> str:
    return ','.join(model_kwargs) if model_kwargs else 'defaults'


def _resolve_timm_script(value: str | None) -> Path:
    value = value or os.environ.get(TIMM_ENV)
    if not value:
        raise CliError(f'no timm train.py given; {TIMM_HOWTO}')
    path = Path(value).expanduser()
    if not path.is_file():
        raise CliError(f'timm train.py not found at {path}; {TIMM_HOWTO}')
    text = path.read_text(errors='replace')
    if 'def train_one_epoch' not in text or 'def main' not in text:
        raise CliError(f'{path} is not timm\'s train.py (no train_one_epoch/main); {TIMM_HOWTO}')
    return path.resolve()


def build_parser() -> argparse.ArgumentParser:
    from spsearch.cli import ArgumentParser

    parser = ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--timm-train', default=None, metavar='PATH',
                        help=f"timm's train.py from a pytorch-image-models checkout (default: ${TIMM_ENV})")
    parser.add_argument('--timm-train-source', default='', metavar='TEXT',
                        help='where that train.py came from (repository, commit), for the report')
    parser.add_argument('--rows', nargs='+', default=list(ROWS), choices=ROWS)
    parser.add_argument('--model', default='sp_resnet20')
    parser.add_argument('--variants', nargs='+', default=['sp_alpha=0.5,sp_groups=2', 'sp_alpha=vanilla'],
                        metavar='K=V[,K=V]', help="model kwargs per variant ('defaults' for none)")
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--img-size', type=int, default=32)
    parser.add_argument('--epochs', type=int, default=2, help='per run; all but the first are timed when > 1')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--train-samples', type=int, default=5000)
    parser.add_argument('--val-samples', type=int, default=1000)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--workers', type=int, default=2, help='DataLoader worker processes (both sides)')
    parser.add_argument('--threads', type=int, default=2, help='torch threads of every training process')
    parser.add_argument('--lr', type=float, default=0.1)
    parser.add_argument('--momentum', type=float, default=0.9)
    parser.add_argument('--weight-decay', type=float, default=5e-4)
    parser.add_argument('--data-dir', default=None, help='Fashion-MNIST IDX folder (default: its standard places)')
    parser.add_argument('--work-dir', default=str(ROOT / 'runs' / 'train_throughput'),
                        help='ImageFolder export (cached) and run folders')
    parser.add_argument('--timeout', type=float, default=1800, help='seconds per run')
    parser.add_argument('--json', action='store_true', help='print one JSON object per row')
    parser.add_argument('--report', default=None, metavar='FILE', help='append a markdown section to FILE')
    parser.add_argument('--profile', action='store_true',
                        help="also measure, in this process, the data pipelines' CPU cost per image and the "
                             "model's compute-only throughput (explains the rows)")
    parser.add_argument('--profile-only', action='store_true', help='only the --profile measurements, no rows')
    parser.add_argument('--profile-batches', type=int, default=20, help='batches per data-pipeline measurement')
    parser.add_argument('--profile-repeats', type=int, default=3)
    parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
    return parser


def _check(args: argparse.Namespace) -> None:
    for name in ('batch_size', 'img_size', 'epochs', 'rounds', 'train_samples', 'val_samples', 'threads',
                 'profile_batches', 'profile_repeats'):
        if getattr(args, name) < 1:
            raise CliError(f'--{name.replace("_", "-")} {getattr(args, name)} is invalid: it must be >= 1')
    if args.workers < 0:
        raise CliError(f'--workers {args.workers} is invalid: it must be >= 0')
    if args.batch_size > args.train_samples:
        raise CliError(f'--batch-size {args.batch_size} is larger than --train-samples {args.train_samples}; '
                       'lower the batch size or train on more samples')
    for variant in args.variants:
        if variant != 'defaults' and any('=' not in kv for kv in variant.split(',')):
            raise CliError(f'--variants takes K=V[,K=V] per variant (or defaults), got {variant!r}')


def _run_rows(args: argparse.Namespace, rows: list[str], variants: list[list[str]], folder: Path, work: Path,
              timm_script: Path | None) -> tuple[str, str, list[dict[str, Any]]]:
    import torch

    device = 'cuda' if torch.cuda.is_available() else 'cpu'  # where our train.py (accelerate) trains; timm follows
    results: list[RunResult] = []
    for rnd in range(1, args.rounds + 1):
        for kwargs in variants:
            setup = Setup(args.model, kwargs, args.batch_size, args.img_size, args.epochs, args.workers, args.threads,
                          args.seed, args.lr, args.momentum, args.weight_decay, args.train_samples, args.val_samples,
                          folder, args.data_dir, device)
            for row in rows:
                result = run_row(row, _variant_name(kwargs), rnd, setup, work, timm_script, args.timeout)
                results.append(result)
                own = result.self_images_per_s
                print(f'round {rnd}/{args.rounds}  {args.model} {_variant_name(kwargs)}  {row:6s}  '
                      f'{result.images_per_s:7.1f} img/s (own figure {own if own is None else f"{own:.1f}"}, '
                      f'waiting for data {100 * result.data_wait_share:.0f}%, load average '
                      f'{result.load[0]:.1f} -> {result.load[1]:.1f})', flush=True)
    summary = summarize(results)
    timed = f'epochs 2-{args.epochs} of each run' if args.epochs > 1 else 'the single epoch of each run'
    loads = [v for r in results for v in r.load]
    setup_line = (f'{args.model}, batch {args.batch_size}, {args.img_size}x{args.img_size}x3, fp32, {device}, '
                  f'{args.threads} torch threads, {args.workers} DataLoader workers; {args.train_samples} train / '
                  f'{args.val_samples} val Fashion-MNIST images (seed {args.seed}); {args.epochs} epochs per run, '
                  f'{args.rounds} rounds alternating {" ".join(rows)}; images/s over {timed}; 1-minute load average '
                  f'at the start/end of the runs {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} logical CPUs')
    return setup_line, format_table(summary), summary


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        return run_child(json.loads(Path(args.child).read_text()))
    _check(args)
    rows = [] if args.profile_only else [r for r in ROWS if r in args.rows]
    timm_script = _resolve_timm_script(args.timm_train) if 'timm' in rows else None
    work = Path(args.work_dir).expanduser().resolve()
    folder = work / f'fashion-mnist-png-n{args.train_samples}-v{args.val_samples}-s{args.seed}'
    do_profile = args.profile or args.profile_only
    if do_profile or 'timm' in rows or 'torch' in rows:
        started = time.perf_counter()
        export_image_folder(folder, train_samples=args.train_samples, val_samples=args.val_samples, seed=args.seed,
                            data_dir=args.data_dir)
        print(f'ImageFolder: {folder} ({time.perf_counter() - started:.1f}s)', flush=True)
    variants = [[] if v == 'defaults' else v.split(',') for v in args.variants]
    text = ''
    summary: list[dict[str, Any]] = []
    if rows:
        setup_line, table, summary = _run_rows(args, rows, variants, folder, work, timm_script)
        text = f'- Setup: {setup_line}\n\n{table}\n'
        print(f'\n{setup_line}\n{table}')
    if do_profile:
        profiled = profile(args, folder, variants)
        text += ('\n' if text else '') + profiled + '\n'
        print(f'\n{profiled}')
    if args.json:
        for entry in summary:
            print(json.dumps(entry))
    if args.report:
        from spsearch.provenance import markdown_header, provenance

        timm_line = ''
        if timm_script is not None:
            timm_line = (f'- timm train.py: `{timm_script}` (sha256 `{_sha256(timm_script)[:16]}`'
                         + (f'; {args.timm_train_source}' if args.timm_train_source else '') + '), run unmodified\n')
        title = 'Training throughput: our loop vs timm train.py' if rows else 'Training throughput: profile'
        section = (markdown_header(f'{title} ({args.model})', provenance()).replace('# ', '## ', 1)
                   + timm_line + ('' if rows else '\n') + text)
        path = Path(args.report)
        old = path.read_text() if path.is_file() else ''
        atomic_write_text(path, old + ('\n' if old else '') + section)
        print(f'report appended to {path}')
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
