"""Training checkpoints: atomic writes, exact-resume state, and weight files timm can load.

A checkpoint (``last.pth``, ``best.pth``) holds everything needed to continue a run so that it ends
with the same weights as an uninterrupted one: model, optimizer, scheduler, EMA, the RNG states of
every process, the epoch, the update count and the metric history. It contains only tensors and
plain Python values, so ``torch.load(..., weights_only=True)`` reads it. Files are written to a
temporary name and renamed, so an interrupted write never leaves a half file behind.

Exported weights (``model.safetensors``) are a plain state dict that
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))`` loads.
"""
from __future__ import annotations

import os
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import safetensors.torch
import torch
from torch import nn

from ..errors import ConfigError
from ..io import atomic_write

__all__ = ['CHECKPOINT_VERSION', 'CheckpointHistory', 'export_timm_config', 'export_weights', 'load_checkpoint',
           'load_weights', 'rng_state', 'save_checkpoint', 'set_rng_state']

CHECKPOINT_VERSION = 1


def rng_state() -> dict[str, Any]:
    """This process' RNG states (torch CPU/CUDA, Python, NumPy) as tensors and plain values."""
    name, keys, pos, has_gauss, cached = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    state: dict[str, Any] = {
        'torch': torch.get_rng_state(),
        'python': random.getstate(),
        'numpy': [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state['torch'])
    version, key, *rest = state['python']
    random.setstate((version, tuple(key), *rest))
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any],
                    copy_to: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None) -> None:
    """Write ``state`` to ``path`` atomically (and the same bytes to each ``copy_to`` path, also atomically)."""
    atomic_write(path, lambda tmp: torch.save({'version': CHECKPOINT_VERSION, **state}, tmp))
    copies = [copy_to] if isinstance(copy_to, (str, os.PathLike)) else list(copy_to or [])
    for target in copies:
        atomic_write(target, lambda tmp: _copy(path, tmp))


class CheckpointHistory:
    """The ``N`` best epoch checkpoints of a run, kept as timm's ``CheckpointSaver`` keeps them.

    Files are named as timm names them: ``checkpoint-<epoch>.pth.tar`` for each kept epoch and
    ``model_best.pth.tar`` for the best; an epoch is kept when fewer than ``N`` are, or when its metric
    beats the worst kept one (strictly: on a tie the earlier epoch stays), and the worst beyond ``N`` is
    deleted. The files are our exact-resume checkpoints (the same bytes as ``last.pth``; timm's
    ``load_checkpoint`` reads their ``model``/``state_dict_ema`` keys).

    ``timm.utils.CheckpointSaver`` itself does not fit this loop: it builds its own state (model, optimizer,
    ``args``, AMP scaler, EMA) without the scheduler, the RNG states of every process or the metric history
    that exact resume needs, writes with ``torch.save`` and a rename without fsync, and forgets which
    files it kept when the process restarts. Here the kept list is part of the checkpoint, so a resumed run
    goes on trimming the same files.

    Args:
        folder: The run's output folder.
        max_history: ``N`` (timm's ``--checkpoint-hist``), at least 1.
        kept: ``(metric, file name)`` pairs kept so far (from a resumed checkpoint), best first.
    """

    BEST = 'model_best.pth.tar'

    def __init__(self, folder: str | os.PathLike[str], max_history: int,
                 kept: Sequence[Sequence[Any]] = ()) -> None:
        self.folder = Path(folder)
        self.max_history = max_history
        self.kept: list[tuple[float, str]] = [(float(m), str(n)) for m, n in kept]

    @staticmethod
    def name(epoch: int) -> str:
        """The file name of ``epoch``'s checkpoint (1-based), as timm's."""
        return f'checkpoint-{epoch}.pth.tar'

    def update(self, epoch: int, metric: float) -> tuple[list[Path], list[Path]]:
        """Record ``epoch``'s ``metric`` (higher is better).

        Returns:
            The files to write with this epoch's checkpoint (its own, and ``model_best.pth.tar`` when it is
            the best so far) and the files to delete once they are written.
        """
        write: list[Path] = []
        if len(self.kept) < self.max_history or metric > self.kept[-1][0]:
            self.kept = sorted([*self.kept, (metric, self.name(epoch))], key=lambda k: k[0], reverse=True)
            write.append(self.folder / self.name(epoch))
            if self.kept[0][1] == self.name(epoch):
                write.append(self.folder / self.BEST)
        dropped, self.kept = self.kept[self.max_history:], self.kept[:self.max_history]
        return write, [self.folder / n for _, n in dropped]

    def state(self) -> list[list[Any]]:
        """The kept ``[metric, file name]`` pairs, for the checkpoint."""
        return [[m, n] for m, n in self.kept]


