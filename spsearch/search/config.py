"""``SearchConfig``: every option of a search, typed and validated; ``search.py``'s flags map onto it.

It also derives the two ``TrainConfig`` recipes a search uses: the short *proxy* training of each
candidate and the longer *retrain* of the winners (written to ``best.yaml``), and the *identity*
of a study: the settings a resumed run must share with the run that created the study.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..train.config import TrainConfig

__all__ = ['MODES', 'MO_METRICS', 'PRUNERS', 'SAMPLERS', 'SearchConfig']

MODES = ('search', 'retrain', 'report')
PRUNERS = ('sh', 'hyperband', 'median', 'none')
SAMPLERS = ('auto', 'tpe', 'random', 'nsga2')
MO_METRICS = ('gmacs', 'latency')
LATENCY_DEVICES = ('cpu', 'cuda')


@dataclass
class SearchConfig:
    """One search. Field names are ``search.py``'s flags with ``-`` as ``_``.

    Attributes:
        mode: ``search`` (search, report, retrain), ``retrain`` (retrain an existing study's winners),
            ``report`` (rewrite the reports of an existing study).
        model: Base SP model (``timm_plugins.list_sp_models()``).
        alphas: Split-ratio choices per stage (``vanilla``, ``1``, ``1/2``, ...).
        groups: Group-count choices per stage.
        eval_img_size: Resolution at which GMACs, parameters and latency are evaluated (default: the
            model's, 224 for the ImageNet-layout ResNets).
        budget_gflops: MAC budget in units of 1e9 multiply-accumulates (the paper's "GFLOPs").
        budget_params: Parameter budget in millions.
        budget_latency_ms: Latency budget in milliseconds per batch of ``latency_batch_size``.
        latency_batch_size: Batch size of the latency protocol.
        latency_device: ``cpu`` or ``cuda``.
        latency_warmup: Untimed warm-up steps of the latency protocol.
        latency_repeats: Timed steps; the median is the latency.
        measure_latency: Measure every candidate within the MAC/parameter budgets (for the latency
            Pareto front) even without a latency budget.
        dataset: Proxy data set (as ``train.py --dataset``).
        data_dir: Where it lies (default: its standard places).
        loader: Data loader (as ``train.py --loader``).
        proxy_img_size: Resolution of the proxy training.
        train_samples: Training images of each proxy training (a seeded subset).
        val_samples: Validation images of each proxy evaluation.
        proxy_epochs: Epochs of each proxy training (the pruner's maximum resource).
        batch_size: Batch size per process.
        lr: Peak learning rate (SGD, cosine).
        workers: Data loader workers.
        seed: Seed of the sampler, the proxy trainings and the retrains.
        n_trials: Finished trials (complete or pruned, over-budget included) the study should end with.
        timeout: Start no new trial after this many seconds of search (None: no limit). The default keeps
            ``python search.py --budget-gflops 2.0`` within 20 minutes on a 2-core CPU, retrain included;
            a study cut short ends with fewer than ``n_trials`` trials and ``--resume`` completes it.
        sampler: ``auto`` (TPE, or NSGA-II with ``multi_objective``), ``tpe``, ``random``, ``nsga2``.
        pruner: ``sh`` (successive halving), ``hyperband``, ``median`` or ``none``.
        multi_objective: Maximise accuracy and minimise ``mo_metric`` with NSGA-II (no pruning).
        mo_metric: Second objective: ``gmacs`` or ``latency``.
        output: Output folder (default ``runs/search/<study>``).
        storage: Optuna storage: a URL (``sqlite:///x.db``, ``postgresql://...``, ``mysql://...``) or a
            journal file path (``*.log``/``*.journal``); default ``<output>/study.db``.
        study: Study name (default from the model and the budgets).
        resume: Continue an existing study (it must exist).
        retrain_top: Retrain the K best feasible configurations (and the paper's) after the search; 0: none.
        retrain_epochs: Epochs of each retrain.
        retrain_train_samples: Training images of each retrain (None: the whole training set).
        retrain_val_samples: Validation images of each retrain (None: the whole validation set).
        retrain_processes: Processes of ``accelerate launch`` for each retrain (default: GPUs, or 1).
        progress: Print a line per trial and epoch.
    """

    mode: str = 'search'
    model: str = 'sp_resnet34'
    alphas: list[str] = field(default_factory=lambda: ['vanilla', '1', '1/2', '1/4', '1/8', '1/16'])
    groups: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    eval_img_size: int | None = None
    budget_gflops: float | None = None
    budget_params: float | None = None
    budget_latency_ms: float | None = None
    latency_batch_size: int = 1
    latency_device: str = 'cpu'
    latency_warmup: int = 3
    latency_repeats: int = 10
    measure_latency: bool = True
    dataset: str = 'fashion-mnist'
    data_dir: str | None = None
    loader: str = 'auto'
    proxy_img_size: int = 32
    train_samples: int | None = 4000
    val_samples: int | None = 2000
    proxy_epochs: int = 3
    batch_size: int = 128
    lr: float = 0.1
    workers: int = 2
    seed: int = 0
    n_trials: int = 30
    timeout: float | None = 780.0
    sampler: str = 'auto'
    pruner: str = 'sh'
    multi_objective: bool = False
    mo_metric: str = 'gmacs'
    output: str | None = None
    storage: str | None = None
    study: str | None = None
    resume: bool = False
    retrain_top: int = 1
    retrain_epochs: int = 3
    retrain_train_samples: int | None = 10000
    retrain_val_samples: int | None = 5000
    retrain_processes: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raise ``ConfigError`` naming the flag, its value and the valid range."""
        def flag(name: str) -> str:
            return '--' + name.replace('_', '-')

        def choice(name: str, choices: tuple[str, ...]) -> None:
            if getattr(self, name) not in choices:
                raise ConfigError(f'{flag(name)} {getattr(self, name)!r} is not supported; choose one of '
                                  f'{", ".join(choices)}')

        def integer(name: str, minimum: int, allow_none: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f'{flag(name)} {value!r} is invalid: it must be an integer >= {minimum}')

        for name in ('budget_gflops', 'budget_params', 'budget_latency_ms'):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f'{flag(name)} {value!r} is invalid: a budget must be a number > 0 '
                                  f'(leave it out for no budget)')
            setattr(self, name, float(value))
        if self.timeout is not None and (isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float))
                                         or self.timeout < 0):
            raise ConfigError(f'--timeout {self.timeout!r} is invalid: give seconds > 0, or 0 for no limit')
        if self.timeout == 0:
            self.timeout = None
        choice('mode', MODES)
        choice('sampler', SAMPLERS)
        choice('pruner', PRUNERS)
        choice('mo_metric', MO_METRICS)
        choice('latency_device', LATENCY_DEVICES)
        for name in ('n_trials', 'proxy_epochs', 'batch_size', 'latency_batch_size', 'latency_repeats',
                     'proxy_img_size', 'retrain_epochs'):
            integer(name, 1)
        for name in ('latency_warmup', 'seed', 'retrain_top', 'workers'):
            integer(name, 0)
        for name in ('train_samples', 'val_samples', 'retrain_train_samples', 'retrain_val_samples',
                     'eval_img_size', 'retrain_processes'):
            integer(name, 1, allow_none=True)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or self.lr <= 0:
            raise ConfigError(f'--lr {self.lr!r} is invalid: it must be a number > 0')
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f'--model {self.model!r} is invalid: give an SP model name such as sp_resnet34')
        if isinstance(self.alphas, (str, int, float)):
            self.alphas = [str(self.alphas)]
        self.alphas = [str(a) for a in self.alphas]
        if isinstance(self.groups, int):
            self.groups = [self.groups]
        if self.study is not None and not re.fullmatch(r'[\w.\-]+', str(self.study)):
            raise ConfigError(f'--study {self.study!r} is invalid: use letters, digits, ".", "_" and "-"')
        if self.sampler == 'nsga2' and not self.multi_objective:
            raise ConfigError('--sampler nsga2 is for --multi-objective; use tpe or random for a single objective')
        if self.multi_objective and self.mo_metric == 'latency' and not self.measure_latency:
            raise ConfigError('--multi-objective --mo-metric latency needs latency measurements: '
                              'drop --no-measure-latency')

    # -- derived -------------------------------------------------------------------------------------------------

    @property
    def budgets(self) -> dict[str, float]:
        """The budgets that are set, keyed ``gmacs``, ``mparams``, ``latency_ms``."""
        out = {'gmacs': self.budget_gflops, 'mparams': self.budget_params, 'latency_ms': self.budget_latency_ms}
        return {k: v for k, v in out.items() if v is not None}

    @property
    def uses_latency(self) -> bool:
        """Whether candidates get a latency measurement."""
        return self.measure_latency or self.budget_latency_ms is not None

    def default_study_name(self) -> str:
        """``sp_resnet34-gmacs2`` style: the model and the budgets, so a new budget is a new study."""
        parts = [self.model]
        for key, value in self.budgets.items():
            parts.append(f'{key.replace("_", "")}{value:g}')
        if self.multi_objective:
            parts.append(f'mo-{self.mo_metric}')
        return '-'.join(parts)

    @property
    def study_name(self) -> str:
        return self.study or self.default_study_name()

    @property
    def output_dir(self) -> str:
        return self.output or f'runs/search/{self.study_name}'

    def proxy_train_config(self, model_kwargs: dict[str, Any] | None = None) -> TrainConfig:
        """The proxy recipe of one candidate: short, nothing written."""
        return TrainConfig(
            model=self.model, model_kwargs=dict(model_kwargs or {}), dataset=self.dataset, data_dir=self.data_dir,
            loader=self.loader, img_size=self.proxy_img_size, train_samples=self.train_samples,
            val_samples=self.val_samples, workers=self.workers, epochs=self.proxy_epochs, batch_size=self.batch_size,
            lr=self.lr, seed=self.seed, output=None, progress=False, save_checkpoints=False)

    def retrain_train_config(self, model_kwargs: dict[str, Any], output: str, experiment: str = '') -> TrainConfig:
        """The full recipe of a retrain, as ``train.py -c`` takes it (``best.yaml``); progress lines on."""
        return TrainConfig(
            model=self.model, model_kwargs=dict(model_kwargs), dataset=self.dataset, data_dir=self.data_dir,
            loader=self.loader, img_size=self.proxy_img_size, train_samples=self.retrain_train_samples,
            val_samples=self.retrain_val_samples, workers=self.workers, epochs=self.retrain_epochs,
            batch_size=self.batch_size, lr=self.lr, seed=self.seed, output=output, progress=True,
            experiment=experiment)

    def identity(self) -> dict[str, Any]:
        """Settings a resumed study must keep (budgets, objective, proxy recipe, latency protocol)."""
        proxy = self.proxy_train_config().to_dict()
        for key in ('data_dir', 'workers', 'progress', 'log_interval', 'output', 'loader'):
            proxy.pop(key, None)
        ident: dict[str, Any] = {
            'budgets': self.budgets,
            'objective': f'multi:{self.mo_metric}' if self.multi_objective else 'single:proxy_top1',
            'pruner': 'none' if self.multi_objective else self.pruner,
            'proxy': proxy,
        }
        if self.uses_latency:
            ident['latency'] = {'batch_size': self.latency_batch_size, 'device': self.latency_device,
                                'warmup': self.latency_warmup, 'repeats': self.latency_repeats}
        return ident

    # -- (de)serialisation ---------------------------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = 'options') -> SearchConfig:
        """Build from a mapping (dashes or underscores); unknown keys raise ``ConfigError``."""
        values = {str(k).replace('-', '_'): v for k, v in values.items()}
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(f'{source} has unknown key(s) {", ".join(unknown)}; see search.py --help')
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f'{source}: {e}') from None

    def to_dict(self) -> dict[str, Any]:
        """YAML-safe values; ``search.py -c`` takes the result back."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> SearchConfig:
        return dataclasses.replace(self, **changes)
