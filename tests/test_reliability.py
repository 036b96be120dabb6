"""Every row of the reliability tables (``tools/reliability_cases.py``: bad inputs per CLI, fault injection,
security checks) as a test, run the way ``tools/reliability.py`` runs it for ``results/reliability.md``; and the
harness's own judging and report. The scenarios (signals, kill -9, full disk, parallel runs, tiny searches)
are marked slow; the bad inputs and audits run in the fast set, forked from one preloaded process."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from helpers import ROOT, load_script

rc = load_script('reliability_cases', ROOT / 'tools' / 'reliability_cases.py')
tool = load_script('reliability_tool', ROOT / 'tools' / 'reliability.py')


@pytest.fixture(scope='module')
def fork_server():
    with rc.fork_server() as server:
        yield server


@pytest.mark.parametrize('case', [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.slow else [])
                                  for c in rc.CASES])
def test_reliability_case(case, tmp_path, fork_server):
    problems, line, _ = rc.check(case, tmp_path)
    assert not problems, f'{case.what}: {"; ".join(problems)} (the user saw: {line})'


def test_the_tables_cover_every_cli_and_mode():
    names = [c.name for c in rc.CASES]
    assert len(names) == len(set(names))
    bad = [c for c in rc.CASES if c.table == rc.BAD_INPUT]
    for cli in ('train.py', 'search.py', 'benchmark.py', 'export.py'):
        assert sum(c.cli == cli for c in bad) >= 10, cli
    modes = {c.argv[0] for c in bad if c.cli == 'search.py'}
    assert {'report', 'retrain'} <= modes
    assert {c.table for c in rc.CASES} == set(rc.TABLES)
    assert all(c.scenario is not None for c in rc.CASES if c.table != rc.BAD_INPUT)


@pytest.mark.parametrize('result,problem', [
    (rc.Result(2, '', 'error: --x is bad; use --y\n', 0.1), None),
    (rc.Result(1, '', 'error: --x is bad\n', 0.1), 'exit 1, expected 2'),
    (rc.Result(2, '', 'Traceback (most recent call last):\n  File "x"\nValueError: x\nerror: x\n', 0.1), 'Traceback'),
    (rc.Result(2, '', 'warning: something\nerror: --x is bad\n', 0.1), '2 stderr lines'),
    (rc.Result(2, '', 'ValueError: x\n', 0.1), "does not start with 'error:'"),
    (rc.Result(2, '', 'error: something else\n', 0.1), "does not say '--x'"),
])
def test_the_one_line_contract_is_judged_strictly(result, problem):
    problems = rc.one_line_problems(result, 2, 'error: ', '--x')
    assert (not problems) if problem is None else any(problem in p for p in problems), problems


def test_a_written_or_changed_file_is_found(tmp_path):
    (tmp_path / 'kept').write_text('a')
    before = rc.snapshot(tmp_path)
    assert rc.changed(before, rc.snapshot(tmp_path)) == []
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'args.yaml').write_text('x')
    (tmp_path / 'kept').write_text('abc')
    assert rc.changed(before, rc.snapshot(tmp_path)) == ['out', 'out/args.yaml', 'kept']


def test_the_fork_server_gives_the_exit_code_streams_and_traceback_of_a_script(tmp_path, fork_server):
    script = tmp_path / 'script.py'
    script.write_text('import os, sys\nprint(os.getcwd(), os.environ["X"], sys.argv[1:])\n'
                      'if sys.argv[1] == "fail":\n    raise ValueError("boom")\nsys.exit(int(sys.argv[1]))\n')
    env = rc.base_env(X='set')
    done = fork_server.run([sys.executable, str(script), '3'], tmp_path, env, 60, False)
    assert done.code == 3 and done.stdout.strip() == f"{tmp_path} set ['3']"
    done = fork_server.run([sys.executable, str(script), 'fail'], tmp_path, env, 60, False)
    assert done.code == 1 and 'Traceback' in done.stderr and 'ValueError: boom' in done.stderr


def test_the_report_gives_the_figures_and_the_failing_rows():
    bad, fault, sec = (next(c for c in rc.CASES if c.table == t) for t in rc.TABLES)
    results = [(bad, [], 'error: x', 1.0), (fault, ['exit 1, expected 130'], '', 2.0), (sec, [], '', 0.5)]
    text = tool.report(results, 90.0)
    assert text.startswith('# Reliability') and '- Commit: `' in text and '- Machine: ' in text
    assert 'Bad inputs handled: **1/1**' in text and 'Faults survived: **0/1**' in text
    assert 'Security checks passed: **1/1**' in text
    failing = text.split('## Failing rows')[1].split('##')[0]
    assert f'`{fault.name}`' in failing and 'exit 1, expected 130' in failing and f'`{bad.name}`' not in failing


def test_storage_passwords_are_masked_in_every_url_form():
    from spsearch.provenance import mask_secrets
    assert mask_secrets('postgresql://:pw@host/db') == 'postgresql://:***@host/db'
    assert mask_secrets('postgresql://u:p@ss@h:5432/db') == 'postgresql://u:***@h:5432/db'
    assert mask_secrets("--storage 'sqlite:///a.db?password=pw' --n-trials 2") == \
        "--storage 'sqlite:///a.db?password=***' --n-trials 2"
    assert mask_secrets("'postgresql://u:pw@h/db'") == "'postgresql://u:***@h/db'"
    assert mask_secrets('https://host:8080/path') == 'https://host:8080/path'


def test_a_driver_message_that_echoes_part_of_a_password_is_redacted():
    from spsearch.provenance import redact
    url = 'postgresql://u:p@s3cr3t@127.0.0.1:9/db'  # psycopg2 takes 's3cr3t@127.0.0.1' as the host
    assert redact('could not translate host name "s3cr3t@127.0.0.1" to address', url) == \
        'could not translate host name "***@127.0.0.1" to address'
    assert redact('password=pw2x rejected', 'postgresql://h/db?password=pw2x') == 'password=*** rejected'
    assert redact('connection refused', 'sqlite:///a.db') == 'connection refused'


def test_only_a_full_run_writes_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr(tool, 'run_all', lambda cases: [(c, [], '', 0.0) for c in cases])
    assert tool.main(['--fresh', '-k', 'audit-', '--output', str(tmp_path / 'r.md')]) == 0
    assert not (tmp_path / 'r.md').exists()
    assert tool.main(['--fresh', '--output', str(tmp_path / 'r.md')]) == 0
    assert Path(tmp_path / 'r.md').read_text().count('**') >= 6
