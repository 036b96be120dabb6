"""The search driver: Optuna over a ``SearchSpace`` under budgets, with proxy training and pruning.

One trial, on the main process:

1. sample a configuration (``stage<i>`` categoricals; the paper's alpha 1/2, G 2 is the first,
   enqueued trial of every study);
2. look up its exact GMACs and parameters; over a budget -> record the constraints
   (``trial.set_constraint``), end the trial as PRUNED, **no training**;
3. measure its latency on the target device (cached); over the latency budget -> the same;
4. proxy-train it with ``spsearch.train.train`` (every process, the same candidate), reporting
   top-1 after each epoch to the pruner; the value is the best proxy top-1 (percent).

With several processes (``accelerate launch``) only the main process talks to the storage and
samples; it broadcasts the candidate's ``TrainConfig`` to the others, all train it together, and
a prune decided on the main process stops all of them (``train()`` shares the callback's answer).

The study ends with exactly ``n_trials`` finished (COMPLETE or PRUNED) trials: a worker starts a
trial only while finished + running + queued trials are fewer, a trial interrupted by a killed
worker is re-queued with the same parameters (``storage.recover_orphans`` and the RDB heartbeat),
and a worker that finds it started one trial too many (a race between parallel workers) fails it
before doing any work.
"""
from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..errors import ConfigError, SPSearchError
from ..io import atomic_write_yaml
from ..space import Architecture, SearchSpace
from ..train import TrainConfig, TrainResult, make_accelerator, train
from .budgets import (
    Costs,
    LatencyCache,
    check_latency_budget,
    check_space_budgets,
    constraints,
    latency_protocol,
    measure_config_latency,
    violations,
)
from .config import SearchConfig
from .storage import (
    RETRY_OF,
    WORKER,
    StorageSpec,
    open_storage,
    recover_orphans,
    requeue,
    this_worker,
    worker_alive,
)

__all__ = ['IDENTITY_ATTR', 'SearchRun', 'run_search']

IDENTITY_ATTR = 'spsearch_identity'
STATUS = 'spsearch_status'
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class _Cancelled(Exception):
    """A trial started after the study already had enough trials in flight (parallel workers raced)."""


