"""The three entry points of a search: ``search`` (search, report, retrain), ``retrain`` and ``report``.

``search(cfg)`` opens (or resumes) the study, runs trials until it has ``n_trials`` finished ones
(COMPLETE or PRUNED) or ``timeout`` passed, writes the reports, retrains the winners and writes
the reports again. It ends with exactly ``n_trials`` finished trials: a worker starts a trial only
while finished + running + queued trials are fewer (``optuna.study.MaxTrialsCallback`` after each
trial, ``_optimize`` before the first), a trial interrupted by a killed worker is re-queued with the
same parameters (``storage.recover_orphans`` and the heartbeat, checked after every trial), a worker
whose remaining trials all run on other workers waits for them (and runs any that lose their
worker), and a worker that finds it started one trial too many (a race between parallel workers)
cancels it before doing any work. On a terminal a bar shows the finished trials and the ETA; on a
pipe each event is one plain line (``SearchProgress``). ``retrain(cfg)`` and ``report(cfg)`` work on
an existing study.

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
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from ..cli import raise_pending_interrupt
from ..errors import Interrupted, SPSearchError
from ..train import make_accelerator
from ..train.launch import tracker_names
from .budgets import describe_budgets, measure_config_latency
from .config import SearchConfig
from .objective import FINISHED, Cancelled, Objective
from .processes import ProcessGroup
from .reports import write_reports
from .retraining import check_retrains, retrain_winners
from .storage import recover_orphans
from .study import OpenStudy, open_existing, open_search

__all__ = ['SearchProgress', 'report', 'retrain', 'search']

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
    default_log = log is None
    log = log or _default_log
    if cfg.retrain_top > 0:
        tracker_names(cfg.train.log_with, cfg.output_dir)  # the retrains' trackers, checked before the search
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the objective prints its own line per trial
    _quiet_trial_failures()
    group = ProcessGroup(accelerator if accelerator is not None else make_accelerator(cfg.proxy_train_config()))
    if not group.is_main:
        group.follow(log=lambda s: None)  # only the main process prints (DDP checks every rank trains the same model)
        group.close()
        return None
    opened: OpenStudy | None = None
    try:
        try:
            opened = open_search(cfg, log=log, command=command)
            started = time.perf_counter()
            _optimize(opened, group, log, started, bar=cfg.progress and default_log and sys.stderr.isatty())
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
                rows = retrain_winners(opened, log)
            except KeyboardInterrupt:
                raise _interrupted(opened, 'during the verification') from None
            write_reports(opened, search_wall_s=wall, total_wall_s=time.perf_counter() - started)
            check_retrains(opened, rows)
        return opened
    finally:
        if opened is not None:
            opened.close()  # the output folder is free for the next command


class _QuietTrialFailures(logging.Filter):
    """Drops Optuna's two records of a trial failed by Ctrl-C or cancelled by the slot check (a 25-line traceback,
    then "Trial N failed with value None."): the CLI says each in one line of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.quieted: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        text = record.getMessage()
        words = text.split()
        trial = words[1] if len(words) > 1 and words[0] == 'Trial' else ''
        if isinstance(error, (KeyboardInterrupt, Cancelled)) or 'KeyboardInterrupt' in text:
            self.quieted.add(trial)
            return False
        if trial in self.quieted and text.startswith(f'Trial {trial} failed with value'):
            self.quieted.discard(trial)
            return False
        return True


def _quiet_trial_failures() -> None:
    for handler in logging.getLogger('optuna').handlers:  # Optuna's own handler sees its child loggers' records
        if not any(isinstance(f, _QuietTrialFailures) for f in handler.filters):
            handler.addFilter(_QuietTrialFailures())


def _interrupted(opened: OpenStudy | None, when: str) -> Interrupted:
    """Ctrl-C: the reports of what finished, and one line saying how to continue."""
    if opened is None:
        return Interrupted(f'{when}, before the study was opened; nothing was written')
    try:
        write_reports(opened)
    except Exception:  # e.g. a plot left half-drawn by the interruption: the text reports at least
        with contextlib.suppress(Exception):  # a report that cannot be written must not hide the interruption
            write_reports(opened, plots=False)
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
            rows = retrain_winners(opened, log)
            write_reports(opened)
            check_retrains(opened, rows)
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


