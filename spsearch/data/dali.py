"""NVIDIA DALI epoch loader for image files (ImageFolder).

One pipeline per epoch (``@pipeline_def``): ``fn.readers.file`` over the file list with
``shard_id``/``num_shards`` (named ``"Reader"``), decoding on the GPU (``device="mixed"``) when the
target device is CUDA and on the CPU otherwise, then for training ``fn.decoders.image_random_crop``
(timm's RandomResizedCrop ranges) + ``fn.resize`` + random mirror, for validation a resize of the
shorter side to ``size / crop_pct`` + centre crop (timm's eval transform), and
``fn.crop_mirror_normalize`` to normalised float CHW.

Sharding and determinism follow the other loaders: the reader gets this epoch's global permutation
cut to whole global batches (the same on every process), DALI splits it into equal contiguous
shards, and the pipeline seed is a function of (seed, epoch, process index). Validation shards are
DALI's contiguous ones with ``pad_last_batch`` and ``LastBatchPolicy.PARTIAL``, so the padding is
dropped and every image is seen once.

DALI cannot skip an image it fails to decode: the loader then finds the file with PIL and raises
``DataError`` naming it (``spsearch.data.datasets`` leaves out unreadable files up front).
"""
from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ..errors import DataError
from .datasets import FileSplit
from .loaders import _EpochLoaderBase, _Schedule, load_image
from .sampling import AUGMENT, derive_seed, train_permutation
from .transforms import crop_pad_for

__all__ = ['DALI_INSTALL', 'DaliLoader', 'dali_available', 'dali_version']

DALI_INSTALL = 'pip install nvidia-dali-cuda130 (or the extra spsearch[dali-cuda130]; -cuda120 for CUDA 12 drivers)'
_PREFETCH = 2


