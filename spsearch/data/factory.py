"""``create_loaders``: the train and validation loaders of one process, and which loader runs and why."""
from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from ..errors import ConfigError, DataError
from .config import DataConfig, DatasetInfo, DataWarning, EpochLoader, Loaders, auto_augment_transform
from .dali import DALI_INSTALL, DaliLoader, dali_available, dali_version
from .datasets import (
    DATASETS,
    ArraySplit,
    FileSplit,
    dataset_info,
    find_cifar,
    find_fashion_mnist,
    load_cifar,
    load_fashion_mnist,
    make_synthetic,
    scan_image_folder,
    subset_splits,
    synthetic_sizes,
    val_source,
)
from .loaders import MemoryLoader, TorchArrayLoader, TorchFileLoader, load_image
from .transforms import BatchTransform, crop_pad_for, fits_memory, resolve_stats

__all__ = ['DEFAULT_CROP_PCT', 'create_loaders']

DEFAULT_CROP_PCT = 0.875  # timm's
DEFAULT_SCALE = (0.08, 1.0)  # timm's RandomResizedCrop
DEFAULT_RATIO = (3 / 4, 4 / 3)
SMALL_IMAGE_MAX = 64
"""An ImageFolder trained at most this many pixels on the longer side gets the small-data-set recipe of the
in-memory path: resize, a random crop of the image zero-padded by 1/8 (4 px at 32), a flip; validation on the
whole image (no centre crop). ImageNet's RandomResizedCrop (area 0.08-1) destroys such images: a vanilla
ResNet-20 on a real 28 px ImageFolder reached about half the accuracy after 4 epochs that it reached without
augmentation (measured in issue 11). ``--scale``/``--ratio`` ask for RandomResizedCrop at any size."""


def small_image_recipe(cfg: DataConfig, size: tuple[int, int, int]) -> bool:
    """Whether an ImageFolder at ``size`` trains with pad-and-crop (see ``SMALL_IMAGE_MAX``)."""
    return max(size[1:]) <= SMALL_IMAGE_MAX and cfg.scale is None and cfg.ratio is None


def _check_input_size(input_size: Sequence[int]) -> tuple[int, int, int]:
    size = tuple(input_size)
    if len(size) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size):
        raise ConfigError(f'input_size={input_size!r} is invalid: give (channels, height, width) as positive integers')
    if size[0] not in (1, 3):
        raise DataError(f'the model takes {size[0]} input channels; the data sets give 1 (grey) or 3 (RGB): '
                        'create the model with in_chans=1 or 3')
    return size[0], size[1], size[2]


def _check_processes(process_index: int, num_processes: int) -> None:
    if not (isinstance(num_processes, int) and num_processes >= 1 and isinstance(process_index, int)
            and 0 <= process_index < num_processes):
        raise ConfigError(f'process_index={process_index!r} / num_processes={num_processes!r} are invalid: '
                          'need 0 <= process_index < num_processes')


def _array_splits(cfg: DataConfig, input_size: tuple[int, int, int]) -> tuple[ArraySplit, ArraySplit, DatasetInfo]:
    if cfg.dataset == 'synthetic':
        info = dataset_info(cfg)
        spec = DATASETS['synthetic']
        t, v = subset_splits(cfg, *make_synthetic(input_size, *synthetic_sizes(cfg)), 'synthetic')
        assert isinstance(t, ArraySplit) and isinstance(v, ArraySplit)
        return t, v, dataclasses.replace(info, source_chans=input_size[0], mean=spec.mean[:1] * input_size[0],
                                               std=spec.std[:1] * input_size[0], native_size=input_size[1:])
    info = dataset_info(cfg)
    if cfg.dataset == 'fashion-mnist':
        train, val = load_fashion_mnist(find_fashion_mnist(cfg.data_dir, download=cfg.download))
    else:
        train, val, _ = load_cifar(cfg.dataset, find_cifar(cfg.dataset, cfg.data_dir, download=cfg.download))
    t, v = subset_splits(cfg, train, val, cfg.dataset)
    assert isinstance(t, ArraySplit) and isinstance(v, ArraySplit)
    return t, v, info


