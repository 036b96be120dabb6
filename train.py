#!/usr/bin/env python3
"""Train (or evaluate) any timm model, SP models included, with accelerate.

Examples:
    accelerate launch train.py --model sp_resnet20 --dataset fashion-mnist --epochs 30 --output runs/x
    python train.py -c configs/train/cifar_paper.yaml --data-dir /data/cifar-10-batches-py
    python train.py --model sp_resnet20 --model-kwargs sp_alpha=vanilla --epochs 2 --train-samples 5000
    python train.py --output runs/x --resume                # continue an interrupted run exactly
    python train.py --model sp_resnet20 --evaluate-only --checkpoint runs/x/model.safetensors
    accelerate launch --multi_gpu --num_processes 2 train.py ...   # DDP (on CPU too: gloo)

Options come from ``-c FILE.yaml`` (keys are the option names) and are overridden by flags; the
resolved configuration is written to ``<output>/args.yaml``, which ``-c`` takes back. The output
folder gets ``log.csv`` (one row per epoch), ``last.pth``/``best.pth`` (exact-resume checkpoints),
``model.safetensors`` (loadable with ``timm.create_model(name, pretrained=True,
pretrained_cfg_overlay=dict(file=...))``) and ``summary.json``.
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import Any

from spsearch.cli import ArgumentParser, parse_kwargs, parse_with_config, run_cli
from spsearch.train.config import (
    DATASET_CHOICES,
    LOADER_CHOICES,
    MIXED_PRECISION_CHOICES,
    OPT_CHOICES,
    SCHED_CHOICES,
    TrainConfig,
)

D = TrainConfig()


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-c', '--config', metavar='FILE', help='YAML file of option: value (flags override it)')
    g = parser.add_argument_group('model')
    g.add_argument('--model', default=D.model, help=f'timm model name; SP models are registered (default {D.model})')
    g.add_argument('--model-kwargs', nargs='*', default=[], metavar='K=V',
                   help='timm.create_model keyword arguments, e.g. sp_alpha=vanilla or "sp_alpha=(0.5,0.25,0.25)"')
    g = parser.add_argument_group('data')
    g.add_argument('--dataset', default=D.dataset, choices=DATASET_CHOICES)
    g.add_argument('--data-dir', default=None, help='data set folder (default: its standard places)')
    g.add_argument('--loader', default=D.loader, choices=LOADER_CHOICES,
                   help='auto picks the fastest available loader and says which')
    g.add_argument('--img-size', type=int, default=None, help="input resolution (default: the model's)")
    g.add_argument('--mean', type=float, nargs='+', default=None, help="normalisation mean (default: the data set's)")
    g.add_argument('--std', type=float, nargs='+', default=None, help="normalisation std (default: the data set's)")
    g.add_argument('--train-samples', type=int, default=None, metavar='N', help='train on a seeded subset of N images')
    g.add_argument('--val-samples', type=int, default=None, metavar='N', help='evaluate on a seeded subset')
    g.add_argument('--augment', action=argparse.BooleanOptionalAction, default=D.augment,
                   help='train-time crop + flip augmentation')
    g.add_argument('--workers', type=int, default=D.workers, help='loader worker processes / DALI threads')
    g.add_argument('--download', action='store_true', help='allow a torchvision download of Fashion-MNIST/CIFAR '
                   'when no local copy is found (nothing is downloaded otherwise)')
    g = parser.add_argument_group('optimisation')
    g.add_argument('--epochs', type=int, default=D.epochs)
    g.add_argument('--batch-size', type=int, default=D.batch_size, help='per process')
    g.add_argument('--eval-batch-size', type=int, default=None, help='per process (default 2 x batch size)')
    g.add_argument('--opt', default=D.opt, choices=OPT_CHOICES, help='timm optimizer (nesterov = SGD + Nesterov)')
    g.add_argument('--lr', type=float, default=D.lr)
    g.add_argument('--momentum', type=float, default=D.momentum)
    g.add_argument('--weight-decay', type=float, default=D.weight_decay)
    g.add_argument('--sched', default=D.sched, choices=SCHED_CHOICES, help='timm schedule, updated every step')
    g.add_argument('--warmup-epochs', type=int, default=D.warmup_epochs)
    g.add_argument('--warmup-lr', type=float, default=D.warmup_lr)
    g.add_argument('--min-lr', type=float, default=D.min_lr)
    g.add_argument('--decay-epochs', type=float, default=D.decay_epochs, help='step schedule: decay period')
    g.add_argument('--decay-milestones', type=int, nargs='+', default=list(D.decay_milestones),
                   help='multistep schedule: decay epochs')
    g.add_argument('--decay-rate', type=float, default=D.decay_rate)
    g.add_argument('--label-smoothing', type=float, default=D.label_smoothing)
    g.add_argument('--clip-grad', type=float, default=None, help='clip the gradient norm to this value')
    g.add_argument('--ema', action=argparse.BooleanOptionalAction, default=D.ema, help='EMA of the weights')
    g.add_argument('--ema-decay', type=float, default=D.ema_decay)
    g = parser.add_argument_group('speed')
    g.add_argument('--channels-last', action=argparse.BooleanOptionalAction, default=D.channels_last)
    g.add_argument('--compile', action=argparse.BooleanOptionalAction, default=D.compile, help='torch.compile')
    g.add_argument('--mixed-precision', default=D.mixed_precision, choices=MIXED_PRECISION_CHOICES,
                   help='autocast through accelerate (GPU; bf16 is ~30x slower on AVX2 CPUs)')
    g = parser.add_argument_group('run')
    g.add_argument('--seed', type=int, default=D.seed)
    g.add_argument('--output', default=None, help='output folder (default runs/train/<dataset>-<model>-<time>)')
    g.add_argument('--resume', nargs='?', const='auto', default=None, metavar='CHECKPOINT',
                   help='continue the run in --output (or from CHECKPOINT) exactly where it stopped')
    g.add_argument('--evaluate-only', action='store_true', help='evaluate --checkpoint on the validation split')
    g.add_argument('--checkpoint', default=None, help='weights for --evaluate-only (.safetensors or .pth)')
    g.add_argument('--log-interval', type=int, default=D.log_interval)
    g.add_argument('--progress', action=argparse.BooleanOptionalAction, default=D.progress)
    g.add_argument('--save-checkpoints', action=argparse.BooleanOptionalAction, default=D.save_checkpoints)
    g.add_argument('--experiment', default='', help='free-form label stored in summary.json')
    return parser


def resolve_config(argv: list[str] | None = None) -> TrainConfig:
    """Parse ``-c`` YAML then flags into a validated ``TrainConfig``."""
    args = parse_with_config(build_parser(), argv)
    values: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in ('config', 'config_values')}
    yaml_kwargs = args.config_values.get('model_kwargs')
    flag_kwargs = values['model_kwargs']
    if isinstance(flag_kwargs, dict):  # only the YAML mapping
        values['model_kwargs'] = flag_kwargs
    else:
        values['model_kwargs'] = {**(yaml_kwargs if isinstance(yaml_kwargs, dict) else {}),
                                  **parse_kwargs(flag_kwargs)}
    if values['output'] is None and not values['evaluate_only']:
        stamp = datetime.now().strftime('%Y%m%d-%H%M%S')
        values['output'] = f'runs/train/{values["dataset"]}-{values["model"]}-{stamp}'
    return TrainConfig.from_dict(values, source=args.config or 'options')


def main(argv: list[str] | None = None) -> int:
    cfg = resolve_config(argv)
    from spsearch.train import train  # after parsing: --help and usage errors stay fast

    result = train(cfg)
    if result.stopped_by == 'nonfinite':
        print(f'error: {result.message}', file=sys.stderr)
        return 1
    print(result.message + (f'; best top1 {result.best_top1:.2f} (epoch {result.best_epoch})' if result.history
                            and not cfg.evaluate_only else '') + (f'; output {result.output}' if result.output else ''))
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
