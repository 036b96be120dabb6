"""timm's ``args.yaml`` as a ``train.py -c`` file: its keys in our options, the rest checked against timm's defaults.

timm's ``train.py`` writes every option of its parser to ``<output>/args.yaml``
(``yaml.safe_dump(vars(args))``). ``from_timm`` reads such a mapping: the options we implement take
effect under timm's names (``smoothing``, ``model_ema``, ``initial_checkpoint``, ``checkpoint_hist``,
...: the options' aliases), values that mean "unset" in timm are translated (``output: ''``,
``resume: ''``, ``torchcompile: null``, ``dataset: ''`` = ImageFolder, ``lr: null`` = ``lr_base`` scaled
by the global batch as timm does), and the timm options we do not implement (``TIMM_ONLY``) are
ignored when they hold timm's default (a caller prints one note naming them) and refused otherwise,
since the run would not be the one the file describes. Our own ``args.yaml`` passes through unchanged.
"""
from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError

__all__ = ['TIMM_ONLY', 'from_timm']

TIMM_ONLY: dict[str, Any] = {
    # data
    'train_split': 'train', 'class_map': '', 'input_img_mode': None, 'input_key': None, 'target_key': None,
    'dataset_trust_remote_code': False, 'train_num_samples': None, 'val_num_samples': None,
    # model
    'no_resume_opt': False, 'gp': None, 'in_chans': None, 'input_size': None, 'crop_pct': None, 'interpolation': '',
    'fuser': '', 'grad_checkpointing': False, 'fast_norm': False, 'head_init_scale': None, 'head_init_bias': None,
    'torchscript': False, 'torchcompile_mode': None, 'model_dtype': None,
    # optimizer and schedule
    'opt_eps': None, 'opt_betas': None, 'clip_mode': 'norm', 'layer_decay': None, 'layer_decay_min_scale': 0.0,
    'layer_decay_no_opt_scale': None, 'opt_kwargs': {}, 'sched_on_updates': False, 'lr_noise': None,
    'lr_noise_pct': 0.67, 'lr_noise_std': 1.0, 'lr_cycle_mul': 1.0, 'lr_cycle_decay': 0.5, 'lr_cycle_limit': 1,
    'lr_k_decay': 1.0, 'epoch_repeats': 0.0, 'start_epoch': None, 'warmup_prefix': False, 'cooldown_epochs': 0,
    'patience_epochs': 10,
    # augmentation and regularisation
    'train_crop_mode': None, 'hflip': 0.5, 'vflip': 0.0, 'color_jitter': 0.4, 'color_jitter_prob': None,
    'grayscale_prob': None, 'gaussian_blur_prob': None, 'aug_repeats': 0, 'aug_splits': 0, 'jsd_loss': False,
    'bce_loss': False, 'bce_sum': False, 'bce_target_thresh': None, 'bce_pos_weight': None, 'resplit': False,
    'cutmix_minmax': None, 'mixup_off_epoch': 0, 'train_interpolation': 'random', 'drop': 0.0, 'drop_connect': None,
    'drop_path': None, 'drop_block': None,
    # norms, EMA, misc
    'bn_momentum': None, 'bn_eps': None, 'sync_bn': False, 'dist_bn': 'reduce', 'split_bn': False,
    'model_ema_force_cpu': False, 'model_ema_warmup': False, 'worker_seeding': 'all', 'recovery_interval': 0,
    'save_images': False, 'amp_impl': 'native', 'no_ddp_bb': False, 'synchronize_step': False, 'pin_mem': False,
    'no_prefetcher': False, 'eval_metric': 'top1', 'tta': 0, 'local_rank': 0, 'use_multi_epochs_loader': False,
    'log_wandb': False, 'wandb_project': None, 'wandb_tags': [], 'wandb_resume_id': '',
    'device_modules': None,
}
"""timm 1.0 ``train.py`` options we do not implement, with timm's defaults (a file may hold them at these values)."""

_UNSET: tuple[Any, ...] = (None, False, 0, 0.0, '', [], {})
_LR_BASE = {'lr_base': 0.1, 'lr_base_size': 256, 'lr_base_scale': ''}
_TIMM_DATASETS = {'': 'imagefolder', 'folder': 'imagefolder', 'imagefolder': 'imagefolder',
                  'torch/image_folder': 'imagefolder', 'torch/imagefolder': 'imagefolder', 'torch/cifar10': 'cifar10',
                  'torch/cifar100': 'cifar100', 'torch/fashion_mnist': 'fashion-mnist'}
_DEFAULT_SCALE, _DEFAULT_RATIO = [0.08, 1.0], [3 / 4, 4 / 3]


