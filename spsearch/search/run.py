"""The three entry points of a search: ``search`` (search, report, retrain), ``retrain`` and ``report``.

``search(cfg)`` opens (or resumes) the study, runs trials until it has ``n_trials`` finished ones
(COMPLETE or PRUNED) or ``timeout`` passed, writes the reports, retrains the winners and writes
the reports again. It ends with exactly ``n_trials`` finished trials: a worker starts a trial only
while finished + running + queued trials are fewer, a trial interrupted by a killed worker is
re-queued with the same parameters (``storage.recover_orphans`` and the heartbeat, checked after
every trial), a worker whose remaining trials all run on other workers waits for them (and runs
any that lose their worker), and a worker that finds it started one trial too many (a race
between parallel workers) cancels it before doing any work. ``retrain(cfg)`` and ``report(cfg)``
work on an existing study.

Every entry point owns the output folder while it runs (``spsearch.io.lock_folder``): one process
writes a folder's reports and retrains. Parallel workers of one study share its storage, each
with its own ``--output``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from ..errors import Interrupted, SPSearchError
from ..train import make_accelerator
from .budgets import describe_budgets, measure_config_latency
from .config import SearchConfig
from .objective import FINISHED, Cancelled, Objective
from .processes import ProcessGroup
from .reports import write_reports
from .retraining import retrain_winners
from .storage import recover_orphans
from .study import OpenStudy, open_existing, open_search

__all__ = ['report', 'retrain', 'search']

Log = Callable[[str], None]


def _default_log(text: str) -> None:
    print(text, flush=True, file=sys.stdout)


def search(cfg: SearchConfig, *, accelerator: Any = None, log: Log | None = None,
           command: str | None = None) -> OpenStudy | None:
    """Search, write the reports, retrain the winners; the main process returns the open study.

    With several processes the main process leads and the others follow (``ProcessGroup``); each
    process must call this with the same ``cfg`` and the accelerator of its launch.

    Raises:
        SPSearchError: On bad input, on every process.
    """
    log = log or _default_log
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the objective prints its own line per trial
    _quiet_interrupts()
    group = ProcessGroup(accelerator if accelerator is not None else make_accelerator(cfg.proxy_train_config()))
    if not group.is_main:
        group.follow(log=lambda s: print(s, flush=True) if cfg.progress else None)
        group.close()
        return None
    opened: OpenStudy | None = None
    try:
        try:
            opened = open_search(cfg, log=log, command=command)
            started = time.perf_counter()
            _optimize(opened, Objective(opened, group, log), log, started)
        except SPSearchError as e:
            group.fail(str(e))
            raise
        except KeyboardInterrupt:
            group.fail('interrupted (Ctrl-C on the main process)')
            raise _interrupted(opened, 'during the search') from None
        except BaseException:
            group.fail('the main process failed; see its traceback')
            raise
        group.stop()
        group.close()
        wall = time.perf_counter() - started
        write_reports(opened, search_wall_s=wall)
        if cfg.retrain_top > 0:
            try:
                retrain_winners(opened, log)
            except KeyboardInterrupt:
                raise _interrupted(opened, 'during the verification') from None
            write_reports(opened, search_wall_s=wall, total_wall_s=time.perf_counter() - started)
        return opened
    finally:
        if opened is not None:
            opened.close()  # the output folder is free for the next command


class _NoInterruptTraceback(logging.Filter):
    """Drops Optuna's two records of a trial failed by Ctrl-C (a 25-line traceback, then "Trial N failed with
    value None."): the CLI says it in one line."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupted: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        text = record.getMessage()
        words = text.split()
        trial = words[1] if len(words) > 1 and words[0] == 'Trial' else ''
        if isinstance(error, KeyboardInterrupt) or 'KeyboardInterrupt' in text:
            self.interrupted.add(trial)
            return False
        if trial in self.interrupted and text.startswith(f'Trial {trial} failed with value'):
            self.interrupted.discard(trial)
            return False
        return True


def _quiet_interrupts() -> None:
    for handler in logging.getLogger('optuna').handlers:  # Optuna's own handler sees its child loggers' records
        if not any(isinstance(f, _NoInterruptTraceback) for f in handler.filters):
            handler.addFilter(_NoInterruptTraceback())