def dali_available() -> bool:
    """Whether NVIDIA DALI can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec('nvidia.dali') is not None
    except (ImportError, ValueError):
        return False


def dali_version() -> str:
    """The installed DALI version.

    Raises:
        DataError: If DALI is not installed, saying how to install it.
    """
    try:
        import nvidia.dali
    except ImportError as e:
        raise DataError(f'loader dali needs NVIDIA DALI, which cannot be imported ({e}); {DALI_INSTALL}, '
                        'or use --loader torch') from None
    return str(nvidia.dali.__version__)


def _build_pipeline(files: Sequence[str], labels: Sequence[int], *, shard_id: int, num_shards: int, train: bool,
                    augment: bool, small: bool, scale: tuple[float, ...], ratio: tuple[float, ...], pad_last: bool,
                    input_size: tuple[int, int, int], mean: Sequence[float],
                    std: Sequence[float], crop_pct: float, batch_size: int, threads: int, seed: int,
                    device: torch.device) -> Any:
    from nvidia.dali import fn, pipeline_def, types

    chans, height, width = input_size
    gpu = device.type == 'cuda'

    @pipeline_def
    def pipeline() -> tuple[Any, Any]:
        encoded, label = fn.readers.file(files=list(files), labels=list(labels), shard_id=shard_id,
                                         num_shards=num_shards, random_shuffle=False, pad_last_batch=pad_last,
                                         stick_to_shard=True, name='Reader')
        output_type = types.DALIImageType.RGB if chans == 3 else types.DALIImageType.GRAY
        decode_device = 'mixed' if gpu else 'cpu'
        mirror: Any = 0
        images: Any
        if train and augment and small:
            images = fn.decoders.image(encoded, device=decode_device, output_type=output_type)
            images = fn.resize(images, resize_x=width, resize_y=height, interp_type=types.DALIInterpType.INTERP_LINEAR)
            pad = crop_pad_for((height, width))  # the in-memory path's: a window shifted by up to pad whole pixels,
            shift = fn.random.uniform(values=[float(v) for v in range(-pad, pad + 1)], shape=[2])  # whole pixels
            images = fn.slice(images, shift, [float(width), float(height)], axis_names='WH',
                              normalized_anchor=False, normalized_shape=False,  # pixels, not fractions of the image
                              out_of_bounds_policy='pad', fill_values=0)  # zeros outside
            mirror = fn.random.coin_flip(probability=0.5)
        elif train and augment:
            images = fn.decoders.image_random_crop(encoded, device=decode_device, output_type=output_type,
                                                   random_area=list(scale), random_aspect_ratio=list(ratio),
                                                   num_attempts=10)
            images = fn.resize(images, resize_x=width, resize_y=height, interp_type=types.DALIInterpType.INTERP_LINEAR)
            mirror = fn.random.coin_flip(probability=0.5)
        else:
            images = fn.decoders.image(encoded, device=decode_device, output_type=output_type)
            images = fn.resize(images, resize_shorter=math.floor(min(height, width) / crop_pct),
                               interp_type=types.DALIInterpType.INTERP_LINEAR)
        images = fn.crop_mirror_normalize(images, dtype=types.DALIDataType.FLOAT, output_layout='CHW',
                                          crop=(height, width), mean=[255 * m for m in mean],
                                          std=[255 * s for s in std], mirror=mirror)
        return images, label

    device_id = (device.index if device.index is not None else torch.cuda.current_device()) if gpu else None
    return pipeline(batch_size=batch_size, num_threads=max(1, threads), device_id=device_id, seed=seed,
                    prefetch_queue_depth=_PREFETCH)


class DaliLoader(_EpochLoaderBase):
    """Batches of image files decoded and augmented by NVIDIA DALI.

    Args:
        split: The files and labels.
        input_size: ``(C, H, W)`` of the batches (C: 3 decodes RGB, 1 greyscale).
        mean: Normalisation mean per channel, [0, 1] units.
        std: Normalisation std per channel.
        batch_size: Images per batch for this process.
        train: Training (shuffled, drop-last shards) or validation (contiguous shards, partial last batch).
        augment: Training augmentation: random-resized crop (``scale``, ``ratio``) + flip, or with ``small``
            resize + random crop of the image zero-padded by 1/8 + flip (else resize + centre crop).
        small: The small-image recipe (``factory.SMALL_IMAGE_MAX``).
        scale, ratio: RandomResizedCrop area and aspect-ratio ranges.
        seed: Seed of the order and augmentation.
        process_index: This process' index (DALI ``shard_id``).
        num_processes: Processes sharing the data (DALI ``num_shards``).
        device: ``cuda[:i]``: decoding on that GPU (``mixed``); ``cpu``: a CPU pipeline.
        workers: DALI CPU threads.
        crop_pct: Validation centre-crop fraction (timm's default 0.875).
    """

    def __init__(self, split: FileSplit, *, input_size: tuple[int, int, int], mean: Sequence[float],
                 std: Sequence[float], batch_size: int, train: bool, augment: bool = True, seed: int = 0,
                 process_index: int = 0, num_processes: int = 1, device: torch.device | str = 'cpu',
                 workers: int = 2, crop_pct: float = 0.875, small: bool = False,
                 scale: tuple[float, ...] = (0.08, 1.0), ratio: tuple[float, ...] = (3 / 4, 4 / 3)) -> None:
        dali_version()
        self.small, self.scale, self.ratio = small, tuple(scale), tuple(ratio)
        super().__init__(_Schedule(len(split), batch_size, train=train, seed=seed, process_index=process_index,
                                   num_processes=num_processes), torch.device(device))
        self.split, self.input_size, self.mean, self.std = split, input_size, tuple(mean), tuple(std)
        self.augment, self.workers, self.crop_pct = augment, workers, crop_pct
        self.decode = 'mixed' if self.device.type == 'cuda' else 'cpu'

    def _epoch_files(self) -> tuple[list[str], list[int]]:
        s = self.schedule
        if not s.train:
            return list(self.split.files), list(self.split.labels)
        perm = train_permutation(s.n, s.batch_size, s.num_processes, seed=s.seed, epoch=s.epoch).tolist()
        return [self.split.files[i] for i in perm], [self.split.labels[i] for i in perm]

    def _shard_files(self, files: list[str]) -> list[str]:
        s = self.schedule
        n = len(files)
        return files[n * s.process_index // s.num_processes:n * (s.process_index + 1) // s.num_processes]

    def _bad_file(self, files: list[str], batch: int) -> str | None:
        """The first file from ``batch`` on (DALI works a few batches ahead) that PIL cannot decode."""
        shard = self._shard_files(files)
        chans = self.input_size[0]
        for path in shard[batch * self.batch_size:(batch + _PREFETCH + 2) * self.batch_size]:
            try:
                load_image(path, chans)
            except Exception as e:  # PIL raises several types for a bad file
                return f'{path} ({type(e).__name__}: {e})'
        return None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if not self.num_samples:
            return
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        s = self.schedule
        files, labels = self._epoch_files()
        batch = 0
        try:
            pipe = _build_pipeline(
                files, labels, shard_id=s.process_index, num_shards=s.num_processes, train=s.train,
                augment=self.augment, small=self.small, scale=self.scale, ratio=self.ratio,
                pad_last=not s.train, input_size=self.input_size, mean=self.mean,
                std=self.std, crop_pct=self.crop_pct, batch_size=self.batch_size, threads=self.workers,
                seed=derive_seed(s.seed, s.epoch, s.process_index, AUGMENT) % (2**31 - 1), device=self.device)
            policy = LastBatchPolicy.DROP if s.train else LastBatchPolicy.PARTIAL
            iterator = DALIGenericIterator(pipe, ['images', 'labels'], reader_name='Reader', last_batch_policy=policy)
            for out in iterator:
                images, target = out[0]['images'], out[0]['labels']
                yield (images.to(self.device, non_blocking=True),
                       target.reshape(-1).to(device=self.device, dtype=torch.int64, non_blocking=True))
                batch += 1
        except RuntimeError as e:
            if 'decoder' not in str(e) and 'nvImageCodec' not in str(e):
                raise
            bad = self._bad_file(files, batch)
            if bad is None:
                raise DataError(f'DALI failed to decode an image of batch {batch} '
                                f'({str(e).strip().splitlines()[-1]}); try --loader torch') from None
            raise DataError(f'DALI cannot decode {bad}; remove or replace the file, or use --loader torch '
                            '(it replaces images it cannot decode)') from None
