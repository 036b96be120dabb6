"""Opening a study: validate the settings, build the space, check the budgets, open or create the study.

``open_search`` prepares a search (it may create the study; everything is validated before the
storage or the output folder is touched); ``open_existing`` opens a study that must exist, for
``retrain`` and ``report``. Both return an ``OpenStudy``: the plain data the trial loop, the
reports and the retrain work from.

A new study gets, in order: its settings guard (``identity``: the space, budgets, objective, proxy
recipe and latency protocol, which a later run must share to continue it), the command and the
configuration it was started with (these three as study *system* attributes: they live in the
storage, so a worker on another machine checks against them, but ``optuna studies`` does not print
their kilobytes), short user attributes (model, budgets, score, a hash of the settings, the SPSearch
version), its metric names, and its two baselines as the first, enqueued trials: the paper's
alpha 1/2, G 2 and the best uniform architecture within the budgets (``budgets.best_uniform``),
proxy-evaluated like every candidate and never pruned.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ..errors import ConfigError
from ..io import FolderLock, atomic_write_yaml, check_folder_free, check_output_folder, lock_folder
from ..provenance import mask_secrets
from ..space import SearchSpace
from .budgets import (
    LatencyCache,
    best_uniform,
    check_latency_budget,
    check_space_budgets,
    describe_budgets,
    latency_protocol,
)
from .config import SearchConfig
from .record import TrialRecord
from .samplers import InBudgetSampler
from .storage import StorageSpec, open_storage, worker_alive

__all__ = ['OpenStudy', 'open_existing', 'open_search', 'settings_hash']

_SETTINGS_KEY = 'spsearch:settings'
"""Study system attribute: the settings a run must share to continue the study (``space`` plus
``SearchConfig.identity``); the resume guard compares them key by key."""
_CONFIG_KEY = 'spsearch:config'
"""Study system attribute: the flat configuration that created the study (``report`` and ``retrain`` read it)."""
_COMMAND_KEY = 'spsearch:command'
"""Study system attribute: the command line that created the study."""
_LEGACY = {_SETTINGS_KEY: 'identity', _CONFIG_KEY: 'config', _COMMAND_KEY: 'command'}
"""The user attributes that held them before they moved (studies made by SPSearch until 0.1.0 still open)."""


def settings_hash(settings: dict[str, Any]) -> str:
    """A short fingerprint of a study's settings (12 hex digits of the SHA-256 of their sorted JSON)."""
    text = json.dumps(settings, sort_keys=True, separators=(',', ':'), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _summary_attrs(cfg: SearchConfig, settings: dict[str, Any]) -> dict[str, Any]:
    """The study's user attributes: one short value each, so that ``optuna studies`` and optuna-dashboard stay
    readable. The full settings and configuration are system attributes (``_stored``)."""
    from .. import __version__
    return {'model': cfg.model, 'budgets': describe_budgets(cfg.budgets),
            'score': f'{cfg.score.column} ({cfg.score.direction})', 'settings_sha': settings_hash(settings),
            'spsearch': __version__}


def _stored(storage: optuna.storages.BaseStorage, study: optuna.Study, key: str) -> Any:
    """A value SPSearch stored with ``study`` (``_SETTINGS_KEY``, ...): a study system attribute, which lives in the
    storage itself (so workers on other machines read it too) and which ``optuna studies`` does not print; or, for a
    study an earlier SPSearch made, the user attribute that held it."""
    system = storage.get_study_system_attrs(storage.get_study_id_from_name(study.study_name))
    if key in system:
        return system[key]
    return study.user_attrs.get(_LEGACY[key])


@dataclass
class OpenStudy:
    """An opened study and what it was opened with: the data the loop, the reports and the retrain use.

    Attributes:
        cfg: The configuration of this run.
        space: The search space.
        spec: Where the study lives.
        study: The Optuna study (sampler and pruner of this run).
        output: The output folder.
        notes: Lines worth telling the user (a budget that constrains nothing, a parallel SQLite worker, ...).
        protocol: The latency protocol, when candidates get a latency (``search`` only).
        latency_cache: Its cache in the output folder.
        lock: This process' hold on the output folder (``close`` gives it up).
        writable: Whether this run may write to the storage (``report`` and ``verify`` only read it).
    """

    cfg: SearchConfig
    space: SearchSpace
    spec: StorageSpec
    study: optuna.Study
    output: Path
    notes: list[str] = field(default_factory=list)
    protocol: dict[str, Any] | None = None
    latency_cache: LatencyCache | None = None
    lock: FolderLock | None = None
    writable: bool = True

    def close(self) -> None:
        """Give up the output folder (the study stays readable)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        """The study's trials now (no deep copy)."""
        return self.study.get_trials(deepcopy=False)


def _space(cfg: SearchConfig) -> tuple[SearchSpace, list[str]]:
    space = SearchSpace.build(cfg.model, cfg.alphas, cfg.groups, cfg.eval_img_size)
    notes = check_space_budgets(space, cfg.budgets)
    if not cfg.budgets:
        notes.append('no budget given: the search is unconstrained (--budget-gflops, --budget-params, '
                     '--budget-latency-ms)')
    return space, notes


def _public(cfg: SearchConfig) -> dict[str, Any]:
    """The flat configuration as stored (``search.yaml``, the study's attributes): passwords masked."""
    values = cfg.to_dict()
    if values.get('storage'):
        values['storage'] = mask_secrets(values['storage'])
    return values


def _study_names(spec: StorageSpec, must_exist: bool) -> tuple[optuna.storages.BaseStorage, list[str]]:
    storage = open_storage(spec, must_exist=must_exist)
    return storage, optuna.get_all_study_names(storage)


def _sampler(cfg: SearchConfig, space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    """The configured sampler, wrapped so that it proposes only architectures within the MAC/parameter budgets."""
    kind = cfg.sampler if cfg.sampler != 'auto' else ('nsga2' if cfg.multi_objective else 'tpe')
    base: optuna.samplers.BaseSampler
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
        if kind == 'random':
            base = optuna.samplers.RandomSampler(seed=seed)
        elif kind == 'nsga2':
            base = optuna.samplers.NSGAIISampler(population_size=max(4, min(50, cfg.n_trials // 4)), seed=seed)
        else:
            # multivariate: one estimator over the joint per-stage choice; constant_liar: parallel workers see
            # each other's running trials and spread out
            base = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, cfg.n_trials // 4)),
                                              multivariate=True, constant_liar=True)
    return InBudgetSampler(base, space, cfg.budgets, seed=seed)


PRUNE_FROM_EPOCH = 2
"""No pruner acts on an epoch-1 score: in ``results/proxy_fidelity.md`` the epoch-1 rung of the 3-epoch proxy did
not rank (Kendall tau 0.18 [-0.14, 0.49] against the target), the epoch-2 rung did (0.39 [0.03, 0.68])."""


def _pruner(cfg: SearchConfig) -> optuna.pruners.BasePruner:
    if cfg.multi_objective or cfg.pruner == 'none' or cfg.proxy_epochs < PRUNE_FROM_EPOCH + 1:
        return optuna.pruners.NopPruner()  # nothing to prune: no rung before the last epoch that ranks
    if cfg.pruner == 'hyperband':
        return optuna.pruners.HyperbandPruner(min_resource=PRUNE_FROM_EPOCH, max_resource=cfg.proxy_epochs,
                                              reduction_factor=3)
    if cfg.pruner == 'median':
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=PRUNE_FROM_EPOCH - 1)
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=PRUNE_FROM_EPOCH, reduction_factor=3)


def _identity_diff(stored: dict[str, Any], now: dict[str, Any], prefix: str = '') -> list[str]:
    diffs = []
    for key in sorted(set(stored) | set(now)):
        a, b = stored.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += _identity_diff(a, b, f'{prefix}{key}.')
        elif a != b:
            diffs.append(f'{prefix}{key}: {a!r} -> {b!r}')
    return diffs


def _check_dataset(cfg: SearchConfig) -> None:
    """Fail now (one line) if the proxy data set is missing, truncated or smaller than one batch, or the model
    cannot take the proxy size: not inside trial 0, after the study was opened (a failed baseline and Optuna's
    traceback)."""
    from ..data import dataset_info
    from ..data.datasets import load_fashion_mnist
    from ..data.sampling import train_batches
    from ..train.loop import check_input_size
    train = cfg.proxy_train_config()
    info = dataset_info(train.data)
    if info.name == 'fashion-mnist' and info.root is not None:
        load_fashion_mnist(info.root)  # the payloads, not only the headers (cached: trial 0 reads them from memory)
    train_batches(info.num_train, train.data.batch_size, 1)
    check_input_size(train, info.num_classes, '--proxy-img-size')


def open_search(cfg: SearchConfig, *, log: Any = print, command: str | None = None) -> OpenStudy:
    """Validate ``cfg`` and open (or, without ``--resume``, create) its study; write ``search.yaml``.

    Raises:
        SPSearchError: On any bad input (budgets, model, space, data, storage, a study created with other
            settings), before the study or its files are touched.
    """
    space, notes = _space(cfg)
    _check_dataset(cfg)
    protocol = None
    if cfg.uses_latency:
        protocol = latency_protocol(cfg.latency_device, cfg.latency_batch_size, cfg.latency_warmup,
                                    cfg.latency_repeats)
        if cfg.budget_latency_ms is not None and not cfg.resume:
            log(f'timing the {space.num_stages} stages of every choice on {protocol["device"]} to check '
                f'--budget-latency-ms against the space ...')
            notes += check_latency_budget(space, cfg.budget_latency_ms, protocol)
    output = check_output_folder(cfg.output_dir)
    spec = StorageSpec(cfg.storage, output)
    check_folder_free(output, fix=_parallel_fix(output, spec))  # before the storage, which its holder may lock
    storage, names = _study_names(spec, must_exist=cfg.resume)
    if cfg.resume and cfg.study_name not in names:
        raise ConfigError(f'no study named {cfg.study_name!r} in {spec.display()}{_holds(names)}; pass --study NAME, '
                          f'or drop --resume to start it')
    # the storage is checked (opening a new default SQLite file made the folder; parallel openings are safe): from
    # here on this process owns the output folder, or stops naming its owner before it changes anything
    lock = _own(output, spec)
    try:
        return _open_search(cfg, space, notes, protocol, output, spec, storage, cfg.study_name in names, lock, command)
    except BaseException:
        lock.release()
        raise


def _open_search(cfg: SearchConfig, space: SearchSpace, notes: list[str], protocol: dict[str, Any] | None,
                 output: Path, spec: StorageSpec, storage: optuna.storages.BaseStorage, exists: bool,
                 lock: FolderLock, command: str | None) -> OpenStudy:
    """``open_search`` once the settings are checked and the output folder is held: open or create the study."""
    identity = {'space': space.to_dict(), **cfg.identity()}
    existing_trials, others_live, adopt = 0, False, False
    if exists:
        existing_study = optuna.load_study(study_name=cfg.study_name, storage=storage)
        stored = _stored(storage, existing_study, _SETTINGS_KEY)
        if stored is None and existing_study.get_trials(deepcopy=False):
            raise ConfigError(f'study {cfg.study_name!r} in {spec.display()} has trials but no stored settings to '
                              f'check against (an earlier SPSearch made it); continue it with that version, or start '
                              f'a new --study/--output')
        # created, then killed before its settings were stored: nothing ran in it, so it is set up now
        adopt = stored is None
        if stored is not None:
            diffs = _identity_diff(stored, identity)
            if diffs:
                raise ConfigError(f'study {cfg.study_name!r} was created with other settings '
                                  f'({"; ".join(diffs[:3])}); use the same options to continue it, or a new '
                                  f'--study/--output for a new search')
        existing = existing_study.get_trials(deepcopy=False)
        existing_trials = len(existing)
        others_live = any(t.state == TrialState.RUNNING and worker_alive(TrialRecord.of(t).worker or {}) is True
                          for t in existing)
    seed = cfg.seed + existing_trials
    if cfg.storage is not None or others_live:
        seed += os.getpid()  # a shared storage may have parallel workers: do not sample in lockstep
    directions: list[Any] = [cfg.score.direction, 'minimize'] if cfg.multi_objective else [cfg.score.direction]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
        sampler = _sampler(cfg, space, seed)
        try:
            study = optuna.create_study(storage=storage, study_name=cfg.study_name, sampler=sampler,
                                        pruner=_pruner(cfg), directions=directions, load_if_exists=exists)
            created = not exists
        except optuna.exceptions.DuplicatedStudyError:  # a parallel worker created it a moment ago
            study = optuna.load_study(study_name=cfg.study_name, storage=storage, sampler=_sampler(cfg, space, seed),
                                      pruner=_pruner(cfg))
            created = False
    if created or adopt:
        _initialise(storage, study, space, cfg, identity, command, notes)
    else:
        requeued = _ensure_baselines(study, space, cfg)
        if requeued:
            notes.append(f'baseline(s) {", ".join(requeued)} had no finished or queued trial (failed, or never '
                         f'enqueued): queued again')
    if spec.is_sqlite and others_live:
        notes.append('another worker is running this SQLite study: SQLite serialises writers and may fail '
                     'with "database is locked"; for parallel workers use a journal file (--storage study.log) '
                     'or PostgreSQL/MySQL (--storage postgresql://...)')
    atomic_write_yaml(output / 'search.yaml', _public(cfg))
    cache = LatencyCache(output / 'latency_cache.json') if protocol is not None else None
    return OpenStudy(cfg, space, spec, study, output, notes, protocol, cache, lock)


def _own(output: Path, spec: StorageSpec) -> FolderLock:
    """This process' hold on the search's output folder: one process writes a folder's reports and retrains.

    Parallel workers of one study share its storage, each with its own ``--output``.

    Raises:
        ConfigError: If another process holds the folder (naming it, and how a parallel worker is started).
    """
    return lock_folder(output, fix=_parallel_fix(output, spec))


def _parallel_fix(output: Path, spec: StorageSpec) -> str:
    """The end of a busy folder's error: how a parallel worker of the study is started instead."""
    shared = spec.url if spec.kind == 'journal' else spec.display()
    if spec.is_sqlite and spec.file is not None and spec.file.parent.resolve() == output.resolve():
        shared = str(spec.file)
    return f' (a parallel worker of this study: --storage {shared} with its own --output)'


def _initialise(storage: optuna.storages.BaseStorage, study: optuna.Study, space: SearchSpace, cfg: SearchConfig,
                identity: dict[str, Any], command: str | None, notes: list[str]) -> None:
    """A new study's attributes (the settings guard first), metric names and baselines."""
    study_id = storage.get_study_id_from_name(study.study_name)
    storage.set_study_system_attr(study_id, _SETTINGS_KEY, identity)
    storage.set_study_system_attr(study_id, _COMMAND_KEY, mask_secrets(command or ''))
    storage.set_study_system_attr(study_id, _CONFIG_KEY, _public(cfg))
    for key, value in _summary_attrs(cfg, identity).items():
        study.set_user_attr(key, value)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([cfg.score.column, cfg.mo_metric] if cfg.multi_objective else [cfg.score.column])
    if not space.contains(space.paper_arch()):
        notes.append(f'the paper configuration ({space.format(space.paper_arch())}) is not in this space, so it is '
                     f'no trial; it is still retrained as the baseline')
    _ensure_baselines(study, space, cfg)


_ALIVE = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)


def _ensure_baselines(study: optuna.Study, space: SearchSpace, cfg: SearchConfig) -> list[str]:
    """Enqueue the paper's and the best uniform architecture unless a trial of each is queued, running or finished
    (a baseline that failed on bad input, or a study killed before they were enqueued, gets them again)."""
    paper, uniform = space.paper_arch(), best_uniform(space, cfg.budgets)
    wanted = [('paper', paper)] if space.contains(paper) else []
    if uniform is not None and uniform != paper:
        wanted.append(('uniform', uniform))
    have = {TrialRecord.of(t).baseline for t in study.get_trials(deepcopy=False, states=_ALIVE)}
    queued = []
    for kind, arch in wanted:
        if kind not in have:
            study.enqueue_trial(space.optuna_params(arch), user_attrs=TrialRecord().as_user_attrs(baseline=kind))
            queued.append(kind)
    return queued


def _holds(names: list[str]) -> str:
    return f' (it holds: {", ".join(names)})' if names else ' (it holds no study)'


_THIS_RUN = frozenset({'output', 'storage', 'study', 'progress', 'retrain_top', 'retrain_epochs', 'retrain_seeds',
                       'retrain_train_samples', 'retrain_val_samples', 'retrain_processes'})
"""Options ``retrain`` and ``report`` take from their own command line; the rest come from the study."""


def open_existing(cfg: SearchConfig) -> OpenStudy:
    """Open ``cfg``'s study, which must exist (``retrain``, ``report``); nothing is written.

    The space, budgets and recipes are the study's own (the configuration stored when it was created);
    this run's options give only where the study is and how to retrain (``_THIS_RUN``).

    Raises:
        SPSearchError: If the storage or the study cannot be opened, or its stored configuration is invalid.
    """
    spec = StorageSpec(cfg.storage, Path(cfg.output_dir))
    storage, names = _study_names(spec, must_exist=True)
    if cfg.study is None and cfg.study_name not in names and len(names) == 1:
        cfg = cfg.replace(study=names[0])  # no --study, and the storage holds one study: that one
    if cfg.study_name not in names:
        raise ConfigError(f'no study named {cfg.study_name!r} in {spec.display()}{_holds(names)}; pass --study NAME')
    study = optuna.load_study(study_name=cfg.study_name, storage=storage)  # read only: no sampler or pruner runs
    stored = _stored(storage, study, _CONFIG_KEY)
    if isinstance(stored, dict):
        mine = cfg.to_dict()
        cfg = SearchConfig.from_dict({**stored, **{k: mine[k] for k in _THIS_RUN}, 'study': cfg.study_name},
                                     source=f'the stored configuration of study {cfg.study_name!r}')
    space, notes = _space(cfg)
    output = Path(cfg.output_dir)
    return OpenStudy(cfg, space, spec, study, output, notes, lock=_own(output, spec), writable=False)
