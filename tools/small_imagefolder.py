#!/usr/bin/env python3
"""Regenerate ``results/small_imagefolder.md``: does ``train.py``'s default augmentation help small images?

An ImageFolder of real 28x28 images (a seeded Fashion-MNIST subset written out as PNGs by
``benchmarks/train_throughput.export_image_folder``) is trained with ``train.py``'s default settings
(the augmentation it picks from the image size: pad-and-crop + flip below 64 px) and, paired by seed,
the same run with ``--no-augment``. Only ``--epochs``, ``--seed``, the data and the output differ from
the defaults. The report gives, per training length, each variant's final top-1 (mean over seeds, 95 % t
interval) and the paired difference default - off with its verdict (``spsearch.search.stats.compare``):
augmentation is a regulariser, so whether it pays depends on how long the run trains.

Usage: ``python tools/small_imagefolder.py [--epochs 4 8 30] [--seeds 0 1 2] [--models sp_resnet20:vanilla]``

Each run is one ``train.py`` subprocess in its own folder, resumed (``--resume``) or reused when finished,
so an interrupted table continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.train_throughput import export_image_folder  # noqa: E402
from spsearch.cli import run_cli  # noqa: E402
from spsearch.io import atomic_write_text  # noqa: E402
from spsearch.provenance import markdown_header, provenance  # noqa: E402
from spsearch.search.stats import compare, estimate  # noqa: E402
from spsearch.train import TrainConfig  # noqa: E402

VARIANTS = {'default': [], 'augmentation off': ['--no-augment']}
"""Variant label -> the train.py flags that make it (beyond the shared ones)."""


def run_one(model: str, alpha: str, flags: list[str], seed: int, epochs: int, data: Path, out: Path) -> dict[str, Any]:
    """One ``train.py`` run (reused when its ``summary.json`` says it finished); its summary."""
    summary = out / 'summary.json'
    if summary.exists():
        done = json.loads(summary.read_text())
        if done.get('epochs_run') == epochs and done.get('stopped_by') is None:
            return done
    cmd = [sys.executable, 'train.py', '--model', model, '--model-kwargs', f'sp_alpha={alpha}', '--dataset',
           'imagefolder', '--data-dir', str(data), '--epochs', str(epochs), '--seed', str(seed), '--output', str(out),
           '--no-progress', *flags]
    if (out / 'last.pth').exists():
        cmd.append('--resume')
    print('+', ' '.join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    return json.loads(summary.read_text())


def render(rows: list[dict[str, Any]], args: argparse.Namespace, prov: dict[str, Any]) -> str:
    bold = [f'**{e}**' for e in args.epochs]
    epochs = ' and '.join([', '.join(bold[:-1]), bold[-1]] if len(bold) > 1 else bold)
    lines = [markdown_header('Small-image ImageFolder: default augmentation vs none', prov), '',
             f'A real ImageFolder of 28x28 greyscale PNGs: a seeded Fashion-MNIST subset ({args.train_samples:,} '
             f'training / {args.val_samples:,} validation images, export seed 0) written out by '
             '`benchmarks/train_throughput.export_image_folder`. Each run is `train.py --dataset imagefolder` with '
             f'the defaults (its augmentation chosen from the image size: pad-and-crop + flip) for {epochs} '
             f"epochs, and the same run with `--no-augment`; seeds {', '.join(map(str, args.seeds))} pair the "
             'runs (initialisation, order). Top-1 on the validation folder after the last epoch; mean with its '
             '95 % t interval; the difference is paired by seed. "matches" means the interval holds zero.', '',
             '| model | epochs | variant | top-1 % mean ± 95 % CI | per seed | wall s per run (mean) |',
             '|---|---:|---|---|---|---:|']
    for row in rows:
        for label, runs in row['runs'].items():
            tops = [r['final_top1'] for r in runs]
            wall = sum(r.get('wall_s', 0.0) for r in runs) / len(runs)
            lines.append(f"| {row['name']} | {row['epochs']} | {label} | {estimate(tops)} | "
                         f"{', '.join(f'{t:.2f}' for t in tops)} | {wall:.0f} |")
    lines += ['', '| model | epochs | default - off (points) ± 95 % CI | verdict |', '|---|---:|---|---|']
    for row in rows:
        tops = {label: [r['final_top1'] for r in runs] for label, runs in row['runs'].items()}
        comparison = compare(tops['default'], tops['augmentation off'])
        lines.append(f"| {row['name']} | {row['epochs']} | {comparison.difference} | "
                     f"default {comparison.verdict} off |")
    commits = sorted({str(r.get('commit', '?'))[:7] for row in rows for runs in row['runs'].values() for r in runs})
    lines += ['', f"The runs' own commits (`summary.json`; a finished run is reused by a later invocation): "
              f"{', '.join(f'`{c}`' for c in commits)}.", '',
              f'Regenerate with `{" ".join(["python", "tools/small_imagefolder.py", *sys.argv[1:]])}` '
              '(finished runs are reused; delete the output folder to re-run).', '']
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--epochs', type=int, nargs='+', default=[4, 8, TrainConfig().epochs],
                        help="training lengths; each gets its own paired table rows (default: 4, 8 and train.py's "
                             'default length)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--models', nargs='+', default=['sp_resnet20:vanilla'], metavar='MODEL:ALPHA',
                        help='timm model and its sp_alpha, e.g. sp_resnet20:1/2')
    parser.add_argument('--train-samples', type=int, default=8000)
    parser.add_argument('--val-samples', type=int, default=2000)
    parser.add_argument('--output', default='runs/small_imagefolder')
    parser.add_argument('--report', default='results/small_imagefolder.md')
    args = parser.parse_args(argv)
    if min(args.epochs) < 1:
        parser.error('--epochs must be >= 1, e.g. --epochs 4 8 30')
    if len(set(args.seeds)) < 2:
        parser.error('--seeds needs >= 2 distinct seeds for an interval, e.g. 0 1 2')
    prov = provenance()
    out = Path(args.output)
    data = export_image_folder(out / 'data', train_samples=args.train_samples, val_samples=args.val_samples)
    rows = []
    for epochs in args.epochs:
        for spec in args.models:
            model, _, alpha = spec.partition(':')
            alpha = alpha or 'vanilla'
            name = f'{model} (sp_alpha {alpha})'
            tag = f"{model}-{alpha.replace('/', '-')}-e{epochs}"
            runs = {label: [run_one(model, alpha, flags, seed, epochs, data,
                                    out / f"{tag}-{label.replace(' ', '_')}-s{seed}")
                            for seed in args.seeds] for label, flags in VARIANTS.items()}
            rows.append({'name': name, 'epochs': epochs, 'runs': runs})
    atomic_write_text(ROOT / args.report, render(rows, args, prov))
    print(f'wrote {args.report}')
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
