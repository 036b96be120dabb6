"""The in-memory and torch ``DataLoader`` epoch loaders.

- ``MemoryLoader``: a split held as one uint8 tensor on the target device; a batch is an index
  into it plus ``BatchTransform`` (fit, crop + flip, normalise), all on the device.
- ``TorchArrayLoader``: the same split kept on the CPU, batches gathered by a ``DataLoader`` (worker
  processes) and then transformed on the device exactly as above, so both give identical batches.
- ``TorchFileLoader``: image files decoded by a ``DataLoader`` with timm's transforms
  (``RandomResizedCrop`` + flip for training; resize + centre crop by ``crop_pct`` for validation).

Each epoch's order and augmentation are functions of (seed, epoch, process index) only
(``spsearch.data.sampling``): ``TorchFileLoader`` draws one seed per image in the main process
and reseeds Python's and torch's CPU generators with it around that image's transform, so the
result does not depend on the number of workers, and the main process' own RNG state is kept.
"""
from __future__ import annotations

import contextlib
import math
import random
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from ..errors import DataError
from .config import DataWarning
from .datasets import ArraySplit, FileSplit
from .sampling import AUGMENT, WORKERS, generator, train_batches, train_shard, val_shard
from .transforms import BatchTransform

__all__ = ['MemoryLoader', 'TorchArrayLoader', 'TorchFileLoader', 'load_image']


class _Schedule:
    """Which images (indices into the split) a process visits in an epoch, in order, and its batch count."""

    def __init__(self, n: int, batch_size: int, *, train: bool, seed: int, process_index: int,
                 num_processes: int) -> None:
        self.n, self.batch_size, self.train, self.seed = n, batch_size, train, seed
        self.process_index, self.num_processes = process_index, num_processes
        self.epoch = 0
        if train:
            self.num_batches = train_batches(n, batch_size, num_processes)
            self.num_samples = self.num_batches * batch_size
        else:
            self.shard = val_shard(n, process_index, num_processes)
            self.num_samples = len(self.shard)
            self.num_batches = math.ceil(self.num_samples / batch_size)

    def indices(self) -> torch.Tensor:
        if self.train:
            return train_shard(self.n, self.batch_size, self.process_index, self.num_processes,
                               seed=self.seed, epoch=self.epoch)
        return torch.arange(self.shard.start, self.shard.stop)

    def augment_generator(self) -> torch.Generator:
        return generator(self.seed, self.epoch, self.process_index, AUGMENT)

    def batches(self, indices: torch.Tensor) -> Iterator[torch.Tensor]:
        for b in range(self.num_batches):
            yield indices[b * self.batch_size:(b + 1) * self.batch_size]


