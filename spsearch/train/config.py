"""``TrainConfig``: every option of a training run, typed, validated and serialisable.

Each option is one field (``spsearch.options``): its flag in ``train.py`` / ``python -m
spsearch.train``, its help and its check come from there. The data settings are the nested
``DataConfig`` (``cfg.data``), offered as flat options (``--dataset``, ``--batch-size``, ...). The
resolved config is written to ``args.yaml`` in the output folder, flat, and ``TrainConfig.from_dict``
reads that file back (``python train.py -c runs/x/args.yaml`` repeats a run). The search holds one
``TrainConfig`` as its training recipe and derives the proxy and retrain runs from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..data.config import DATASET_NAMES as DATASET_CHOICES
from ..data.config import LOADER_KINDS as LOADER_CHOICES
from ..data.config import DataConfig
from ..errors import ConfigError
from ..options import flat_fields, from_flat, nested, option, to_flat, validate
from .launch import DEVICE_CHOICES, TRACKER_CHOICES

__all__ = ['DATASET_CHOICES', 'LOADER_CHOICES', 'MIXED_PRECISION_CHOICES', 'OPT_CHOICES', 'SCHED_CHOICES',
           'TrainConfig']

MIXED_PRECISION_CHOICES = ('no', 'fp16', 'bf16')
OPT_CHOICES = ('sgd', 'nesterov', 'momentum', 'adamw', 'adam', 'lamb', 'lion')
SCHED_CHOICES = ('cosine', 'step', 'multistep', 'none')


@dataclass
class TrainConfig:
    """One training run (each field's ``help`` says what it means; flat option names as in ``to_dict``).

    The optimizer comes from ``timm.optim.create_optimizer_v2`` (weight decay not applied to norms
    and biases, timm's default), the schedule from ``timm.scheduler.create_scheduler_v2`` (updated
    every step), the EMA is timm's ``ModelEmaV3``. ``resume=True``/``'auto'`` continues from
    ``<output>/last.pth``; a path continues from that checkpoint.
    """

    model: str = option('sp_resnet20', group='model', help='timm model name; the SP models are registered')
    model_kwargs: dict[str, Any] = option(
        default_factory=dict, group='model',
        help='timm.create_model keyword arguments, e.g. sp_alpha=vanilla or "sp_alpha=(0.5,0.25,0.25)"')
    num_classes: int | None = option(
        None, minimum=1, group='model',
        help="classes of the model's head (timm's --num-classes; default: the data set's); more than the data set "
             "has only when fine-tuning from --pretrained/--pretrained-path/--initial-checkpoint weights")
    pretrained: bool = option(False, group='model',
                              help="start from the model's registered pretrained weights (timm.create_model("
                                   "pretrained=True); a head of another class count is re-initialised)")
    pretrained_path: str | None = option(
        None, group='model', metavar='FILE',
        help="start from these weights as if they were the model's pretrained ones (timm's --pretrained-path: "
             "pretrained_cfg_overlay=dict(file=FILE, num_classes=-1), the head re-initialised); implies --pretrained")
    data: DataConfig = nested(DataConfig)
    img_size: int | None = option(None, minimum=1, group='data', help="input resolution (default: the model's)")
    mean: tuple[float, ...] | None = option(None, group='data', help="normalisation mean (default: the data set's)")
    std: tuple[float, ...] | None = option(None, minimum=0, open_min=True, group='data',
                                           help="normalisation std (default: the data set's)")
    epochs: int = option(30, minimum=1, group='optimisation', help='number of epochs')
    opt: str = option('sgd', choices=OPT_CHOICES, group='optimisation',
                      help='timm optimizer (nesterov = SGD + Nesterov)')
    lr: float = option(0.1, minimum=0, open_min=True, group='optimisation', help='peak learning rate')
    momentum: float = option(0.9, minimum=0, group='optimisation', help='SGD momentum')
    weight_decay: float = option(5e-4, minimum=0, group='optimisation',
                                 help='weight decay (not on norms and biases)')
    sched: str = option('cosine', choices=SCHED_CHOICES, group='optimisation',
                        help='timm schedule, updated every step')
    warmup_epochs: int = option(0, minimum=0, group='optimisation', help='linear warm-up epochs')
    warmup_lr: float = option(1e-5, minimum=0, group='optimisation', help='learning rate at the start of warm-up')
    min_lr: float = option(0.0, minimum=0, group='optimisation', help='floor of the cosine schedule')
    decay_epochs: float = option(30, minimum=0, open_min=True, group='optimisation',
                                 help='step schedule: decay period in epochs')
    decay_milestones: tuple[int, ...] = option((50, 100), minimum=0, group='optimisation',
                                               help='multistep schedule: epochs at which to decay')
    decay_rate: float = option(0.1, minimum=0, group='optimisation', help='step/multistep decay factor')
    label_smoothing: float = option(0.0, minimum=0, maximum=1, open_max=True, group='optimisation',
                                    aliases=('--smoothing',), help='cross-entropy label smoothing')
    mixup: float = option(0.0, minimum=0, group='augmentation (timm.data.Mixup, RandomErasing)',
                          help='mixup alpha (0: off); with --cutmix, the batch gets one of them per step')
    cutmix: float = option(0.0, minimum=0, group='augmentation (timm.data.Mixup, RandomErasing)',
                           help='cutmix alpha (0: off)')
    mixup_prob: float = option(1.0, minimum=0, maximum=1, group='augmentation (timm.data.Mixup, RandomErasing)',
                               help='probability of mixup or cutmix per batch')
    mixup_switch_prob: float = option(0.5, minimum=0, maximum=1,
                                      group='augmentation (timm.data.Mixup, RandomErasing)',
                                      help='probability of cutmix rather than mixup when both are on')
    mixup_mode: str = option('batch', choices=('batch', 'pair', 'elem'),
                             group='augmentation (timm.data.Mixup, RandomErasing)',
                             help='mix per batch, per pair or per element (timm\'s --mixup-mode)')
    reprob: float = option(0.0, minimum=0, maximum=1, group='augmentation (timm.data.Mixup, RandomErasing)',
                           help='random erasing probability per image (0: off)')
    remode: str = option('pixel', choices=('pixel', 'rand', 'const'),
                         group='augmentation (timm.data.Mixup, RandomErasing)', help='random erasing fill')
    recount: int = option(1, minimum=1, group='augmentation (timm.data.Mixup, RandomErasing)',
                          help='random erasing regions per image')
    grad_accum_steps: int = option(
        1, minimum=1, group='optimisation', metavar='N',
        help='micro-batches whose gradients make one optimizer update (accelerate\'s gradient accumulation; the '
             'schedule and the EMA step per update; the last batches of an epoch that fill no group are left out)')
    clip_grad: float | None = option(None, minimum=0, open_min=True, group='optimisation',
                                     help='clip the gradient norm to this value')
    ema: bool = option(False, group='optimisation', aliases=('--model-ema',),
                       help='keep an EMA of the weights (evaluated and exported too)')
    ema_decay: float = option(0.999, minimum=0, maximum=1, open_min=True, open_max=True, group='optimisation',
                              aliases=('--model-ema-decay',), help='EMA decay per step')
    precise_bn_batches: int = option(
        20, minimum=0, group='optimisation',
        help='before every evaluation, recompute the BatchNorm statistics with the current weights on this many '
             'training batches (precise BN; 0: evaluate with the running statistics)')
    stale_bn_eval: bool = option(
        False, group='optimisation',
        help='with precise BN, also evaluate with the running statistics it replaces (stale_top1, stale_val_loss '
             'in log.csv; the running statistics are put back before the next epoch, as without precise BN)')
    channels_last: bool = option(False, group='speed', help='NHWC memory format')
    compile: bool = option(False, group='speed', aliases=('--torchcompile',), help='torch.compile the model')
    mixed_precision: str = option('no', choices=MIXED_PRECISION_CHOICES, group='speed',
                                  help='autocast through accelerate (GPU; bf16 is ~30x slower on AVX2 CPUs)')
    device: str = option('auto', choices=DEVICE_CHOICES, group='speed',
                         help="auto: accelerate's pick (CUDA, MPS, XPU, ... or CPU); cpu: CPU even with a GPU")
    output: str | None = option(None, group='run',
                                help='output folder (train.py default: runs/train/<dataset>-<model>-<time>; '
                                     'none: write nothing)')
    resume: str | bool | None = option(None, nargs='?', const='auto', metavar='CHECKPOINT', group='run',
                                       help='continue the run in --output (or from CHECKPOINT) exactly where it '
                                            'stopped')
    checkpoint: str | None = option(None, group='run', aliases=('--initial-checkpoint',),
                                    help='weights (.safetensors, .pth or a training checkpoint) to start training '
                                         'from (fine-tuning; same model and classes), or to --evaluate-only')
    evaluate_only: bool = option(False, group='run', help='evaluate --checkpoint on the validation split')
    log_interval: int = option(50, minimum=1, group='run', help='steps between progress updates')
    progress: bool = option(True, group='run', help='progress bar and a line per epoch (main process)')
    checkpoint_hist: int = option(
        0, minimum=0, metavar='N', group='run',
        help="also keep the N best epochs as checkpoint-<epoch>.pth.tar and the best as model_best.pth.tar "
             "(timm's --checkpoint-hist and CheckpointSaver names; 0: only last.pth/best.pth)")
    save_checkpoints: bool = option(True, group='run', help='write last.pth/best.pth every epoch (with --output)')
    experiment: str = option('', group='run', help='free-form label stored in summary.json')
    log_with: tuple[str, ...] = option((), choices=TRACKER_CHOICES, group='run',
                                       help="experiment trackers through accelerate (tensorboard, wandb, ...; all: "
                                            "every one installed), logging into --output; each needs its package")

    RESUMABLE_CHANGES: ClassVar[frozenset[str]] = frozenset({
        'epochs', 'output', 'resume', 'checkpoint', 'evaluate_only', 'log_interval', 'progress',
        'workers', 'experiment', 'save_checkpoints', 'data_dir', 'download', 'checkpoint_hist', 'log_with'})
    """Options that may change between an interrupted run and its resumption."""

    def __post_init__(self) -> None:
        validate(self)
        if self.evaluate_only and not self.checkpoint:
            raise ConfigError('evaluate_only needs a checkpoint: pass --checkpoint FILE '
                              '(a .safetensors, .pth or a training checkpoint)')
        if self.opt in ('sgd', 'nesterov') and self.momentum == 0:
            raise ConfigError(f'--opt {self.opt} is timm\'s Nesterov SGD, which needs --momentum > 0; for plain SGD '
                              'use --opt momentum --momentum 0')
        if (self.mixup > 0 or self.cutmix > 0) and self.data.batch_size % 2:
            raise ConfigError(f'--mixup/--cutmix mix pairs of images: --batch-size must be even, got '
                              f'{self.data.batch_size}')
        if self.pretrained_path and not self.pretrained:
            object.__setattr__(self, 'pretrained', True)  # timm's train.py ignores the path without --pretrained
        if self.pretrained and self.checkpoint and not self.evaluate_only:
            raise ConfigError('--pretrained/--pretrained-path and --initial-checkpoint both give starting weights; '
                              'keep one')
        if self.resume and not self.output and self.resume in (True, 'auto', 'true', 'True'):
            raise ConfigError('--resume without a path needs --output (the run folder holding last.pth)')

    @classmethod
    def field_names(cls) -> list[str]:
        """The flat option names (YAML keys)."""
        return [f.name for f in flat_fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = 'config') -> TrainConfig:
        """Build from flat option values (dashes or underscores), defaults elsewhere.

        Raises:
            ConfigError: On an unknown key or an invalid value.
        """
        return from_flat(cls, values, source)

    def to_dict(self) -> dict[str, Any]:
        """The flat options, YAML/JSON-safe (tuples as lists); ``from_dict`` takes them back."""
        return to_flat(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with flat option ``changes`` applied (``lr=0.2``, ``train_samples=100``)."""
        return from_flat(type(self), changes, 'replace', base=self)
