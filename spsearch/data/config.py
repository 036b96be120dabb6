"""The data layer's typed interface: what to load (``DataConfig``), what was found (``DatasetInfo``),
and what the training loop iterates (``EpochLoader``, bundled in ``Loaders``)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from ..errors import ConfigError
from ..options import option, validate

__all__ = ['DATASET_NAMES', 'LOADER_KINDS', 'DataConfig', 'DataWarning', 'DatasetInfo', 'EpochLoader', 'Loaders',
           'auto_augment_transform']

DATASET_NAMES = ('fashion-mnist', 'cifar10', 'cifar100', 'imagefolder', 'synthetic')
LOADER_KINDS = ('auto', 'dali', 'torch', 'memory')


class DataWarning(UserWarning):
    """Something in the data was left out or replaced (an unreadable image); training goes on."""


@dataclass(frozen=True)
class DataConfig:
    """Which data set to load and how (each field's ``help`` says what it means; ``spsearch.options``).

    ``data_dir=None`` searches the data set's standard places (see ``spsearch.data``) and is
    required for ``imagefolder``; when given, only that folder is searched. ``augment`` is a random
    crop with 1/8-side zero padding + horizontal flip for the small data sets, random-resized crop +
    flip for ``imagefolder``. The validation subset's seed is fixed (0), so runs with different
    ``seed`` are compared on the same images. With ``holdout`` the validation images are that many
    training images, held out before ``train_samples`` is drawn from the rest; the test split is not
    read at all.
    """

    dataset: str = option('fashion-mnist', choices=DATASET_NAMES, group='data', help='the data set')
    data_dir: str | None = option(None, group='data', help='data set folder (default: its standard places)')
    loader: str = option('auto', choices=LOADER_KINDS, group='data',
                         help='auto: memory for small data sets that fit, DALI for imagefolder where installed, '
                              'else torch; it says which and why')
    batch_size: int = option(128, minimum=1, group='optimisation', aliases=('-b',),
                             help='training batch size per process (the global batch is this times the processes)')
    eval_batch_size: int | None = option(None, minimum=1, group='optimisation',
                                         aliases=('-vb', '--validation-batch-size'),
                                         help='validation batch size per process (default 2 x batch size)')
    train_samples: int | None = option(None, minimum=1, metavar='N', group='data',
                                       help='train on a seeded subset of N images (synthetic: N images generated)')
    val_samples: int | None = option(None, minimum=1, metavar='N', group='data',
                                     help='validate on a subset of N images (always the same N images)')
    augment: bool = option(True, group='data', help='train-time crop + flip augmentation')
    scale: tuple[float, ...] | None = option(
        None, minimum=0, open_min=True, maximum=1, group='data',
        help="imagefolder: RandomResizedCrop area range, e.g. 0.08 1 (timm's --scale; default by image size: 0.08 1 "
             "above 64 px, pad-and-crop at 64 px and below)")
    ratio: tuple[float, ...] | None = option(
        None, minimum=0, open_min=True, group='data',
        help="imagefolder: RandomResizedCrop aspect-ratio range (timm's --ratio; default 3/4 4/3)")
    aa: str | None = option(
        None, group='data', metavar='POLICY',
        help="timm auto-augment policy for training images, e.g. rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, "
             "v0 (timm's --aa, built as timm's create_transform builds it; imagefolder with the torch loader)")
    workers: int = option(2, minimum=0, group='data', help='loader worker processes / DALI CPU threads')
    seed: int = option(0, minimum=0, group='run',
                       help='seed of the run: initialisation, training subset, order and augmentation of every epoch')
    download: bool = option(False, group='data',
                            help='allow a torchvision download of Fashion-MNIST/CIFAR when no local copy is found')
    holdout: int | None = option(None, minimum=1, metavar='N', group='data',
                                 help='validate on N training images held out (seed 0: the same in every run) instead '
                                      'of the test split; select on them, keep the test split for the verdict')
    val_split: float = option(0.1, minimum=0, maximum=1, open_min=True, open_max=True, group='data',
                              help='imagefolder without val/: the fraction of each class held out (seeded, fixed)')
    verify_images: bool = option(True, group='data',
                                 help='imagefolder: check each file\'s signature and end marker at start-up, leave out '
                                      '(and name) unreadable ones')

    def __post_init__(self) -> None:
        validate(self)
        for name in ('scale', 'ratio'):
            pair = getattr(self, name)
            if pair is not None and (len(pair) != 2 or pair[0] > pair[1]):
                raise ConfigError(f'--{name} takes two numbers, low then high (e.g. --{name} '
                                  f'{"0.08 1" if name == "scale" else "0.75 1.33"}), got {list(pair)}')
        if self.aa:
            self._check_auto_augment(self.aa)

    def _check_auto_augment(self, aa: str) -> None:
        """``--aa`` runs timm's PIL transforms on decoded files: only the torch loader of an ImageFolder has them."""
        if not self.augment:
            raise ConfigError(f'--aa {self.aa} is training augmentation, which --no-augment turns off; drop one')
        if self.dataset != 'imagefolder':
            raise ConfigError(f'--aa {self.aa} needs PIL images (dataset imagefolder, --loader torch); {self.dataset} '
                              'is augmented as uint8 tensors on the device, where timm\'s auto-augment cannot run: '
                              'drop --aa, or save the images as an ImageFolder')
        if self.loader in ('dali', 'memory'):
            raise ConfigError(f'--aa {self.aa} runs timm\'s PIL transforms in the torch loader\'s workers; the '
                              f'{self.loader} loader augments on the device without them: use --loader torch '
                              '(or auto) or drop --aa')
        auto_augment_transform(aa, (3, 32, 32))  # a bad policy string is one line now, not in a worker

    @property
    def val_batch_size(self) -> int:
        """The validation batch size per process."""
        return self.eval_batch_size or 2 * self.batch_size


def auto_augment_transform(policy: str, input_size: tuple[int, int, int],
                           mean: tuple[float, ...] = (0.5, 0.5, 0.5)) -> Any:
    """timm's auto-augment transform (PIL -> PIL) for ``policy``, as ``timm.data.create_transform`` builds it.

    Args:
        policy: timm's ``--aa`` string: ``rand-...`` (RandAugment), ``augmix-...``, or an AutoAugment policy
            (``v0``, ``original``, ``3a``, ...).
        input_size: ``(C, H, W)`` of the training images (geometric operations translate by 0.45 of the
            shorter side, as in timm).
        mean: Fill colour of the geometric operations, per channel in [0, 1].

    Raises:
        ConfigError: On a string timm does not read as a policy, naming examples.
    """
    from timm.data import create_transform
    try:
        _, secondary, _ = create_transform(input_size, is_training=True, auto_augment=policy, mean=mean,
                                           interpolation='bilinear', separate=True)
    except Exception as e:  # timm asserts or raises KeyError/ValueError on a bad string
        raise ConfigError(f'--aa {policy!r} is not a timm auto-augment policy ({type(e).__name__}: {e}); e.g. '
                          'rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, v0, original (timm 1.0.31 has no trivial)') from None
    return secondary.transforms[0]


@dataclass(frozen=True)
class DatasetInfo:
    """What was found on disk (counts after subsetting).

    Attributes:
        name: The data set (``DataConfig.dataset``).
        num_classes: Number of classes.
        source_chans: Channels as stored (1 for Fashion-MNIST, 3 for CIFAR and decoded image files).
        num_train: Training images (after ``train_samples`` and a held-out validation split).
        num_val: Validation images (after ``val_samples``).
        mean: The data set's normalisation mean, one per source channel, in [0, 1] units.
        std: The data set's normalisation std, one per source channel.
        native_size: ``(H, W)`` as stored; ``None`` when images vary in size (``imagefolder``).
        root: The folder the data was read from (``None`` for ``synthetic``).
        classes: Class names where the data set has them.
        skipped: Image files left out as unreadable (``imagefolder``).
        val_from: Where the validation images come from (``test split``, ``val/``, ``held out ...``).
    """

    name: str
    num_classes: int
    source_chans: int
    num_train: int
    num_val: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    native_size: tuple[int, int] | None
    root: str | None
    classes: tuple[str, ...] = ()
    skipped: int = 0
    val_from: str = ''


@runtime_checkable
class EpochLoader(Protocol):
    """One split's batches for this process; an epoch's content depends only on (seed, epoch, process).

    Iterating yields ``(images, targets)``: images float32 ``(N, C, H, W)`` on the loader's device,
    normalised, with ``(C, H, W)`` the requested ``input_size``; targets int64 ``(N,)`` on the device.
    """

    batch_size: int
    num_samples: int

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration yields."""
        ...

    def __len__(self) -> int:
        ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ...


@dataclass
class Loaders:
    """The train and validation loaders of one process, with what was loaded and why.

    Attributes:
        train: Training batches: every process gets the same number of full batches (drop-last),
            from disjoint shards of one seeded permutation per epoch.
        val: Validation batches: disjoint contiguous shards covering every image exactly once (no
            padding, the last batch may be partial), so summing (correct, count) over processes is exact.
        info: The data set.
        kind: The loader that runs: ``memory``, ``torch`` or ``dali``.
        reason: One line saying why this loader (the CLI prints it).
    """

    train: EpochLoader
    val: EpochLoader
    info: DatasetInfo
    kind: str
    reason: str
