"""``SearchConfig``: every option of a search, typed and validated; ``search.py``'s flags map onto it.

It also derives the two ``TrainConfig`` recipes a search uses: the short *proxy* training of each
candidate and the longer *retrain* of the winners (written to ``best.yaml``), and the *identity*
of a study: the settings a resumed run must share with the run that created the study.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..data.config import DataConfig
from ..errors import ConfigError
from ..models import format_alpha
from ..options import flat_fields, from_flat, nested, option, to_flat, validate
from ..space import ALPHA_CHOICES, GROUP_CHOICES
from ..train.config import TrainConfig
from .score import PROXY_SCORES, ProxyScore, proxy_score

__all__ = ['MODES', 'MO_METRICS', 'PRUNERS', 'SAMPLERS', 'SearchConfig']

MODES = ('search', 'verify', 'retrain', 'report')
PRUNERS = ('sh', 'hyperband', 'median', 'none')
SAMPLERS = ('auto', 'tpe', 'random', 'nsga2')
MO_METRICS = ('gmacs', 'latency')
LATENCY_DEVICES = ('cpu', 'cuda')
_BUDGETS = 'budgets (checked before any training)'
_NO_BUDGET = 'leave it out for no budget'


def _proxy_recipe() -> TrainConfig:
    """The default training recipe of a search: SGD 0.1 cosine, batch 128; 12,000 training images (one epoch by
    default), scored on 2,000 other training images held out (never the test split).

    12,000 x 1 epoch rather than 4,000 x 3: in ``results/proxy_fidelity.md`` it ranked architectures like a
    longer training at least as well (validation loss: Kendall tau 0.34 [0.03, 0.60] vs 0.28 [-0.03, 0.53])
    for 30 % less time (72 vs 102 s per candidate on 2 CPU cores), and its epoch-1 score is a final one,
    where the 3-epoch proxy's epoch-1 rung did not rank (0.18 [-0.14, 0.49])."""
    return TrainConfig(data=DataConfig(train_samples=12000, holdout=2000))


_SET_PER_RUN = frozenset({'model', 'model_kwargs', 'img_size', 'epochs', 'seed', 'output', 'resume', 'checkpoint',
                          'evaluate_only', 'log_interval', 'progress', 'save_checkpoints', 'experiment',
                          'stale_bn_eval', 'num_classes', 'pretrained', 'pretrained_path', 'checkpoint_hist'})
"""Options of the training recipe that the search sets for each proxy training and retrain itself."""