class _EpochLoaderBase:
    """``batch_size``, ``num_samples``, ``set_epoch`` and ``len`` from a ``_Schedule``."""

    def __init__(self, schedule: _Schedule, device: torch.device) -> None:
        self.schedule = schedule
        self.batch_size = schedule.batch_size
        self.num_samples = schedule.num_samples
        self.device = device

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and augmentation the next iteration yields."""
        self.schedule.epoch = int(epoch)

    @property
    def epoch(self) -> int:
        return self.schedule.epoch

    def __len__(self) -> int:
        return self.schedule.num_batches


class MemoryLoader(_EpochLoaderBase):
    """Batches from a split held on ``device`` as one uint8 tensor, transformed there.

    Args:
        split: The images (uint8 ``(N, C, H, W)``) and labels. Validation keeps only this process' shard.
        transform: Fit, augmentation and normalisation (its ``augment`` decides whether training batches
            are augmented).
        batch_size: Images per batch for this process.
        train: Training (shuffled, drop-last shards) or validation (contiguous shards, partial last batch).
        seed: Seed of the order and the augmentation.
        process_index: This process' index.
        num_processes: Processes sharing the data.
        device: Where the tensor lives and batches are made.
    """

    def __init__(self, split: ArraySplit, transform: BatchTransform, *, batch_size: int, train: bool, seed: int,
                 process_index: int = 0, num_processes: int = 1, device: torch.device | str = 'cpu') -> None:
        super().__init__(_Schedule(len(split), batch_size, train=train, seed=seed, process_index=process_index,
                                   num_processes=num_processes), torch.device(device))
        self.transform = transform
        if not train:
            shard = self.schedule.shard
            split = ArraySplit(split.images[shard.start:shard.stop], split.labels[shard.start:shard.stop])
            self._offset = shard.start
        else:
            self._offset = 0
        self.images = split.images.to(self.device).contiguous()
        self.labels = split.labels.to(self.device)

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = self.schedule.indices() - self._offset
        offsets = flips = None
        if self.schedule.train and self.transform.augment:
            offsets, flips = self.transform.sample(indices.numel(), self.schedule.augment_generator())
            offsets, flips = offsets.to(self.device), flips.to(self.device)
        indices = indices.to(self.device)
        for b, idx in enumerate(self.schedule.batches(indices)):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield (self.transform(self.images[idx], None if offsets is None else offsets[sl],
                                  None if flips is None else flips[sl]), self.labels[idx])


class _BatchSampler(Sampler[list[Any]]):
    """A ``DataLoader`` batch sampler following a ``_Schedule``; items are indices or (index, seed) pairs."""

    def __init__(self, schedule: _Schedule, with_seeds: bool) -> None:
        self.schedule, self.with_seeds = schedule, with_seeds

    def __len__(self) -> int:
        return self.schedule.num_batches

    def __iter__(self) -> Iterator[list[Any]]:
        indices = self.schedule.indices()
        if not self.with_seeds:
            for idx in self.schedule.batches(indices):
                yield idx.tolist()
            return
        seeds = torch.randint(0, 2**62, (indices.numel(),), generator=self.schedule.augment_generator())
        for b, idx in enumerate(self.schedule.batches(indices)):
            yield list(zip(idx.tolist(), seeds[b * self.schedule.batch_size:][:idx.numel()].tolist(), strict=True))


class _ArrayDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, split: ArraySplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split.images[index], self.split.labels[index]


def _data_loader(dataset: Dataset[Any], sampler: _BatchSampler, workers: int, device: torch.device) -> DataLoader[Any]:
    # its own generator: a DataLoader otherwise draws its workers' base seed from the global RNG
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0,
                      pin_memory=device.type == 'cuda', generator=generator(sampler.schedule.seed, WORKERS))


class TorchArrayLoader(_EpochLoaderBase):
    """Batches of an in-memory split gathered by ``DataLoader`` workers on the CPU, transformed on ``device``.

    Yields the same batches as ``MemoryLoader`` with the same arguments; for data that should not
    live on the device. Arguments as ``MemoryLoader``, plus ``workers`` (``DataLoader`` processes).
    """

    def __init__(self, split: ArraySplit, transform: BatchTransform, *, batch_size: int, train: bool, seed: int,
                 process_index: int = 0, num_processes: int = 1, device: torch.device | str = 'cpu',
                 workers: int = 2) -> None:
        super().__init__(_Schedule(len(split), batch_size, train=train, seed=seed, process_index=process_index,
                                   num_processes=num_processes), torch.device(device))
        self.transform = transform
        self.loader = _data_loader(_ArrayDataset(split), _BatchSampler(self.schedule, False), workers, self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        offsets = flips = None
        if self.schedule.train and self.transform.augment:
            offsets, flips = self.transform.sample(self.num_samples, self.schedule.augment_generator())
            offsets, flips = offsets.to(self.device), flips.to(self.device)
        for b, (images, labels) in enumerate(self.loader):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield (self.transform(images, None if offsets is None else offsets[sl],
                                  None if flips is None else flips[sl]),
                   labels.to(self.device, non_blocking=True))


def load_image(path: str, chans: int) -> Any:
    """Open and fully decode an image with PIL, as RGB (``chans`` 3) or luminance (``chans`` 1)."""
    from PIL import Image

    with Image.open(path) as img:
        return img.convert('RGB' if chans == 3 else 'L')


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's CPU generators (timm's transforms draw from them: its auto-augment
    magnitudes and AugMix weights from NumPy); restore them in the main process, whose RNG state belongs to the
    training run."""
    keep = get_worker_info() is None
    saved = (random.getstate(), np.random.get_state(), torch.random.get_rng_state()) if keep else None
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.random.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.random.set_rng_state(saved[2])


