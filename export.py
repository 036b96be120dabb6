#!/usr/bin/env python3
"""Export any timm model (SP models included) to ONNX in its fused inference form and verify it in onnxruntime.

    python export.py --model sp_resnet50 --model-kwargs sp_alpha=0.5 --output sp_resnet50.onnx
    python export.py --checkpoint runs/train/RUN --output model.onnx --dynamic-batch
    python export.py --model sp_resnet20 --checkpoint model.safetensors --num-classes 10 --output m.onnx

Every BatchNorm is folded (``spsearch.ops.fold_batchnorms``), the graph is exported with PyTorch's
current exporter, checked by ``onnx.checker`` and run in onnxruntime against PyTorch on the same random
inputs; the command prints the largest absolute and relative differences and fails (exit 1) above
``--tolerance``. Bad input (unknown model, unreadable checkpoint, unwritable output) is one line and
exit 2, found before anything is written.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import timm
import yaml

from spsearch.cli import ArgumentParser, CliError, parse_kwargs, run_cli
from spsearch.errors import ConfigError
from spsearch.export import DEFAULT_OPSET, export_onnx, onnxruntime_difference


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog='python export.py', description=__doc__.split('\n\n')[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', help='timm model name (default: the checkpoint folder\'s args.yaml)')
    parser.add_argument('--model-kwargs', nargs='*', metavar='K=V', help='model keyword arguments, e.g. sp_alpha=0.5')
    parser.add_argument('--checkpoint', help='weights: .safetensors, a .pth checkpoint, or a train.py output folder '
                                             '(its args.yaml gives model, kwargs, classes and resolution)')
    parser.add_argument('--num-classes', type=int, help='classifier width (default: the checkpoint\'s, else the '
                                                        'model\'s)')
    parser.add_argument('--img-size', type=int, help='input side in px (default: the run\'s or the model\'s)')
    parser.add_argument('--batch-size', type=int, default=1, help='batch size of the graph (default 1)')
    parser.add_argument('--dynamic-batch', action='store_true', help='symbolic batch dimension')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help=f'ONNX opset (>= {DEFAULT_OPSET})')
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='largest allowed |onnxruntime - torch| relative to the largest output (default 1e-4)')
    parser.add_argument('--output', required=True, help='the .onnx file to write')
    return parser


def _check_output(path: Path) -> None:
    if path.is_dir():
        raise CliError(f'--output {path} is a folder; give a file such as {path / "model.onnx"}')
    if path.suffix != '.onnx':
        raise CliError(f'--output {path} should end in .onnx')
    parent = path.parent if str(path.parent) else Path('.')
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise CliError(f'--output {path}: {existing} is not a writable folder; choose another path')
    if path.exists() and not os.access(path, os.W_OK):
        raise CliError(f'--output {path} exists and is read-only; remove it or choose another path')


def _resolve(args: argparse.Namespace) -> tuple[str, dict[str, Any], Path | None, int | None]:
    """model, kwargs, weights file and image size from the flags and a checkpoint folder's args.yaml."""
    kwargs = parse_kwargs(args.model_kwargs)
    model, weights, img_size = args.model, None, args.img_size
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        if ckpt.is_dir():
            run_args = ckpt / 'args.yaml'
            weights = ckpt / 'model.safetensors'
            if not run_args.is_file() or not weights.is_file():
                raise CliError(f'--checkpoint {ckpt} is a folder without args.yaml and model.safetensors; give a '
                               f'train.py output folder or a weights file')
            try:
                stored = yaml.safe_load(run_args.read_text()) or {}
            except (OSError, yaml.YAMLError) as e:
                raise CliError(f'{run_args} cannot be read: {e}') from None
            model = model or stored.get('model')
            kwargs = {**(stored.get('model_kwargs') or {}), **kwargs}
            img_size = img_size or stored.get('img_size')
        elif ckpt.is_file():
            weights = ckpt
        else:
            raise CliError(f'--checkpoint {ckpt} does not exist')
    if not model:
        raise CliError('no model: give --model NAME (or --checkpoint with a train.py output folder)')
    if not timm.is_model(model):
        raise CliError(f'unknown model {model!r}; see timm.list_models() or spsearch.list_sp_models()')
    for flag, value in (('--img-size', img_size), ('--batch-size', args.batch_size), ('--num-classes',
                                                                                       args.num_classes)):
        if value is not None and value < 1:
            raise CliError(f'{flag} {value} is invalid: give a positive integer')
    if not args.tolerance > 0:
        raise CliError(f'--tolerance {args.tolerance} is invalid: give a positive number such as 1e-4')
    return model, kwargs, weights, img_size


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = Path(args.output)
    _check_output(output)
    model_name, kwargs, weights, img_size = _resolve(args)
    import spsearch  # noqa: F401  (registers the SP models)
    from spsearch.train.checkpoint import load_weights

    state = load_weights(weights) if weights is not None else None
    try:
        model = timm.create_model(model_name, **kwargs, **({'num_classes': args.num_classes}
                                                          if args.num_classes else {}))
    except (TypeError, ValueError, KeyError) as e:
        raise ConfigError(f'cannot build {model_name} with {kwargs}: {e}') from None
    head = f'{model.default_cfg.get("classifier", "fc")}.weight'
    if state is not None and not args.num_classes and head in state \
            and state[head].shape[0] != model.get_classifier().weight.shape[0]:
        model.reset_classifier(int(state[head].shape[0]))  # the classifier width of the trained weights
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ConfigError(f'{weights} does not fit {model_name} {kwargs}: '
                              f'{str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}') from None
    c, h, w = model.pretrained_cfg.get('input_size', (3, 224, 224))
    size = (int(c), img_size or int(h), img_size or int(w))
    export_onnx(model, output, size, batch_size=args.batch_size, dynamic_batch=args.dynamic_batch, opset=args.opset)
    batches = (args.batch_size, args.batch_size + 2) if args.dynamic_batch else (args.batch_size,)
    check = onnxruntime_difference(model, output, size, batches)
    print(f'wrote {output} ({output.stat().st_size / 1e6:.1f} MB, opset {args.opset}, input '
          f'{"N" if args.dynamic_batch else args.batch_size}x{"x".join(map(str, size))}); onnxruntime vs torch on '
          f'batch {", ".join(map(str, batches))}: max abs diff {check.max_abs:.2e}, max rel diff {check.max_rel:.2e}')
    if not check.ok(args.tolerance):
        print(f'error: onnxruntime differs from torch by {check.max_rel:.2e} (relative) > --tolerance '
              f'{args.tolerance:g}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
