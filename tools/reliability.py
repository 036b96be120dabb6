"""Re-run the reliability tables (``tools/reliability_cases.py``) and write ``results/reliability.md``.

    python tools/reliability.py                 # every case, sequentially (about 10-15 min on 2 cores)
    python tools/reliability.py --fast          # the bad inputs and the quick checks only (no result file)
    python tools/reliability.py -k search-      # cases whose name contains the text (no result file)
    python tools/reliability.py --list          # the tables, without running anything

Each case runs its command line(s) as subprocesses of the repository's CLIs, in its own temporary folder,
one at a time, with one thread (``OMP_NUM_THREADS=1``); a live line per case says whether it held the
contract and, if not, what broke. The report (written atomically, only after a run of every case) has the
header of every results file (command, commit, date, machine, versions), the figures per table (faults
survived x/y, bad inputs handled x/y, security checks x/y), how the read-only and full-disk sandboxes were
made on this machine, and every failing row. Exit code 0 when every case passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault('OMP_NUM_THREADS', '1')
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import reliability_cases as rc

REPORT = rc.ROOT / 'results' / 'reliability.md'
FIGURE = {rc.BAD_INPUT: 'bad inputs handled', rc.FAULT: 'faults survived', rc.SECURITY: 'security checks passed'}


def select(cases: list[rc.Case], fast: bool = False, pattern: str = '') -> list[rc.Case]:
    """The cases to run: all, the fast ones, or those whose name contains ``pattern``."""
    return [c for c in cases if not (fast and c.slow) and pattern in c.name]


def run_all(cases: list[rc.Case], log: Callable[..., None] = print) -> list[tuple[rc.Case, list[str], str, float]]:
    """Run every case in its own temporary folder, printing a line per case; (case, problems, line, seconds)."""
    results = []
    width = max(len(c.name) for c in cases)
    for i, case in enumerate(cases, 1):
        with tempfile.TemporaryDirectory(prefix=f'reliability-{case.name}-') as tmp:
            try:
                problems, line, seconds = rc.check(case, Path(tmp))
            except Exception as e:  # a broken harness step is a failing row, never a stopped table
                problems, line, seconds = [f'the harness failed: {type(e).__name__}: {e}'], '', 0.0
        results.append((case, problems, line, seconds))
        verdict = 'ok  ' if not problems else 'FAIL'
        log(f'[{i:3d}/{len(cases)}] {verdict} {case.table:9s} {case.name:{width}s} {seconds:5.1f} s'
            + (f'  {"; ".join(problems)}' if problems else ''), flush=True)
    return results


def _md(text: str) -> str:
    return text.replace('|', '\\|').replace('\n', ' ')


def report(results: list[tuple[rc.Case, list[str], str, float]], seconds: float, fresh: bool = False) -> str:
    """The markdown of ``results/reliability.md``."""
    from spsearch.provenance import markdown_header
    out = [markdown_header('Reliability: bad inputs, fault injection and security checks'), '']
    kinds = rc.sandbox_kind()
    how = ('each in a fresh interpreter (--fresh)' if fresh else 'forked from one process that had imported torch, '
           'timm, optuna, accelerate and spsearch once (signal and kill scenarios: fresh interpreters)')
    out += [f'Every case below ran as a subprocess of the repository\'s CLIs ({how}), sequentially, with one thread '
            f'each, in {seconds / 60:.1f} min. A bad input is handled when the command exits 2 with exactly one line '
            f'`error: ...` naming the problem, prints no `Traceback` and writes nothing; a fault is survived when '
            f'the command ends as its row says (130 and one line naming `--resume` for Ctrl-C, 1 and one line for a '
            f'runtime failure such as a full disk) and the work resumes; a security check passes when nothing '
            f'untrusted runs and no secret is written. The read-only output was {kinds["readonly"]}; the full disk '
            f'was {kinds["fulldisk"]}. The tables are `tools/reliability_cases.py`; '
            f'`tests/test_reliability.py` asserts every row.', '', '## Figures', '']
    for table in rc.TABLES:
        rows = [r for r in results if r[0].table == table]
        good = sum(1 for r in rows if not r[1])
        out.append(f'- {FIGURE[table].capitalize()}: **{good}/{len(rows)}**')
    failing = [r for r in results if r[1]]
    out += ['', '## Failing rows', '']
    if failing:
        out += ['| table | case | CLI | input or fault | issue kind | what broke |', '|---|---|---|---|---|---|']
        out += [f'| {c.table} | `{c.name}` | {c.cli} | {_md(c.what)} | {c.kind} | {_md("; ".join(p))} |'
                for c, p, _, _ in failing]
    else:
        out.append('None.')
    for table in rc.TABLES:
        out += ['', f'## {table.capitalize()}', '', '| case | CLI | input or fault | expected | result | s |',
                '|---|---|---|---|---|---|']
        for c, problems, line, secs in (r for r in results if r[0].table == table):
            expected = 'see the scenario' if c.scenario else f'exit {c.code}, one `{c.prefix.strip()}` line'
            got = (('ok' + (f': {_md(line)}' if line else '')) if not problems
                   else f'**FAIL**: {_md("; ".join(problems))}')
            out.append(f'| `{c.name}` | {c.cli} | {_md(c.what)} | {expected} | {got} | {secs:.1f} |')
    return '\n'.join(out) + '\n'


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C must reach the cases as it reaches a user's terminal: a shell's background job starts with SIGINT
    # ignored, which exec keeps (Python then never raises KeyboardInterrupt); a handled signal resets to default.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--fast', action='store_true', help='skip the slow cases (no result file)')
    parser.add_argument('-k', default='', metavar='TEXT', help='only cases whose name contains TEXT (no result file)')
    parser.add_argument('--list', action='store_true', help='print the tables and exit')
    parser.add_argument('--fresh', action='store_true',
                        help='run every command in a fresh interpreter (default: forked from one that imported torch, '
                             'timm, optuna, accelerate and spsearch once; several times faster)')
    parser.add_argument('--output', default=str(REPORT), help=f'the report (default {REPORT.relative_to(rc.ROOT)})')
    args = parser.parse_args(argv)
    cases = select(rc.CASES, args.fast, args.k)
    if args.list:
        for c in cases:
            print(f'{c.table:9s} {c.name:40s} {c.cli:12s} {c.what}')
        return 0
    if not cases:
        print(f'error: no case name contains {args.k!r} (see --list)', file=sys.stderr)
        return 2
    start = time.monotonic()
    with contextlib.nullcontext() if args.fresh else rc.fork_server():
        results = run_all(cases)
    seconds = time.monotonic() - start
    for table in rc.TABLES:
        rows = [r for r in results if r[0].table == table]
        if rows:
            print(f'{FIGURE[table]}: {sum(1 for r in rows if not r[1])}/{len(rows)}')
    if len(cases) == len(rc.CASES):
        from spsearch.io import atomic_write_text
        atomic_write_text(args.output, report(results, seconds, args.fresh))
        print(f'wrote {args.output} ({seconds / 60:.1f} min)')
    return 0 if all(not r[1] for r in results) else 1


if __name__ == '__main__':
    raise SystemExit(main())
