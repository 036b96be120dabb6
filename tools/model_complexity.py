#!/usr/bin/env python3
"""Write (or check) ``tests/golden/model_complexity.json``: params and MACs of every registered SP model.

pycls keeps ``dev/model_complexity.json`` so that a change to a model that moves its complexity is
seen in review; this is ours. For each model at its default input size and class count: the paper's
setting (the registered defaults), all-vanilla, and one mixed per-stage setting, each counted by the
analytic counter on the ``meta`` device (equal to thop's count on every registered model, which
``tests/test_cost.py`` checks).

    python tools/model_complexity.py           # rewrite the file after a deliberate change
    python tools/model_complexity.py --check   # exit 1 naming the models whose numbers moved
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import timm_plugins
from spsearch.cost import analytic_count
from spsearch.io import atomic_write_text
from spsearch.models import stage_specs

GOLDEN = Path(__file__).resolve().parent.parent / 'tests' / 'golden' / 'model_complexity.json'
MIXED = ('vanilla', 1.0, 0.25, 0.125, 0.5)
"""A mixed setting: stage i gets MIXED[i] (alpha), G 1 (valid for every family's channels)."""


def settings(name: str) -> dict[str, dict[str, Any]]:
    """The model kwargs of each counted setting of ``name``."""
    stages = len(stage_specs(name))
    return {'paper': {}, 'vanilla': {'sp_alpha': 'vanilla'},
            'mixed': {'sp_alpha': list(MIXED[:stages]), 'sp_groups': 1}}


def complexity(name: str) -> dict[str, Any]:
    """``{'input_size': [...], 'num_classes': n, 'paper': {'params', 'macs'}, ...}`` for one model."""
    cfg = timm.get_pretrained_cfg(name)
    assert cfg is not None and cfg.input_size is not None
    input_size = tuple(int(v) for v in cfg.input_size)
    out: dict[str, Any] = {'input_size': list(input_size), 'num_classes': cfg.num_classes}
    for setting, kwargs in settings(name).items():
        with torch.device('meta'):
            model = timm.create_model(name, **kwargs)
        count = analytic_count(model, input_size)  # type: ignore[arg-type]
        out[setting] = {'params': count.params, 'macs': count.macs}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--check', action='store_true', help='compare with the file instead of writing it')
    args = parser.parse_args(argv)
    now = {name: complexity(name) for name in timm_plugins.list_sp_models()}
    if args.check:
        stored = json.loads(GOLDEN.read_text())
        moved = sorted(set(now) ^ set(stored) | {n for n in now if n in stored and now[n] != stored[n]})
        if moved:
            print(f'complexity differs from {GOLDEN.name} for: {", ".join(moved)}', file=sys.stderr)
            return 1
        print(f'{len(now)} models match {GOLDEN.name}')
        return 0
    lines = [f'  {json.dumps(name)}: {json.dumps(value)}' for name, value in now.items()]
    atomic_write_text(GOLDEN, '{\n' + ',\n'.join(lines) + '\n}\n')
    print(f'wrote {GOLDEN} ({len(now)} models)')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
