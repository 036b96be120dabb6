"""Data sets on disk in their real formats: Fashion-MNIST (IDX), CIFAR-10/100 (python pickles),
ImageFolder (ImageNet layout), and a seeded synthetic set for smoke runs.

Nothing is downloaded unless ``DataConfig.download`` is set. Every problem with the files (missing,
empty, truncated, corrupt) raises a one-line ``DataError`` naming the file and the fix.

ImageFolder policy (documented in the README):

- ``DIR/train/<class>/...`` and ``DIR/val/<class>/...`` (or ``validation/``); files with the
  extensions in ``IMG_EXTENSIONS``, found recursively, sorted; hidden files and others ignored.
- No ``val/`` folder (``DIR/train/<class>`` only, or ``DIR/<class>`` directly): ``val_split`` of
  every class (at least one image, for classes with two or more) is held out as validation, chosen
  with the fixed seed 0 so the split is the same in every run.
- Unreadable images are skipped and counted: with ``verify_images`` every file's format signature
  and (JPEG, PNG) end-of-image marker are checked at start-up, which catches non-images, empty and
  truncated files; they are left out with one ``DataWarning`` naming them, and ``DatasetInfo.skipped``
  counts them. A file that passes the check yet fails to decode is replaced (warning) by the torch
  loader and stops the DALI loader with a ``DataError`` naming it.
- A missing or empty folder, a class folder without images, or a validation class that is not a
  training class raise ``DataError``.
"""
from __future__ import annotations

import functools
import gzip
import math
import os
import pickle
import struct
import warnings
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .config import DataConfig, DatasetInfo, DataWarning
from .sampling import HOLDOUT, SYNTHETIC, TRAIN_HOLDOUT, TRAIN_SUBSET, VAL_SUBSET, generator, subset_indices

