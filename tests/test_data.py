"""The data layer: real Fashion-MNIST, CIFAR pickles and ImageFolders written in their real formats,
the memory/torch/DALI loaders (sharding, determinism, geometry), and every bad input."""
from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import struct
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from spsearch.data import (
    DataConfig,
    DataWarning,
    EpochLoader,
    create_loaders,
    dataset_info,
    find_fashion_mnist,
    scan_image_folder,
)
from spsearch.data import datasets as ds
from spsearch.data.datasets import ArraySplit, load_cifar, load_fashion_mnist, read_idx
from spsearch.data.loaders import MemoryLoader
from spsearch.data.sampling import train_shard, val_shard
from spsearch.data.transforms import BatchTransform, plan_geometry
from spsearch.errors import ConfigError, DataError

from helpers import needs_fmnist, replay_configs

# ------------------------------------------------------------------------------------------- writers (real formats)


def write_idx(path: Path, array: np.ndarray) -> None:
    head = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f'>{array.ndim}I', *array.shape)
    data = head + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == '.gz' else data)


def write_fashion(folder: Path, n_train: int = 40, n_val: int = 20, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ext = '.gz' if gz else ''
    for (images, labels), n in zip(ds.FASHION_MNIST_FILES.values(), (n_train, n_val), strict=True):
        write_idx(folder / (images + ext), rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / (labels + ext), np.arange(n) % 10)


def cifar_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def write_cifar10(folder: Path, per_batch: int = 12, n_test: int = 10) -> Path:
    """The python version's layout and content: py2-style pickles with bytes keys."""
    folder.mkdir(parents=True)
    for i, name in enumerate([f'data_batch_{k}' for k in range(1, 6)] + ['test_batch']):
        n = n_test if name == 'test_batch' else per_batch
        batch = {b'batch_label': name.encode(), b'labels': [(i + j) % 10 for j in range(n)],
                 b'data': cifar_rows(n, i), b'filenames': [f'{name}_{j}.png'.encode() for j in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
    meta = {b'label_names': [n.encode() for n in names], b'num_vis': 3072, b'num_cases_per_batch': per_batch}
    (folder / 'batches.meta').write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_cifar100(folder: Path, n_train: int = 30, n_test: int = 10) -> Path:
    folder.mkdir(parents=True)
    for name, n in (('train', n_train), ('test', n_test)):
        batch = {b'filenames': [b'x.png'] * n, b'batch_label': name.encode(),
                 b'fine_labels': [j * 7 % 100 for j in range(n)], b'coarse_labels': [j % 20 for j in range(n)],
                 b'data': cifar_rows(n, n)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b'fine_label_names': [f'f{i}'.encode() for i in range(100)],
            b'coarse_label_names': [f'c{i}'.encode() for i in range(20)]}
    (folder / 'meta').write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def write_image(path: Path, seed: int, size: tuple[int, int] = (20, 24), mode: str = 'RGB') -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (*size, 3) if mode == 'RGB' else size
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path, quality=90)


def write_folder(root: Path, classes=('cat', 'dog', 'eel'), n_train: int = 6, n_val: int = 3, val: str | None = 'val',
                 ) -> Path:
    """JPEG and PNG files of several sizes (and one greyscale PNG) in the ImageNet layout."""
    k = 0
    for split, n in (('train', n_train), (val, n_val)):
        if split is None:
            continue
        for c in classes:
            for i in range(n):
                ext = 'jpg' if i % 2 else 'png'
                write_image(root / split / c / f'{i}.{ext}', k, (18 + i, 24 - i), 'L' if k == 3 else 'RGB')
                k += 1
    return root


def batches(loader, epoch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) and torch.equal(s, t)
                                    for (x, s), (y, t) in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------------- Fashion-MNIST


@needs_fmnist
def test_real_fashion_mnist_files():
    folder = find_fashion_mnist()
    train, val = load_fashion_mnist(folder)
    assert tuple(train.images.shape) == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert tuple(val.images.shape) == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(val.labels).tolist() == [1000] * 10
    assert abs(train.images.float().mean().item() / 255 - ds.DATASETS['fashion-mnist'].mean[0]) < 1e-3
    info = dataset_info(DataConfig('fashion-mnist', train_samples=500))
    assert (info.num_classes, info.source_chans, info.num_train, info.num_val, info.native_size) == (10, 1, 500, 10000,
                                                                                                     (28, 28))


def test_fashion_mnist_search_order_and_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, 'FASHION_MNIST_SYSTEM_DIR', tmp_path / 'system')
    monkeypatch.setenv('SPSEARCH_DATA', str(tmp_path / 'cache'))
    with pytest.raises(DataError, match='apt-get install dataset-fashion-mnist.*fetch_fashion_mnist.sh.*--data-dir'):
        find_fashion_mnist()
    write_fashion(tmp_path / 'cache' / 'fashion-mnist', gz=False)  # unpacked files work too
    assert find_fashion_mnist() == tmp_path / 'cache' / 'fashion-mnist'
    write_fashion(tmp_path / 'system')
    assert find_fashion_mnist() == tmp_path / 'system'  # the Debian path comes first
    # an explicit --data-dir is the only place searched
    with pytest.raises(DataError, match='does not exist'):
        find_fashion_mnist(tmp_path / 'nope')
    (tmp_path / 'partial').mkdir()
    write_idx(tmp_path / 'partial' / 'train-images-idx3-ubyte.gz', np.zeros((2, 28, 28)))
    with pytest.raises(DataError, match=r'missing train-labels-idx1-ubyte, t10k-images'):
        find_fashion_mnist(tmp_path / 'partial')
    info = dataset_info(DataConfig('fashion-mnist', data_dir=str(tmp_path / 'system')))
    assert (info.num_train, info.num_val, info.root) == (40, 20, str(tmp_path / 'system'))


def test_idx_truncated_and_wrong_magic(tmp_path):
    write_fashion(tmp_path / 'f', gz=True)
    path = tmp_path / 'f' / 'train-images-idx3-ubyte.gz'
    raw = gzip.decompress(path.read_bytes())
    dims, data = read_idx(path, 3)
    assert dims == (40, 28, 28) and data is not None and data.shape == (40, 28, 28)
    (tmp_path / 'cut.gz').write_bytes(path.read_bytes()[:-30])  # a cut download: gzip stream ends early
    with pytest.raises(DataError, match='cut.gz cannot be read.*corrupt or truncated'):
        read_idx(tmp_path / 'cut.gz', 3)
    (tmp_path / 'short').write_bytes(raw[:-100])  # unpacked, data shorter than the header says
    with pytest.raises(DataError, match=r'short is truncated: 31260 bytes of data'):
        read_idx(tmp_path / 'short', 3)
    with pytest.raises(DataError, match=r'not an IDX file.*expected 0x00000801'):
        read_idx(path, 1)  # an image file where labels are expected


# ------------------------------------------------------------------------------------------- CIFAR


def test_cifar10_pickles_and_loader(tmp_path):
    folder = write_cifar10(tmp_path / 'cifar-10-batches-py')
    train, val, classes = load_cifar('cifar10', folder)
    assert tuple(train.images.shape) == (60, 3, 32, 32) and len(val) == 10 and classes[0] == 'airplane'
    # rows are R, G, B planes: pixel (c, y, x) is data[32*32*c + 32*y + x]
    rows = cifar_rows(12, 0)
    assert train.images[3, 2, 5, 7] == rows[3, 2048 + 5 * 32 + 7]
    for data_dir in (folder, tmp_path):  # the folder itself or its parent
        info = dataset_info(DataConfig('cifar10', data_dir=str(data_dir)))
        assert (info.num_classes, info.num_train, info.num_val, info.root) == (10, 60, 10, str(folder))
    cfg = DataConfig('cifar10', data_dir=str(tmp_path), batch_size=8, augment=False)
    loaders = create_loaders(cfg, input_size=(3, 32, 32), mean=(0.0,), std=(1.0,))
    images, targets = next(iter(loaders.val))
    assert images.shape == (10, 3, 32, 32) and targets.dtype == torch.int64
    torch.testing.assert_close(images, val.images.float() / 255)  # no augmentation, identity normalisation
    assert targets.tolist() == val.labels.tolist()


def test_cifar100_fine_labels(tmp_path):
    folder = write_cifar100(tmp_path / 'cifar-100-python')
    train, val, classes = load_cifar('cifar100', folder)
    assert len(train) == 30 and len(classes) == 100 and train.labels.tolist()[:3] == [0, 7, 14]
    info = dataset_info(DataConfig('cifar100', data_dir=str(tmp_path)))
    assert info.num_classes == 100 and info.classes[7] == 'f7'


class _Payload:
    """A pickle that runs a shell command when loaded with ``pickle.load``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_cifar_truncated_missing_and_foreign(tmp_path):
    folder = write_cifar10(tmp_path / 'cifar-10-batches-py')
    data = (folder / 'data_batch_3').read_bytes()
    (folder / 'data_batch_3').write_bytes(data[:len(data) // 2])
    with pytest.raises(DataError, match=r'data_batch_3 is not a readable CIFAR batch, it is truncated or corrupt'):
        dataset_info(DataConfig('cifar10', data_dir=str(folder)))
    (folder / 'data_batch_3').write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match=r'data_batch_3 is not a CIFAR batch \(a pickled dict\)'):
        dataset_info(DataConfig('cifar10', data_dir=str(folder)))
    marker = tmp_path / 'ran'
    (folder / 'data_batch_3').write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(DataError, match=r'data_batch_3 was refused: it references posix.system|os.system'):
        dataset_info(DataConfig('cifar10', data_dir=str(folder)))
    assert not marker.exists()  # nothing ran
    (folder / 'data_batch_3').unlink()
    with pytest.raises(DataError, match=r'incomplete: data_batch_3 missing'):
        dataset_info(DataConfig('cifar10', data_dir=str(folder)))
    with pytest.raises(DataError, match=r'cifar100 not found in --data-dir .*cifar-100-python.tar.gz'):
        dataset_info(DataConfig('cifar100', data_dir=str(tmp_path)))


# ------------------------------------------------------------------------------------------- ImageFolder


def test_image_folder_torch_loader_and_val_shards(tmp_path):
    root = write_folder(tmp_path / 'imgs')
    cfg = DataConfig('imagefolder', data_dir=str(root), loader='torch', batch_size=4, eval_batch_size=4, workers=0)
    one = create_loaders(cfg, input_size=(3, 16, 16))
    assert one.kind == 'torch' and one.info.classes == ('cat', 'dog', 'eel')
    assert (one.info.num_train, one.info.num_val, one.info.skipped) == (18, 9, 0)
    images, targets = next(iter(batches(one.train)))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32 and targets.dtype == torch.int64
    assert len(one.train) == 4 and one.train.num_samples == 16  # drop-last
    full = batches(one.val)
    assert [len(t) for _, t in full] == [4, 4, 1]
    assert torch.cat([t for _, t in full]).tolist() == [0] * 3 + [1] * 3 + [2] * 3
    shards = [create_loaders(cfg, input_size=(3, 16, 16), process_index=i, num_processes=2) for i in range(2)]
    parts = [batches(s.val) for s in shards]
    assert [s.val.num_samples for s in shards] == [4, 5]  # disjoint, contiguous, no padding
    for k in (0, 1):  # together they are exactly the single-process validation set, each image once
        assert torch.equal(torch.cat([b[k] for p in parts for b in p]), torch.cat([b[k] for b in full]))
    # training shards: the same number of full batches on each process
    assert len(shards[0].train) == len(shards[1].train) == 2
    # uint8 from the workers, normalised per batch: the same as timm's float transform per image
    from PIL import Image
    from timm.data import create_transform
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    loaders = create_loaders(cfg, input_size=(3, 16, 16), mean=mean, std=std)
    # small images (<= 64 px) are validated whole, as the in-memory path does: no centre crop
    reference = create_transform((3, 16, 16), is_training=False, mean=mean, std=std, crop_pct=1.0,
                                 interpolation='bilinear')
    expected = torch.stack([reference(Image.open(f).convert('RGB')) for f in scan_image_folder(str(root)).val.files])
    got = torch.cat([b[0] for b in batches(loaders.val)])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_image_folder_without_val_holds_out_seeded_split(tmp_path):
    root = write_folder(tmp_path / 'imgs', n_train=10, val=None)
    info = dataset_info(DataConfig('imagefolder', data_dir=str(root), val_split=0.2))
    assert (info.num_train, info.num_val) == (24, 6) and 'held out 20%' in info.val_from
    scan = ds.scan_image_folder(root, val_split=0.2)
    assert not set(scan.train.files) & set(scan.val.files) and sorted(scan.val.labels) == [0, 0, 1, 1, 2, 2]
    flat = tmp_path / 'flat'  # DIR/<class>/ directly, as torchvision's ImageFolder
    for c in ('a', 'b'):
        for i in range(5):
            write_image(flat / c / f'{i}.png', i)
    info = dataset_info(DataConfig('imagefolder', data_dir=str(flat), seed=7))
    assert (info.num_train, info.num_val, info.classes) == (8, 2, ('a', 'b'))


def test_image_folder_corrupt_files_are_skipped_and_counted(tmp_path):
    root = write_folder(tmp_path / 'imgs')
    good = (root / 'train' / 'cat' / '1.jpg').read_bytes()
    (root / 'train' / 'cat' / 'cut.jpg').write_bytes(good[:len(good) // 2])
    (root / 'train' / 'dog' / 'text.jpg').write_bytes(b'this is not an image' * 5)
    (root / 'val' / 'eel' / 'empty.png').write_bytes(b'')
    (root / 'train' / 'dog' / 'notes.txt').write_text('ignored: not an image extension')
    assert ds.check_image_file(root / 'train' / 'cat' / '1.jpg') is None
    with pytest.warns(DataWarning, match=r'left out 3 unreadable image file\(s\).*cut.jpg \(truncated'):
        info = dataset_info(DataConfig('imagefolder', data_dir=str(root), batch_size=4, workers=0))
    assert (info.num_train, info.num_val, info.skipped) == (18, 9, 3)
    # a file that looks right (JPEG start and end markers) but does not decode: the torch loader replaces it
    (root / 'train' / 'eel' / 'zz.jpg').write_bytes(b'\xff\xd8\xff\xe0' + b'\x00' * 64 + b'\xff\xd9')
    with pytest.warns(DataWarning):
        loaders = create_loaders(DataConfig('imagefolder', data_dir=str(root), loader='torch', batch_size=19,
                                            workers=0), input_size=(3, 8, 8))
    with pytest.warns(DataWarning, match=r'cannot decode .*zz.jpg.*using the next image'):
        images, _ = next(iter(loaders.train))
    assert images.shape == (19, 3, 8, 8) and torch.isfinite(images).all()


@pytest.mark.parametrize('case', ['missing', 'file', 'empty', 'no_images', 'val_only', 'unknown_val_class',
                                  'no_data_dir'])
def test_image_folder_bad_layouts(tmp_path, case):
    root = tmp_path / 'imgs'
    match = {'missing': 'does not exist', 'file': 'is a file', 'empty': 'has no class folders',
             'no_images': r'class folder\(s\) .*dog.* have no images', 'val_only': 'has val/ but no train/',
             'unknown_val_class': 'has class folder\\(s\\) fox that .* lacks', 'no_data_dir': 'needs --data-dir'}[case]
    if case == 'file':
        root.write_text('x')
    elif case == 'empty':
        root.mkdir()
    elif case == 'no_images':
        write_folder(root)
        (root / 'train' / 'dog2').mkdir()
        for f in (root / 'train' / 'dog').iterdir():
            f.unlink()
    elif case == 'val_only':
        write_image(root / 'val' / 'a' / '0.png', 0)
    elif case == 'unknown_val_class':
        write_folder(root)
        write_image(root / 'val' / 'fox' / '0.png', 0)
    cfg = DataConfig('imagefolder', data_dir=None if case == 'no_data_dir' else str(root))
    with pytest.raises(DataError, match=match):
        dataset_info(cfg)


def test_image_folder_memory_loader_and_grey_model(tmp_path):
    root = write_folder(tmp_path / 'imgs')
    loaders = create_loaders(DataConfig('imagefolder', data_dir=str(root), loader='memory', batch_size=6, workers=1),
                             input_size=(1, 12, 12))
    assert loaders.kind == 'memory' and 'decoded once at 12x12' in loaders.reason
    images, targets = next(iter(batches(loaders.train)))
    assert images.shape == (6, 1, 12, 12) and targets.shape == (6,)


@pytest.mark.dali
@pytest.mark.filterwarnings('ignore::spsearch.data.DataWarning')  # asserted once below
def test_dali_cpu_pipeline_sharding_and_determinism(tmp_path):
    pytest.importorskip('nvidia.dali')
    root = write_folder(tmp_path / 'imgs')
    (root / 'train' / 'cat' / 'text.jpg').write_bytes(b'no image')  # skipped up front, DALI never sees it
    cfg = DataConfig('imagefolder', data_dir=str(root), loader='dali', batch_size=4, eval_batch_size=4, workers=1)
    with pytest.warns(DataWarning):
        one = create_loaders(cfg, input_size=(3, 16, 16))
    assert one.kind == 'dali' and 'CPU pipeline' in one.reason and one.info.skipped == 1
    first = batches(one.train, 0)
    assert [tuple(x.shape) for x, _ in first] == [(4, 3, 16, 16)] * 4 and first[0][1].dtype == torch.int64
    assert same(first, batches(one.train, 0)) and not same(first, batches(one.train, 1))
    # the same images in the same order as the torch loader (only the augmentation differs)
    torch_train = create_loaders(DataConfig('imagefolder', data_dir=str(root), loader='torch', batch_size=4, workers=0),
                                 input_size=(3, 16, 16)).train
    assert [t.tolist() for _, t in first] == [t.tolist() for _, t in batches(torch_train, 0)]
    full = batches(one.val)
    assert [len(t) for _, t in full] == [4, 4, 1]
    parts = [batches(create_loaders(cfg, input_size=(3, 16, 16), process_index=i, num_processes=2).val)
             for i in range(2)]
    assert [sum(len(t) for _, t in p) for p in parts] == [4, 5]
    for k in (0, 1):
        assert torch.equal(torch.cat([b[k] for p in parts for b in p]), torch.cat([b[k] for b in full]))
    train_parts = [create_loaders(cfg, input_size=(3, 16, 16), process_index=i, num_processes=2).train
                   for i in range(2)]
    assert [len(batches(t)) for t in train_parts] == [2, 2]


@pytest.mark.dali
def test_dali_undecodable_file_is_named(tmp_path):
    pytest.importorskip('nvidia.dali')
    root = write_folder(tmp_path / 'imgs', n_train=2, n_val=1)
    (root / 'val' / 'dog' / 'zz.jpg').write_bytes(b'\xff\xd8\xff\xe0' + b'\x00' * 64 + b'\xff\xd9')
    loaders = create_loaders(DataConfig('imagefolder', data_dir=str(root), loader='dali', batch_size=2, workers=1),
                             input_size=(3, 8, 8))
    with pytest.raises(DataError, match=r'DALI cannot decode .*zz.jpg.*--loader torch'):
        list(loaders.val)


# ------------------------------------------------------------------------------------------- loaders


def test_auto_picks_and_says_why(tmp_path, monkeypatch):
    folder = write_cifar10(tmp_path / 'cifar-10-batches-py')
    small = create_loaders(DataConfig('cifar10', data_dir=str(folder), batch_size=8), input_size=(3, 32, 32))
    assert small.kind == 'memory' and small.reason.startswith('memory: cifar10 is small')
    assert isinstance(small.train, EpochLoader) and isinstance(small.val, EpochLoader)
    root = write_folder(tmp_path / 'imgs')
    import spsearch.data.factory as factory

    monkeypatch.setattr(factory, 'dali_available', lambda: False)
    loaders = create_loaders(DataConfig('imagefolder', data_dir=str(root), batch_size=4, workers=0),
                             input_size=(3, 16, 16))
    assert loaders.kind == 'torch' and 'NVIDIA DALI is not installed (pip install nvidia-dali-cuda130' in loaders.reason
    monkeypatch.setitem(sys.modules, 'nvidia.dali', None)  # as if not installed
    with pytest.raises(DataError, match=r'loader dali needs NVIDIA DALI.*pip install nvidia-dali-cuda130'):
        create_loaders(DataConfig('imagefolder', data_dir=str(root), loader='dali', batch_size=4),
                       input_size=(3, 16, 16))
    with pytest.raises(ConfigError, match='loader dali reads image files'):
        create_loaders(DataConfig('cifar10', data_dir=str(folder), loader='dali'), input_size=(3, 32, 32))


def test_set_epoch_determinism_and_no_global_rng(tmp_path):
    folder = write_cifar10(tmp_path / 'c', per_batch=20)
    cfg = DataConfig('cifar10', data_dir=str(folder), batch_size=16, seed=3)
    loaders = create_loaders(cfg, input_size=(3, 32, 32))
    state = torch.random.get_rng_state()
    e2 = batches(loaders.train, 2)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is neither used nor advanced
    torch.manual_seed(123)
    assert same(e2, batches(loaders.train, 2))
    assert not same(e2, batches(loaders.train, 3))
    fresh = create_loaders(cfg, input_size=(3, 32, 32))  # a resumed run: set_epoch then iterate
    assert same(e2, batches(fresh.train, 2))
    other_seed = create_loaders(DataConfig('cifar10', data_dir=str(folder), batch_size=16, seed=4),
                                input_size=(3, 32, 32))
    assert not same(e2, batches(other_seed.train, 2))
    # the torch DataLoader path gives the very same batches, with worker processes too
    workers = create_loaders(DataConfig('cifar10', data_dir=str(folder), batch_size=16, seed=3, loader='torch',
                                        workers=2), input_size=(3, 32, 32))
    assert workers.kind == 'torch' and same(e2, batches(workers.train, 2))


FRESH_PROCESS = """
import sys, torch
sys.path.insert(0, 'tests')
from helpers import replay_configs
from spsearch.data import create_loaders
out = {}
for name, cfg in replay_configs(sys.argv[1], sys.argv[2]).items():
    train = create_loaders(cfg, input_size=(3, 16, 16)).train
    train.set_epoch(2)
    out[name] = list(train)
torch.save(out, sys.argv[3])
"""


@pytest.mark.slow
def test_epoch_is_replayed_exactly_in_a_fresh_process(tmp_path):
    """What a resumed run relies on: set_epoch(e) in a new process gives epoch e's batches bit for bit."""
    import subprocess

    folder, root = write_cifar10(tmp_path / 'c', per_batch=20), write_folder(tmp_path / 'imgs')
    expected = {}
    for name, cfg in replay_configs(str(folder), str(root)).items():
        train = create_loaders(cfg, input_size=(3, 16, 16)).train
        for epoch in (0, 1):  # this process has been through other epochs first
            batches(train, epoch)
        torch.manual_seed(99)
        expected[name] = batches(train, 2)
    subprocess.run([sys.executable, '-c', FRESH_PROCESS, str(folder), str(root), str(tmp_path / 'fresh.pt')],
                   check=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    fresh = torch.load(tmp_path / 'fresh.pt')
    assert sorted(fresh) == sorted(expected)
    for name in expected:
        assert same(fresh[name], expected[name]), name


def test_torch_file_loader_is_deterministic_across_workers(tmp_path):
    root = write_folder(tmp_path / 'imgs')
    results = []
    for workers in (0, 2):
        cfg = DataConfig('imagefolder', data_dir=str(root), loader='torch', batch_size=6, workers=workers, seed=1)
        loader = create_loaders(cfg, input_size=(3, 16, 16)).train
        state = torch.random.get_rng_state()
        results.append((batches(loader, 1), batches(loader, 2)))
        assert torch.equal(state, torch.random.get_rng_state())
    assert same(results[0][0], results[1][0]) and same(results[0][1], results[1][1])
    assert not same(results[0][0], results[0][1])



@pytest.mark.parametrize('size', [16, 72])
def test_auto_augment_runs_timms_policy_in_the_torch_loader(tmp_path, monkeypatch, size):
    """--aa adds timm's auto-augment (as create_transform builds it) to the torch loader's training transform, at
    small sizes (pad-and-crop recipe) and large ones (random-resized crop); auto picks torch over DALI for it;
    batches stay a function of (seed, epoch)."""
    import spsearch.data.factory as factory
    root = write_folder(tmp_path / 'imgs')
    monkeypatch.setattr(factory, 'dali_available', lambda: True)
    cfg = DataConfig('imagefolder', data_dir=str(root), batch_size=6, workers=0, seed=1, aa='rand-m9-mstd0.5-inc1')
    loaders = create_loaders(cfg, input_size=(3, size, size))
    assert loaders.kind == 'torch' and '--aa rand-m9-mstd0.5-inc1' in loaders.reason
    assert 'auto-augment rand-m9-mstd0.5-inc1' in loaders.reason
    assert 'RandAugment' in repr(loaders.train.loader.dataset.transform)
    assert 'RandAugment' not in repr(loaders.val.loader.dataset.transform)
    first, again = batches(loaders.train, 1), batches(create_loaders(cfg, input_size=(3, size, size)).train, 1)
    assert same(first, again)
    plain = batches(create_loaders(dataclasses.replace(cfg, aa=None), input_size=(3, size, size)).train, 1)
    assert not same(first, plain)
    augmix = create_loaders(dataclasses.replace(cfg, aa='augmix-m5-w4-d2'), input_size=(3, size, size))
    assert 'AugMixAugment' in repr(augmix.train.loader.dataset.transform) and len(batches(augmix.train, 0)) == 3


@pytest.mark.parametrize('kwargs, message', [
    (dict(dataset='fashion-mnist'), 'needs PIL images'),
    (dict(dataset='imagefolder', loader='dali'), 'use --loader torch'),
    (dict(dataset='imagefolder', loader='memory'), 'use --loader torch'),
    (dict(dataset='imagefolder', augment=False), 'which --no-augment turns off'),
    (dict(dataset='imagefolder', aa='bogus'), "'bogus' is not a timm auto-augment policy"),
])
def test_auto_augment_where_it_cannot_run_is_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DataConfig(**{'aa': 'rand-m9-mstd0.5-inc1', **kwargs})


def test_train_shards_are_disjoint_and_equal():
    for n, bs, procs in ((103, 8, 3), (64, 8, 2), (10, 5, 2)):
        shards = [train_shard(n, bs, i, procs, seed=0, epoch=5) for i in range(procs)]
        assert all(len(s) == (n // (bs * procs)) * bs for s in shards)
        every = torch.cat(shards)
        assert len(set(every.tolist())) == len(every)
    assert [len(val_shard(10, i, 3)) for i in range(3)] == [3, 3, 4]
    # through a loader: labels are the image indices
    split = ArraySplit(torch.zeros(50, 1, 4, 4, dtype=torch.uint8), torch.arange(50))
    tf = BatchTransform(source_chans=1, source_size=(4, 4), input_size=(1, 4, 4), mean=(0.0,), std=(1.0,), augment=True,
                        device='cpu')
    seen = [torch.cat([t for _, t in MemoryLoader(split, tf, batch_size=8, train=True, seed=0, process_index=i,
                                                   num_processes=2)]) for i in range(2)]
    assert len(seen[0]) == len(seen[1]) == 24 and not set(seen[0].tolist()) & set(seen[1].tolist())


def test_train_samples_subset_is_seeded(tmp_path):
    folder = write_cifar10(tmp_path / 'c', per_batch=20)

    def subset(seed: int) -> list[float]:
        loaders = create_loaders(DataConfig('cifar10', data_dir=str(folder), batch_size=5, seed=seed, augment=False,
                                            train_samples=30), input_size=(3, 32, 32))
        assert loaders.info.num_train == 30 and loaders.train.num_samples == 30
        return sorted(torch.cat([x for x, _ in batches(loaders.train)]).flatten(1).sum(1).tolist())  # image identities

    assert subset(0) == subset(0) != subset(1)
    v0 = create_loaders(DataConfig('cifar10', data_dir=str(folder), batch_size=8, val_samples=4, seed=0),
                        input_size=(3, 32, 32))
    v1 = create_loaders(DataConfig('cifar10', data_dir=str(folder), batch_size=8, val_samples=4, seed=1),
                        input_size=(3, 32, 32))
    assert same(batches(v0.val), batches(v1.val))  # the validation subset does not follow the training seed
    with pytest.raises(DataError, match=r'--train-samples 500 is larger than the 100 images'):
        dataset_info(DataConfig('cifar10', data_dir=str(folder), train_samples=500))


def test_grey_to_rgb_padding_and_resize():
    assert plan_geometry((28, 28), (32, 32)) == ('pad', (2, 2, 2, 2))
    assert plan_geometry((28, 28), (35, 34)) == ('pad', (3, 3, 3, 4))  # 35 = 1.25 x 28 still pads
    assert plan_geometry((28, 28), (36, 36))[0] == 'resize'  # > 1.25x
    assert plan_geometry((32, 32), (28, 28))[0] == 'resize'
    x = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    tf = BatchTransform(source_chans=1, source_size=(28, 28), input_size=(3, 32, 32), mean=(0.25,) * 3, std=(0.5,) * 3,
                        augment=False, device='cpu')
    y = tf(x)
    assert y.shape == (5, 3, 32, 32) and torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    torch.testing.assert_close(y[:, :, 2:30, 2:30], (x.float() / 255 - 0.25) / 0.5 * torch.ones(1, 3, 1, 1))
    assert torch.all(y[:, :, :2] == -0.5) and torch.all(y[:, :, :, 30:] == -0.5)  # zero pixels, normalised
    big = BatchTransform(source_chans=1, source_size=(28, 28), input_size=(3, 64, 64), mean=(0.0,) * 3, std=(1.0,) * 3,
                         augment=False, device='cpu')(x)
    assert big.shape == (5, 3, 64, 64) and abs(big.mean().item() - x.float().mean().item() / 255) < 0.02
    rgb = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    grey = BatchTransform(source_chans=3, source_size=(8, 8), input_size=(1, 8, 8), mean=(0.0,), std=(1.0,),
                          augment=False, device='cpu')(rgb)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    torch.testing.assert_close(grey[:, 0], (rgb.float() / 255 * weights).sum(1))


def test_crop_and_flip_augmentation():
    x = torch.arange(2 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16).to(torch.uint8)
    tf = BatchTransform(source_chans=1, source_size=(16, 16), input_size=(1, 16, 16), mean=(0.0,), std=(1 / 255,),
                        augment=True, device='cpu')
    assert tf.crop_pad == 2
    centre = torch.tensor([[2, 2], [2, 2]])
    torch.testing.assert_close(tf(x, centre, torch.tensor([False, True])), torch.stack([x[0], x[1].flip(-1)]).float())
    shifted = tf(x, torch.tensor([[0, 4], [4, 0]]), torch.tensor([False, False]))
    assert torch.equal(shifted[0, 0, 2:, :-2], x[0, 0, :-2, 2:].float()) and torch.all(shifted[0, 0, :2] == 0)
    assert torch.equal(shifted[1, 0, :-2, 2:], x[1, 0, 2:, :-2].float())
    offsets, flips = tf.sample(1000, torch.Generator().manual_seed(0))
    assert offsets.min() == 0 and offsets.max() == 4 and 400 < flips.sum() < 600


def test_batch_larger_than_data_and_bad_sizes(tmp_path):
    folder = write_cifar10(tmp_path / 'c')
    with pytest.raises(DataError, match=r'batch size 64 x 2 processes is larger than the 60 training images.*'
                                        r'--batch-size 30'):
        create_loaders(DataConfig('cifar10', data_dir=str(folder), batch_size=64), input_size=(3, 32, 32),
                       num_processes=2, process_index=1)
    with pytest.raises(DataError, match='batch size 128 is larger than the 100 training images'):
        create_loaders(DataConfig('synthetic', train_samples=100), input_size=(3, 8, 8))
    with pytest.raises(DataError, match='create the model with in_chans'):
        create_loaders(DataConfig('synthetic', batch_size=8), input_size=(4, 8, 8))
    with pytest.raises(ConfigError, match='mean has 2 values for a 3-channel model'):
        create_loaders(DataConfig('cifar10', data_dir=str(folder), batch_size=8), input_size=(3, 32, 32),
                       mean=(0.1, 0.2))
    with pytest.raises(ConfigError, match='process_index'):
        create_loaders(DataConfig('synthetic', batch_size=8), input_size=(3, 8, 8), process_index=2, num_processes=2)
    for bad in (dict(dataset='mnist'), dict(loader='fast'), dict(batch_size=0), dict(train_samples=-1),
                dict(workers=-1), dict(val_split=1.0)):
        with pytest.raises(ConfigError):
            DataConfig(**bad)


def test_synthetic_smoke_data():
    loaders = create_loaders(DataConfig('synthetic', batch_size=32, train_samples=64, val_samples=40),
                             input_size=(1, 16, 16))
    assert loaders.kind == 'memory' and loaders.info.source_chans == 1 and loaders.info.native_size == (16, 16)
    images, targets = next(iter(batches(loaders.train)))
    assert images.shape == (32, 1, 16, 16) and int(targets.max()) < 10
    assert [len(t) for _, t in batches(loaders.val)] == [40]
    again = create_loaders(DataConfig('synthetic', batch_size=32, train_samples=64, val_samples=40, seed=5),
                           input_size=(1, 16, 16))
    assert same(batches(loaders.val), batches(again.val))  # the content does not depend on the seed


def test_holdout_carves_the_validation_images_out_of_the_training_split(tmp_path):
    """The held-out images: training images (never the test split), the same ones for every seed, disjoint from the
    training subset; val_samples takes a subset of them; a holdout that leaves nothing to train on is refused."""
    folder = write_cifar10(tmp_path / 'c', per_batch=20)  # 100 training, 10 test images
    def pixels(loader):
        return {tuple(x.flatten().tolist()) for images, _ in batches(loader) for x in images}
    test = pixels(create_loaders(DataConfig('cifar10', data_dir=str(folder), batch_size=10, augment=False),
                                 input_size=(3, 32, 32)).val)
    held = []
    for seed in (0, 1):
        cfg = DataConfig('cifar10', data_dir=str(folder), batch_size=10, holdout=30, train_samples=40, seed=seed,
                         augment=False)
        loaders = create_loaders(cfg, input_size=(3, 32, 32))
        assert (loaders.info.num_train, loaders.info.num_val) == (40, 30)
        assert loaders.info.val_from == '30 training images held out (seed 0)'
        val, train = pixels(loaders.val), pixels(loaders.train)
        assert len(val) == 30 and not val & test and not val & train
        held.append(val)
    assert held[0] == held[1]
    sub = create_loaders(DataConfig('cifar10', data_dir=str(folder), batch_size=10, holdout=30, val_samples=12,
                                    augment=False), input_size=(3, 32, 32))
    assert pixels(sub.val) < held[0] and len(pixels(sub.val)) == 12
    with pytest.raises(DataError, match='--holdout 100 leaves no training images of the 100'):
        dataset_info(DataConfig('cifar10', data_dir=str(folder), holdout=100))
    synthetic = create_loaders(DataConfig('synthetic', batch_size=8, train_samples=16, holdout=8),
                               input_size=(3, 8, 8))
    assert (synthetic.info.num_train, synthetic.info.num_val) == (16, 8)


def test_png_without_end_chunk_is_skipped(tmp_path):
    root = write_folder(tmp_path / 'imgs', n_train=2, n_val=1)
    (root / 'train' / 'cat' / 'x.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 20)
    assert ds.check_image_file(root / 'train' / 'cat' / 'x.png').startswith('truncated (no end-of-image marker')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        info = dataset_info(DataConfig('imagefolder', data_dir=str(root)))
    assert info.skipped == 1 and [w.category for w in caught] == [DataWarning]


def test_the_scan_keeps_what_decoders_read_and_reads_a_linked_folder_once(tmp_path):
    """A JPEG with data appended after its end marker (as some cameras write) decodes, so it is kept; a symlink
    loop inside a class folder neither hangs the scan nor counts its images again."""
    from PIL import Image
    root = write_folder(tmp_path / 'imgs', n_train=2, n_val=1)
    jpeg = root / 'train' / 'cat' / 'appended.jpg'
    Image.new('RGB', (8, 8), (200, 10, 10)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes() + b'\0' * 2048)  # the end marker is no longer in the last KiB
    assert ds.check_image_file(jpeg) is None
    before = dataset_info(DataConfig('imagefolder', data_dir=str(root))).num_train
    (root / 'train' / 'cat' / 'loop').symlink_to(root / 'train' / 'cat', target_is_directory=True)
    (root / 'train' / 'dog' / 'cats').symlink_to(root / 'train' / 'cat', target_is_directory=True)
    info = dataset_info(DataConfig('imagefolder', data_dir=str(root)))
    assert info.num_train == before + len(ds._images_in(root / 'train' / 'cat'))  # the dog link: cats once more
    assert len(ds._images_in(root / 'train' / 'cat')) == len(list((root / 'train' / 'cat').glob('*.*')))


@pytest.mark.parametrize('loader', ['torch', pytest.param('dali', marks=pytest.mark.dali)])
def test_imagefolder_augmentation_follows_the_image_size(tmp_path, loader):
    """Small images (<= 64 px) train with pad-and-crop + flip, not ImageNet's random-resized crop; --scale/--ratio
    ask for the random-resized crop at any size; larger images get it by default."""
    if loader == 'dali':
        pytest.importorskip('nvidia.dali')
    root = write_folder(tmp_path / 'imgs')
    base = dict(dataset='imagefolder', data_dir=str(root), loader=loader, batch_size=4, workers=0 if loader == 'torch'
                else 1)
    small = create_loaders(DataConfig(**base), input_size=(3, 24, 24))
    assert 'pad-and-crop' in small.reason
    images, _ = next(iter(small.train))
    assert images.shape == (4, 3, 24, 24) and torch.isfinite(images).all()
    asked = create_loaders(DataConfig(**base, scale=(0.5, 1.0)), input_size=(3, 24, 24))
    assert 'random-resized crop (area 0.5-1' in asked.reason
    assert next(iter(asked.train))[0].shape == (4, 3, 24, 24)
    large = create_loaders(DataConfig(**base), input_size=(3, 72, 72))
    assert 'random-resized crop (area 0.08-1, ratio 0.75-1.33)' in large.reason
    with pytest.raises(ConfigError, match='--scale takes two numbers, low then high'):
        DataConfig(**base, scale=(1.0, 0.5))


@pytest.mark.parametrize('loader', ['torch', pytest.param('dali', marks=pytest.mark.dali)])
def test_small_image_pad_and_crop_shifts_the_image_by_at_most_the_padding(tmp_path, loader):
    """The small-image recipe moves each image by whole pixels within the 1/8 padding: at most that many rows and
    columns of fill per image, the rest of the picture kept (a DALI slice read in fractions of the image once
    returned nearly blank images, and training on them stayed at chance)."""
    if loader == 'dali':
        pytest.importorskip('nvidia.dali')
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in ('a', 'b'):
        for i in range(4):
            for split in ('train', 'val'):
                path = tmp_path / split / c / f'{i}.png'
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(40, 256, (24, 24, 3), dtype=np.uint8), 'RGB').save(path)
    cfg = DataConfig('imagefolder', data_dir=str(tmp_path), loader=loader, batch_size=8,
                     workers=0 if loader == 'torch' else 1)
    loaders = create_loaders(cfg, input_size=(3, 24, 24), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    pad = 3  # 24 // 8
    for epoch in range(3):
        images, _ = batches(loaders.train, epoch)[0]
        filled = (images == 0).all(dim=1)  # (N, H, W): pixels that are padding in every channel
        rows, cols = filled.all(dim=2).sum(dim=1), filled.all(dim=1).sum(dim=1)
        assert int(rows.max()) <= pad and int(cols.max()) <= pad, (rows.tolist(), cols.tolist())
        assert int(filled.sum(dim=(1, 2)).max()) <= pad * 24 * 2, filled.sum(dim=(1, 2)).tolist()
        assert float(images.mean()) > 40 / 255 * 0.7  # the picture, not the fill
