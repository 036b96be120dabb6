"""The search across processes: kill -9 then --resume, parallel workers on a journal file and on a
real PostgreSQL server, a two-process ``accelerate launch`` that samples once per trial, and the
retrain mode. Every test runs ``search.py`` the way users do, in subprocesses (CPU only)."""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from spsearch.search.record import TrialRecord
from spsearch.search.storage import StorageSpec, open_storage

from helpers import ROOT

pytestmark = pytest.mark.slow  # subprocesses, kill -9, a PostgreSQL server, two-process launches
TINY = ['--model', 'sp_resnet20', '--dataset', 'synthetic', '--val-samples', '64', '--batch-size', '32',
        '--proxy-img-size', '16', '--workers', '0', '--no-measure-latency', '--retrain-top', '0', '--pruner', 'none',
        '--budget-gflops', '0.03']
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}  # two processes share two cores


def _search(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / 'search.py'), *TINY, *args]


def _finished(trials):
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def _load(storage: str, output: Path, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=open_storage(StorageSpec(storage, output)))


def _signal_inside_a_training(args: list[str], out: Path, study: str, sig: int) -> tuple[optuna.trial.FrozenTrial,
                                                                                         int, str]:
    """Start ``search.py args``, send ``sig`` while trial 1 or later proxy-trains; (that trial, exit code, stderr)."""
    proc = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    caught = None
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            if not (out / 'study.db').exists():
                continue
            try:
                trials = optuna.load_study(study_name=study, storage=f'sqlite:///{out}/study.db').get_trials()
            except (KeyError, optuna.exceptions.StorageInternalError):
                continue
            running = [t for t in trials if t.state == TrialState.RUNNING and t.number >= 1 and 'gmacs' in t.user_attrs]
            if running:
                time.sleep(1.0)  # inside the proxy training
                proc.send_signal(sig)
                caught = running[0]
                break
    finally:
        if proc.poll() is None and caught is None:
            proc.kill()
        proc.wait(timeout=120)
    stderr = proc.stderr.read().decode() if proc.stderr else ''
    assert caught is not None, f'no trial was caught running: {stderr[-2000:]}'
    return caught, proc.returncode, stderr