__all__ = ['DATASETS', 'FASHION_MNIST_FILES', 'FASHION_MNIST_SYSTEM_DIR', 'IMG_EXTENSIONS', 'ArraySplit',
           'DatasetSpec', 'FileSplit', 'FolderScan', 'check_image_file', 'data_cache_dir', 'dataset_info',
           'find_cifar', 'find_fashion_mnist', 'load_cifar', 'load_fashion_mnist', 'make_synthetic', 'read_idx',
           'scan_image_folder']

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetSpec:
    """A supported data set: what the loaders need to know before reading it.

    Attributes:
        name: ``DataConfig.dataset`` value.
        num_classes: Classes (``None``: read from the folders).
        source_chans: Channels as stored or decoded.
        native_size: Stored ``(H, W)``; ``None`` when it varies or is chosen by the caller.
        mean: Normalisation mean per source channel, [0, 1] units.
        std: Normalisation std per source channel.
        in_memory: Small enough that the default loader holds it as one tensor on the device.
    """

    name: str
    num_classes: int | None
    source_chans: int
    native_size: tuple[int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_memory: bool


DATASETS: dict[str, DatasetSpec] = {
    'fashion-mnist': DatasetSpec('fashion-mnist', 10, 1, (28, 28), (0.2860,), (0.3530,), True),
    'cifar10': DatasetSpec('cifar10', 10, 3, (32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True),
    'cifar100': DatasetSpec('cifar100', 100, 3, (32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True),
    'imagefolder': DatasetSpec('imagefolder', None, 3, None, IMAGENET_MEAN, IMAGENET_STD, False),
    # mean of a class template and uniform noise: mean 1/2, std sqrt(1/24)
    'synthetic': DatasetSpec('synthetic', 10, 3, None, (0.5,) * 3, (0.2041,) * 3, True),
}

SYNTHETIC_DEFAULT_SIZES = (1024, 256)


@dataclass(frozen=True)
class ArraySplit:
    """A split held in memory: ``images`` uint8 ``(N, C, H, W)``, ``labels`` int64 ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())

    def subset(self, indices: torch.Tensor) -> ArraySplit:
        if indices.numel() == len(self):
            return self
        return ArraySplit(self.images[indices], self.labels[indices])


@dataclass(frozen=True)
class FileSplit:
    """A split of image files: paths and their class indices."""

    files: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, indices: torch.Tensor) -> FileSplit:
        if indices.numel() == len(self):
            return self
        idx = indices.tolist()
        return FileSplit(tuple(self.files[i] for i in idx), tuple(self.labels[i] for i in idx))


def data_cache_dir() -> Path:
    """The project's data cache: ``$SPSEARCH_DATA``, else ``<repository>/data``."""
    env = os.environ.get('SPSEARCH_DATA')
    return Path(env).expanduser() if env else Path(__file__).resolve().parents[2] / 'data'


def _stamp(*paths: Path) -> tuple[tuple[str, int, int], ...]:
    """Identity of files for the load caches: a changed file is read again."""
    out: list[tuple[str, int, int]] = []
    for p in paths:
        st = p.stat()
        out.append((str(p.resolve()), st.st_mtime_ns, st.st_size))
    return tuple(out)


def _subset_counts(cfg: DataConfig, n_train: int, n_val: int, what: str) -> tuple[int, int]:
    if cfg.holdout:
        if cfg.holdout >= n_train:
            raise DataError(f'--holdout {cfg.holdout} leaves no training images of the {n_train} of {what}; '
                            f'hold out fewer')
        n_train, n_val = n_train - cfg.holdout, cfg.holdout
    for k, n, split, flag in ((cfg.train_samples, n_train, 'training', '--train-samples'),
                              (cfg.val_samples, n_val, 'validation', '--val-samples')):
        if k is not None and k > n:
            raise DataError(f'{flag} {k} is larger than the {n} images of the {split} split of {what}; '
                            f'pass at most {n} (or leave it unset)')
    return cfg.train_samples or n_train, cfg.val_samples or n_val


def val_source(cfg: DataConfig, source: str) -> str:
    """Where the validation images come from: ``source`` (the test split, ``val/``), or the training holdout."""
    return f'{cfg.holdout} training images held out (seed 0)' if cfg.holdout else source


def subset_splits(cfg: DataConfig, train: ArraySplit | FileSplit, val: ArraySplit | FileSplit, what: str,
                  ) -> tuple[ArraySplit | FileSplit, ArraySplit | FileSplit]:
    """Apply ``holdout`` (seed 0), then ``train_samples`` (seed ``cfg.seed``) and ``val_samples`` (seed 0)."""
    if cfg.holdout:
        _subset_counts(cfg, len(train), len(val), what)
        order = torch.randperm(len(train), generator=generator(0, TRAIN_HOLDOUT))
        train, val = train.subset(order[cfg.holdout:].sort().values), train.subset(order[:cfg.holdout].sort().values)
    t = subset_indices(len(train), cfg.train_samples, seed=cfg.seed, stream=TRAIN_SUBSET,
                       what=f'the training split of {what}', flag='--train-samples')
    v = subset_indices(len(val), cfg.val_samples, seed=0, stream=VAL_SUBSET,
                       what=f'the validation split of {what}', flag='--val-samples')
    return train.subset(t), val.subset(v)


# ----------------------------------------------------------------------------------------------- Fashion-MNIST

FASHION_MNIST_SYSTEM_DIR = Path('/usr/share/datasets/fashion-mnist')
FASHION_MNIST_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'val': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker',
                         'Bag', 'Ankle boot')
_FASHION_HOWTO = ('install it with `apt-get install dataset-fashion-mnist` or `scripts/fetch_fashion_mnist.sh`, '
                  'pass --data-dir DIR holding the four IDX files, or allow a torchvision download (download=True)')


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + '.gz', stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _fashion_missing(folder: Path) -> list[str]:
    return [stem for pair in FASHION_MNIST_FILES.values() for stem in pair if _idx_file(folder, stem) is None]


def _fashion_candidates(base: Path) -> list[Path]:
    return [base, base / 'fashion-mnist', base / 'FashionMNIST' / 'raw']


def _download(name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    cls = {'fashion-mnist': tvd.FashionMNIST, 'cifar10': tvd.CIFAR10, 'cifar100': tvd.CIFAR100}[name]
    try:
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:  # torchvision raises URLError, RuntimeError, OSError... for one cause: no data
        raise DataError(f'downloading {name} with torchvision into {root} failed '
                        f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}); '
                        f'put the files there yourself or pass --data-dir') from None


def find_fashion_mnist(data_dir: str | os.PathLike[str] | None = None, *, download: bool = False) -> Path:
    """The folder holding the four Fashion-MNIST IDX files (``.gz`` or unpacked).

    Searched: ``data_dir`` (and its ``fashion-mnist/`` or torchvision ``FashionMNIST/raw/``) when
    given, and only there; else ``/usr/share/datasets/fashion-mnist`` (Debian's
    ``dataset-fashion-mnist``), then the project cache ``$SPSEARCH_DATA/fashion-mnist`` (default
    ``<repo>/data/fashion-mnist``, where ``scripts/fetch_fashion_mnist.sh`` puts them). With
    ``download``, torchvision fetches them into ``data_dir`` or the cache when none is found.

    Raises:
        DataError: If they are not found (and not downloaded), saying how to get them.
    """
    if data_dir is not None:
        bases = [Path(data_dir).expanduser()]
    else:
        bases = [FASHION_MNIST_SYSTEM_DIR, data_cache_dir() / 'fashion-mnist', data_cache_dir()]
    for base in bases:
        for folder in _fashion_candidates(base):
            if not _fashion_missing(folder):
                return folder
    target = bases[0] if data_dir is not None else data_cache_dir()
    if download:
        _download('fashion-mnist', target)
        return target / 'FashionMNIST' / 'raw'
    if data_dir is not None:
        base = bases[0]
        if not base.is_dir():
            raise DataError(f'--data-dir {base} does not exist; point it at the folder holding the Fashion-MNIST '
                            f'IDX files, or leave it unset to use {FASHION_MNIST_SYSTEM_DIR}')
        missing = _fashion_missing(base)
        raise DataError(f'Fashion-MNIST not found in --data-dir {base} (missing {", ".join(missing)}[.gz]); '
                        + _FASHION_HOWTO)
    raise DataError(f'Fashion-MNIST not found in {FASHION_MNIST_SYSTEM_DIR} or {data_cache_dir() / "fashion-mnist"}: '
                    + _FASHION_HOWTO)


def read_idx(path: str | os.PathLike[str], ndim: int, *, header_only: bool = False,
             ) -> tuple[tuple[int, ...], np.ndarray | None]:
    """Read an IDX file of unsigned bytes (``.gz`` or plain): its dimensions and, unless ``header_only``, data.

    Raises:
        DataError: On a wrong magic number (not IDX, wrong type or rank), or a truncated or corrupt file.
    """
    path = Path(path)
    refetch = 'fetch it again (scripts/fetch_fashion_mnist.sh, or apt-get install --reinstall dataset-fashion-mnist)'
    try:
        with (gzip.open(path, 'rb') if path.suffix == '.gz' else open(path, 'rb')) as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[:2] != b'\0\0' or magic[2] != 0x08 or magic[3] != ndim:
                raise DataError(f'{path} is not an IDX file of unsigned bytes with {ndim} dimension(s) '
                                f'(magic number 0x{magic.hex() or "-"}, expected 0x000008{ndim:02x}); {refetch}')
            raw = f.read(4 * ndim)
            if len(raw) < 4 * ndim:
                raise DataError(f'{path} is truncated inside its header; {refetch}')
            dims = struct.unpack(f'>{ndim}I', raw)
            if header_only:
                return dims, None
            data = bytearray(f.read())
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f'{path} cannot be read ({type(e).__name__}: {e}); it is corrupt or truncated: '
                        f'{refetch}') from None
    expected = math.prod(dims)
    if len(data) != expected:
        state = 'truncated' if len(data) < expected else 'longer than its header says'
        raise DataError(f'{path} is {state}: {len(data)} bytes of data for dimensions {dims} '
                        f'({expected} bytes); {refetch}')
    return dims, np.frombuffer(data, np.uint8).reshape(dims)


