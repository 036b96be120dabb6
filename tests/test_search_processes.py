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
from types import SimpleNamespace

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from spsearch.search.record import TrialRecord
from spsearch.search.storage import StorageSpec, open_storage

from helpers import ROOT, end_process, run_while_paused

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


def _peek(db: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    """The trials of ``study`` in the SQLite file ``db`` that a search is writing; [] until it has created them.

    Read-only (``mode=ro``): a plain ``load_study`` creates missing tables, racing the search's own creation
    ("table study_directions already exists" in either process)."""
    if not db.exists():
        return []
    try:
        storage = optuna.storages.RDBStorage(f'sqlite:///file:{db}?mode=ro&uri=true')
        return optuna.load_study(study_name=study, storage=storage).get_trials()
    except (KeyError, optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError):
        return []  # no study yet, or the schema is half-created ("attempt to write a readonly database")


def _signal_inside_a_training(args: list[str], out: Path, study: str, sig: int) -> tuple[optuna.trial.FrozenTrial,
                                                                                         int, str]:
    """Start ``search.py args``, send ``sig`` while trial 1 or later proxy-trains; (that trial, exit code, stderr)."""
    proc = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    caught = None
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            trials = _peek(out / 'study.db', study)
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


def _wait_for_holder(lock_glob: str, proc: subprocess.Popen, timeout: float = 300) -> int:
    """Wait until a process holds a folder matching ``lock_glob`` (a ``.lock`` file naming a pid) while ``proc``
    runs; return that pid."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for lock in glob.glob(lock_glob):
            try:
                return int(json.loads(Path(lock).read_text())['pid'])
            except (OSError, ValueError, KeyError):
                pass  # written a moment from now
        time.sleep(0.2)
    raise AssertionError(f'no process held {lock_glob} (search exit code {proc.poll()})')


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie that nobody reaped yet does not)."""
    try:
        return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def test_a_second_search_on_one_output_is_refused_naming_the_first(tmp_path):
    """Parallel workers of one study share its storage, each with its own --output: a second search.py on the
    same --output exits 2 with one line naming the first (pid) and that fix, and changes nothing."""
    out, n = tmp_path / 'out', 2
    args = _search('--train-samples', '256', '--proxy-epochs', '1', '--n-trials', str(n), '--output', str(out),
                   '--study', 'owned', '--no-progress')
    first = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for_holder(str(out / '.lock'), first) == first.pid
        second = run_while_paused(first, args, cwd=ROOT, env=ENV)  # it holds the folder and cannot finish meanwhile
        assert second.returncode == 2, second.stderr[-2000:]
        assert second.stderr.count('\n') == 1 and second.stderr.startswith(f'error: --output {out} is in use by pid '
                                                                           f'{first.pid} (')
        assert f'--storage {out}/study.db with its own --output' in second.stderr
        assert first.wait(timeout=300) == 0, first.stderr.read() if first.stderr else ''
    finally:
        end_process(first)
    trials = optuna.load_study(study_name='owned', storage=f'sqlite:///{out}/study.db').get_trials()
    assert len(_finished(trials)) == n == len(trials)
    assert {(TrialRecord.of(t).worker or {}).get('pid') for t in trials} == {first.pid}


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=['term', 'int', 'kill9'])
def test_a_retrain_ends_with_the_search_however_it_is_killed(tmp_path, sig):
    """Killing search.py during a retrain ends its training process too (kill -9 included: the supervisor sees
    its parent die); --resume then retrains in the same folders, which no orphan holds."""
    out = tmp_path / 'out'
    args = _search('--train-samples', '128', '--proxy-epochs', '1', '--n-trials', '2', '--output', str(out),
                   '--study', 'verified', '--no-progress', '--retrain-top', '1', '--retrain-seeds', '1',
                   '--retrain-epochs', '2', '--retrain-train-samples', '256', '--retrain-val-samples', '64',
                   '--retrain-processes', '1')
    search = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        trainer = _wait_for_holder(str(out / 'retrain' / '*' / 'seed-*' / '.lock'), search)
        assert _alive(trainer)
        search.send_signal(sig)
        code = search.wait(timeout=120)
    finally:
        if search.poll() is None:
            search.kill()
            search.wait()
    assert code == {signal.SIGINT: 130}.get(sig, -sig)
    deadline = time.time() + 60
    while _alive(trainer) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(trainer), f'the training process {trainer} outlived search.py ({signal.Signals(sig).name})'
    if sig != signal.SIGKILL:
        return
    done = subprocess.run([*args, '--resume'], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = (out / 'retrain.csv').read_text().splitlines()[1:]
    assert rows and all(',trained,' in row or ',done before,' in row for row in rows), rows


def test_a_worker_killed_mid_trial_on_a_journal_is_replaced_by_the_survivor(tmp_path):
    """Two workers on a journal file, one killed (kill -9) inside a trial: the survivor re-queues that trial and
    finishes all n; no trial is left RUNNING."""
    storage, n = str(tmp_path / 'study.log'), 5
    procs = [subprocess.Popen(_search('--train-samples', '256', '--proxy-epochs', '2', '--n-trials', str(n),
                                      '--storage', storage, '--study', 'shared', '--output', str(tmp_path / f'w{i}'),
                                      '--no-progress'),
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    victim, survivor = procs
    killed = None
    try:
        deadline = time.time() + 300
        while killed is None and time.time() < deadline and victim.poll() is None:
            time.sleep(0.5)
            try:
                trials = _load(storage, tmp_path / 'w1', 'shared').get_trials()
            except (KeyError, ValueError):
                continue
            for t in trials:
                if t.state == TrialState.RUNNING and 'gmacs' in t.user_attrs and \
                        (TrialRecord.of(t).worker or {}).get('pid') == victim.pid:
                    victim.kill()
                    killed = t
                    break
        assert killed is not None, 'the victim ran no trial to kill'
        victim.wait(timeout=60)
        stdout, stderr = survivor.communicate(timeout=500)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert survivor.returncode == 0, stderr[-3000:]
    trials = _load(storage, tmp_path / 'w0', 'shared').get_trials()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len(_finished(trials)) == n
    retries = [t for t in trials if TrialRecord.of(t).retry_of == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params and retries[0].state != TrialState.FAIL
    assert 'spsearch:heartbeat' in killed.system_attrs  # the journal heartbeat ran while it lived


@pytest.mark.filterwarnings('ignore::UserWarning', 'ignore::optuna.exceptions.ExperimentalWarning')
def test_the_journal_heartbeat_requeues_a_trial_whose_worker_went_silent(tmp_path, monkeypatch):
    """The journal storage implements Optuna's heartbeat: Optuna's optimize beats for a running trial, and a trial
    that stopped beating for the grace period (its worker on another machine died) is failed and re-queued."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    import spsearch.search.storage as storage_module
    from spsearch.search.storage import JournalHeartbeatStorage
    storage = open_storage(StorageSpec(str(tmp_path / 'study.log'), tmp_path))
    assert isinstance(storage, JournalHeartbeatStorage) and is_heartbeat_enabled(storage)
    study = optuna.create_study(storage=storage, study_name='beat')
    study.optimize(lambda t: t.suggest_float('x', 0, 1), n_trials=1)
    assert 'spsearch:heartbeat' in study.trials[0].system_attrs  # Optuna's heartbeat thread called ours

    silent = study.ask({'x': optuna.distributions.FloatDistribution(0, 1)})
    storage.record_heartbeat(silent._trial_id)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[-1].state == TrialState.RUNNING  # beat just now
    now = time.time()
    monkeypatch.setattr(storage_module, 'time', SimpleNamespace(time=lambda: now + storage.grace_period + 1))
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials()
    assert trials[silent.number].state == TrialState.FAIL
    assert trials[-1].state == TrialState.WAITING and trials[-1].system_attrs['fixed_params'] == silent.params
    assert TrialRecord.of(trials[-1]).retry_of == silent.number