@dataclass
class SearchConfig:
    """One search (each field's ``help`` says what it means; flat option names are ``search.py``'s flags).

    ``train`` is the training recipe (``TrainConfig``: data, optimizer, schedule, precision, ...),
    offered as flat options except those the search sets per run (``_SET_PER_RUN``: the model and
    its SP settings, epochs, resolution, seed, output). ``proxy_train_config`` and
    ``retrain_train_config`` derive the two kinds of runs from it.
    """

    model: str = option('sp_resnet34', group='search space', help='base SP model (spsearch.list_sp_models())')
    alphas: list[str] = option(default_factory=lambda: [format_alpha(a) for a in ALPHA_CHOICES],
                               metavar='A', group='search space',
                               help='split-ratio choices per stage (vanilla for a plain conv)')
    groups: list[int] = option(default_factory=lambda: list(GROUP_CHOICES), minimum=1, metavar='G',
                               group='search space', help='group-count choices per stage')
    eval_img_size: int | None = option(None, minimum=1, metavar='PX', group='search space',
                                       help="resolution of the GMACs/params/latency evaluation (default: the "
                                            "model's, 224)")
    budget_gflops: float | None = option(None, minimum=0, open_min=True, metavar='G', group=_BUDGETS, hint=_NO_BUDGET,
                                         help='MAC budget in GMACs (1e9 multiply-accumulates, the paper\'s '
                                              '"GFLOPs") at --eval-img-size')
    budget_params: float | None = option(None, minimum=0, open_min=True, metavar='M', group=_BUDGETS, hint=_NO_BUDGET,
                                         help='parameter budget in millions')
    budget_latency_ms: float | None = option(None, minimum=0, open_min=True, metavar='MS', group=_BUDGETS,
                                             hint=_NO_BUDGET,
                                             help='latency budget in ms per batch of --latency-batch-size on '
                                                  '--latency-device')
    latency_batch_size: int = option(1, minimum=1, group=_BUDGETS, help='batch size of the latency protocol')
    latency_device: str = option('cpu', choices=LATENCY_DEVICES, group=_BUDGETS,
                                 help='device the latency is measured on')
    latency_warmup: int = option(3, minimum=0, group=_BUDGETS, help='untimed warm-up steps')
    latency_repeats: int = option(10, minimum=1, group=_BUDGETS, help='timed steps (the median is the latency)')
    measure_latency: bool = option(True, group=_BUDGETS,
                                   help='measure every candidate within the other budgets (latency Pareto front)')
    proxy_img_size: int = option(32, minimum=1, metavar='PX', group='proxy training',
                                 help='resolution of each proxy training')
    proxy_epochs: int = option(1, minimum=1, group='proxy training',
                               help='epochs of each proxy training (the pruner\'s maximum resource; the pruner '
                                    'acts from epoch 2, so with 1 epoch nothing is pruned)')
    proxy_score: str = option('val_loss', choices=tuple(PROXY_SCORES), group='proxy training',
                              help='what ranks candidates: the last epoch\'s validation loss (minimised; it ranked '
                                   'best in results/proxy_fidelity.md) or top-1 (maximised)')
    train: TrainConfig = nested(_proxy_recipe, exclude=_SET_PER_RUN)
    n_trials: int = option(30, minimum=1, group='optimisation',
                           help='finished trials the study ends with (over-budget ones included; they cost no '
                                'training)')
    timeout: float | None = option(480.0, minimum=0, metavar='S', group='optimisation', hint='0: no limit',
                                   help='start no new trial after S seconds of search (the default keeps the '
                                        'default search and its verification within 30 minutes on 2 CPU cores; '
                                        '0: no limit; --resume completes a study cut short)')
    sampler: str = option('auto', choices=SAMPLERS, group='optimisation',
                          help='auto: TPE, or NSGA-II with --multi-objective')
    pruner: str = option('sh', choices=PRUNERS, group='optimisation', help='sh = successive halving')
    multi_objective: bool = option(False, group='optimisation',
                                   help='optimise the proxy score and minimise --mo-metric with NSGA-II (Optuna cannot '
                                        'prune here)')
    mo_metric: str = option('gmacs', choices=MO_METRICS, group='optimisation', help='second objective')
    seed: int = option(0, minimum=0, group='optimisation',
                       help='seed of the sampler, the proxy trainings and the retrains')
    output: str | None = option(None, group='storage and output', help='output folder (default runs/search/<study>)')
    storage: str | None = option(None, group='storage and output',
                                 help='Optuna storage URL (sqlite:///x.db, postgresql://..., mysql://...) or journal '
                                      'file (x.log); default <output>/study.db')
    study: str | None = option(None, group='storage and output',
                               help='study name (default: model and budgets, e.g. sp_resnet34-gmacs2)')
    resume: bool = option(False, group='storage and output',
                          help='continue an existing study (interrupted trials re-run)')
    progress: bool = option(True, group='storage and output',
                            help='on a terminal, a bar of finished trials with its ETA under the trial lines')
    retrain_top: int = option(1, minimum=0, metavar='K', group='retrain',
                              help="verify the K best feasible architectures against the paper's, the best uniform "
                                   "one and a random in-budget one, retrained on paired seeds (0: skip)")
    retrain_epochs: int = option(3, minimum=1, group='retrain', help='epochs of each retrain')
    retrain_seeds: int = option(3, minimum=1, group='retrain',
                                help='seeds of every retrained architecture, the same for all (paired); the mean '
                                     '+- 95 %% CI and the verdicts need >= 2')
    retrain_train_samples: int | None = option(6000, minimum=1, metavar='N', group='retrain',
                                               help='training images of each retrain (none: all)')
    retrain_val_samples: int | None = option(5000, minimum=1, metavar='N', group='retrain',
                                             help='validation images of each retrain (none: all)')
    retrain_processes: int | None = option(None, minimum=1, metavar='N', group='retrain',
                                           help='accelerate launch processes per retrain (default: the GPUs, or 1)')

    def __post_init__(self) -> None:
        validate(self)
        if self.timeout == 0:
            self.timeout = None
        if self.study is not None and not re.fullmatch(r'[\w.\-]+', str(self.study)):
            raise ConfigError(f'--study {self.study!r} is invalid: use letters, digits, ".", "_" and "-"')
        if self.sampler == 'nsga2' and not self.multi_objective:
            raise ConfigError('--sampler nsga2 is for --multi-objective; use tpe or random for a single objective')
        if not self.train.data.holdout:
            raise ConfigError('--holdout is required: proxy scores select architectures, so they come from training '
                              'images held out (e.g. --holdout 2000), never from the test split')
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

    @property
    def score(self) -> ProxyScore:
        """The proxy score the study optimises (``--proxy-score``)."""
        return proxy_score(self.proxy_score)

    def proxy_train_config(self, model_kwargs: dict[str, Any] | None = None) -> TrainConfig:
        """The proxy recipe of one candidate: ``train`` at ``proxy_img_size`` for ``proxy_epochs``, nothing written."""
        return self.train.replace(
            model=self.model, model_kwargs=dict(model_kwargs or {}), img_size=self.proxy_img_size,
            epochs=self.proxy_epochs, seed=self.seed, output=None, progress=False, save_checkpoints=False, log_with=())

    def retrain_train_config(self, model_kwargs: dict[str, Any], output: str, experiment: str = '',
                             seed: int | None = None) -> TrainConfig:
        """The full recipe of a retrain, as ``train.py -c`` takes it (``best.yaml``); progress lines on.

        It trains on the training split (the proxy's holdout included) and is judged on the test split,
        which no selection has seen.
        """
        return self.train.replace(
            model=self.model, model_kwargs=dict(model_kwargs), img_size=self.proxy_img_size, holdout=None,
            train_samples=self.retrain_train_samples, val_samples=self.retrain_val_samples, epochs=self.retrain_epochs,
            seed=self.seed if seed is None else seed, output=output, progress=True, experiment=experiment)

    def identity(self) -> dict[str, Any]:
        """Settings a resumed study must keep (budgets, objective, proxy recipe, latency protocol)."""
        proxy = self.proxy_train_config().to_dict()
        for key in ('data_dir', 'workers', 'progress', 'log_interval', 'output', 'loader', 'log_with', 'device'):
            proxy.pop(key, None)
        ident: dict[str, Any] = {
            'budgets': self.budgets,
            'objective': (f'single:{self.score.column}' if not self.multi_objective else f'multi:{self.mo_metric}'
                          + ('' if self.proxy_score == 'top1' else f',{self.score.column}')),
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
        """The flat option names (``search.py``'s flags, YAML keys)."""
        return [f.name for f in flat_fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = 'options') -> SearchConfig:
        """Build from flat option values (dashes or underscores); unknown keys raise ``ConfigError``."""
        return from_flat(cls, values, source)

    def to_dict(self) -> dict[str, Any]:
        """The flat options, YAML-safe; ``search.py -c`` takes the result back."""
        return to_flat(self)

    def replace(self, **changes: Any) -> SearchConfig:
        """A validated copy with flat option ``changes`` applied."""
        return from_flat(type(self), changes, 'replace', base=self)
