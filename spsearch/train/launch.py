"""What a run asks accelerate for, checked against what it gets: device, launch size and experiment trackers.

``make_accelerator`` (``loop.py``) builds its ``accelerate.Accelerator`` from these answers:

- ``use_cpu``: CPU only where the user asked for it (``--device cpu``, ``accelerate launch --cpu``) or where
  several processes have no collective backend but gloo (a CPU-only or Apple MPS machine); otherwise accelerate
  picks the device (CUDA, MPS, XPU, NPU, ...), so non-CUDA accelerators are not forced to CPU.
- ``launch_mismatch``: an accelerate config that asks for more processes than started (accelerate launches a
  ``MULTI_CPU`` config as one process unless ``mpirun`` does it; plain ``python train.py`` ignores the config)
  is said in one line instead of silently running one process.
- ``tracker_names``: ``--log-with`` checked against the installed tracker packages (accelerate drops a missing
  one silently), and ``tracker_config`` the hyper-parameters in the scalar form every tracker takes.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ['DEVICE_CHOICES', 'TRACKER_CHOICES', 'TRACKER_PACKAGES', 'device_type', 'launch_mismatch',
           'tracker_config', 'tracker_names', 'use_cpu']

DEVICE_CHOICES = ('auto', 'cpu')
TRACKER_PACKAGES = {'tensorboard': 'tensorboard', 'wandb': 'wandb', 'trackio': 'trackio', 'aim': 'aim',
                    'comet_ml': 'comet-ml', 'mlflow': 'mlflow', 'clearml': 'clearml', 'dvclive': 'dvclive',
                    'swanlab': 'swanlab'}
"""accelerate's tracker names (``LoggerType``) and the PyPI package each needs."""
TRACKER_CHOICES = ('all', *TRACKER_PACKAGES)
_TRUE = ('1', 'true', 'yes', 'on')


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, '').strip().lower() in _TRUE


def _world_size(environ: Mapping[str, str]) -> int:
    try:
        return int(environ.get('WORLD_SIZE', '1') or 1)
    except ValueError:
        return 1


def _collective_accelerator() -> bool:
    """Whether accelerate has a device with a collective backend here (NCCL, XCCL, HCCL, ...)."""
    from accelerate.utils import is_mlu_available, is_musa_available, is_npu_available, is_xpu_available
    return bool(torch.cuda.is_available() or is_xpu_available() or is_npu_available() or is_mlu_available()
                or is_musa_available())


def use_cpu(device: str, environ: Mapping[str, str] | None = None) -> bool:
    """``Accelerator(cpu=...)`` for ``--device`` under this launch.

    Args:
        device: ``'cpu'`` forces CPU; ``'auto'`` lets accelerate pick (CUDA, MPS, XPU, NPU, ... or CPU).
        environ: The environment (default ``os.environ``); ``accelerate launch --cpu`` sets ``ACCELERATE_USE_CPU``.

    Returns:
        True where the run must be on CPU: asked for, or several processes on a machine whose only
        accelerator (if any) has no collective backend (accelerate would otherwise run each process alone).
    """
    env = os.environ if environ is None else environ
    if device == 'cpu' or _flag(env, 'ACCELERATE_USE_CPU'):
        return True
    return _world_size(env) > 1 and not _collective_accelerator()


def device_type(device: str, environ: Mapping[str, str] | None = None) -> str:
    """The device type accelerate will train on (``'cpu'``, ``'cuda'``, ``'mps'``, ``'xpu'``, ...), without
    building an ``Accelerator`` (its state is a process-wide singleton)."""
    if use_cpu(device, environ):
        return 'cpu'
    import accelerate.utils as au
    found = (('mps', au.is_mps_available), ('mlu', au.is_mlu_available), ('musa', au.is_musa_available),
             ('npu', au.is_npu_available), ('cuda', torch.cuda.is_available), ('xpu', au.is_xpu_available))
    return next((name for name, available in found if available()), 'cpu')  # accelerate's default_device order


def _launcher_args(environ: Mapping[str, str]) -> list[str]:
    """The parent ``accelerate launch`` command line when this process is its child (Linux ``/proc``), else []."""
    if 'ACCELERATE_MIXED_PRECISION' not in environ:  # every accelerate launcher sets it
        return []
    try:
        raw = Path(f'/proc/{os.getppid()}/cmdline').read_bytes()
    except OSError:
        return []
    args = [a.decode(errors='replace') for a in raw.split(b'\0') if a]
    if not any('accelerate' in a for a in args[:3]):
        return []
    for i, a in enumerate(args[1:], 1):  # the launcher's own options end at the script (or -m module)
        if 'accelerate' not in a and (a.endswith('.py') or args[i - 1] in ('-m', '--module')):
            return args[:i]
    return args