def _interrupted(opened: OpenStudy | None, when: str) -> Interrupted:
    """Ctrl-C: the reports of what finished, and one line saying how to continue."""
    if opened is None:
        return Interrupted(f'{when}, before the study was opened; nothing was written')
    with contextlib.suppress(Exception):  # a report that cannot be written must not hide the interruption
        write_reports(opened)
    finished = sum(1 for t in opened.study.get_trials(deepcopy=False) if t.state in FINISHED)
    return Interrupted(f'{when}; {finished}/{opened.cfg.n_trials} trials finished, reports in {opened.output}; '
                       f'continue with the same command and --resume (the interrupted trial or retrain runs again)')


def retrain(cfg: SearchConfig, *, log: Log | None = None) -> OpenStudy:
    """Retrain the winners of an existing study (and the paper's configuration); rewrite its reports.

    Raises:
        SPSearchError: If the study cannot be opened.
    """
    log = log or _default_log
    opened = open_existing(cfg)
    try:
        write_reports(opened)
        if cfg.retrain_top > 0:
            retrain_winners(opened, log)
            write_reports(opened)
        return opened
    finally:
        opened.close()


def report(cfg: SearchConfig) -> OpenStudy:
    """Rewrite the reports of an existing study.

    Raises:
        SPSearchError: If the study cannot be opened.
    """
    opened = open_existing(cfg)
    try:
        write_reports(opened)
        return opened
    finally:
        opened.close()


def _optimize(opened: OpenStudy, objective: Objective, log: Log, started: float) -> None:
    """Run trials until the study has ``n_trials`` finished ones (or ``timeout`` passed); main process only."""
    cfg, space, study = opened.cfg, opened.space, opened.study
    for note in opened.notes:
        log(f'note: {note}')
    recovered = recover_orphans(study)
    if recovered:
        log(f'resume: trial(s) {", ".join(map(str, recovered))} were interrupted; re-queued with the same parameters')
    (lo, _), (hi, _) = space.bounds('macs')
    (plo, _), (phi, _) = space.bounds('params')
    train = cfg.proxy_train_config()
    log(f'search: {space.model}, {space.size:,} configurations, {lo / 1e9:.3f}-{hi / 1e9:.3f} GMACs, '
        f'{plo / 1e6:.2f}-{phi / 1e6:.2f}M params at {"x".join(map(str, space.input_size[1:]))} | budgets: '
        f'{describe_budgets(cfg.budgets)} | study {study.study_name!r} in {opened.spec.display()} | '
        f'{cfg.n_trials} trials, proxy {train.data.dataset} {cfg.proxy_epochs} epoch(s) x '
        f'{train.data.train_samples or "all"} images at {cfg.proxy_img_size}px')
    if opened.protocol is not None:
        # the first model timed in a process pays for thread pools and allocator growth: time one untimed
        measure_config_latency(space, space.bounds()[0][1], opened.protocol)
    deadline = started + cfg.timeout if cfg.timeout else math.inf
    waited = False
    while True:
        trials = study.get_trials(deepcopy=False)
        finished = sum(1 for t in trials if t.state in FINISHED)
        running = sum(1 for t in trials if t.state == TrialState.RUNNING)
        waiting = sum(1 for t in trials if t.state == TrialState.WAITING)
        if finished >= cfg.n_trials:
            break
        if time.perf_counter() >= deadline:
            log(f'timeout: {cfg.timeout:g} s reached; {finished}/{cfg.n_trials} trials finished')
            break
        if waiting == 0 and finished + running >= cfg.n_trials:
            if not waited:
                log(f'{running} trial(s) still run on other workers; waiting for them (one whose worker dies is '
                    f're-queued and runs here)')
            waited = True
            time.sleep(WAIT_POLL_S)
            _recover(study, log)
            continue
        try:
            study.optimize(objective, n_trials=1, gc_after_trial=True, show_progress_bar=False)
        except Cancelled:
            continue
        write_reports(opened, search_wall_s=time.perf_counter() - started)  # as README says: after every trial
        _recover(study, log)


WAIT_POLL_S = 5.0
"""Seconds between two looks at the study while the last trials run on other workers."""


def _recover(study: optuna.Study, log: Log) -> None:
    """Re-queue the trials of workers that died while this one ran: on this host at once (``recover_orphans``), on
    others once their heartbeat is stale (``fail_stale_trials``, which Optuna also runs before each trial)."""
    recovered = recover_orphans(study)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    if recovered:
        log(f'trial(s) {", ".join(map(str, recovered))} lost their worker; re-queued with the same parameters')
