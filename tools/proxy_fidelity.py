"""Measure how well the search's proxy ranks architectures: write ``results/proxy_fidelity.md``.

Trains N in-budget architectures of the default search space under each protocol (the search's proxy,
alternative proxies, a longer target scored on the test split) with paired seeds, and reports Kendall tau
between every proxy score (per rung, top-1 or loss, with or without precise BN) and the target, with
bootstrap intervals, seed-to-seed tau and seed noise (``spsearch.search.fidelity``).

It takes hours on a 2-core CPU (the default plan: 16 architectures x 3 protocols x 2 seeds, about
2.3 million training images). It resumes: run it again with the same options and it trains only
what is missing; ``--max-minutes`` spreads it over several runs; the report is rewritten from
whatever is done after each run (``--report-only`` writes it without training).

    python tools/proxy_fidelity.py --jobs 2 --max-minutes 90
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spsearch.errors import ConfigError
from spsearch.io import atomic_write_text
from spsearch.provenance import command_line, markdown_header
from spsearch.search.config import SearchConfig
from spsearch.search.fidelity import DEFAULT_PROTOCOLS, PROTOCOLS, load_units, plan_study, render, run_study
from spsearch.space import SearchSpace


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='python tools/proxy_fidelity.py',
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('--budget-gflops', type=float, default=2.0, metavar='G',
                        help="the search's MAC budget (GMACs at 224 px); architectures are drawn within it")
    parser.add_argument('--architectures', type=int, default=16, metavar='N',
                        help='architectures (>= 3): the paper\'s, the best uniform one, then random in-budget ones')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1], metavar='S', help='paired seeds (>= 2)')
    parser.add_argument('--protocols', nargs='+', default=[p.name for p in DEFAULT_PROTOCOLS],
                        choices=sorted(PROTOCOLS), metavar='NAME',
                        help=f'protocols, exactly one target (known: {", ".join(sorted(PROTOCOLS))})')
    parser.add_argument('--jobs', type=int, default=2, metavar='N',
                        help='trainings at once, each on cores/N threads (2 single-thread jobs train ~30 %% more '
                             'images per second than one 2-thread job on a 2-core CPU)')
    parser.add_argument('--max-minutes', type=float, default=None, metavar='M',
                        help='start no training after M minutes (run again to continue)')
    parser.add_argument('--output', default='runs/proxy_fidelity', help='study folder (plan.json, units/*.json)')
    parser.add_argument('--report', default='results/proxy_fidelity.md', help='markdown report (written atomically)')
    parser.add_argument('--report-only', action='store_true', help='write the report from the trainings done')
    parser.add_argument('--resamples', type=int, default=2000, help='bootstrap resamples of each tau interval')
    args = parser.parse_args(argv)
    if args.architectures < 3:
        parser.error(f'--architectures {args.architectures} is too few: Kendall tau needs >= 3 (e.g. 16)')
    if args.jobs < 1:
        parser.error(f'--jobs {args.jobs} is invalid: give >= 1')
    if len(set(args.seeds)) < 2:
        parser.error('--seeds needs >= 2 distinct seeds (seed-to-seed tau and noise), e.g. --seeds 0 1')
    if Path(args.report).is_dir():
        parser.error(f'--report {args.report} is a folder; give a file such as results/proxy_fidelity.md')
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = SearchConfig(budget_gflops=args.budget_gflops)
        space = SearchSpace.build(cfg.model, cfg.alphas, cfg.groups, cfg.eval_img_size)
        plan = plan_study(cfg, space, args.architectures, [PROTOCOLS[n] for n in args.protocols], args.seeds)
        if args.report_only:
            units = load_units(plan, args.output)
        else:
            units = run_study(plan, args.output, jobs=args.jobs, max_minutes=args.max_minutes)
    except ConfigError as e:
        print(f'proxy_fidelity.py: error: {e}', file=sys.stderr)
        return 2
    command = command_line(['tools/proxy_fidelity.py', *(argv if argv is not None else sys.argv[1:])])
    text = render(plan, units, markdown_header('Proxy fidelity: does the proxy rank like longer training?'),
                  command, resamples=args.resamples)
    atomic_write_text(args.report, text)
    print(f'wrote {args.report} ({len(units)} of {len(plan.units())} trainings)')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
