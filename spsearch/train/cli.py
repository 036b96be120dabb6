"""``python -m spsearch.train`` (and the repository's ``train.py``): train or evaluate any timm model.

The flags are ``TrainConfig``'s options (``spsearch.options``); ``EXAMPLES`` is the epilog of ``--help``.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime
from pathlib import Path

from ..cli import ArgumentParser, CliError, option_values, parse_with_config, prog_name, run_cli
from ..errors import Interrupted
from ..options import add_arguments
from .config import TrainConfig
from .timm_args import from_timm

__all__ = ['build_parser', 'main', 'resolve_config']

DESCRIPTION = 'Train (or evaluate) any timm model, SP models included, with accelerate.'
EXAMPLES = """Examples:
    accelerate launch -m spsearch.train --model sp_resnet20 --dataset fashion-mnist --epochs 30 --output runs/x
    python train.py -c configs/train/cifar_paper.yaml --data-dir /data/cifar-10-batches-py
    python train.py --model sp_resnet20 --model-kwargs sp_alpha=vanilla --epochs 2 --train-samples 5000
    python train.py --output runs/x --resume                # continue an interrupted run exactly
    python train.py --model sp_resnet20 --evaluate-only --checkpoint runs/x/model.safetensors
    accelerate launch --multi_gpu --num_processes 2 train.py ...   # DDP (on CPU too: gloo)
    python train.py ... --output runs/x --log-with tensorboard     # accelerate's trackers, into runs/x

Options come from -c FILE.yaml (keys are the option names) and are overridden by flags; the
resolved configuration is written to <output>/args.yaml, which -c takes back. The output folder
gets log.csv (one row per epoch), last.pth/best.pth (exact-resume checkpoints), model.safetensors
(loadable with timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...)))
and summary.json."""


def build_parser() -> argparse.ArgumentParser:
    """The parser: ``-c FILE`` and one flag per ``TrainConfig`` option, in its groups."""
    parser = ArgumentParser(prog=prog_name('train.py', 'spsearch.train'), description=DESCRIPTION, epilog=EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-c', '--config', metavar='FILE', help='YAML file of option: value (flags override it)')
    add_arguments(parser, TrainConfig)
    timm_flags = parser.add_argument_group("timm's spellings (train.py of timm)")
    timm_flags.add_argument('--amp', action='store_true', default=None,
                            help='mixed precision, in --amp-dtype (= --mixed-precision fp16 or bf16)')
    timm_flags.add_argument('--amp-dtype', choices=('float16', 'bfloat16'), default=None,
                            help='autocast dtype with --amp (default float16, as timm)')
    return parser


def resolve_config(argv: list[str] | None = None) -> TrainConfig:
    """Parse ``-c`` YAML then flags into a validated ``TrainConfig``.

    Without ``--output`` (flag or YAML) the run writes to a new timestamped folder; ``--output none``
    writes nothing.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_with_config(build_parser(), argv, translate=from_timm)
    if args.config_ignored:
        print(f'note: {args.config} holds timm option(s) not implemented here, at timm\'s defaults, ignored: '
              f'{", ".join(args.config_ignored)}', file=sys.stderr)
    values = option_values(args, TrainConfig)
    _timm_amp(args, values)
    given = 'output' in args.config_values or any(a == '--output' or a.startswith('--output=') for a in argv)
    if values['resume'] == 'auto' and (values['output'] is None):
        raise CliError('--resume continues the run in --output: give --output RUN_FOLDER (or --resume CHECKPOINT)')
    if values['output'] is None and not given and not values['evaluate_only']:
        stamp = datetime.now().strftime('%Y%m%d-%H%M%S')
        values['output'] = f'runs/train/{values["dataset"]}-{values["model"]}-{stamp}'
    return TrainConfig.from_dict(values, source=args.config or 'options')


def _timm_amp(args: argparse.Namespace, values: dict[str, object]) -> None:
    """timm's ``--amp [--amp-dtype D]`` as ``mixed_precision`` (one of the two spellings, not both)."""
    amp, dtype = args.amp, args.amp_dtype  # -c FILE's amp/amp_dtype are these flags' defaults already
    if not amp:
        if dtype:
            raise CliError('--amp-dtype goes with --amp (or use --mixed-precision fp16|bf16)')
        return
    wanted = {'float16': 'fp16', 'bfloat16': 'bf16', None: 'fp16'}.get(dtype)
    if wanted is None:
        raise CliError(f'--amp-dtype {dtype!r} is invalid: use float16 or bfloat16')
    if values['mixed_precision'] not in ('no', wanted):
        raise CliError(f'--amp asks for {wanted} but --mixed-precision says {values["mixed_precision"]}; give one')
    values['mixed_precision'] = wanted


def main(argv: list[str] | None = None) -> int:
    """Run ``train()`` for the command line; exit code 1 when the loss became non-finite."""
    cfg = resolve_config(argv)
    from .loop import train

    try:
        result = train(cfg)
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise interrupted(cfg, list(sys.argv[1:] if argv is None else argv)) from None
    from accelerate import PartialState
    main_process = PartialState().is_main_process  # under accelerate launch every process returns here
    if result.stopped_by == 'nonfinite':
        if main_process:
            print(f'error: {result.message}', file=sys.stderr)
        return 1
    if not main_process:
        return 0
    print(result.message + (f'; best top1 {result.best_top1:.2f} (epoch {result.best_epoch})' if result.history
                            and not cfg.evaluate_only else '') + (f'; output {result.output}' if result.output else ''))
    return 0


def interrupted(cfg: TrainConfig, argv: list[str]) -> Interrupted:
    """Ctrl-C during a run: one line saying what was kept and the command that continues it."""
    last = Path(cfg.output) / 'last.pth' if cfg.output and cfg.output.lower() != 'none' else None
    if last is None or not last.exists() or cfg.evaluate_only:
        return Interrupted('before the first epoch was saved; nothing to resume: run the command again')
    again = ' '.join(shlex.quote(a) for a in argv if a != '--resume')
    if not any(a == '--output' or a.startswith('--output=') for a in argv):
        again += f' --output {shlex.quote(cfg.output or "")}'
    return Interrupted(f'the last finished epoch is saved in {last}; continue with --resume (resumable): '
                       f'{prog_name("train.py", "spsearch.train")} {again} --resume')


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
