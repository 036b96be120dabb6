#!/usr/bin/env python3
"""Train (or evaluate) any timm model, SP models included, with accelerate: ``python -m spsearch.train``.

This file is the same command for a checkout of the repository (``python train.py --help``,
``accelerate launch train.py ...``); the CLI lives in ``spsearch/train/cli.py``.
"""
from spsearch.cli import run_cli
from spsearch.train.cli import build_parser, main, resolve_config

__all__ = ['build_parser', 'main', 'resolve_config']

if __name__ == '__main__':
    raise SystemExit(run_cli(main))
