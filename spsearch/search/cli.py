"""``python -m spsearch.search`` (and the repository's ``search.py``): the search's command line.

The flags are ``SearchConfig``'s options (``spsearch.options``), the training recipe's included;
the positional ``mode`` picks the entry point (``search``, ``retrain``, ``report``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..cli import ArgumentParser, CliError, option_values, parse_with_config, prog_name, run_cli
from ..options import add_arguments
from .config import MODES, SearchConfig

__all__ = ['build_parser', 'main', 'resolve_config']

DESCRIPTION = 'Search per-stage SPConv split ratio alpha and groups G under FLOP, parameter and latency budgets.'
EXAMPLES = """Examples:
    python search.py --budget-gflops 2.0                      # the default search (~30 min on 2 CPU cores)
    python search.py --budget-gflops 2.0 --resume             # continue it after an interruption
    python search.py --budget-latency-ms 40 --latency-device cpu --budget-gflops 2.5
    python search.py -c configs/search/default.yaml --n-trials 80
    python search.py --budget-gflops 2.0 --multi-objective    # accuracy vs GMACs with NSGA-II (no pruning)
    python search.py verify --budget-gflops 2.0 --retrain-seeds 5  # verify an existing study again, 5 paired seeds
    python search.py report --output runs/search/x --study x  # rewrite the reports of a study
    accelerate launch --multi_gpu --num_processes 2 search.py --budget-gflops 2.0   # N processes train each trial
    python search.py --storage postgresql://user:pw@host/db --study s1 ...  # run on many machines: one study

"GFLOPs" are 1e9 multiply-accumulates (MACs), the SPConv paper's and thop's convention; costs are
counted at --eval-img-size (224 for the ImageNet-layout ResNets), proxy training runs at
--proxy-img-size. Over-budget candidates end before any training. Outputs in --output
(default runs/search/<study>): trials.csv, pareto_gmacs.csv/.png, pareto_latency.csv/.png,
optuna_history.png, optuna_importances.png, best.yaml (python train.py -c best.yaml), summary.md,
retrain.csv, and the study (study.db)."""


def build_parser() -> argparse.ArgumentParser:
    """The parser: ``mode``, ``-c FILE`` and one flag per ``SearchConfig`` option, in its groups."""
    parser = ArgumentParser(prog=prog_name('search.py', 'spsearch.search'), description=DESCRIPTION, epilog=EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('mode', nargs='?', default='search', choices=MODES,
                        help='search (default: search, verify, report), verify (alias: retrain) the finalists of an '
                             'existing study on paired seeds, or report only')
    parser.add_argument('-c', '--config', metavar='FILE', help='YAML file of option: value (flags override it)')
    add_arguments(parser, SearchConfig)
    return parser


def resolve_config(argv: list[str] | None = None) -> SearchConfig:
    """Parse ``-c`` YAML then flags into a validated ``SearchConfig``.

    ``--resume`` without ``-c`` takes the stored ``<output>/search.yaml`` as the defaults, so
    ``python search.py --resume --output DIR`` continues a search with its own settings.
    """
    return _resolve(list(sys.argv[1:] if argv is None else argv))[1]


def _resolve(argv: list[str]) -> tuple[str, SearchConfig]:
    args = parse_with_config(build_parser(), argv)
    if args.resume and not args.config:
        stored = Path(SearchConfig.from_dict(option_values(args, SearchConfig)).output_dir) / 'search.yaml'
        if stored.exists():
            args = parse_with_config(build_parser(), ['-c', str(stored), *argv])
            args.resume = True
            if '***' in str(args.storage or '') and not any(a == '--storage' or a.startswith('--storage=')
                                                             for a in argv):
                raise CliError(f'{stored} stores the storage URL without its password ({args.storage}); give '
                               f'--storage with the password again (it is never written to disk)')
    return args.mode, SearchConfig.from_dict(option_values(args, SearchConfig), source=args.config or 'options')


def main(argv: list[str] | None = None) -> int:
    """Run the entry point ``mode`` names for the command line."""
    mode, cfg = _resolve(list(sys.argv[1:] if argv is None else argv))
    from ..provenance import command_line
    from . import run

    if mode == 'report':
        opened = run.report(cfg)
    elif mode in ('verify', 'retrain'):
        opened = run.retrain(cfg)
    else:
        found = run.search(cfg, command=command_line())
        if found is None:
            return 0
        opened = found
    for line in [*best_lines(opened), *verdict_lines(opened.output)]:
        print(line, flush=True)
    files = [name for name in ('trials.csv', 'pareto_gmacs.png', 'pareto_latency.png', 'optuna_history.png',
                               'optuna_importances.png', 'verify.png', 'best.yaml') if (opened.output / name).exists()]
    print(f'reports: {opened.output}/summary.md ({", ".join(files)}); study {opened.study.study_name!r} in '
          f'{opened.spec.display()}', flush=True)
    return 0


def best_lines(opened: Any) -> list[str]:
    """The search's best feasible configuration, one line (none when nothing completed)."""
    from .record import TrialRecord
    from .reports import best_trials
    best = best_trials(opened.trials(), 1, score=opened.cfg.score)
    if not best:
        return ['best: no feasible trial completed (see summary.md)']
    t, score = best[0], opened.cfg.score
    record = TrialRecord.of(t)
    return [f'best: trial {t.number}, {opened.space.format(opened.space.from_optuna_params(t.params))}, '
            f'{record.gmacs:.3f} GMACs, {record.mparams:.2f}M params, {score.column} {score.format(t.values[0])} '
            f'(a proxy score; verification judges it)']


def verdict_lines(output: Path) -> list[str]:
    """One line per comparison of the verification (``comparisons.csv``), for the end of the run."""
    import csv
    path = output / 'comparisons.csv'
    rows = list(csv.DictReader(path.read_text().splitlines())) if path.exists() else []
    return [f'verdict: {r["finalist"]} {r["verdict"]} {r["baseline"]} (top-1 difference {float(r["difference"]):+.2f} '
            f'points, 95 % CI [{r["ci95_low"]}, {r["ci95_high"]}], {r["seeds"]} paired seeds, at '
            f'{float(r["macs_ratio"]):.2f}x its GMACs)' for r in rows]


if __name__ == '__main__':
    raise SystemExit(run_cli(main))
