"""``TrainConfig``: every option of a training run, typed, validated and serialisable.

``train.py`` builds one from YAML (``-c``) and flags; the search builds one per candidate. The
resolved config is written to ``args.yaml`` in the output folder, and ``TrainConfig.from_dict``
reads that file back (``python train.py -c runs/x/args.yaml`` repeats a run).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..data.config import DATASET_NAMES as DATASET_CHOICES
from ..data.config import LOADER_KINDS as LOADER_CHOICES
from ..errors import ConfigError

__all__ = ['DATASET_CHOICES', 'LOADER_CHOICES', 'MIXED_PRECISION_CHOICES', 'OPT_CHOICES', 'SCHED_CHOICES',
           'TrainConfig']

MIXED_PRECISION_CHOICES = ('no', 'fp16', 'bf16')
OPT_CHOICES = ('sgd', 'nesterov', 'momentum', 'adamw', 'adam', 'lamb', 'lion')
SCHED_CHOICES = ('cosine', 'step', 'multistep', 'none')


@dataclass
class TrainConfig:
    """One training run. Field names are the CLI flags with ``-`` as ``_``.

    Attributes:
        model: timm model name (SP models are registered by ``timm_plugins``).
        model_kwargs: Extra ``timm.create_model`` keyword arguments (``sp_alpha``, ``sp_groups``, ...).
            ``num_classes`` defaults to the data set's.
        dataset: One of ``DATASET_CHOICES``.
        data_dir: Where the data set lies (default: its standard places, see ``spsearch.data``).
        loader: ``auto`` picks the fastest available loader and says which.
        img_size: Input resolution (default: the model's ``pretrained_cfg``).
        mean: Normalisation mean override (default: the data set's).
        std: Normalisation std override (default: the data set's).
        train_samples: Train on a seeded subset of this many images.
        val_samples: Evaluate on a seeded subset of this many images.
        augment: Train-time augmentation (crop + flip).
        workers: Data loader worker processes / DALI threads.
        download: Allow a torchvision download of Fashion-MNIST/CIFAR when no local copy is found.
        epochs: Number of epochs.
        batch_size: Batch size per process.
        eval_batch_size: Evaluation batch size per process (default ``2 * batch_size``).
        opt: Optimizer, created with ``timm.optim.create_optimizer_v2``.
        lr: Peak learning rate.
        momentum: SGD momentum.
        weight_decay: Weight decay (not applied to norms and biases, timm's default).
        sched: LR schedule, created with ``timm.scheduler.create_scheduler_v2`` (per-step updates).
        warmup_epochs: Linear warm-up epochs.
        warmup_lr: LR at the start of warm-up.
        min_lr: Floor of the cosine schedule.
        decay_epochs: Step schedule: decay every this many epochs.
        decay_milestones: Multistep schedule: epochs at which to decay.
        decay_rate: Step/multistep decay factor.
        label_smoothing: Cross-entropy label smoothing.
        clip_grad: Clip the gradient norm to this value (None: no clipping).
        ema: Keep an exponential moving average of the weights (evaluated and exported too).
        ema_decay: EMA decay per step.
        channels_last: NHWC memory format.
        compile: Wrap the model in ``torch.compile``.
        mixed_precision: ``no``, ``fp16`` or ``bf16`` (through accelerate).
        seed: Seed of the initialisation, data order and augmentation.
        output: Output folder (None: write nothing, as the search's proxy trainings do).
        resume: Continue the run from this checkpoint (``True``/``"auto"``: ``<output>/last.pth``).
        checkpoint: Weights to evaluate with ``evaluate_only``.
        evaluate_only: Evaluate ``checkpoint`` and stop.
        log_interval: Steps between progress updates.
        progress: Show a progress bar (main process only).
        save_checkpoints: Write ``last.pth``/``best.pth`` every epoch (when ``output`` is set).
        experiment: Free-form label stored in the summary.
    """

    model: str = 'sp_resnet20'
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = 'fashion-mnist'
    data_dir: str | None = None
    loader: str = 'auto'
    img_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    train_samples: int | None = None
    val_samples: int | None = None
    augment: bool = True
    workers: int = 2
    download: bool = False
    epochs: int = 30
    batch_size: int = 128
    eval_batch_size: int | None = None
    opt: str = 'sgd'
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    sched: str = 'cosine'
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    decay_epochs: float = 30
    decay_milestones: tuple[int, ...] = (50, 100)
    decay_rate: float = 0.1
    label_smoothing: float = 0.0
    clip_grad: float | None = None
    ema: bool = False
    ema_decay: float = 0.999
    channels_last: bool = False
    compile: bool = False
    mixed_precision: str = 'no'
    seed: int = 0
    output: str | None = None
    resume: str | bool | None = None
    checkpoint: str | None = None
    evaluate_only: bool = False
    log_interval: int = 50
    progress: bool = True
    save_checkpoints: bool = True
    experiment: str = ''

    # fields that may change between an interrupted run and its resumption
    RESUMABLE_CHANGES = frozenset({
        'epochs', 'output', 'resume', 'checkpoint', 'evaluate_only', 'log_interval', 'progress',
        'workers', 'experiment', 'save_checkpoints', 'data_dir', 'download'})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; raise ``ConfigError`` naming the field, its value and the valid range."""
        def choice(name: str, choices: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in choices:
                raise ConfigError(f'{name}={value!r} is not supported; choose one of {", ".join(choices)}')

        def positive(name: str, allow_none: bool = False, allow_zero: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
                    value == 0 and not allow_zero):
                bound = '>= 0' if allow_zero else '> 0'
                raise ConfigError(f'{name}={value!r} is invalid: it must be a number {bound}')

        choice('dataset', DATASET_CHOICES)
        choice('loader', LOADER_CHOICES)
        choice('mixed_precision', MIXED_PRECISION_CHOICES)
        choice('opt', OPT_CHOICES)
        choice('sched', SCHED_CHOICES)
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError(f'model={self.model!r} is invalid: give a timm model name such as sp_resnet20')
        if not isinstance(self.model_kwargs, dict):
            raise ConfigError(f'model_kwargs must be a mapping of keyword: value, got {self.model_kwargs!r}')
        for name in ('epochs', 'batch_size'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f'{name}={value!r} is invalid: it must be an integer >= 1')
        for name in ('eval_batch_size', 'train_samples', 'val_samples', 'img_size'):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f'{name}={value!r} is invalid: it must be an integer >= 1 (or unset)')
        positive('lr')
        for name in ('momentum', 'weight_decay', 'warmup_lr', 'min_lr', 'label_smoothing', 'decay_rate'):
            positive(name, allow_zero=True)
        positive('clip_grad', allow_none=True)
        positive('decay_epochs')
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f'label_smoothing={self.label_smoothing!r} is invalid: it must be in [0, 1)')
        if not 0 < self.ema_decay < 1:
            raise ConfigError(f'ema_decay={self.ema_decay!r} is invalid: it must be in (0, 1)')
        for name in ('warmup_epochs', 'workers', 'seed'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f'{name}={value!r} is invalid: it must be an integer >= 0')
        if isinstance(self.log_interval, bool) or not isinstance(self.log_interval, int) or self.log_interval < 1:
            raise ConfigError(f'log_interval={self.log_interval!r} is invalid: it must be an integer >= 1')
        for name in ('mean', 'std'):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, (int, float)):
                    value = (float(value),)
                try:
                    value = tuple(float(v) for v in value)
                except (TypeError, ValueError):
                    raise ConfigError(f'{name}={value!r} is invalid: give one number or one per channel') from None
                if name == 'std' and any(v <= 0 for v in value):
                    raise ConfigError(f'std={value!r} is invalid: every entry must be > 0')
                setattr(self, name, value)
        self.decay_milestones = tuple(int(v) for v in self.decay_milestones)
        if self.evaluate_only and not self.checkpoint:
            raise ConfigError('evaluate_only needs a checkpoint: pass --checkpoint FILE '
                              '(a .safetensors, .pth or a training checkpoint)')
        if self.resume and not self.output and self.resume in (True, 'auto', 'true', 'True'):
            raise ConfigError('--resume without a path needs --output (the run folder holding last.pth)')

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = 'config') -> TrainConfig:
        """Build from a mapping (dashes or underscores); unknown keys raise ``ConfigError``."""
        values = {str(k).replace('-', '_'): v for k, v in values.items()}
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(f'{source} has unknown key(s) {", ".join(unknown)}; '
                              f'valid keys are the train.py options (see train.py --help)')
        for key in ('decay_milestones', 'mean', 'std'):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f'{source}: {e}') from None

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-safe values (tuples as lists)."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        out['model_kwargs'] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model_kwargs.items()}
        return out

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)