def _arg(args: Sequence[str], *names: str) -> str | None:
    for i, a in enumerate(args):
        for name in names:
            if a == name and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(name + '='):
                return a.split('=', 1)[1]
    return None


def launch_mismatch(num_processes: int, environ: Mapping[str, str] | None = None,
                    launcher: Sequence[str] | None = None, default_config: str | Path | None = None
                    ) -> tuple[str, bool] | None:
    """An accelerate config asking for more processes than this launch has, as one line.

    Args:
        num_processes: Processes this run has (``Accelerator.num_processes``).
        environ: The environment (default ``os.environ``).
        launcher: The parent ``accelerate launch`` command line (default: read from ``/proc`` when launched).
        default_config: accelerate's default config file (default: ``accelerate config``'s path).

    Returns:
        None when nothing asks for more; else ``(message, launched)``: ``launched`` is True under
        ``accelerate launch`` (the launch itself fell short: an error) and False under plain ``python``
        (which never reads the config: a note).
    """
    env = os.environ if environ is None else environ
    args = list(_launcher_args(env) if launcher is None else launcher)
    launched = bool(args) or 'ACCELERATE_MIXED_PRECISION' in env
    if default_config is None:
        from accelerate.commands.config import default_config_file
        default_config = default_config_file
    path = _arg(args, '--config_file', '--config-file') or str(default_config)
    if not Path(path).is_file():
        return None
    asked = _arg(args, '--num_processes', '--num-processes')
    kind = ''
    if asked is None:
        try:
            from accelerate.commands.config.config_args import load_config_from_file
            config = load_config_from_file(path)
        except Exception:  # a config accelerate itself cannot read asks for nothing here
            return None
        asked, kind = str(config.num_processes), str(getattr(config.distributed_type, 'value', ''))
    try:
        wanted = int(asked)
    except (TypeError, ValueError):
        return None
    if wanted <= num_processes:
        return None
    what = f'accelerate config {path} asks for {wanted} {kind + " " if kind else ""}processes'
    fix = (f'accelerate launch --multi_gpu --num_processes {wanted} ... (on CPU too: gloo), or set distributed_type: '
           f'MULTI_GPU in the config')
    if launched:
        why = ' (accelerate launches MULTI_CPU with mpirun only)' if kind == 'MULTI_CPU' else ''
        return f'{what} but accelerate launch started {num_processes}{why}; run {fix}', True
    return (f'{what}; plain python runs {num_processes} process (it does not read the config): for {wanted}, '
            f'run {fix}'), False


def tracker_names(log_with: Sequence[str], output: str | None) -> list[str]:
    """``--log-with`` as accelerate tracker names, each installed.

    Raises:
        ConfigError: No ``--output`` to log into, a tracker whose package is missing (naming ``pip install``),
            or ``all`` with no tracker installed.
    """
    if not log_with:
        return []
    if not output:
        raise ConfigError('--log-with logs into the run folder: give --output (or drop --log-with)')
    from accelerate.tracking import get_available_trackers
    available = [str(t) for t in get_available_trackers()]
    if 'all' in log_with:
        if not available:
            raise ConfigError('--log-with all: no experiment tracker is installed; pip install tensorboard '
                              '(or wandb, mlflow, ...: any tracker accelerate supports)')
        return available
    missing = [name for name in log_with if name not in available]
    if missing:
        packages = ' '.join(TRACKER_PACKAGES[name] for name in missing)
        raise ConfigError(f'--log-with {" ".join(missing)}: not installed; pip install {packages} '
                          f'(or drop --log-with {" ".join(missing)})')
    return list(dict.fromkeys(log_with))


def tracker_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """Hyper-parameters as trackers take them (TensorBoard's hparams accept only numbers, strings and booleans)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            out[key] = 'none'
        elif isinstance(value, (bool, int, float, str)):
            out[key] = value
        elif isinstance(value, (list, tuple)):
            out[key] = ' '.join(str(v) for v in value)
        else:
            out[key] = str(value)
    return out