@functools.lru_cache(maxsize=2)
def _load_fashion_cached(folder: str, stamp: tuple[tuple[str, int, int], ...]) -> tuple[ArraySplit, ArraySplit]:
    splits = []
    for images_stem, labels_stem in FASHION_MNIST_FILES.values():
        images_path, labels_path = _idx_file(Path(folder), images_stem), _idx_file(Path(folder), labels_stem)
        assert images_path is not None and labels_path is not None
        _, images = read_idx(images_path, 3)
        _, labels = read_idx(labels_path, 1)
        assert images is not None and labels is not None
        if len(images) != len(labels):
            raise DataError(f'{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels; '
                            'they must come from the same release')
        if labels.size and labels.max() >= 10:
            raise DataError(f'{labels_path} has label {int(labels.max())}; Fashion-MNIST labels are 0..9')
        splits.append(ArraySplit(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))))
    return splits[0], splits[1]


def load_fashion_mnist(folder: str | os.PathLike[str]) -> tuple[ArraySplit, ArraySplit]:
    """Train (60k) and test (10k) splits as uint8 ``(N, 1, 28, 28)`` (cached per file state)."""
    folder = Path(folder)
    paths = [_idx_file(folder, stem) for pair in FASHION_MNIST_FILES.values() for stem in pair]
    if any(p is None for p in paths):
        raise DataError(f'Fashion-MNIST files missing in {folder}: {", ".join(_fashion_missing(folder))}; '
                        + _FASHION_HOWTO)
    return _load_fashion_cached(str(folder), _stamp(*[p for p in paths if p is not None]))


