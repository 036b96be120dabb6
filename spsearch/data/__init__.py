"""Data sets and loaders for training and search: Fashion-MNIST, CIFAR-10/100, ImageFolder, synthetic;
in-memory tensors on the device, torch ``DataLoader`` and NVIDIA DALI.

```python
from spsearch.data import DataConfig, create_loaders

loaders = create_loaders(DataConfig('fashion-mnist', batch_size=128), input_size=(3, 32, 32), device='cuda')
print(loaders.kind, loaders.reason)
for epoch in range(epochs):
    loaders.train.set_epoch(epoch)
    for images, targets in loaders.train:
        ...
```
"""
from .config import DATASET_NAMES, LOADER_KINDS, DataConfig, DatasetInfo, DataWarning, EpochLoader, Loaders
from .dali import dali_available
from .datasets import (
    DATASETS,
    IMG_EXTENSIONS,
    DatasetSpec,
    check_image_file,
    data_cache_dir,
    dataset_info,
    find_cifar,
    find_fashion_mnist,
    scan_image_folder,
)
from .factory import create_loaders

__all__ = [
    'DATASETS', 'DATASET_NAMES', 'IMG_EXTENSIONS', 'LOADER_KINDS', 'DataConfig', 'DataWarning', 'DatasetInfo',
    'DatasetSpec', 'EpochLoader', 'Loaders', 'check_image_file', 'create_loaders', 'dali_available',
    'data_cache_dir', 'dataset_info', 'find_cifar', 'find_fashion_mnist', 'scan_image_folder',
]
