#!/usr/bin/env python3
"""Search per-stage SPConv split ratio alpha and groups G under budgets: ``python -m spsearch.search``.

This file is the same command for a checkout of the repository (``python search.py --help``,
``accelerate launch search.py ...``); the CLI lives in ``spsearch/search/cli.py``.
"""
from spsearch.cli import run_cli
from spsearch.search.cli import build_parser, main, resolve_config

__all__ = ['build_parser', 'main', 'resolve_config']

if __name__ == '__main__':
    raise SystemExit(run_cli(main))
