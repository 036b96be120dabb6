"""Optuna storages for the search: URLs and journal files, reachability, crash recovery.

* ``--storage`` takes an Optuna RDB URL (``sqlite:///x.db``, ``postgresql://...``, ``mysql://...``)
  or a journal file (a path ending in ``.log``, ``.journal`` or ``.jsonl``, or ``journal:PATH``);
  the default is ``<output>/study.db`` (SQLite), readable by ``optuna-dashboard`` and ``optuna``.
* Every trial records its worker (host, pid, process start time). A trial left RUNNING by a worker
  of this host that no longer exists (``kill -9``, a crash, a power cut) is failed and re-queued with
  the same parameters when a worker starts and before each of its trials (``recover_orphans``); the
  heartbeat does the same for workers on other machines (``fail_stale_trials`` with ``requeue`` as
  its callback): Optuna's own on RDB storages, ours on journal files (``JournalHeartbeatStorage``:
  Optuna 5's ``JournalStorage`` has none). So an interrupted study ends with exactly the requested
  number of finished trials, none lost.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import BaseJournalBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from ..errors import ConfigError
from ..provenance import mask_secrets, redact
from .record import TrialRecord

__all__ = [
    'HEARTBEAT_GRACE_S', 'HEARTBEAT_INTERVAL_S', 'JournalHeartbeatStorage', 'StorageSpec', 'open_storage',
    'recover_orphans', 'requeue', 'this_worker', 'worker_alive',
]

HEARTBEAT_INTERVAL_S = 30
HEARTBEAT_GRACE_S = 120

_JOURNAL_SUFFIXES = ('.log', '.journal', '.jsonl')
_HEARTBEAT_ATTR = 'spsearch:heartbeat'
"""Trial system attribute: the time (Unix seconds, the worker's clock) of the running trial's last heartbeat."""


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against pid reuse); None if unknown or gone."""
    try:
        stat = Path(f'/proc/{pid}/stat').read_text()
    except OSError:
        return None
    # fields after the parenthesised command name; starttime is field 22 overall
    return stat.rsplit(')', 1)[1].split()[19]


def this_worker() -> dict[str, Any]:
    """Identity of this process as stored with each trial."""
    return {'host': socket.gethostname(), 'pid': os.getpid(), 'started': _process_start(os.getpid())}


def worker_alive(worker: dict[str, Any]) -> bool | None:
    """Whether the worker that ran a trial still runs: True/False on this host, None for another host."""
    if worker.get('host') != socket.gethostname():
        return None
    pid = int(worker.get('pid', -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    except (OSError, ValueError, OverflowError):
        return False
    started = worker.get('started')
    return started is None or _process_start(pid) == started


class StorageSpec:
    """Where a study lives: ``kind`` is ``rdb`` or ``journal``; ``url`` an RDB URL or a journal file path.

    Args:
        storage: The ``--storage`` value, or None for the default SQLite file in ``output_dir``.
        output_dir: The search's output folder.
    """

    def __init__(self, storage: str | None, output_dir: str | os.PathLike[str]) -> None:
        if storage is None or storage == '':
            path = Path(output_dir) / 'study.db'
            self.kind, self.url = 'rdb', f'sqlite:///{path}'
        elif storage.startswith('journal:'):
            self.kind, self.url = 'journal', storage[len('journal:'):].removeprefix('//')
        elif '://' in storage:
            self.kind, self.url = 'rdb', storage
        elif storage.endswith(_JOURNAL_SUFFIXES):
            self.kind, self.url = 'journal', storage
        elif storage.endswith(('.db', '.sqlite', '.sqlite3')):
            self.kind, self.url = 'rdb', f'sqlite:///{storage}'
        else:
            raise ConfigError(f'--storage {storage!r} is neither a database URL (sqlite:///x.db, postgresql://..., '
                              f'mysql://...) nor a journal file (*.log, *.journal or journal:PATH)')

    @property
    def is_sqlite(self) -> bool:
        return self.kind == 'rdb' and self.url.startswith('sqlite')

    @property
    def file(self) -> Path | None:
        """The local file holding the study (SQLite or journal), if any."""
        if self.kind == 'journal':
            return Path(self.url)
        if self.is_sqlite:
            path = self.url.split(':///', 1)[1] if ':///' in self.url else ''
            return Path(path) if path and path != ':memory:' else None
        return None

    def display(self) -> str:
        """The location with any password masked, for logs and reports."""
        if self.kind == 'journal':
            return f'journal file {self.url}'
        return mask_secrets(self.url)

    def cli_hint(self) -> str:
        """How to read the study with Optuna's tools."""
        if self.kind == 'journal':
            return f'optuna-dashboard {self.url}'
        return f'optuna-dashboard {self.display()}'


class JournalHeartbeatStorage(JournalStorage, BaseHeartbeat):
    """Optuna's ``JournalStorage`` with the heartbeat Optuna gives only to RDB storages.

    Optuna 5.0's journal storage does not implement ``BaseHeartbeat``, so a worker killed on
    another machine would leave its trial RUNNING for ever. This class implements Optuna's
    heartbeat interface on the journal, which plugs it into Optuna's own machinery: ``optimize``
    runs a thread that calls ``record_heartbeat`` every ``heartbeat_interval`` seconds while a trial
    runs, and ``fail_stale_trials`` (before every trial, and in the search's loop) fails the RUNNING
    trials whose last heartbeat is older than ``grace_period`` and hands each to the callback
    (``requeue``, as on RDB). The heartbeat is a trial system attribute in the journal (one line per
    interval per running trial), timed by the worker's clock: the machines sharing a journal file
    must agree on the time to well within ``grace_period`` (NTP does). A trial that never beat is judged by its
    start time (Optuna's thread beats once as the trial starts).

    Args:
        backend: The journal backend (``JournalFileBackend``).
        heartbeat_interval: Seconds between heartbeats.
        grace_period: Seconds without a heartbeat after which a RUNNING trial is stale.
        heartbeat_stale_trial_callback: Called with the study and each trial failed as stale.
    """

    def __init__(self, backend: BaseJournalBackend, *, heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
                 grace_period: int = HEARTBEAT_GRACE_S, heartbeat_stale_trial_callback: Any = None) -> None:
        super().__init__(backend)
        if heartbeat_interval <= 0 or grace_period <= heartbeat_interval:
            raise ValueError(f'heartbeat_interval {heartbeat_interval} must be > 0 and below grace_period '
                             f'{grace_period}')
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # it ended between two beats
            self.set_trial_system_attr(trial_id, _HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        return [t._trial_id for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
                if now - _last_beat(t) > self.grace_period]

    def get_heartbeat_interval(self) -> int:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Any:
        return self.heartbeat_stale_trial_callback


def _last_beat(trial: FrozenTrial) -> float:
    """The time of ``trial``'s last heartbeat; its start for one that never beat (killed before its first beat, or
    run by an SPSearch without the journal heartbeat)."""
    beat = trial.system_attrs.get(_HEARTBEAT_ATTR)
    if beat is not None:
        return float(beat)
    return trial.datetime_start.timestamp() if trial.datetime_start is not None else time.time()


def _with_driver(url: str) -> str:
    """``postgresql://`` -> ``postgresql+psycopg2://`` where only psycopg2 is installed.

    SQLAlchemy >= 2.1 maps a bare ``postgresql://`` to psycopg 3; many installs (and our
    ``postgres`` extra) have psycopg2, which SQLAlchemy then does not try.
    """
    if not url.startswith('postgresql://'):
        return url
    import importlib.util
    if importlib.util.find_spec('psycopg') is None and importlib.util.find_spec('psycopg2') is not None:
        return 'postgresql+psycopg2://' + url[len('postgresql://'):]
    return url


def open_storage(spec: StorageSpec, *, must_exist: bool = False) -> BaseStorage:
    """Open (and for RDB URLs connect to) the storage, with a heartbeat that re-queues the trials of dead workers.

    Args:
        spec: Where the study lives.
        must_exist: Refuse to create a new SQLite or journal file (``--resume``).

    Raises:
        ConfigError: If the storage cannot be reached or opened, or (``must_exist``) its file is missing.
    """
    file = spec.file
    if file is not None and must_exist and not file.exists():
        raise ConfigError(f'no study at {file}: it does not exist; pass the --output/--storage of an existing study '
                          f'(or start one: search without --resume)')
    if file is not None and not file.parent.exists() and file.parent != Path(''):
        if spec.kind == 'journal' or must_exist:
            raise ConfigError(f'cannot open storage {spec.display()}: folder {file.parent} does not exist')
        file.parent.mkdir(parents=True, exist_ok=True)
    if spec.kind == 'journal':
        from optuna.storages.journal import JournalFileBackend
        try:
            _check_journal(file)
            return JournalHeartbeatStorage(JournalFileBackend(str(file)), heartbeat_stale_trial_callback=requeue)
        except OSError as e:
            raise ConfigError(f'cannot open storage {spec.display()}: {e.strerror or e}') from None
        except (ValueError, KeyError, TypeError) as e:  # the log is replayed on opening: a line that is not JSON
            raise ConfigError(f'{file} is not an Optuna journal file (JSON lines; {type(e).__name__}: '
                              f'{str(e)[:120]}); give another --storage path or restore the file') from None
    engine_kwargs: dict[str, Any] = {'pool_pre_ping': True}
    if spec.is_sqlite:
        # wait for a lock instead of failing at once with "database is locked"
        engine_kwargs['connect_args'] = {'timeout': 60}
    else:
        engine_kwargs['connect_args'] = {'connect_timeout': 10}
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    _with_driver(spec.url), engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_INTERVAL_S,
                    grace_period=HEARTBEAT_GRACE_S, heartbeat_stale_trial_callback=requeue)
        except ImportError:
            raise ConfigError(f'cannot open storage {spec.display()}: its database driver is missing; for '
                              f'PostgreSQL pip install "spsearch[postgres]" (psycopg2), for MySQL pip install '
                              f'pymysql') from None
        except Exception as e:  # sqlalchemy raises many kinds; all but a creation race mean the URL does not work
            if attempt < 2 and _schema_race(e):
                time.sleep(1 + attempt)  # another worker is creating the tables right now; they exist next time
                continue
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f'cannot reach storage {spec.display()}: {redact(first, spec.url)[:300]}') from None
    raise AssertionError('unreachable')


def _check_journal(file: Path | None) -> None:
    """Raise ``ValueError`` unless every complete line of ``file`` is a JSON object (Optuna skips only a last,
    unfinished line, and would fail on the rest at the next read, after a trial has started)."""
    if file is None or not file.exists():
        return
    with open(file, 'rb') as f:
        for number, line in enumerate(f, 1):
            if not line.endswith(b'\n') or not line.strip():
                continue
            if not isinstance(json.loads(line), dict):
                raise ValueError(f'line {number} is not a JSON object')


def _schema_race(error: Exception) -> bool:
    """Two workers creating Optuna's tables in one fresh database at once: one of them fails."""
    try:
        from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
    except ImportError:
        return False
    text = str(error).lower()
    return isinstance(error, (IntegrityError, ProgrammingError)) or (
        isinstance(error, OperationalError) and ('already exists' in text or 'duplicate' in text))


def requeue(study: optuna.Study, trial: FrozenTrial | optuna.Trial) -> None:
    """Queue a new trial with the parameters (and baseline mark) of an interrupted one.

    The RDB heartbeat's ``heartbeat_stale_trial_callback`` and ``recover_orphans`` use this rather than
    Optuna's ``RetryHeartbeatStaleTrialCallback`` because that one copies every user attribute of the stale
    trial into the retry (its ``worker``, ``status``, ``feasible``, costs) and marks the retry only in system
    attributes: the objective would then give the retry the slot check of a new trial (and cancel it when the
    study is full, losing the trial) instead of the failed trial's slot, and its record would describe the dead
    run. Here the retry carries only ``baseline`` and ``retry_of``.
    """
    record = TrialRecord.of(trial)
    retry_of = trial.number if record.retry_of is None else record.retry_of
    study.enqueue_trial(trial.params, user_attrs=record.as_user_attrs(retry_of=retry_of, baseline=record.baseline))


def recover_orphans(study: optuna.Study, trials: Iterable[FrozenTrial] | None = None) -> list[int]:
    """Fail and re-queue RUNNING trials whose worker on this host is gone; return their numbers.

    A trial whose worker runs on another host is left to the heartbeat (``fail_stale_trials``).
    Two workers recovering at once cannot both re-queue a trial: only the one whose state change
    succeeds does.
    """
    storage = study._storage
    recovered = []
    for trial in trials if trials is not None else study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.state != TrialState.RUNNING:
            continue
        record = TrialRecord.of(trial)
        worker = record.worker
        if not isinstance(worker, dict) or worker_alive(worker) is not False:
            continue
        try:
            record.update((storage, trial._trial_id),
                          status=f'interrupted: worker pid {worker.get("pid")} is gone; re-queued')
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        requeue(study, trial)
        recovered.append(trial.number)
    return recovered