def _sampler(cfg: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    kind = cfg.sampler if cfg.sampler != 'auto' else ('nsga2' if cfg.multi_objective else 'tpe')
    if kind == 'random':
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == 'nsga2':
        return optuna.samplers.NSGAIISampler(population_size=max(4, min(50, cfg.n_trials // 4)), seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
        # constant_liar: parallel workers see each other's running trials and spread out
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, cfg.n_trials // 4)),
                                          constant_liar=True)


def _pruner(cfg: SearchConfig) -> optuna.pruners.BasePruner:
    if cfg.multi_objective or cfg.pruner == 'none':
        return optuna.pruners.NopPruner()
    if cfg.pruner == 'hyperband':
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.proxy_epochs, reduction_factor=3)
    if cfg.pruner == 'median':
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)


def _identity_diff(stored: dict[str, Any], now: dict[str, Any], prefix: str = '') -> list[str]:
    diffs = []
    for key in sorted(set(stored) | set(now)):
        a, b = stored.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _identity_diff(a, b, f'{prefix}{key}.')
        elif a != b:
            diffs.append(f'{prefix}{key}: {a!r} -> {b!r}')
    return diffs


@dataclass
class _Counts:
    finished: int = 0
    running: int = 0
    waiting: int = 0
    failed: int = 0


def _counts(trials: list[FrozenTrial]) -> _Counts:
    counts = _Counts()
    for t in trials:
        if t.state in _FINISHED:
            counts.finished += 1
        elif t.state == TrialState.RUNNING:
            counts.running += 1
        elif t.state == TrialState.WAITING:
            counts.waiting += 1
        elif t.state == TrialState.FAIL:
            counts.failed += 1
    return counts


@dataclass
class SearchRun:
    """The state of one search process: its config, space, study and output folder.

    Build it with ``SearchRun.open``, which validates everything (budgets, model, space, data,
    storage, study identity) before anything is written; then ``search()``.
    """

    cfg: SearchConfig
    space: SearchSpace
    spec: StorageSpec
    study: optuna.Study
    output: Path
    accelerator: Any = None
    log: Callable[[str], None] = print
    notes: list[str] = field(default_factory=list)
    latency_cache: LatencyCache | None = None
    protocol: dict[str, Any] | None = None
    started: float = field(default_factory=time.perf_counter)
    trained: int = 0

    # -- opening ---------------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, cfg: SearchConfig, *, accelerator: Any = None, log: Callable[[str], None] = print,
             command: str | None = None) -> SearchRun:
        """Validate ``cfg``, build the space, open (or create) the study; write ``search.yaml``.

        Raises:
            SPSearchError: On any bad input, before the study or its files are touched.
        """
        space = SearchSpace.build(cfg.model, cfg.alphas, cfg.groups, cfg.eval_img_size)
        notes = check_space_budgets(space, cfg.budgets)
        if not cfg.budgets:
            notes.append('no budget given: the search is unconstrained (--budget-gflops, --budget-params, '
                         '--budget-latency-ms)')
        if cfg.mode == 'search':
            _check_dataset(cfg)
        protocol = None
        if cfg.uses_latency and cfg.mode == 'search':
            protocol = latency_protocol(cfg.latency_device, cfg.latency_batch_size, cfg.latency_warmup,
                                        cfg.latency_repeats)
            if cfg.budget_latency_ms is not None and not cfg.resume:
                log(f'timing the {space.num_stages} stages of every choice on {protocol["device"]} to check '
                    f'--budget-latency-ms against the space ...')
                notes += check_latency_budget(space, cfg.budget_latency_ms, protocol)
        output = Path(cfg.output_dir)
        spec = StorageSpec(cfg.storage, output)
        must_exist = cfg.resume or cfg.mode != 'search'
        storage = open_storage(spec, must_exist=must_exist)
        names = optuna.get_all_study_names(storage)
        exists = cfg.study_name in names
        if must_exist and not exists:
            known = f' (it holds: {", ".join(names)})' if names else ' (it holds no study)'
            raise ConfigError(f'no study named {cfg.study_name!r} in {spec.display()}{known}; pass --study NAME'
                              + ('' if cfg.mode != 'search' else ', or drop --resume to start it'))
        identity = {'space': space.to_dict(), **cfg.identity()}
        existing_trials, others_live = 0, False
        if exists:
            stored = optuna.load_study(study_name=cfg.study_name, storage=storage).user_attrs.get(IDENTITY_ATTR)
            if stored is not None and cfg.mode == 'search':
                diffs = _identity_diff(stored, identity)
                if diffs:
                    raise ConfigError(f'study {cfg.study_name!r} was created with other settings '
                                      f'({"; ".join(diffs[:3])}); use the same options to continue it, or a new '
                                      f'--study/--output for a new search')
            existing = optuna.load_study(study_name=cfg.study_name, storage=storage).get_trials(deepcopy=False)
            existing_trials = len(existing)
            others_live = any(t.state == TrialState.RUNNING and worker_alive(t.user_attrs.get(WORKER) or {}) is True
                              for t in existing)
        seed = cfg.seed + existing_trials
        if cfg.storage is not None or others_live:
            seed += os.getpid()  # a shared storage may have parallel workers: do not sample in lockstep
        directions: list[Any] = ['maximize', 'minimize'] if cfg.multi_objective else ['maximize']
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
            try:
                study = optuna.create_study(storage=storage, study_name=cfg.study_name, sampler=_sampler(cfg, seed),
                                            pruner=_pruner(cfg), directions=directions, load_if_exists=exists)
                created = not exists
            except optuna.exceptions.DuplicatedStudyError:  # a parallel worker created it a moment ago
                study = optuna.load_study(study_name=cfg.study_name, storage=storage, sampler=_sampler(cfg, seed),
                                          pruner=_pruner(cfg))
                created = False
        if created:
            study.set_user_attr(IDENTITY_ATTR, identity)
            study.set_user_attr('spsearch_command', command or '')
            study.set_user_attr('spsearch_config', cfg.to_dict())
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(['proxy_top1', cfg.mo_metric] if cfg.multi_objective else ['proxy_top1'])
            paper = space.paper_arch()
            if space.contains(paper):
                study.enqueue_trial(space.optuna_params(paper), user_attrs={'baseline': True})
            else:
                notes.append(f'the paper configuration ({space.format(paper)}) is not in this space, so it is no '
                             f'trial; it is still retrained as the baseline')
        elif cfg.mode == 'search' and spec.is_sqlite and others_live:
            notes.append('another worker is running this SQLite study: SQLite serialises writers and may fail '
                         'with "database is locked"; for parallel workers use a journal file (--storage study.log) '
                         'or PostgreSQL/MySQL (--storage postgresql://...)')
        run = cls(cfg, space, spec, study, output, accelerator, log, notes, protocol=protocol)
        if cfg.mode == 'search':
            atomic_write_yaml(output / 'search.yaml', cfg.to_dict())
            if protocol is not None:
                run.latency_cache = LatencyCache(output / 'latency_cache.json')
        return run

    # -- the search loop -------------------------------------------------------------------------------------------

    def _main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def search(self) -> None:
        """Run trials until the study has ``n_trials`` finished ones (or ``timeout``); main process only."""
        cfg = self.cfg
        if self.accelerator is None:
            self.accelerator = make_accelerator(cfg.proxy_train_config())
        for note in self.notes:
            self.log(f'note: {note}')
        recovered = recover_orphans(self.study)
        if recovered:
            self.log(f'resume: trial(s) {", ".join(map(str, recovered))} were interrupted; re-queued with the same '
                     f'parameters')
        self.log(f'search: {self.space.model}, {self.space.size:,} configurations, '
                 f'{self._range_text()} | budgets: {self._budget_text()} | study {self.study.study_name!r} in '
                 f'{self.spec.display()} | {cfg.n_trials} trials, proxy {cfg.dataset} '
                 f'{cfg.proxy_epochs} epoch(s) x {cfg.train_samples or "all"} images at {cfg.proxy_img_size}px')
        if self.protocol is not None:
            # the first model timed in a process pays for thread pools and allocator growth: time one untimed
            measure_config_latency(self.space, self.space.bounds()[0][1], self.protocol)
        deadline = self.started + cfg.timeout if cfg.timeout else math.inf
        while True:
            counts = _counts(self.study.get_trials(deepcopy=False))
            if counts.finished >= cfg.n_trials:
                break
            if counts.waiting == 0 and counts.finished + counts.running >= cfg.n_trials:
                self.log(f'{counts.running} trial(s) still run on other workers; this worker stops')
                break
            if time.perf_counter() >= deadline:
                self.log(f'timeout: {cfg.timeout:g} s reached; {counts.finished}/{cfg.n_trials} trials finished')
                break
            try:
                self.study.optimize(self._objective, n_trials=1, gc_after_trial=True, show_progress_bar=False)
            except _Cancelled:
                continue

    def _range_text(self) -> str:
        (lo, _), (hi, _) = self.space.bounds('macs')
        (plo, _), (phi, _) = self.space.bounds('params')
        return (f'{lo / 1e9:.3f}-{hi / 1e9:.3f} GMACs, {plo / 1e6:.2f}-{phi / 1e6:.2f}M params at '
                f'{"x".join(map(str, self.space.input_size[1:]))}')

    def _budget_text(self) -> str:
        b = self.cfg.budgets
        if not b:
            return 'none'
        units = {'gmacs': 'GMACs', 'mparams': 'M params', 'latency_ms': 'ms'}
        return ', '.join(f'{v:g} {units[k]}' for k, v in b.items())

    def _check_slot(self, trial: optuna.Trial) -> None:
        """Cancel a freshly sampled trial that would exceed ``n_trials`` (parallel workers raced for the last slot)."""
        trials = self.study.get_trials(deepcopy=False)
        counts = _counts([t for t in trials if t.number != trial.number])
        ahead = sum(1 for t in trials if t.state == TrialState.RUNNING and t.number < trial.number)
        if counts.finished + ahead + counts.waiting + 1 > self.cfg.n_trials:
            trial.set_user_attr(STATUS, 'cancelled: the study already had enough trials in flight')
            raise _Cancelled

    def _objective(self, trial: optuna.Trial) -> float | tuple[float, float]:
        try:
            return self._evaluate(trial)
        except KeyboardInterrupt:
            # Optuna fails the trial; queue its parameters again so that --resume runs it, as after a kill
            trial.set_user_attr(STATUS, 'interrupted (Ctrl-C); re-queued')
            requeue(self.study, trial)
            raise

    def _evaluate(self, trial: optuna.Trial) -> float | tuple[float, float]:
        cfg = self.cfg
        trial.set_user_attr(WORKER, this_worker())
        enqueued = 'baseline' in trial.user_attrs or RETRY_OF in trial.user_attrs
        if not enqueued:
            self._check_slot(trial)
        t0 = time.perf_counter()
        config = self.space.suggest(trial)
        cost = self.space.cost(config)
        costs = Costs(cost.macs / 1e9, cost.params / 1e6)
        kwargs = self.space.model_kwargs(config)
        trial.set_user_attr('sp_alpha', [a if isinstance(a, str) else a for a in kwargs['sp_alpha']])
        trial.set_user_attr('sp_groups', list(kwargs['sp_groups']))
        trial.set_user_attr('gmacs', costs.gmacs)
        trial.set_user_attr('mparams', costs.mparams)
        head = f'trial {trial.number} [{self._progress_count()}/{cfg.n_trials}] {self.space.format(config)}' \
               f'{" (paper baseline)" if trial.user_attrs.get("baseline") else ""} | {costs.gmacs:.3f} GMACs ' \
               f'{costs.mparams:.2f}M'
        over = self._record_constraints(trial, costs)
        if over:
            return self._over_budget(trial, head, over)
        if self.protocol is not None:
            latency = self._latency(config)
            costs = Costs(costs.gmacs, costs.mparams, latency['median_ms'])
            trial.set_user_attr('latency_ms', latency['median_ms'])
            trial.set_user_attr('latency', latency)
            head += f' {latency["median_ms"]:.1f} ms'
            over = self._record_constraints(trial, costs)
            if over:
                return self._over_budget(trial, head, over)
        duplicate = self._duplicate_of(trial)
        if duplicate is not None:
            return self._reuse(trial, duplicate, head)
        self.log(head + ' | training')
        train_cfg = cfg.proxy_train_config(dict(kwargs))
        result = self._train(trial, train_cfg)
        self.trained += 1
        trial.set_user_attr('epochs', result.epochs_run)
        trial.set_user_attr('train_s', round(result.wall_s, 2))
        trial.set_user_attr('images_per_s', round(result.images_per_s, 1))
        trial.set_user_attr('peak_mem_mb', round(result.peak_mem_mb, 1))
        trial.set_user_attr('processes', self.accelerator.num_processes)
        trial.set_user_attr('final_top1', result.final_top1)
        trial.set_user_attr('best_top1', result.best_top1)
        trial.set_user_attr('trial_s', round(time.perf_counter() - t0, 2))
        if result.stopped_by == 'nonfinite':
            trial.set_user_attr(STATUS, 'diverged: the proxy loss became non-finite')
            self.log(f'  trial {trial.number}: diverged (non-finite loss) after {result.epochs_run} epoch(s)')
            raise optuna.TrialPruned('non-finite loss')
        if result.stopped_by == 'callback':
            trial.set_user_attr(STATUS, f'pruned after epoch {result.epochs_run}')
            self.log(f'  trial {trial.number}: pruned after epoch {result.epochs_run} '
                     f'(top1 {result.final_top1:.2f}, {result.wall_s:.1f} s)')
            raise optuna.TrialPruned(f'pruned after epoch {result.epochs_run}')
        trial.set_user_attr(STATUS, 'complete')
        self.log(f'  trial {trial.number}: top1 {result.best_top1:.2f} after {result.epochs_run} epoch(s) '
                 f'({result.wall_s:.1f} s)')
        if cfg.multi_objective:
            second = costs.gmacs if cfg.mo_metric == 'gmacs' else costs.latency_ms
            assert second is not None
            return result.best_top1, second
        return result.best_top1

    def _progress_count(self) -> int:
        return _counts(self.study.get_trials(deepcopy=False)).finished + 1

    def _record_constraints(self, trial: optuna.Trial, costs: Costs) -> list[str]:
        have = trial.constraints
        for key, value in constraints(costs, self.cfg.budgets).items():
            if key not in have:
                trial.set_constraint(key, value)
        return violations(costs, self.cfg.budgets)

    def _over_budget(self, trial: optuna.Trial, head: str, over: list[str]) -> float:
        trial.set_user_attr(STATUS, 'over budget: ' + '; '.join(over))
        self.log(f'{head} | over budget ({"; ".join(over)}): not trained')
        raise optuna.TrialPruned('over budget')

    def _latency(self, config: Architecture) -> dict[str, Any]:
        assert self.protocol is not None and self.latency_cache is not None
        key = LatencyCache.key(self.space, config, self.protocol)
        found = self.latency_cache.get(key)
        if found is None:
            found = measure_config_latency(self.space, config, self.protocol)
            self.latency_cache.put(key, found)
        return found

    def _duplicate_of(self, trial: optuna.Trial) -> FrozenTrial | None:
        for other in self.study.get_trials(deepcopy=False, states=_FINISHED):
            if other.number != trial.number and other.params == trial.params and 'epochs' in other.user_attrs:
                return other
        return None

    def _reuse(self, trial: optuna.Trial, other: FrozenTrial, head: str) -> float | tuple[float, float]:
        """A configuration trained before gets its earlier result instead of a second training."""
        trial.set_user_attr('duplicate_of', other.number)
        for key in ('epochs', 'final_top1', 'best_top1'):
            if key in other.user_attrs:
                trial.set_user_attr(key, other.user_attrs[key])
        if other.state == TrialState.PRUNED:
            trial.set_user_attr(STATUS, f'duplicate of pruned trial {other.number}')
            self.log(f'{head} | same as pruned trial {other.number}: not trained')
            raise optuna.TrialPruned('duplicate of a pruned trial')
        trial.set_user_attr(STATUS, f'duplicate of trial {other.number}')
        self.log(f'{head} | same as trial {other.number}: its result reused')
        return other.values[0] if not self.cfg.multi_objective else (other.values[0], other.values[1])

    def _train(self, trial: optuna.Trial, train_cfg: TrainConfig) -> TrainResult:
        acc = self.accelerator
        prune_allowed = not self.cfg.multi_objective and not trial.user_attrs.get('baseline')
        failure: list[BaseException] = []

        def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
            try:
                self.log(f'  trial {trial.number} epoch {epoch}/{train_cfg.epochs}: top1 {metrics["top1"]:.2f} '
                         f'loss {metrics["train_loss"]:.3f} {metrics.get("images_per_s", 0):.0f} img/s')
                if self.cfg.multi_objective:
                    return False
                trial.report(metrics['top1'], epoch)
                # asked even for the baseline: successive halving records its rungs there, which the others
                # are ranked against
                prune = trial.should_prune()
                return prune_allowed and prune
            except BaseException as e:  # stop every process together, then re-raise below
                failure.append(e)
                return True

        if acc.num_processes > 1:
            _broadcast({'cmd': 'train', 'trial': trial.number, 'config': train_cfg.to_dict()})
        result = train(train_cfg, accelerator=acc, epoch_callback=on_epoch)
        if failure:
            raise failure[0]
        return result


