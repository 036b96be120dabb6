"""The data layer's typed interface: what to load (``DataConfig``), what was found (``DatasetInfo``),
and what the training loop iterates (``EpochLoader``, bundled in ``Loaders``)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from ..errors import ConfigError

__all__ = ['DATASET_NAMES', 'LOADER_KINDS', 'DataConfig', 'DataWarning', 'DatasetInfo', 'EpochLoader', 'Loaders']

DATASET_NAMES = ('fashion-mnist', 'cifar10', 'cifar100', 'imagefolder', 'synthetic')
LOADER_KINDS = ('auto', 'dali', 'torch', 'memory')


class DataWarning(UserWarning):
    """Something in the data was left out or replaced (an unreadable image); training goes on."""


@dataclass(frozen=True)
class DataConfig:
    """Which data set to load and how.

    Attributes:
        dataset: ``fashion-mnist``, ``cifar10``, ``cifar100``, ``imagefolder`` or ``synthetic``.
        data_dir: Where the data set lies. ``None``: its standard places (see ``spsearch.data``);
            required for ``imagefolder``. When given, only this folder is searched.
        loader: ``auto`` (memory for the small data sets; DALI for ``imagefolder`` where it is
            installed, else torch), ``dali``, ``torch`` or ``memory``.
        batch_size: Training batch size per process (the global batch is this times the processes).
        eval_batch_size: Validation batch size per process (default ``2 * batch_size``).
        train_samples: Train on a seeded subset of this many images (seed ``seed``); for
            ``synthetic`` the number of images generated.
        val_samples: Validate on a subset of this many images. Its seed is fixed (0), so runs with
            different ``seed`` are compared on the same images.
        augment: Train-time augmentation: random crop with 1/8-side zero padding + horizontal flip
            for the small data sets; random-resized crop + flip for ``imagefolder``.
        workers: torch ``DataLoader`` worker processes, or DALI CPU threads (at least 1).
        seed: Seed of the training subset, the order and the augmentation of every epoch.
        download: Allow a torchvision download of Fashion-MNIST or CIFAR when no local copy is found.
        val_split: ``imagefolder`` without a ``val/`` folder: the fraction of each class held out
            as validation (seeded with 0, the same in every run).
        verify_images: ``imagefolder``: check every file's format signature and, for JPEG and PNG,
            its end marker at start-up, and leave out (with a warning) the ones that fail.
    """

    dataset: str = 'fashion-mnist'
    data_dir: str | None = None
    loader: str = 'auto'
    batch_size: int = 128
    eval_batch_size: int | None = None
    train_samples: int | None = None
    val_samples: int | None = None
    augment: bool = True
    workers: int = 2
    seed: int = 0
    download: bool = False
    val_split: float = 0.1
    verify_images: bool = True

    def __post_init__(self) -> None:
        if self.dataset not in DATASET_NAMES:
            raise ConfigError(f'dataset={self.dataset!r} is not supported; choose one of {", ".join(DATASET_NAMES)}')
        if self.loader not in LOADER_KINDS:
            raise ConfigError(f'loader={self.loader!r} is not supported; choose one of {", ".join(LOADER_KINDS)}')
        for name in ('batch_size', 'eval_batch_size', 'train_samples', 'val_samples'):
            value = getattr(self, name)
            if value is None and name != 'batch_size':
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f'{name}={value!r} is invalid: it must be an integer >= 1'
                                  + ('' if name == 'batch_size' else ' (or unset)'))
        for name in ('workers', 'seed'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f'{name}={value!r} is invalid: it must be an integer >= 0')
        if isinstance(self.val_split, bool) or not isinstance(self.val_split, (int, float)) \
                or not 0 < self.val_split < 1:
            raise ConfigError(f'val_split={self.val_split!r} is invalid: it must be a fraction in (0, 1)')

    @property
    def val_batch_size(self) -> int:
        """The validation batch size per process."""
        return self.eval_batch_size or 2 * self.batch_size


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