def _decode_folder(split: FileSplit, input_size: tuple[int, int, int], workers: int) -> ArraySplit:
    """Decode every image, resized (shorter side) and centre-cropped to the input size, into one uint8 tensor."""
    from timm.data import create_transform

    transform = create_transform(input_size, is_training=False, crop_pct=1.0, normalize=False)

    def one(path: str) -> torch.Tensor | None:
        try:
            return transform(load_image(path, input_size[0]))
        except Exception as e:  # PIL raises several types for a bad file
            warnings.warn(f'cannot decode {path} ({type(e).__name__}: {e}); left out', DataWarning, stacklevel=2)
            return None

    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL releases the GIL while decoding
        images = list(pool.map(one, split.files))
    keep = [i for i, im in enumerate(images) if im is not None]
    if not keep:
        raise DataError('no image of the split could be decoded')
    return ArraySplit(torch.stack([images[i] for i in keep]),  # type: ignore[misc]
                      torch.tensor([split.labels[i] for i in keep], dtype=torch.int64))


def _memory_or_torch(cfg: DataConfig, nbytes: int, device: torch.device, name: str, describe: str,
                     ) -> tuple[str, str]:
    if cfg.loader == 'torch':
        return 'torch', (f'torch: asked for (--loader torch); a DataLoader with {cfg.workers} worker(s) gathers '
                         f'uint8 batches, transformed on {device} ({describe})')
    fits, how = fits_memory(nbytes, device)
    if fits:
        why = 'asked for (--loader memory)' if cfg.loader == 'memory' else f'{name} is small'
        return 'memory', (f'memory: {why}; {how} held on {device} as one uint8 tensor, batches indexed and '
                          f'transformed there ({describe})')
    if cfg.loader == 'memory':
        raise DataError(f'{name} needs {how} to be held on {device}, more than half of it; use --loader torch')
    return 'torch', (f'torch: {name} needs {how}, too much to hold on {device}; a DataLoader with '
                     f'{cfg.workers} worker(s) gathers batches, transformed on {device} ({describe})')


def _small_image_transform(size: tuple[int, int, int], auto_augment: Any = None) -> Any:
    """PIL -> uint8 tensor: resize to ``size``, random crop of the image zero-padded by 1/8, flip, then
    ``auto_augment`` (a PIL transform) where given, after the geometry as in timm's ``create_transform``."""
    from timm.data.transforms import MaybePILToTensor
    from torchvision import transforms as T
    height, width = size[1:]
    return T.Compose([T.Resize((height, width), interpolation=T.InterpolationMode.BILINEAR),
                      T.RandomCrop((height, width), padding=crop_pad_for((height, width))),
                      T.RandomHorizontalFlip(), *([auto_augment] if auto_augment is not None else []),
                      MaybePILToTensor()])