def _fashion_info(cfg: DataConfig) -> DatasetInfo:
    folder = find_fashion_mnist(cfg.data_dir, download=cfg.download)
    counts = []
    for images_stem, labels_stem in FASHION_MNIST_FILES.values():
        images_path, labels_path = _idx_file(folder, images_stem), _idx_file(folder, labels_stem)
        assert images_path is not None and labels_path is not None  # find_fashion_mnist checked
        dims, _ = read_idx(images_path, 3, header_only=True)
        (n_labels,), _ = read_idx(labels_path, 1, header_only=True)
        if dims[0] != n_labels:
            raise DataError(f'{folder}: {images_stem} holds {dims[0]} images but {labels_stem} {n_labels} labels; '
                            'they must come from the same release')
        counts.append(dims)
    n_train, n_val = _subset_counts(cfg, counts[0][0], counts[1][0], 'fashion-mnist')
    spec = DATASETS['fashion-mnist']
    return DatasetInfo('fashion-mnist', 10, 1, n_train, n_val, spec.mean, spec.std, (counts[0][1], counts[0][2]),
                       str(folder), FASHION_MNIST_CLASSES, 0, val_source(cfg, 'test split (t10k)'))


# ----------------------------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True)
class _CifarLayout:
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: str
    names_key: str
    archive: str


CIFAR_LAYOUTS = {
    'cifar10': _CifarLayout('cifar-10-batches-py', tuple(f'data_batch_{i}' for i in range(1, 6)), ('test_batch',),
                            'batches.meta', 'labels', 'label_names', 'cifar-10-python.tar.gz'),
    'cifar100': _CifarLayout('cifar-100-python', ('train',), ('test',), 'meta', 'fine_labels', 'fine_label_names',
                             'cifar-100-python.tar.gz'),
}


def _cifar_missing(name: str, folder: Path) -> list[str]:
    layout = CIFAR_LAYOUTS[name]
    return [f for f in (*layout.train, *layout.test) if not (folder / f).is_file()]


def find_cifar(name: str, data_dir: str | os.PathLike[str] | None = None, *, download: bool = False) -> Path:
    """The python-pickle folder of ``cifar10`` / ``cifar100`` (``data_dir`` may be it or its parent).

    Without ``data_dir`` the project cache (``$SPSEARCH_DATA``, default ``<repo>/data``) is searched.

    Raises:
        DataError: If it is not found (and not downloaded), or only part of it is there.
    """
    layout = CIFAR_LAYOUTS[name]
    base = Path(data_dir).expanduser() if data_dir is not None else data_cache_dir()
    for folder in (base, base / layout.folder):
        if not _cifar_missing(name, folder):
            return folder
    if download:
        _download(name, base)
        return base / layout.folder
    for folder in (base, base / layout.folder):
        missing = _cifar_missing(name, folder)
        if folder.is_dir() and len(missing) < len(layout.train) + len(layout.test):
            raise DataError(f'{name} in {folder} is incomplete: {", ".join(missing)} missing; '
                            f'extract {layout.archive} there again')
    where = (f'--data-dir {base}' if data_dir is not None else
             f'{base} (the data cache; set $SPSEARCH_DATA or --data-dir)')
    raise DataError(f'{name} not found in {where}: extract {layout.archive} (python version, '
                    f'https://www.cs.toronto.edu/~kriz/cifar.html) so that {layout.folder}/{layout.train[0]} '
                    'exists, and pass --data-dir to it or its parent (or allow a download with download=True)')


