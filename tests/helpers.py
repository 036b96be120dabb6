"""Helpers shared by the test modules (imported as ``helpers``: pytest puts ``tests/`` on ``sys.path``).

Test modules import from here, never from each other.
"""
from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import timm_plugins
from spsearch import SPConv2d

ROOT = Path(__file__).resolve().parent.parent
GOLDEN_COMPLEXITY = json.loads((ROOT / 'tests' / 'golden' / 'model_complexity.json').read_text())
"""``tools/model_complexity.py``'s golden params and MACs of every registered model."""
BIG_PARAMS = 30e6
"""Models with more parameters than this (at their registered defaults) run in the slow set."""
CIFAR_MODELS = {'sp_resnet20', 'sp_resnet56', 'sp_resnet110', 'sp_vgg16_cifar'}


def sp_models() -> list[Any]:
    """Every registered SP model as a ``pytest.param``, those above ``BIG_PARAMS`` marked ``slow``."""
    out = []
    for name in timm_plugins.list_sp_models():
        golden = GOLDEN_COMPLEXITY.get(name)
        big = golden is not None and golden['paper']['params'] > BIG_PARAMS
        out.append(pytest.param(name, marks=pytest.mark.slow) if big else name)
    return out


def small_input_size(name: str) -> tuple[int, int, int]:
    """A small input the model takes quickly: 32x32 for the CIFAR layouts, 64x64 for the ImageNet ones."""
    return (3, 32, 32) if name in CIFAR_MODELS else (3, 64, 64)


def load_script(name: str, path: Path) -> ModuleType:
    """Import a script of the repository (``tools/*.py``, ``benchmarks/*.py``) as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def randomize_bn(module: nn.Module, seed: int = 0) -> None:
    """Give every batch norm non-trivial running stats and affine params."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=g) - 0.5)


def paper_spconv(m: SPConv2d, x: torch.Tensor) -> torch.Tensor:
    """SPConv written the way the paper and its reference describe it, from ``m``'s weights.

    Separate pools per branch, an explicit stack + softmax over the two pooled statistics, and
    the two products summed: none of the rewrites ``SPConv2d`` makes.
    """
    rep, red = x[:, :m.rep_channels], x[:, m.rep_channels:]
    s = m.stride
    pool = (lambda t: F.avg_pool2d(t, s, s, ceil_mode=True, count_include_pad=False)) if s > 1 else (lambda t: t)
    y_rep = m.bn1(m.gwc(rep) + m.pwc(pool(rep)))
    if m.red_channels == 0:
        return y_rep
    y_red = m.bn2(m.conv1x1(pool(red)))
    stats = torch.stack([y_rep.mean((2, 3)), y_red.mean((2, 3))], dim=2)
    w = torch.softmax(stats, dim=2)
    return y_rep * w[:, :, 0, None, None] + y_red * w[:, :, 1, None, None]


def have_fashion_mnist() -> bool:
    """Whether the real Fashion-MNIST files are where SPSearch looks (``make setup`` puts them there)."""
    from spsearch.data import find_fashion_mnist
    try:
        find_fashion_mnist(None)
    except Exception:
        return False
    return True


needs_fmnist = pytest.mark.skipif(not have_fashion_mnist(),
                                  reason='Fashion-MNIST not installed (make setup installs it)')


def cli_args(values: dict[str, Any]) -> list[str]:
    """``{'batch_size': 32, 'ema': True}`` -> ``['--batch-size', '32', '--ema']`` (lists as several values)."""
    argv: list[str] = []
    for key, value in values.items():
        flag = '--' + key.replace('_', '-')
        if value is True:
            argv.append(flag)
        elif value is False:
            argv.append('--no-' + key.replace('_', '-'))
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def replay_configs(cifar: str, folder: str) -> dict[str, Any]:
    """The loaders whose epochs must replay bit for bit in a fresh process (``test_data``, and that process)."""
    from spsearch.data import DataConfig, dali_available

    configs = {'memory': DataConfig('cifar10', data_dir=cifar, batch_size=16, seed=3),
               'torch': DataConfig('imagefolder', data_dir=folder, loader='torch', batch_size=6, workers=0, seed=3)}
    if dali_available():
        configs['dali'] = DataConfig('imagefolder', data_dir=folder, loader='dali', batch_size=6, workers=2, seed=3)
    return configs


def run_while_paused(first: subprocess.Popen, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """Run ``argv`` to its end while ``first`` is stopped (SIGSTOP: it holds what it holds and cannot finish), then
    let ``first`` continue; keyword arguments go to ``subprocess.run`` (output captured as text, 300 s limit)."""
    first.send_signal(signal.SIGSTOP)
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=300, **kwargs)
    finally:
        first.send_signal(signal.SIGCONT)


def end_process(proc: subprocess.Popen) -> None:
    """Kill ``proc`` if it still runs (continued first, in case it was stopped) and reap it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()
