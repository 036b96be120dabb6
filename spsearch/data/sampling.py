"""Seeds, subsets and per-process shards: which images a process sees in an epoch, and in which order.

Every random choice comes from a ``torch.Generator`` seeded from a tuple of integers through
NumPy's ``SeedSequence`` (stable across processes, platforms and Python versions; Python's own
``hash`` is not), never from the global RNG, so an epoch can be replayed in a fresh process.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError

__all__ = ['ORDER', 'AUGMENT', 'TRAIN_SUBSET', 'VAL_SUBSET', 'HOLDOUT', 'SYNTHETIC', 'WORKERS', 'TRAIN_HOLDOUT',
           'derive_seed', 'generator', 'subset_indices', 'train_batches', 'train_permutation',
           'train_shard', 'val_shard']

# stream tags: independent random streams drawn from one user seed
ORDER, AUGMENT, TRAIN_SUBSET, VAL_SUBSET, HOLDOUT, SYNTHETIC, WORKERS, TRAIN_HOLDOUT = 1, 2, 3, 4, 5, 6, 7, 8


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that is a fixed function of the non-negative integers ``keys``."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``keys``."""
    return torch.Generator().manual_seed(derive_seed(*keys))


def subset_indices(n: int, k: int | None, *, seed: int, stream: int, what: str, flag: str) -> torch.Tensor:
    """Sorted indices of a seeded random subset of ``k`` out of ``n`` items (all of them if ``k`` is None).

    Raises:
        DataError: If ``k > n``, naming ``what`` (the split) and the ``flag`` to change.
    """
    if k is None or k == n:
        return torch.arange(n)
    if k > n:
        raise DataError(f'{flag} {k} is larger than the {n} images of {what}; pass at most {n} (or leave it unset)')
    return torch.randperm(n, generator=generator(seed, stream))[:k].sort().values


def train_batches(n: int, batch_size: int, num_processes: int) -> int:
    """Full batches per process per epoch (drop-last over the global batch).

    Raises:
        DataError: If one global batch needs more images than there are.
    """
    if batch_size * num_processes > n:
        procs = f' x {num_processes} processes' if num_processes > 1 else ''
        raise DataError(f'batch size {batch_size}{procs} is larger than the {n} training images; '
                        f'use --batch-size {max(1, n // num_processes)} or less (or more --train-samples)')
    return n // (batch_size * num_processes)


def train_permutation(n: int, batch_size: int, num_processes: int, *, seed: int, epoch: int) -> torch.Tensor:
    """This epoch's global order, cut to whole global batches; the same on every process."""
    usable = train_batches(n, batch_size, num_processes) * batch_size * num_processes
    return torch.randperm(n, generator=generator(seed, epoch, ORDER))[:usable]


def train_shard(n: int, batch_size: int, process_index: int, num_processes: int, *, seed: int,
                epoch: int) -> torch.Tensor:
    """Indices this process trains on in ``epoch``, in order.

    Shards are contiguous, equal slices of ``train_permutation`` (which is how DALI's reader splits
    a file list into ``num_shards``), so they are disjoint and every process gets the same number
    of full batches.
    """
    perm = train_permutation(n, batch_size, num_processes, seed=seed, epoch=epoch)
    per = perm.numel() // num_processes
    return perm[process_index * per:(process_index + 1) * per]


def val_shard(n: int, process_index: int, num_processes: int) -> range:
    """This process' validation indices: ``[n*i//P, n*(i+1)//P)``, DALI's shard boundaries.

    The shards are disjoint and cover every image once, without padding.
    """
    return range(n * process_index // num_processes, n * (process_index + 1) // num_processes)