_CIFAR_GLOBALS = frozenset({
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'), ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
    ('_codecs', 'encode'),  # bytes in protocol-2 pickles (str -> bytes; runs nothing)
})
"""What a CIFAR python batch may reference: numpy arrays (dtype, ndarray, reconstruct, latin-1 bytes); lists, dicts and
numbers need no global."""


class _Refused(pickle.UnpicklingError):
    pass


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only what a CIFAR batch holds (the ``pickle`` docs' "Restricting Globals"):
    a file that names any other global (``os.system``, ``builtins.eval``, ...) is refused before it runs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise _Refused(f'{module}.{name}')


def _read_pickle(path: Path, archive: str) -> dict[str, object]:
    try:
        with open(path, 'rb') as f:
            obj = _CifarUnpickler(f, encoding='bytes').load()
    except _Refused as e:
        raise DataError(f'{path} was refused: it references {e}, which a CIFAR batch never does, so loading it '
                        f'could run code; extract {archive} again from a trusted copy') from None
    except OSError as e:
        raise DataError(f'{path} cannot be read ({e.strerror or e}); check its permissions') from None
    except Exception as e:  # a truncated or foreign pickle fails with almost any exception type
        raise DataError(f'{path} is not a readable CIFAR batch, it is truncated or corrupt '
                        f'({type(e).__name__}: {e}); extract {archive} again') from None
    if not isinstance(obj, dict):
        raise DataError(f'{path} is not a CIFAR batch (a pickled dict), it holds a {type(obj).__name__}; '
                        f'extract {archive} again')
    return {k.decode('latin1') if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _read_cifar_batch(path: Path, layout: _CifarLayout, num_classes: int) -> ArraySplit:
    d = _read_pickle(path, layout.archive)
    if 'data' not in d or layout.label_key not in d:
        raise DataError(f'{path} lacks the "data" or "{layout.label_key}" entry of a CIFAR batch; '
                        f'extract {layout.archive} again')
    data = np.asarray(d['data'])
    labels = np.asarray(d[layout.label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f'{path}: "data" is {data.dtype} {data.shape}, expected uint8 (N, 3072); '
                        f'extract {layout.archive} again')
    if labels.shape != (len(data),):
        raise DataError(f'{path} has {len(data)} images but {labels.size} labels; extract {layout.archive} again')
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f'{path} has labels outside 0..{num_classes - 1}; is it {layout.folder}?')
    # rows are 1024 red, 1024 green, 1024 blue values, row-major: already (C, H, W)
    return ArraySplit(torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32)), torch.from_numpy(labels))


@functools.lru_cache(maxsize=2)
def _load_cifar_cached(name: str, folder: str, stamp: tuple[tuple[str, int, int], ...],
                       ) -> tuple[ArraySplit, ArraySplit, tuple[str, ...]]:
    layout = CIFAR_LAYOUTS[name]
    num_classes = DATASETS[name].num_classes or 0
    splits = []
    for files in (layout.train, layout.test):
        parts = [_read_cifar_batch(Path(folder) / f, layout, num_classes) for f in files]
        splits.append(ArraySplit(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts])))
    classes: tuple[str, ...] = ()
    meta_path = Path(folder) / layout.meta
    if meta_path.is_file():
        names = _read_pickle(meta_path, layout.archive).get(layout.names_key)
        if isinstance(names, (list, tuple)) and len(names) == num_classes:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return splits[0], splits[1], classes