class _FileDataset(Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, split: FileSplit, transform: Callable[[Any], torch.Tensor], chans: int) -> None:
        self.split, self.transform, self.chans = split, transform, chans

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item
        n = len(self.split)
        for attempt in range(min(n, 16)):
            path = self.split.files[(index + attempt) % n]
            try:
                image = load_image(path, self.chans)
            except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for a bad file
                warnings.warn(f'cannot decode {path} ({type(e).__name__}: {e}); using the next image instead',
                              DataWarning, stacklevel=2)
                continue
            with _seeded(seed):
                return self.transform(image), self.split.labels[(index + attempt) % n]
        raise DataError(f'{min(n, 16)} images in a row from {self.split.files[index]} cannot be decoded; '
                        'check the folder (a wrong file type, a failed copy?)')


class TorchFileLoader(_EpochLoaderBase):
    """Image files decoded by ``DataLoader`` workers with timm transforms; batches moved to ``device``.

    As timm's own loader does, the workers send uint8 images (``create_transform(...,
    use_prefetcher=True)``) and whole batches are normalised after the move to ``device``: per-image
    float conversion in the workers costs CPU that, on a small machine, the model's threads need
    (measured in ``benchmarks/train_throughput.py --profile``).

    Args:
        split: The files and labels.
        transform: A per-image transform from ``timm.data.create_transform``: PIL image -> uint8 tensor
            (``use_prefetcher=True``) when ``mean``/``std`` are given, else -> normalised float tensor.
        chans: Channels to decode (3: RGB, 1: luminance).
        batch_size: Images per batch for this process.
        train: Training (shuffled, drop-last shards, per-image seeds) or validation.
        seed: Seed of the order and augmentation.
        process_index: This process' index.
        num_processes: Processes sharing the data.
        device: Where batches go.
        workers: ``DataLoader`` worker processes (0: decode in this process).
        mean: Per-channel mean of 0-1 pixels; with ``std``, batches arrive as uint8 and are normalised here.
        std: Per-channel standard deviation of 0-1 pixels.
    """

    def __init__(self, split: FileSplit, transform: Callable[[Any], torch.Tensor], *, chans: int, batch_size: int,
                 train: bool, seed: int, process_index: int = 0, num_processes: int = 1,
                 device: torch.device | str = 'cpu', workers: int = 2, mean: tuple[float, ...] | None = None,
                 std: tuple[float, ...] | None = None) -> None:
        super().__init__(_Schedule(len(split), batch_size, train=train, seed=seed, process_index=process_index,
                                   num_processes=num_processes), torch.device(device))
        self.loader = _data_loader(_FileDataset(split, transform, chans), _BatchSampler(self.schedule, True),
                                   workers, self.device)
        self.scale: tuple[torch.Tensor, torch.Tensor] | None = None
        if mean is not None and std is not None:
            self.scale = (torch.tensor([255 * m for m in mean], device=self.device).view(1, -1, 1, 1),
                          torch.tensor([255 * v for v in std], device=self.device).view(1, -1, 1, 1))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True)
            if self.scale is not None:
                images = images.float().sub_(self.scale[0]).div_(self.scale[1])
            yield images, labels.to(self.device, non_blocking=True)