def _check_dataset(cfg: SearchConfig) -> None:
    """Fail now (one line) if the proxy data set is missing, not after the study was opened."""
    from ..data import DataConfig, dataset_info
    dataset_info(DataConfig(dataset=cfg.dataset, data_dir=cfg.data_dir, loader=cfg.loader,
                            batch_size=cfg.batch_size, train_samples=cfg.train_samples,
                            val_samples=cfg.val_samples, workers=cfg.workers, seed=cfg.seed))


def _broadcast(message: dict[str, Any] | None) -> dict[str, Any]:
    from accelerate.utils import broadcast_object_list
    box: list[Any] = [message]
    broadcast_object_list(box, from_process=0)
    return box[0]


def follow(accelerator: Any, log: Callable[[str], None] = print) -> None:
    """A non-main process: train each candidate the main process broadcasts, until it says stop.

    Raises:
        ConfigError: If the main process stopped on bad input (the same one-line error).
    """
    rank = accelerator.process_index
    while True:
        message = _broadcast(None)
        if message['cmd'] == 'stop':
            return
        if message['cmd'] == 'error':
            raise ConfigError(message['message'])
        cfg = TrainConfig.from_dict(message['config'], source='broadcast')
        log(f'[rank {rank}] trial {message["trial"]}: training {cfg.model_kwargs}')
        train(cfg, accelerator=accelerator)


