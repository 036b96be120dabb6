#!/usr/bin/env python3
"""Search per-stage SPConv split ratio alpha and groups G under FLOP, parameter and latency budgets.

Examples:
    python search.py --budget-gflops 2.0                      # the default search (<= 20 min on 2 CPU cores)
    python search.py --budget-gflops 2.0 --resume             # continue it after an interruption
    python search.py --budget-latency-ms 40 --latency-device cpu --budget-gflops 2.5
    python search.py -c configs/search/default.yaml --n-trials 80
    python search.py --budget-gflops 2.0 --multi-objective    # accuracy vs GMACs with NSGA-II (no pruning)
    python search.py retrain --budget-gflops 2.0 --retrain-top 3   # retrain the winners of an existing study
    python search.py report --output runs/search/x --study x  # rewrite the reports of a study
    accelerate launch --multi_gpu --num_processes 2 search.py --budget-gflops 2.0   # N processes train each trial
    python search.py --storage postgresql://user:pw@host/db --study s1 ...  # run on many machines: one study

"GFLOPs" are 1e9 multiply-accumulates (MACs), the SPConv paper's and thop's convention; costs are
counted at --eval-img-size (224 for the ImageNet-layout ResNets), proxy training runs at
--proxy-img-size. Over-budget candidates end before any training. Outputs in --output
(default runs/search/<study>): trials.csv, pareto_gmacs.csv/.png, pareto_latency.csv/.png,
best.yaml (python train.py -c best.yaml), summary.md, retrain.csv, and the study (study.db).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from spsearch.cli import ArgumentParser, parse_with_config, run_cli
from spsearch.search.config import LATENCY_DEVICES, MO_METRICS, MODES, PRUNERS, SAMPLERS, SearchConfig
from spsearch.train.config import DATASET_CHOICES, LOADER_CHOICES

D = SearchConfig()


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('mode', nargs='?', default=D.mode, choices=MODES,
                        help='search (default), retrain the winners of an existing study, or report only')
    parser.add_argument('-c', '--config', metavar='FILE', help='YAML file of option: value (flags override it)')
    g = parser.add_argument_group('budgets (checked before any training)')
    g.add_argument('--budget-gflops', type=float, default=D.budget_gflops, metavar='G',
                   help='MAC budget in GMACs (1e9 multiply-accumulates, the paper\'s "GFLOPs") at --eval-img-size')
    g.add_argument('--budget-params', type=float, default=D.budget_params, metavar='M',
                   help='parameter budget in millions')
    g.add_argument('--budget-latency-ms', type=float, default=D.budget_latency_ms, metavar='MS',
                   help='latency budget in ms per batch of --latency-batch-size on --latency-device')
    g.add_argument('--latency-batch-size', type=int, default=D.latency_batch_size)
    g.add_argument('--latency-device', default=D.latency_device, choices=LATENCY_DEVICES)
    g.add_argument('--latency-warmup', type=int, default=D.latency_warmup, help='untimed warm-up steps')
    g.add_argument('--latency-repeats', type=int, default=D.latency_repeats, help='timed steps (median reported)')
    g.add_argument('--measure-latency', action=argparse.BooleanOptionalAction, default=D.measure_latency,
                   help='measure every candidate within the other budgets (latency Pareto front)')
    g = parser.add_argument_group('search space')
    g.add_argument('--model', default=D.model, help=f'base SP model (default {D.model})')
    g.add_argument('--alphas', nargs='+', default=D.alphas, metavar='A',
                   help='split-ratio choices per stage (default: vanilla 1 1/2 1/4 1/8 1/16)')
    g.add_argument('--groups', nargs='+', type=int, default=D.groups, metavar='G',
                   help='group-count choices per stage (default: 1 2 4 8)')
    g.add_argument('--eval-img-size', type=int, default=D.eval_img_size, metavar='PX',
                   help="resolution of the GMACs/params/latency evaluation (default: the model's, 224)")
    g = parser.add_argument_group('proxy training')
    g.add_argument('--dataset', default=D.dataset, choices=DATASET_CHOICES)
    g.add_argument('--data-dir', default=D.data_dir, help='data set folder (default: its standard places)')
    g.add_argument('--loader', default=D.loader, choices=LOADER_CHOICES)
    g.add_argument('--proxy-img-size', type=int, default=D.proxy_img_size, metavar='PX')
    g.add_argument('--train-samples', type=int, default=D.train_samples, metavar='N',
                   help=f'training images per proxy training (default {D.train_samples})')
    g.add_argument('--val-samples', type=int, default=D.val_samples, metavar='N')
    g.add_argument('--proxy-epochs', type=int, default=D.proxy_epochs)
    g.add_argument('--batch-size', type=int, default=D.batch_size, help='per process')
    g.add_argument('--lr', type=float, default=D.lr)
    g.add_argument('--workers', type=int, default=D.workers, help='data loader workers')
    g = parser.add_argument_group('optimisation')
    g.add_argument('--n-trials', type=int, default=D.n_trials,
                   help='finished trials the study ends with (over-budget ones included; they cost no training)')
    g.add_argument('--timeout', type=float, default=D.timeout, metavar='S',
                   help=f'start no new trial after S seconds of search (default {D.timeout:g}: the 20-minute '
                        f'budget on 2 CPU cores; 0: no limit; --resume completes a study cut short)')
    g.add_argument('--sampler', default=D.sampler, choices=SAMPLERS)
    g.add_argument('--pruner', default=D.pruner, choices=PRUNERS, help='sh = successive halving')
    g.add_argument('--multi-objective', action=argparse.BooleanOptionalAction, default=D.multi_objective,
                   help='maximise accuracy and minimise --mo-metric with NSGA-II (Optuna cannot prune here)')
    g.add_argument('--mo-metric', default=D.mo_metric, choices=MO_METRICS)
    g.add_argument('--seed', type=int, default=D.seed)
    g = parser.add_argument_group('storage and output')
    g.add_argument('--output', default=D.output, help='output folder (default runs/search/<study>)')
    g.add_argument('--storage', default=D.storage,
                   help='Optuna storage URL (sqlite:///x.db, postgresql://..., mysql://...) or journal file '
                        '(x.log); default <output>/study.db')
    g.add_argument('--study', default=D.study, help='study name (default: model and budgets, e.g. '
                                                    'sp_resnet34-gmacs2)')
    g.add_argument('--resume', action='store_true', help='continue an existing study (interrupted trials re-run)')
    g.add_argument('--progress', action=argparse.BooleanOptionalAction, default=D.progress)
    g = parser.add_argument_group('retrain')
    g.add_argument('--retrain-top', type=int, default=D.retrain_top, metavar='K',
                   help='retrain the K best feasible configurations and the paper\'s (0: skip)')
    g.add_argument('--retrain-epochs', type=int, default=D.retrain_epochs)
    g.add_argument('--retrain-train-samples', type=int, default=D.retrain_train_samples, metavar='N')
    g.add_argument('--retrain-val-samples', type=int, default=D.retrain_val_samples, metavar='N')
    g.add_argument('--retrain-processes', type=int, default=D.retrain_processes, metavar='N',
                   help='accelerate launch processes per retrain (default: the GPUs, or 1)')
    return parser


def _values(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in ('config', 'config_values')}


def resolve_config(argv: list[str] | None = None) -> SearchConfig:
    """Parse ``-c`` YAML then flags into a validated ``SearchConfig``.

    ``--resume`` without ``-c`` takes the stored ``<output>/search.yaml`` as the defaults, so
    ``python search.py --resume --output DIR`` continues a search with its own settings.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_with_config(build_parser(), argv)
    if args.resume and not args.config:
        stored = Path(SearchConfig.from_dict(_values(args)).output_dir) / 'search.yaml'
        if stored.exists():
            args = parse_with_config(build_parser(), ['-c', str(stored), *argv])
            args.resume = True
    values = _values(args)
    return SearchConfig.from_dict(values, source=args.config or 'options')


def main(argv: list[str] | None = None) -> int:
    cfg = resolve_config(argv)
    import timm_plugins  # noqa: F401  (registers the SP models with timm)
    from spsearch.provenance import command_line
    from spsearch.search import run_search

    run = run_search(cfg, command=command_line())
    if run is not None:
        print(f'reports: {run.output}/summary.md (trials.csv, pareto_*.png, best.yaml); study '
              f'{run.study.study_name!r} in {run.spec.display()}', flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