def _copy(src: str | os.PathLike[str], dst: str) -> None:
    shutil.copyfile(src, dst)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``.

    Raises:
        ConfigError: If the file is missing or is not an SPSearch training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'checkpoint {path} does not exist; pass the last.pth of a run (or --resume without a path)')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise ConfigError(f'checkpoint {path} cannot be read ({type(e).__name__}); is it truncated?') from None
    if not isinstance(state, dict) or 'model' not in state or 'epoch' not in state:
        raise ConfigError(f'{path} is not a training checkpoint (no model/epoch); resume needs last.pth of a run')
    return state


def load_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file, a training checkpoint, or a plain PyTorch state dict.

    Raises:
        ConfigError: If the file is missing or holds no state dict.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f'weights file {path} is a folder; give the file in it (e.g. RUN/model.safetensors or '
                          'RUN/last.pth)')
    if not path.is_file():
        raise ConfigError(f'weights file {path} does not exist')
    try:
        if path.suffix == '.safetensors':
            return safetensors.torch.load_file(str(path))
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), '')
        raise ConfigError(f'weights file {path} cannot be read ({type(e).__name__}: {first[:200]}); give a '
                          f'.safetensors file or a PyTorch state dict / checkpoint') from None
    if isinstance(state, dict):
        for key in ('model', 'state_dict'):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f'{path} holds no state dict (expected tensors by parameter name)')
    return state


def export_weights(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s state dict as safetensors, atomically (contiguous CPU copies)."""
    tensors = {k: v.detach().to('cpu').contiguous() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: safetensors.torch.save_file(tensors, tmp))


def export_timm_config(model: nn.Module, path: str | os.PathLike[str], *, model_args: dict[str, Any],
                       input_size: tuple[int, int, int], mean: tuple[float, ...], std: tuple[float, ...],
                       crop_pct: float) -> Path:
    """Write ``config.json`` as timm's ``save_for_hf`` does, atomically, next to ``model.safetensors``.

    Then ``timm.create_model('local-dir:FOLDER', pretrained=True)`` rebuilds the trained model (its
    architecture and SP settings from ``model_args``, its classifier width, input channels) and loads the
    weights, and ``timm.data.resolve_data_config(model=...)`` gives the input size and normalisation it
    was trained with, instead of timm's 224 px and ImageNet statistics.

    Args:
        model: The trained model (its ``pretrained_cfg`` is the starting point).
        path: Where ``config.json`` goes.
        model_args: ``timm.create_model`` keyword arguments that rebuild it (JSON-serialisable).
        input_size: ``(C, H, W)`` it was trained at.
        mean, std: Its input normalisation, one value per channel.
        crop_pct: Validation centre-crop fraction (1.0: none).
    """
    import json

    from timm.models._hub import save_config_for_hf

    data = {'input_size': tuple(input_size), 'mean': tuple(mean), 'std': tuple(std), 'crop_pct': crop_pct,
            'interpolation': 'bilinear'}
    args = json.loads(json.dumps(model_args))  # tuples as lists, as JSON has them

    def write(tmp: str) -> None:
        try:
            save_config_for_hf(model, tmp, model_args=args, data_config=data)
        except TypeError:  # timm before 1.0.30: no data_config; write its format with the data settings in it
            cfg = {k: v for k, v in getattr(model, 'pretrained_cfg', {}).items() if k not in ('state_dict', 'file')}
            cfg.update({**data, 'num_classes': getattr(model, 'num_classes', None)})
            config = {'architecture': cfg.get('architecture'), 'num_classes': getattr(model, 'num_classes', None),
                      'num_features': getattr(model, 'num_features', None), 'pretrained_cfg': cfg,
                      'model_args': args}
            Path(tmp).write_text(json.dumps(config, indent=2, default=list))
    return atomic_write(path, write)