def test_ctrl_c_is_one_line_naming_resume_and_leaves_the_reports(tmp_path):
    """SIGINT mid-training: exit 130, one line (no Optuna traceback) saying what was kept and to use --resume;
    trials.csv and summary.md of what finished are written; --resume re-runs the interrupted trial."""
    out, n = tmp_path / 'run', 3
    args = _search('--train-samples', '512', '--proxy-epochs', '2', '--n-trials', str(n), '--output', str(out),
                   '--study', 'stopped', '--no-progress')
    caught, code, stderr = _signal_inside_a_training(args, out, 'stopped', signal.SIGINT)
    assert code == 130, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert 'Traceback' not in stderr and len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith('interrupted: during the search;') and '--resume' in lines[0]
    assert (out / 'trials.csv').exists() and (out / 'summary.md').exists()
    done = subprocess.run([*args, '--resume'], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = optuna.load_study(study_name='stopped', storage=f'sqlite:///{out}/study.db').get_trials()
    assert len(_finished(trials)) == n
    retries = [t for t in _finished(trials) if TrialRecord.of(t).retry_of == caught.number]
    assert len(retries) == 1 and retries[0].params == caught.params


def test_kill_9_then_resume_ends_with_exactly_n_trials(tmp_path):
    out, n = tmp_path / 'run', 4
    args = _search('--train-samples', '512', '--proxy-epochs', '2', '--n-trials', str(n), '--output', str(out),
                   '--study', 'killed', '--no-progress')
    killed, code, _ = _signal_inside_a_training(args, out, 'killed', signal.SIGKILL)
    assert code == -signal.SIGKILL

    done = subprocess.run(_search('--train-samples', '512', '--proxy-epochs', '2', '--n-trials', str(n), '--output',
                                  str(out), '--study', 'killed', '--resume'), cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f'trial(s) {killed.number} were interrupted' in done.stdout
    trials = optuna.load_study(study_name='killed', storage=f'sqlite:///{out}/study.db').get_trials()
    finished = _finished(trials)
    assert len(finished) == n
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [killed.number]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    retries = [t for t in finished if TrialRecord.of(t).retry_of is not None]
    assert len(retries) == 1 and TrialRecord.of(retries[0]).retry_of == killed.number
    assert retries[0].params == killed.params
    # every other finished trial was sampled once and run once
    assert all(TrialRecord.of(t).worker for t in finished)
    # Optuna's own CLI reads the study (optuna-dashboard takes the same storage URL)
    listed = subprocess.run([str(Path(sys.executable).parent / 'optuna'), 'trials', '--storage',
                             f'sqlite:///{out}/study.db', '--study-name', 'killed', '-f', 'json'],
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == len(trials)


def _two_workers(storage: str, tmp_path: Path, n: int) -> tuple[optuna.Study, list[subprocess.CompletedProcess]]:
    procs = [subprocess.Popen(_search('--train-samples', '256', '--proxy-epochs', '2', '--n-trials', str(n),
                                      '--storage', storage, '--study', 'shared', '--output', str(tmp_path / f'w{i}'),
                                      '--no-progress'),
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=500)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return _load(storage, tmp_path / 'w0', 'shared'), results


def _check_shared_study(study: optuna.Study, results: list[subprocess.CompletedProcess], n: int) -> None:
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
        assert 'locked' not in r.stderr and 'Traceback' not in r.stderr
    trials = study.get_trials()
    assert len(_finished(trials)) == n
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # a worker that raced for the last slot cancels its extra trial before any work; nothing else fails
    for t in trials:
        if t.state == TrialState.FAIL:
            assert TrialRecord.of(t).status.startswith('cancelled')
    baselines = [TrialRecord.of(t).baseline for t in trials if TrialRecord.of(t).baseline]
    assert baselines.count('paper') == 1 and baselines.count('uniform') <= 1  # enqueued once, by one worker
    workers = {(TrialRecord.of(t).worker or {})['pid'] for t in _finished(trials)}
    assert len(workers) == 2, 'both workers should have run trials'


def test_two_workers_share_a_journal_file(tmp_path):
    study, results = _two_workers(str(tmp_path / 'study.log'), tmp_path, n=6)
    _check_shared_study(study, results, n=6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL server (Debian's package) on a Unix socket; skipped where it is not installed."""
    bins = sorted(glob.glob('/usr/lib/postgresql/*/bin/initdb'))
    if not bins:
        pytest.skip('PostgreSQL is not installed (apt-get install -y postgresql)')
    pytest.importorskip('psycopg2')
    bindir = Path(bins[-1]).parent
    root = Path(tempfile.mkdtemp(prefix='pg', dir='/tmp'))
    data, sock = root / 'data', root / 'sock'
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        shutil.chown(root, 'postgres')
        shutil.chown(sock, 'postgres')
        as_user = ['runuser', '-u', 'postgres', '--']
    port = _free_port()
    subprocess.run([*as_user, str(bindir / 'initdb'), '-D', str(data), '-A', 'trust', '-U', 'postgres', '--no-sync'],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / 'pg_ctl'), '-D', str(data), '-l', str(root / 'log'), '-w', '-o',
                    f"-p {port} -k {sock} -c listen_addresses='' -c fsync=off", 'start'], check=True,
                   capture_output=True)
    try:
        # trust authentication accepts any password: the URL carries one to check that it is never written
        yield f'postgresql://postgres:s3cret-pw@/postgres?host={sock}&port={port}'
    finally:
        subprocess.run([*as_user, str(bindir / 'pg_ctl'), '-D', str(data), '-m', 'immediate', 'stop'],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_real_postgresql_server(tmp_path, postgres_url):
    study, results = _two_workers(postgres_url, tmp_path, n=6)
    _check_shared_study(study, results, n=6)
    # the storage password is in no file, study attribute or log line
    written = [p.read_text(errors='replace') for p in tmp_path.rglob('*') if p.is_file() and p.suffix != '.db']
    assert written and not [t for t in written if 's3cret-pw' in t]
    assert 's3cret-pw' not in json.dumps(study.user_attrs)
    assert all('s3cret-pw' not in r.stdout + r.stderr for r in results)
    assert 'postgres:***@' in (tmp_path / 'w0' / 'search.yaml').read_text()


def test_accelerate_two_processes_sample_once_per_trial(tmp_path):
    out, n = tmp_path / 'ddp', 3
    cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2',
           '--num_machines', '1', '--mixed_precision', 'no', '--dynamo_backend', 'no',
           *_search('--train-samples', '128', '--proxy-epochs', '1', '--n-trials', str(n), '--output', str(out),
                    '--study', 'ddp', '--progress')[1:]]
    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    trials = optuna.load_study(study_name='ddp', storage=f'sqlite:///{out}/study.db').get_trials()
    assert len(trials) == n and len(_finished(trials)) == n  # one sampler: n trials, not one set per process
    trained = [t for t in trials if 'epochs' in t.user_attrs]
    assert trained
    # only the main process prints (rank 1 trains every candidate too: DDP checks the models' shapes agree)
    assert not [line for line in (done.stdout + done.stderr).splitlines() if line.startswith('[rank')]
    lines = done.stdout.splitlines()
    assert len([line for line in lines if line.startswith('best: ')]) == 1, done.stdout[-2000:]
    assert all(t.user_attrs['images_per_s'] > 0 and t.user_attrs['processes'] == 2 for t in trained)


def _run_on_a_terminal(args: list[str], timeout: float = 300) -> str:
    """Run ``args`` with stdout and stderr on a pseudo-terminal of 120 columns; what it printed."""
    import fcntl
    import select
    import struct
    import termios
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', 24, 120, 0, 0))  # a terminal has a size
    proc = subprocess.Popen(args, cwd=ROOT, env=ENV, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    out, deadline = b'', time.time() + timeout
    try:
        while time.time() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the last writer closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == 0, out.decode(errors='replace')[-3000:]
    return out.decode(errors='replace')


def test_a_terminal_gets_a_progress_bar_with_an_eta(tmp_path):
    text = _run_on_a_terminal(_search('--n-trials', '3', '--train-samples', '64', '--timeout', '600', '--output',
                                      str(tmp_path)))
    assert re.search(r'search.*\| 1/3 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+s/trial, timeout 10:00\]', text), text
    assert re.search(r'\| 3/3 \[', text) and '\r' in text
    lines = text.replace('\r\n', '\n').splitlines()
    assert any(line.startswith('trial 2 [3/3] ') for line in lines)  # the event lines stay whole above the bar
    assert lines[-2].startswith('best: trial ') and lines[-1].startswith(f'reports: {tmp_path}/summary.md')


def test_a_pipe_gets_one_plain_line_per_event_then_the_best_the_verdicts_and_the_files(tmp_path):
    proc = subprocess.run(_search('--n-trials', '2', '--train-samples', '64', '--output', str(tmp_path),
                                  '--retrain-top', '1', '--retrain-seeds', '1', '--retrain-epochs', '1',
                                  '--retrain-train-samples', '64', '--retrain-val-samples', '64'),
                          cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    text = proc.stdout.decode()
    assert proc.returncode == 0, text[-3000:]
    assert '\r' not in text and '%|' not in text and 's/trial' not in text
    lines = text.splitlines()
    assert [line for line in lines if re.match(r'trial \d \[\d/2\] ', line)] and \
        [line for line in lines if line.startswith('retrain ') and line.endswith(('trained', 'done before'))
         or 'final top1' in line]
    tail = [line for line in lines if line.startswith(('best: ', 'verdict: ', 'reports: '))]
    assert tail == lines[-len(tail):], lines[-8:]  # the run ends with them
    assert tail[0].startswith('best: trial ') and tail[1].startswith('verdict: ')
    assert tail[-1].startswith(f'reports: {tmp_path}/summary.md')