def _at_default(value: Any, default: Any) -> bool:
    """``value`` is timm's ``default``; an off-value (None, 0, '', []) matches another off-value, as timm reads both."""
    return bool(value == default or (value in _UNSET and default in _UNSET))


def from_timm(config: dict[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """Translate a ``-c`` mapping with timm's keys into our options' keys and values.

    Args:
        config: The file's mapping (keys with underscores).
        source: The file, for messages.

    Returns:
        The mapping to apply (our keys, or aliases that name our options) and the timm options that
        were ignored at their defaults (empty for our own ``args.yaml``).

    Raises:
        ConfigError: A timm option we do not implement set to something other than its default, or a timm
            value we cannot map (another data set, input size, compile backend), in one line.
    """
    values = dict(config)
    ignored: list[str] = []
    refused: list[str] = []
    for key, default in TIMM_ONLY.items():
        if key in values:
            value = values.pop(key)
            if _at_default(value, default):
                ignored.append(key)
            else:
                refused.append(f'{key}: {value!r} (timm default {default!r})')
    if isinstance(values.get('val_split'), str):  # timm's split name; ours is the held-out fraction
        value = values.pop('val_split')
        (ignored if value == 'validation' else refused).append(
            'val_split' if value == 'validation' else f"val_split: {value!r} (timm default 'validation')")
    if refused:
        raise ConfigError(f'{source} sets timm option(s) this trainer does not implement: {"; ".join(refused)}; '
                          'remove them (or set timm\'s defaults) to train here')
    for key in ('output', 'resume', 'initial_checkpoint'):  # timm's '' is "not given"
        if values.get(key) == '':
            del values[key]
    if 'data' in values:  # timm's deprecated positional data folder
        data = values.pop('data')
        if data and not values.get('data_dir'):
            values['data_dir'] = data
    if values.get('dataset_download') is not None:
        values['download'] = bool(values.pop('dataset_download'))
    if isinstance(values.get('dataset'), str) and (values['dataset'] in _TIMM_DATASETS or '/' in values['dataset']):
        name = values['dataset']
        if name not in _TIMM_DATASETS:
            raise ConfigError(f'{source}: timm data set {name!r} is not read here; use imagefolder (dataset: \'\'), '
                              f'torch/cifar10, torch/cifar100 or torch/fashion_mnist')
        values['dataset'] = _TIMM_DATASETS[name]
    if isinstance(values.get('device'), str) and values['device'] not in ('auto', 'cpu'):
        device = values.pop('device')  # timm's torch device; ours: auto (accelerate picks CUDA, MPS, ...) or cpu
        if ':' in device:
            raise ConfigError(f'{source}: device {device!r}: pick the GPU with CUDA_VISIBLE_DEVICES (or accelerate '
                              'launch --gpu_ids) and drop the index')
        values['device'] = 'auto'
    if 'torchcompile' in values:  # timm: None or a backend name
        backend = values.pop('torchcompile')
        if backend not in (None, False, True, 'inductor'):
            raise ConfigError(f'{source}: torchcompile {backend!r}: only the default inductor backend runs here')
        values['compile'] = bool(backend)
    if 'amp' in values and not values['amp']:
        values.pop('amp_dtype', None)  # timm reads it only with amp
    if 'no_aug' in values:
        if values.pop('no_aug'):
            values['augment'] = False
    for key, default in (('scale', _DEFAULT_SCALE), ('ratio', _DEFAULT_RATIO)):  # timm's = our default, by size
        if isinstance(values.get(key), list) and all(
                abs(float(a) - b) < 1e-6 for a, b in zip(values[key], default, strict=False)) and len(
                values[key]) == 2:
            values[key] = None
    lr_base = {k: values.pop(k) for k in _LR_BASE if k in values}
    if 'lr' in values and values['lr'] is None:
        values['lr'] = _timm_lr(values, {**_LR_BASE, **lr_base})
    return values, sorted(ignored)


def _timm_lr(values: dict[str, Any], base: dict[str, Any]) -> float:
    """timm's learning rate when ``lr`` is unset: ``lr_base`` times (global batch / ``lr_base_size``), square-rooted
    for ada*/lamb optimizers (``lr_base_scale: ''``); the global batch counts ``WORLD_SIZE`` processes (accelerate
    launch sets it) and ``grad_accum_steps``."""
    batch = int(values.get('batch_size') or 128) * int(os.environ.get('WORLD_SIZE', 1)) * int(
        values.get('grad_accum_steps') or 1)
    ratio = batch / float(base['lr_base_size'])
    scale = base['lr_base_scale'] or ('sqrt' if any(o in str(values.get('opt', 'sgd')).lower()
                                                    for o in ('ada', 'lamb')) else 'linear')
    return float(base['lr_base']) * (ratio ** 0.5 if scale == 'sqrt' else ratio)