def run_search(cfg: SearchConfig, *, accelerator: Any = None, log: Callable[[str], None] | None = None,
               command: str | None = None) -> SearchRun | None:
    """Run ``cfg``'s search (its ``mode`` decides: search, retrain, report); the main process returns the run.

    With several processes the main process leads and the others ``follow``; each process must
    call this with the same ``cfg`` and the accelerator of its launch.

    Raises:
        SPSearchError: On bad input, on every process.
    """
    from .reports import write_reports
    from .retrain import retrain

    log = log or _default_log
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the driver prints its own line per trial
    if accelerator is None and cfg.mode == 'search':
        accelerator = make_accelerator(cfg.proxy_train_config())
    if accelerator is not None and not accelerator.is_main_process:
        follow(accelerator, log=lambda s: print(s, flush=True) if cfg.progress else None)
        return None
    distributed = accelerator is not None and accelerator.num_processes > 1
    try:
        run = SearchRun.open(cfg, accelerator=accelerator, log=log, command=command)
        if cfg.mode == 'search':
            run.search()
    except SPSearchError as e:
        if distributed:
            _broadcast({'cmd': 'error', 'message': str(e)})
        raise
    except BaseException:
        if distributed:
            _broadcast({'cmd': 'error', 'message': 'the main process failed; see its traceback'})
        raise
    if distributed:
        _broadcast({'cmd': 'stop'})
    wall = time.perf_counter() - run.started if cfg.mode == 'search' else None
    write_reports(run, search_wall_s=wall)
    if cfg.mode in ('search', 'retrain') and cfg.retrain_top > 0:
        retrain(run)
        write_reports(run, search_wall_s=wall, total_wall_s=time.perf_counter() - run.started)
    return run


def _default_log(text: str) -> None:
    print(text, flush=True, file=sys.stdout)
