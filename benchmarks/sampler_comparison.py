"""Which sampler finds better architectures for the same trials: the search's TPE or random search?

For every sampler and search seed it runs the same search (``search.py``'s defaults unless overridden:
same budget, trials and proxy; no verification), takes each search's best architecture (ties to the
cheaper) and retrains it with the search's retrain recipe on paired verification seeds, scored on the
test split. The report gives, per sampler, the verified top-1 of what it found (mean over search seeds,
95 % CI), the paired difference TPE - random by search seed with its verdict, and the proxy's best
scores. Both samplers are wrapped in ``InBudgetSampler`` (only in-budget proposals), as in the search.

It takes about an hour on a 2-core CPU with the defaults (2 samplers x 3 search seeds x 20 trials,
then 6 architectures x 2 seeds retrained); it resumes (each search is an Optuna study that resumes,
each retrain a JSON file), so it can be spread over several runs.

    python benchmarks/sampler_comparison.py
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spsearch.errors import SPSearchError
from spsearch.io import atomic_write_json, atomic_write_text
from spsearch.provenance import command_line, markdown_header
from spsearch.search import SearchConfig, search
from spsearch.search.reports import best_trials
from spsearch.search.stats import compare, estimate
from spsearch.train import train


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='python benchmarks/sampler_comparison.py',
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('--budget-gflops', type=float, default=2.0, metavar='G')
    parser.add_argument('--samplers', nargs='+', default=['tpe', 'random'], choices=['tpe', 'random'])
    parser.add_argument('--search-seeds', type=int, nargs='+', default=[1, 2, 3], metavar='S',
                        help='one search per sampler and seed; the seed also seeds its proxy trainings (paired)')
    parser.add_argument('--n-trials', type=int, default=20, help='trials per search (the same for every sampler)')
    parser.add_argument('--verify-seeds', type=int, nargs='+', default=[0, 1], metavar='S',
                        help='retrain seeds of each found architecture (paired across samplers)')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help="any other search.py option for every search (YAML value), e.g. --set proxy_epochs=2")
    parser.add_argument('--output', default='runs/sampler_comparison', help='folder of the searches and retrains')
    parser.add_argument('--report', default='results/sampler_comparison.md', help='markdown report')
    args = parser.parse_args(argv)
    if len(set(args.search_seeds)) < 2:
        parser.error('--search-seeds needs >= 2 distinct seeds for an interval, e.g. 1 2 3')
    args.options = {}
    for item in args.set:
        key, sep, value = item.partition('=')
        if not sep:
            parser.error(f'--set {item!r} is invalid: give KEY=VALUE, e.g. --set proxy_epochs=2')
        args.options[key.replace('-', '_')] = yaml.safe_load(value)
    if args.n_trials < 1:
        parser.error(f'--n-trials {args.n_trials} is invalid: give >= 1')
    return args


def _search(args: argparse.Namespace, sampler: str, seed: int) -> dict[str, Any]:
    out = Path(args.output) / f'{sampler}-s{seed}'
    cfg = SearchConfig.from_dict({
        **args.options, 'budget_gflops': args.budget_gflops, 'sampler': sampler, 'seed': seed,
        'n_trials': args.n_trials, 'timeout': 0, 'retrain_top': 0, 'measure_latency': False, 'output': str(out),
        'resume': (out / 'study.db').exists()}, source='--set')
    opened = search(cfg)
    assert opened is not None
    best = best_trials(opened.trials(), 1, score=cfg.score)
    if not best:
        raise SPSearchError(f'the {sampler} search with seed {seed} found no complete in-budget trial')
    trial = best[0]
    arch = opened.space.from_optuna_params(trial.params)
    return {'cfg': cfg, 'space': opened.space, 'arch': arch, 'proxy_score': float(trial.values[0]),
            'gmacs': opened.space.cost(arch).macs / 1e9, 'trials': len(opened.trials())}


def _verify(args: argparse.Namespace, found: dict[str, Any], sampler: str, seed: int, vseed: int) -> float:
    path = Path(args.output) / f'{sampler}-s{seed}' / f'verify-seed{vseed}.json'
    if path.exists():
        return float(json.loads(path.read_text())['top1'])
    cfg: SearchConfig = found['cfg']
    recipe = cfg.retrain_train_config(found['space'].model_kwargs(found['arch']), output='', seed=vseed).replace(
        output=None, progress=False, save_checkpoints=False)
    result = train(recipe)
    atomic_write_json(path, {'architecture': [c.label for c in found['arch']], 'seed': vseed,
                             'top1': result.final_top1, 'wall_s': round(result.wall_s, 1)})
    return result.final_top1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows: dict[str, list[dict[str, Any]]] = {}
    try:
        for seed in args.search_seeds:
            for sampler in args.samplers:
                found = _search(args, sampler, seed)
                found['verified'] = [_verify(args, found, sampler, seed, v) for v in args.verify_seeds]
                found['seed'] = seed
                rows.setdefault(sampler, []).append(found)
    except SPSearchError as e:
        print(f'sampler_comparison.py: error: {e}', file=sys.stderr)
        return 2
    command = command_line(['benchmarks/sampler_comparison.py', *(argv if argv is not None else sys.argv[1:])])
    lines = [markdown_header('Sampler comparison: TPE vs random search at the same number of trials'), '',
             f'Regenerate (resumes): `{command}`', '',
             f'{len(args.search_seeds)} search seeds x {args.n_trials} trials per sampler (the first two of every '
             f'search are its enqueued baselines, the paper\'s and the best uniform architecture), budget '
             f'{args.budget_gflops:g} GMACs, the search\'s proxy'
             + (f' with {", ".join(f"{k}={v}" for k, v in args.options.items())}' if args.options else '')
             + '; each search\'s best architecture retrained with the '
             f'search\'s retrain recipe on seeds {", ".join(map(str, args.verify_seeds))} and scored on the test '
             f'split ("verified").', '',
             '| sampler | search seed | best architecture | GMACs | proxy score | verified top-1 (mean of seeds) |',
             '|---|---|---|---|---|---|']
    for sampler, found in rows.items():
        for f in found:
            lines.append(f'| {sampler} | {f["seed"]} | {f["space"].format(f["arch"])} | {f["gmacs"]:.3f} | '
                         f'{f["cfg"].score.format(f["proxy_score"])} | {sum(f["verified"]) / len(f["verified"]):.2f} |')
    lines += ['', '| sampler | verified top-1 of the best found, mean ± 95 % CI over search seeds | '
              'best proxy score |', '|---|---|---|']
    means = {s: [sum(f['verified']) / len(f['verified']) for f in found] for s, found in rows.items()}
    for sampler, found in rows.items():
        lines.append(f'| {sampler} | {estimate(means[sampler])} | '
                     f'{estimate([f["proxy_score"] for f in found])} |')
    if {'tpe', 'random'} <= set(means):
        c = compare(means['tpe'], means['random'])
        lines += ['', f'TPE - random, paired by search seed: {c.difference} points (95 % CI '
                  f'[{c.difference.low:.2f}, {c.difference.high:.2f}]): TPE **{c.verdict}** random search.']
    atomic_write_text(args.report, '\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