def load_cifar(name: str, folder: str | os.PathLike[str]) -> tuple[ArraySplit, ArraySplit, tuple[str, ...]]:
    """Train and test splits (uint8 ``(N, 3, 32, 32)``) and class names (cached per file state).

    The files are Python pickles, read with ``pickle``: only point it at data you trust.
    """
    layout = CIFAR_LAYOUTS[name]
    folder = Path(folder)
    missing = _cifar_missing(name, folder)
    if missing:
        raise DataError(f'{name} in {folder} is incomplete: {", ".join(missing)} missing; '
                        f'extract {layout.archive} again')
    return _load_cifar_cached(name, str(folder), _stamp(*[folder / f for f in (*layout.train, *layout.test)]))


# ----------------------------------------------------------------------------------------------- ImageFolder

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.pbm', '.pnm', '.tif', '.tiff', '.webp')
_VERIFY_PARALLEL_FROM = 512


@dataclass(frozen=True)
class FolderScan:
    """An ImageFolder after scanning: classes, the two splits, and the files left out."""

    root: Path
    classes: tuple[str, ...]
    train: FileSplit
    val: FileSplit
    skipped: tuple[tuple[str, str], ...]
    val_from: str


def check_image_file(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be a readable image, or ``None`` if it looks fine.

    Reads the first 16 bytes (format signature) and, for JPEG and PNG, the last KiB (end marker:
    ``FFD9``, ``IEND``), so empty, foreign and truncated files are caught without decoding. A file
    without the marker there (data appended after it, as some cameras and editors write) is decoded
    once with PIL, as a loader would, and kept if that works: only what a decoder rejects is left out.
    """
    try:
        with open(path, 'rb') as f:
            head = f.read(16)
            if not head:
                return 'empty file'
            if head.startswith(b'\xff\xd8\xff'):
                end_marker = b'\xff\xd9'
            elif head.startswith(b'\x89PNG\r\n\x1a\n'):
                end_marker = b'IEND'
            elif (head.startswith((b'BM', b'II*\x00', b'MM\x00*')) or (head[:4] == b'RIFF' and head[8:12] == b'WEBP')
                    or (head[:1] == b'P' and head[1:2] in b'123456')):
                return None
            else:
                return 'not an image (unknown format signature)'
            f.seek(max(0, os.fstat(f.fileno()).st_size - 1024))
            marked = end_marker in f.read()
    except OSError as e:
        return f'cannot be read ({e.strerror or e})'
    if not marked:
        try:
            from PIL import Image
            with Image.open(path) as image:
                image.load()
        except Exception:  # PIL raises OSError, SyntaxError, ValueError, ... on a bad file
            return 'truncated (no end-of-image marker, and PIL cannot decode it)'
    return None


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith('.'))


def _images_in(class_dir: Path) -> list[str]:
    """Image files under ``class_dir`` (sorted, hidden ones left out), following links to folders but reading
    each folder once: a symlink loop, or a second link to a folder already read, adds nothing."""
    out: list[str] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                   if not f.startswith('.') and f.lower().endswith(IMG_EXTENSIONS))
    return out


def _read_split(split_dir: Path, classes: Sequence[str], what: str) -> list[list[str]]:
    per_class = [_images_in(split_dir / c) for c in classes]
    empty = [c for c, files in zip(classes, per_class, strict=True) if not files]
    if empty:
        raise DataError(f'{what} class folder(s) {", ".join(str(split_dir / c) for c in empty[:3])}'
                        f'{" ..." if len(empty) > 3 else ""} have no images ({"/".join(IMG_EXTENSIONS)}); '
                        'add images or remove the folder(s)')
    return per_class


def _layout(root: Path) -> tuple[Path, Path | None]:
    if not root.exists():
        raise DataError(f'--data-dir {root} does not exist; point it at an ImageFolder '
                        f'(DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg)')
    if not root.is_dir():
        raise DataError(f'--data-dir {root} is a file; point it at an ImageFolder folder '
                        f'(DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg)')
    val = next((root / v for v in ('val', 'validation') if (root / v).is_dir()), None)
    if (root / 'train').is_dir():
        return root / 'train', val
    if val is not None:
        raise DataError(f'{root} has {val.name}/ but no train/ folder; '
                        f'add {root}/train/<class>/ with the training images')
    return root, None


def _folder_stamp(root: Path) -> tuple[tuple[str, int], ...]:
    """Modification times of the root, split and class folders: adding or removing images changes one."""
    out = [(str(root), root.stat().st_mtime_ns)]
    for split in [root] + [root / s for s in ('train', 'val', 'validation') if (root / s).is_dir()]:
        out.append((str(split), split.stat().st_mtime_ns))
        for c in _class_dirs(split):
            out.append((str(split / c), (split / c).stat().st_mtime_ns))
    return tuple(out)


@functools.lru_cache(maxsize=4)
def _scan_cached(root_str: str, val_split: float, verify: bool, workers: int,
                 stamp: tuple[tuple[str, int], ...]) -> FolderScan:
    root = Path(root_str)
    train_dir, val_dir = _layout(root)
    classes = _class_dirs(train_dir)
    if not classes:
        raise DataError(f'{train_dir} has no class folders; put the images in {train_dir}/<class>/ '
                        f'(one folder per class)')
    train_per_class = _read_split(train_dir, classes, 'training')
    val_per_class: list[list[str]] = [[] for _ in classes]
    if val_dir is not None:
        val_classes = _class_dirs(val_dir)
        if not val_classes:
            raise DataError(f'{val_dir} has no class folders; put the images in {val_dir}/<class>/ '
                            f'(or remove {val_dir} to hold out {val_split:.0%} of train)')
        unknown = sorted(set(val_classes) - set(classes))
        if unknown:
            raise DataError(f'{val_dir} has class folder(s) {", ".join(unknown[:5])} that {train_dir} lacks; '
                            'every validation class must also be a training class')
        for c, files in zip(val_classes, _read_split(val_dir, val_classes, 'validation'), strict=True):
            val_per_class[classes.index(c)] = files
    skipped: list[tuple[str, str]] = []
    if verify:
        every = [f for group in (train_per_class, val_per_class) for files in group for f in files]
        if len(every) >= _VERIFY_PARALLEL_FROM:
            with ThreadPoolExecutor(max(1, workers) * 4) as pool:  # I/O bound: a few reads per file
                reasons = list(pool.map(check_image_file, every, chunksize=64))
        else:
            reasons = [check_image_file(f) for f in every]
        bad = {f: r for f, r in zip(every, reasons, strict=True) if r is not None}
        if bad:
            skipped = sorted(bad.items())
            for group in (train_per_class, val_per_class):
                for files in group:
                    files[:] = [f for f in files if f not in bad]
            empty = [c for c, files in zip(classes, train_per_class, strict=True) if not files]
            if empty:
                raise DataError(f'training class folder(s) {", ".join(str(train_dir / c) for c in empty[:3])} '
                                f'have no readable images (e.g. {skipped[0][0]}: {skipped[0][1]}); '
                                'replace the files or remove the folder(s)')
    if val_dir is None:
        g = generator(0, HOLDOUT)
        for label, files in enumerate(train_per_class):
            k = min(len(files) - 1, max(1, round(val_split * len(files)))) if len(files) > 1 else 0
            held = set(torch.randperm(len(files), generator=g)[:k].tolist())
            val_per_class[label] = [f for i, f in enumerate(files) if i in held]
            train_per_class[label] = [f for i, f in enumerate(files) if i not in held]
        val_from = f'held out {val_split:.0%} of every class of {train_dir} (no val/ folder; seed 0)'
    else:
        val_from = f'{val_dir}'

    def split(per_class: list[list[str]]) -> FileSplit:
        return FileSplit(tuple(f for files in per_class for f in files),
                         tuple(c for c, files in enumerate(per_class) for _ in files))

    val = split(val_per_class)
    if not len(val):
        raise DataError(f'{root} has no validation images; add some to {val_dir or root / "val"}/<class>/')
    return FolderScan(root, tuple(classes), split(train_per_class), val, tuple(skipped), val_from)


def scan_image_folder(data_dir: str | os.PathLike[str] | None, *, val_split: float = 0.1, verify: bool = True,
                      workers: int = 2) -> FolderScan:
    """Scan an ImageFolder (see the module docstring for the policy); cached while the folders are unchanged.

    Warns with ``DataWarning`` naming the files left out as unreadable (once per scan; a cached
    result only counts them in ``skipped``).

    Raises:
        DataError: On a missing or empty folder, class folders without images, or validation
            classes that are not training classes.
    """
    if data_dir is None:
        raise DataError('dataset imagefolder needs --data-dir DIR (ImageNet layout: DIR/train/<class>/*.jpg '
                        'and DIR/val/<class>/*.jpg)')
    root = Path(data_dir).expanduser().resolve()
    _layout(root)
    misses = _scan_cached.cache_info().misses
    scan = _scan_cached(str(root), float(val_split), bool(verify), int(workers), _folder_stamp(root))
    if scan.skipped and _scan_cached.cache_info().misses > misses:  # once per scan, not per call
        names = ', '.join(f'{f} ({r})' for f, r in scan.skipped[:3])
        warnings.warn(f'imagefolder {root}: left out {len(scan.skipped)} unreadable image file(s): {names}'
                      f'{", ..." if len(scan.skipped) > 3 else ""}', DataWarning, stacklevel=2)
    return scan


# ----------------------------------------------------------------------------------------------- synthetic


def make_synthetic(input_size: tuple[int, int, int], num_train: int, num_val: int) -> tuple[ArraySplit, ArraySplit]:
    """Seeded random images for smoke runs: each is the mean of its class' random template and noise.

    The templates make the labels learnable (a smoke run's loss falls); nothing else about them is real.
    The content depends on the sizes only (seed 0), not on the training seed.
    """
    c, h, w = input_size
    g = generator(0, SYNTHETIC, c, h, w)
    templates = torch.randint(0, 256, (10, c, h, w), generator=g, dtype=torch.uint8) >> 1
    splits = []
    for n in (num_train, num_val):
        labels = torch.randint(0, 10, (n,), generator=g)
        noise = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8) >> 1
        splits.append(ArraySplit(noise.add_(templates[labels]), labels))
    return splits[0], splits[1]


# ----------------------------------------------------------------------------------------------- info


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """Locate the data set and read what describes it, without loading images where that can be avoided.

    Fashion-MNIST: the IDX headers. CIFAR: the batches (cached, so ``create_loaders`` does not read
    them again). ImageFolder: the folder scan (cached the same way). Call it first to fail early.

    Raises:
        DataError: If the data set is missing, incomplete, truncated or too small for the subsets asked.
    """
    spec = DATASETS[cfg.dataset]
    if cfg.dataset == 'fashion-mnist':
        return _fashion_info(cfg)
    if cfg.dataset in CIFAR_LAYOUTS:
        folder = find_cifar(cfg.dataset, cfg.data_dir, download=cfg.download)
        train, val, classes = load_cifar(cfg.dataset, folder)
        n_train, n_val = _subset_counts(cfg, len(train), len(val), cfg.dataset)
        test = 'test split (test_batch)' if cfg.dataset == 'cifar10' else 'test split (test)'
        return DatasetInfo(cfg.dataset, spec.num_classes or 0, 3, n_train, n_val, spec.mean, spec.std, (32, 32),
                           str(folder), classes, 0, val_source(cfg, test))
    if cfg.dataset == 'imagefolder':
        scan = scan_image_folder(cfg.data_dir, val_split=cfg.val_split, verify=cfg.verify_images, workers=cfg.workers)
        n_train, n_val = _subset_counts(cfg, len(scan.train), len(scan.val), f'imagefolder {scan.root}')
        return DatasetInfo('imagefolder', len(scan.classes), 3, n_train, n_val, spec.mean, spec.std, None,
                           str(scan.root), scan.classes, len(scan.skipped), val_source(cfg, scan.val_from))
    n_train, n_val = _subset_counts(cfg, *synthetic_sizes(cfg), 'synthetic')
    return DatasetInfo('synthetic', 10, spec.source_chans, n_train, n_val, spec.mean, spec.std, None, None,
                       tuple(str(i) for i in range(10)), 0, val_source(cfg, 'generated (seed 0)'))


def synthetic_sizes(cfg: DataConfig) -> tuple[int, int]:
    """Training and validation images generated for ``synthetic``: ``train_samples`` (plus ``holdout``) and
    ``val_samples``, or the defaults."""
    return ((cfg.train_samples or SYNTHETIC_DEFAULT_SIZES[0]) + (cfg.holdout or 0),
            cfg.val_samples or SYNTHETIC_DEFAULT_SIZES[1])