def create_loaders(cfg: DataConfig, *, input_size: tuple[int, int, int], device: torch.device | str = 'cpu',
                   mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                   process_index: int = 0, num_processes: int = 1, crop_pct: float | None = None) -> Loaders:
    """The train and validation loaders of one process.

    Args:
        cfg: What to load and how.
        input_size: ``(C, H, W)`` the model takes. Grey sources are repeated to 3 channels (RGB to
            luminance for 1); smaller stored images are zero-padded when the target is at most 1.25x
            larger, else resized (bilinear), as are larger ones.
        device: Where batches (and, for the memory loader, the data set) go.
        mean: Normalisation mean, one value or one per channel (default: the data set's).
        std: Normalisation std, one value or one per channel (default: the data set's).
        process_index: This process' index (``accelerator.process_index``).
        num_processes: Processes training together (``accelerator.num_processes``).
        crop_pct: ImageFolder validation centre-crop fraction (default timm's 0.875).

    Returns:
        ``Loaders`` with ``kind`` (``memory``, ``torch`` or ``dali``) and the ``reason`` it was picked.

    Raises:
        DataError: Missing or unreadable data, a training batch larger than the data, DALI asked for
            but not installed.
        ConfigError: Invalid sizes, statistics, process indices, or DALI asked for a data set it cannot read.

    Example:
        >>> loaders = create_loaders(DataConfig('fashion-mnist', train_samples=1000), input_size=(3, 32, 32))
        >>> loaders.train.set_epoch(0)
        >>> images, targets = next(iter(loaders.train))   # (128, 3, 32, 32) float32, (128,) int64
    """
    size = _check_input_size(input_size)
    _check_processes(process_index, num_processes)
    dev = torch.device(device)
    common: dict[str, Any] = dict(seed=cfg.seed, process_index=process_index, num_processes=num_processes,
                                  device=dev)
    if cfg.dataset != 'imagefolder':
        if cfg.loader == 'dali':
            raise ConfigError(f'loader dali reads image files (dataset imagefolder); {cfg.dataset} is read into '
                              'memory: use --loader memory (the default) or torch')
        train, val, info = _array_splits(cfg, size)
        mean_c, std_c = resolve_stats(info.mean, size[0], mean, 'mean'), resolve_stats(info.std, size[0], std, 'std')
        stored = (int(train.images.shape[-2]), int(train.images.shape[-1]))
        tf_train = BatchTransform(source_chans=info.source_chans, source_size=stored, input_size=size, mean=mean_c,
                                  std=std_c, augment=cfg.augment, device=dev)
        tf_val = BatchTransform(source_chans=info.source_chans, source_size=stored, input_size=size, mean=mean_c,
                                std=std_c, augment=False, device=dev)
        nbytes = train.images.numel() + val.images.numel() // num_processes
        kind, reason = _memory_or_torch(cfg, nbytes, dev, cfg.dataset, tf_train.describe())
        loaders: tuple[EpochLoader, EpochLoader]
        if kind == 'memory':
            loaders = (MemoryLoader(train, tf_train, batch_size=cfg.batch_size, train=True, **common),
                       MemoryLoader(val, tf_val, batch_size=cfg.val_batch_size, train=False, **common))
        else:
            loaders = (TorchArrayLoader(train, tf_train, batch_size=cfg.batch_size, train=True, workers=cfg.workers,
                                        **common),
                       TorchArrayLoader(val, tf_val, batch_size=cfg.val_batch_size, train=False, workers=cfg.workers,
                                        **common))
        return Loaders(loaders[0], loaders[1], info, kind, reason)

    scan = scan_image_folder(cfg.data_dir, val_split=cfg.val_split, verify=cfg.verify_images, workers=cfg.workers)
    t, v = subset_splits(cfg, scan.train, scan.val, f'imagefolder {scan.root}')
    assert isinstance(t, FileSplit) and isinstance(v, FileSplit)
    spec = DATASETS['imagefolder']
    info = DatasetInfo('imagefolder', len(scan.classes), 3, len(t), len(v), spec.mean, spec.std, None,
                       str(scan.root), scan.classes, len(scan.skipped), val_source(cfg, scan.val_from))
    mean_c, std_c = resolve_stats(info.mean, size[0], mean, 'mean'), resolve_stats(info.std, size[0], std, 'std')
    small = small_image_recipe(cfg, size)
    crop = (1.0 if small else DEFAULT_CROP_PCT) if crop_pct is None else float(crop_pct)
    (scale_lo, scale_hi), (ratio_lo, ratio_hi) = cfg.scale or DEFAULT_SCALE, cfg.ratio or DEFAULT_RATIO
    scale, ratio = (scale_lo, scale_hi), (ratio_lo, ratio_hi)
    recipe = ('pad-and-crop + flip (small images)' if small else
              f'random-resized crop (area {scale[0]:g}-{scale[1]:g}, ratio {ratio[0]:.2f}-{ratio[1]:.2f}) + flip')
    if not 0 < crop <= 1:
        raise ConfigError(f'crop_pct={crop_pct!r} is invalid: it must be in (0, 1]')
    if cfg.aa:
        recipe += f', auto-augment {cfg.aa}'
    kind = cfg.loader
    if kind == 'auto':  # timm's auto-augment is PIL code: with --aa only the torch loader can run it
        kind = 'dali' if dali_available() and not cfg.aa else 'torch'
    if kind == 'dali':
        version = dali_version()
        how = (f'decoding on {dev} (device="mixed")' if dev.type == 'cuda' else
               f'CPU pipeline with {max(1, cfg.workers)} thread(s) for device {dev}')
        why = ('asked for (--loader dali)' if cfg.loader == 'dali' else
               'NVIDIA DALI is installed (it decodes and augments JPEGs faster than the torch loader, on CPU too)')
        reason = f'dali: {why}; DALI {version}, {how}' + (f'; training: {recipe}' if cfg.augment else '')
        dali_args: dict[str, Any] = dict(input_size=size, mean=mean_c, std=std_c, workers=cfg.workers, crop_pct=crop,
                                         **common)
        return Loaders(DaliLoader(t, batch_size=cfg.batch_size, train=True, augment=cfg.augment, small=small,
                                  scale=scale, ratio=ratio, **dali_args),
                       DaliLoader(v, batch_size=cfg.val_batch_size, train=False, **dali_args), info, 'dali', reason)
    if kind == 'torch':
        from timm.data import create_transform

        why = ('asked for (--loader torch)' if cfg.loader == 'torch' else
               f'--aa {cfg.aa} is timm\'s PIL auto-augment, which only this loader runs' if cfg.aa else
               f'NVIDIA DALI is not installed ({DALI_INSTALL})')
        reason = (f'torch: {why}; a DataLoader with {cfg.workers} worker(s) decodes with PIL and applies '
                  'timm transforms, batches normalised on the device' + (f'; training: {recipe}' if cfg.augment
                                                                           else ''))
        # uint8 from the workers (timm's prefetcher layout), normalised per batch by the loader
        tf_args: dict[str, Any] = dict(input_size=size, crop_pct=crop, interpolation='bilinear', use_prefetcher=True)
        tf_eval = create_transform(is_training=False, **tf_args)
        tf_train = tf_eval
        if cfg.augment:
            policy = auto_augment_transform(cfg.aa, size, mean_c) if cfg.aa else None
            tf_train = (_small_image_transform(size, policy) if small else
                        create_transform(is_training=True, color_jitter=0.0, scale=scale, ratio=ratio,
                                         auto_augment=cfg.aa, mean=mean_c, **tf_args))
        file_args: dict[str, Any] = dict(chans=size[0], workers=cfg.workers, mean=mean_c, std=std_c, **common)
        return Loaders(
            TorchFileLoader(t, tf_train, batch_size=cfg.batch_size, train=True, **file_args),
            TorchFileLoader(v, tf_eval, batch_size=cfg.val_batch_size, train=False, **file_args),
            info, 'torch', reason)
    # memory: decode once at the input size, then the small-data-set path (crop + flip on the device)
    nbytes = (len(t) + len(v) // num_processes) * size[0] * size[1] * size[2]
    fits, how = fits_memory(nbytes, dev)
    if not fits:
        raise DataError(f'imagefolder {scan.root} decoded at {size[1]}x{size[2]} needs {how}, more than half of it; '
                        'use --loader dali or torch')
    train_arr, val_arr = _decode_folder(t, size, cfg.workers), _decode_folder(v, size, cfg.workers)
    info = dataclasses.replace(info, num_train=len(train_arr), num_val=len(val_arr))
    tf_train_b = BatchTransform(source_chans=size[0], source_size=size[1:], input_size=size, mean=mean_c, std=std_c,
                                augment=cfg.augment, device=dev)
    tf_val_b = BatchTransform(source_chans=size[0], source_size=size[1:], input_size=size, mean=mean_c, std=std_c,
                              augment=False, device=dev)
    reason = (f'memory: asked for (--loader memory); {len(train_arr) + len(val_arr)} images decoded once at '
              f'{size[1]}x{size[2]} ({how}) and held on {dev}; {tf_train_b.describe()} there')
    return Loaders(MemoryLoader(train_arr, tf_train_b, batch_size=cfg.batch_size, train=True, **common),
                   MemoryLoader(val_arr, tf_val_b, batch_size=cfg.val_batch_size, train=False, **common),
                   info, 'memory', reason)