def _optimize(opened: OpenStudy, group: ProcessGroup, log: Log, started: float, *, bar: bool = False) -> None:
    """Run trials until the study has ``n_trials`` finished ones (or ``timeout`` passed); main process only.

    ``study.optimize`` does the loop: ``timeout`` is what is left of ``--timeout``,
    ``MaxTrialsCallback`` over COMPLETE, PRUNED and RUNNING trials stops this worker once the
    finished trials and those in flight (here or on other workers) reach ``n_trials``, and a callback
    rewrites the reports, re-queues trials whose worker died and moves the progress bar after every
    trial. The loop around it stays hand-written for what Optuna has no callback for: it checks
    before the first trial (``MaxTrialsCallback`` is asked only after one, so ``optimize`` would first
    sample and store one trial more than a finished or fully busy study needs), and when the last
    trials run on other workers it waits for them, re-queueing any whose worker dies (Optuna's
    ``RetryFailedTrialCallback`` would copy the dead trial's attributes; see ``storage.requeue``).
    """
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
    with SearchProgress(cfg.n_trials, _counts(study)[0], log, enabled=bar, timeout=cfg.timeout) as progress:

        def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            raise_pending_interrupt()  # a Ctrl-C that landed in gc_after_trial's finalizers
            write_reports(opened, search_wall_s=time.perf_counter() - started)  # as README says: every trial
            _recover(study, progress.log)
            progress.update(study, cfg.score)

        objective = Objective(opened, group, progress.log)
        stop = MaxTrialsCallback(cfg.n_trials, states=(*FINISHED, TrialState.RUNNING))
        waited = False
        while True:
            finished, running, waiting = _counts(study)
            if finished >= cfg.n_trials:
                break
            if time.perf_counter() >= deadline:
                progress.log(f'timeout: {cfg.timeout:g} s reached; {finished}/{cfg.n_trials} trials finished')
                break
            if waiting == 0 and finished + running >= cfg.n_trials:
                if not waited:
                    progress.log(f'{running} trial(s) still run on other workers; waiting for them (one whose worker '
                                 'dies is re-queued and runs here)')
                waited = True
                time.sleep(WAIT_POLL_S)
                _recover(study, progress.log)
                continue
            left = None if deadline == math.inf else max(0.0, deadline - time.perf_counter())
            study.optimize(objective, timeout=left, gc_after_trial=True, catch=(Cancelled,), show_progress_bar=False,
                           callbacks=[stop, after_trial])
            raise_pending_interrupt()


def _counts(study: optuna.Study) -> tuple[int, int, int]:
    """Finished (COMPLETE or PRUNED), RUNNING and WAITING trials of ``study`` now."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return (sum(s in FINISHED for s in states), states.count(TrialState.RUNNING), states.count(TrialState.WAITING))


class SearchProgress:
    """The search's progress: on a terminal a tqdm bar of finished trials with its ETA (as Optuna's
    ``show_progress_bar``, which counts this call's trials, not the study's, and knows no resume), the
    lines above it; otherwise (a pipe, a log file, ``--no-progress``) only the lines, one per event.

    Args:
        total: Finished trials the study ends with (``n_trials``).
        done: Finished trials it has now (a resumed study starts there).
        log: Where lines go without a bar.
        enabled: Draw the bar (the caller checked for a terminal).
        timeout: ``--timeout`` in seconds, shown next to the bar; None: no limit.
    """

    def __init__(self, total: int, done: int, log: Log, *, enabled: bool, timeout: float | None = None) -> None:
        self._log = log
        self.bar: Any = None
        if enabled:
            from tqdm.auto import tqdm
            # smoothing 0: the ETA from the mean time per trial of this run, not from the last one
            self.bar = tqdm(total=total, initial=done, desc='search', unit='trial', dynamic_ncols=True,
                            smoothing=0, file=sys.stderr)
            if timeout:
                self.bar.set_postfix_str(f'timeout {self.bar.format_interval(timeout)}')

    def log(self, text: str) -> None:
        """One line, above the bar when there is one."""
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            self._log(text)

    def update(self, study: optuna.Study, score: Any) -> None:
        """Move the bar to the study's finished trials and show its best score so far."""
        if self.bar is None:
            return
        finished = _counts(study)[0]
        best = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
        if best and len(study.directions) == 1:
            top = max(best, key=lambda t: score.goodness(t.values[0]))
            self.bar.set_description(f'search (best {score.column} {score.format(top.values[0])}, trial {top.number})',
                                     refresh=False)
        self.bar.update(max(0, finished - self.bar.n))

    def __enter__(self) -> SearchProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


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
