#!/usr/bin/env python3
"""Regenerate ``results/fashion_mnist.md``: vanilla SP-ResNet-20 against alpha = 1/2, 1/4, 1/8 on Fashion-MNIST.

Usage: ``python tools/fashion_mnist.py [--epochs 3] [--seeds 0 1] [--output runs/fashion_mnist]``

Every (alpha, seed) run is one ``train.py -c configs/train/fashion_mnist.yaml`` subprocess on the full
60k/10k Fashion-MNIST with the same recipe and seeds, differing only in ``sp_alpha``; each run goes
to its own folder and is resumed (``--resume``) or skipped when already finished, so an interrupted
table continues where it stopped. The table reports the mean and spread of the final top-1 over the
seeds, the parameters and MACs of the model at its 32x32 input, and the training images/s measured
by the loop (data loading included), all read back from each run's ``summary.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spsearch.cli import run_cli  # noqa: E402
from spsearch.io import atomic_write_text  # noqa: E402
from spsearch.provenance import markdown_header, provenance  # noqa: E402

CONFIG = 'configs/train/fashion_mnist.yaml'
ALPHAS = ('vanilla', '1/2', '1/4', '1/8')


def run_one(alpha: str, seed: int, epochs: int, out: Path, extra: list[str]) -> dict[str, Any]:
    summary = out / 'summary.json'
    if summary.exists():
        done = json.loads(summary.read_text())
        if done.get('epochs_run') == epochs and done.get('stopped_by') is None:
            return done
    cmd = [sys.executable, 'train.py', '-c', CONFIG, '--model-kwargs', f'sp_alpha={alpha}', '--seed', str(seed),
           '--epochs', str(epochs), '--output', str(out), '--resume', '--no-progress', *extra]
    print('+', ' '.join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    return json.loads(summary.read_text())


def render(rows: list[dict[str, Any]], epochs: int, seeds: list[int], prov: dict[str, Any]) -> str:
    lines = [markdown_header('Fashion-MNIST: vanilla ResNet-20 vs SPConv alpha = 1/2, 1/4, 1/8', prov), '']
    lines.append(
        f'Full Fashion-MNIST (60,000 train / 10,000 test images, the real IDX files), `{CONFIG}` '
        f'(SGD momentum 0.9, lr 0.1 cosine with 1 warm-up epoch, weight decay 5e-4, batch 128, crop + flip), '
        f'**{epochs} epochs** (short: this is a 2-core CPU), seeds {", ".join(map(str, seeds))}. Top-1 on the '
        'test set after the last epoch: mean over the seeds (min-max). MACs per image at the 32x32 input '
        '(1e6 multiply-accumulates, the paper\'s "FLOPs"). Images/s: training throughput of the loop '
        '(data loading included), mean over the seeds\' epochs, fp32, one process.')
    lines += ['', '| model | sp_alpha | top-1 % (mean) | min-max | params | MMACs | train img/s |',
              '|---|---|---:|---:|---:|---:|---:|']
    for row in rows:
        lines.append(f"| sp_resnet20 | {row['alpha']} | {row['mean']:.2f} | {row['min']:.2f}-{row['max']:.2f} | "
                     f"{row['params']:,} | {row['mmacs']:.2f} | {row['img_s']:.0f} |")
    lines += ['', 'Per run:', '', '| sp_alpha | seed | top-1 % | best top-1 % | img/s | wall s | output |',
              '|---|---:|---:|---:|---:|---:|---|']
    for row in rows:
        for run in row['runs']:
            lines.append(f"| {row['alpha']} | {run['config']['seed']} | {run['final_top1']:.2f} | "
                         f"{run['best_top1']:.2f} | {run['images_per_s']:.0f} | {run['wall_s']:.0f} | "
                         f"`{run['output']}` |")
    lines += ['', f'Regenerate with `python tools/fashion_mnist.py --epochs {epochs} --seeds '
              f'{" ".join(map(str, seeds))}` (finished runs are reused; delete the output folder to re-run).', '']
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    parser.add_argument('--alphas', nargs='+', default=list(ALPHAS))
    parser.add_argument('--output', default='runs/fashion_mnist')
    parser.add_argument('--report', default='results/fashion_mnist.md')
    parser.add_argument('train_args', nargs='*', help='extra train.py flags (after --)')
    args = parser.parse_args(argv)
    prov = provenance()
    rows = []
    for alpha in args.alphas:
        runs = [run_one(alpha, seed, args.epochs, Path(args.output) / f"alpha{alpha.replace('/', '-')}-seed{seed}",
                        args.train_args) for seed in args.seeds]
        tops = [r['final_top1'] for r in runs]
        rows.append({'alpha': alpha, 'runs': runs, 'mean': statistics.mean(tops), 'min': min(tops),
                     'max': max(tops), 'params': runs[0]['params'], 'mmacs': runs[0]['gmacs'] * 1e3,
                     'img_s': statistics.mean(r['images_per_s'] for r in runs)})
    atomic_write_text(ROOT / args.report, render(rows, args.epochs, args.seeds, prov))
    print(f'wrote {args.report}')
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
