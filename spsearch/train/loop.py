"""The training loop: timm model, optimizer and schedule; accelerate for devices, precision and DDP.

``train(cfg)`` runs one ``TrainConfig`` end to end and returns a ``TrainResult``; ``train.py`` is a
thin CLI over it and the search calls it for every proxy training. Per epoch it trains, evaluates
(top-1/top-5, summed over processes so the metrics are exact under DDP), logs a row, writes the
checkpoints atomically and asks an optional ``epoch_callback`` whether to stop (a pruner), with the
decision shared by all processes. Nothing is written before the model and the data are known to
work, so bad input leaves no half-written output folder.
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import timm.data
import timm.loss
import timm.optim
import timm.scheduler
import timm.utils
import torch
from accelerate.utils import set_seed
from torch import nn

from .. import models as _models  # noqa: F401  (registers the SP models with timm)
from ..data import Loaders, create_loaders, dataset_info
from ..data.factory import DEFAULT_CROP_PCT, small_image_recipe
from ..data.transforms import resolve_stats
from ..errors import ConfigError, SPSearchError
from ..io import (
    FolderLock,
    atomic_write_json,
    atomic_write_text,
    atomic_write_yaml,
    check_folder_free,
    check_output_folder,
    lock_folder,
)
from ..provenance import provenance
from ..timing import process_peak_memory_mb
from .checkpoint import (
    CheckpointHistory,
    export_timm_config,
    export_weights,
    load_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import TrainConfig
from .launch import device_type, launch_mismatch, tracker_config, tracker_names, use_cpu

__all__ = ['PRECISE_BN_EPOCH', 'EpochCallback', 'TrainResult', 'build_model', 'check_input_size', 'evaluate',
           'head_classes', 'make_accelerator', 'precise_bn', 'train']

EpochCallback = Callable[[int, dict[str, float]], bool]
"""``callback(epoch, metrics) -> stop``: called on the main process after each evaluation."""


@dataclass
class TrainResult:
    """What a training run achieved.

    Attributes:
        best_top1: Best validation top-1 (percent) over the epochs run (EMA included when enabled).
        best_epoch: Epoch (1-based) of ``best_top1``.
        final_top1: Validation top-1 after the last epoch run.
        final_top5: Validation top-5 after the last epoch run.
        final_val_loss: Validation loss (mean cross-entropy, nats) after the last epoch run.
        epochs_run: Epochs completed, counting those before a resume.
        stopped_by: ``'callback'`` (e.g. pruned), ``'nonfinite'`` (loss became NaN/inf) or None.
        history: One dict of metrics per completed epoch.
        images_per_s: Mean training throughput over the epochs run in this call, all processes.
        peak_mem_mb: Peak memory of the main process (CUDA allocator, or CPU peak RSS).
        wall_s: Wall time of this call.
        params: Parameter count of the model.
        output: Output folder, if any.
        weights: Exported final weights (safetensors), if any.
        message: One human line on how the run ended.
    """

    best_top1: float = 0.0
    best_epoch: int = 0
    final_top1: float = 0.0
    final_top5: float = 0.0
    final_val_loss: float = math.nan
    epochs_run: int = 0
    stopped_by: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    images_per_s: float = 0.0
    peak_mem_mb: float = 0.0
    wall_s: float = 0.0
    params: int = 0
    output: str | None = None
    weights: str | None = None
    message: str = ''

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_precision(cfg: TrainConfig, environ: dict[str, str] | None = None) -> tuple[str, str]:
    """The autocast precision a run uses and where it came from: ``cfg`` (flags or YAML) when it asks for one,
    else ``accelerate launch --mixed_precision`` / accelerate's config (``ACCELERATE_MIXED_PRECISION``), else no.

    Raises:
        ConfigError: An unknown value from accelerate, or fp16 without a GPU (autocast would silently run fp32).
    """
    from .config import MIXED_PRECISION_CHOICES
    env = os.environ if environ is None else environ
    launched = env.get('ACCELERATE_MIXED_PRECISION', 'no') or 'no'
    if cfg.mixed_precision != 'no':
        precision, source = cfg.mixed_precision, '--mixed-precision'
    else:
        precision, source = launched, 'accelerate launch --mixed_precision (or its config)'
    if precision not in MIXED_PRECISION_CHOICES:
        raise ConfigError(f'{source} {precision!r} is not supported here; use one of '
                          f'{", ".join(MIXED_PRECISION_CHOICES)}')
    if precision == 'fp16' and device_type(cfg.device, env) == 'cpu':
        raise ConfigError(f'{source} fp16 needs a GPU (CUDA, MPS, ...; on CPU it would silently run fp32); use no '
                          f'(or bf16)')
    return precision, source


def make_accelerator(cfg: TrainConfig) -> Any:
    """An ``accelerate.Accelerator`` for ``cfg``: the device accelerate picks (CPU only where ``launch.use_cpu``
    says), the precision from ``resolve_precision`` (passed explicitly so that what runs is what ``summary.json``
    records), the ``--log-with`` trackers logging into ``cfg.output``.

    Raises:
        ConfigError: See ``resolve_precision`` and ``launch.tracker_names``; or an accelerate config asking for
            more processes than ``accelerate launch`` started (``launch.launch_mismatch``).
    """
    from accelerate import Accelerator

    precision, _ = resolve_precision(cfg)
    kwargs: dict[str, Any] = {'cpu': use_cpu(cfg.device), 'mixed_precision': precision,
                              'gradient_accumulation_steps': cfg.grad_accum_steps}
    if cfg.log_with:
        kwargs.update(log_with=tracker_names(cfg.log_with, cfg.output), project_dir=cfg.output)
    accelerator = Accelerator(**kwargs)
    mismatch = launch_mismatch(accelerator.num_processes)
    if mismatch is not None:
        if mismatch[1]:
            raise ConfigError(mismatch[0])
        if accelerator.is_main_process:
            print(f'warning: {mismatch[0]}', file=sys.stderr, flush=True)
    if accelerator.device.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # fixed input sizes: cuDNN picks each conv's fastest kernel (as timm)
    return accelerator


def head_classes(cfg: TrainConfig, data_classes: int) -> int:
    """The classes of the model's head: ``cfg.num_classes`` (timm's ``--num-classes``), else the data set's.

    Raises:
        ConfigError: Fewer classes than the data set has (its labels would not fit), or more without weights to
            fine-tune from (a head wider than the data only makes sense when it comes with the weights).
    """
    n = cfg.num_classes
    if n is None or n == data_classes:
        return data_classes
    if n < data_classes:
        raise ConfigError(f'--num-classes {n} is fewer than the {data_classes} classes of {cfg.data.dataset}; leave it '
                          f'out (the head gets {data_classes}) or give {data_classes}')
    if not (cfg.pretrained or cfg.checkpoint):
        raise ConfigError(f'--num-classes {n} but {cfg.data.dataset} has {data_classes} classes; leave it out (the '
                          f'head gets {data_classes}), or fine-tune a {n}-class model with --pretrained, '
                          '--pretrained-path FILE or --initial-checkpoint FILE')
    return n


def _pretrained_source(cfg: TrainConfig) -> str:
    """Where ``--pretrained`` takes ``cfg.model``'s weights from (its pretrained_cfg), for messages.

    Raises:
        ConfigError: The model has no registered weights and no ``--pretrained-path`` was given.
    """
    if cfg.pretrained_path:
        if Path(cfg.pretrained_path).is_dir():
            raise ConfigError(f'--pretrained-path {cfg.pretrained_path} is a folder; give the weights file in it '
                              '(e.g. RUN/model.safetensors)')
        if not Path(cfg.pretrained_path).is_file():
            raise ConfigError(f'--pretrained-path {cfg.pretrained_path} does not exist; give a .safetensors or .pth '
                              'weights file')
        load_weights(cfg.pretrained_path)  # an empty or torn file is "cannot be read", not a model misfit
        return cfg.pretrained_path
    overlay = cfg.model_kwargs.get('pretrained_cfg_overlay')
    if isinstance(overlay, dict) and overlay.get('file'):  # --model-kwargs "pretrained_cfg_overlay={'file': ...}"
        return str(overlay['file'])
    pcfg = timm.models.get_pretrained_cfg(cfg.model)
    source = pcfg and (pcfg.file or (f'hf-hub:{pcfg.hf_hub_id}' if pcfg.hf_hub_id else '') or pcfg.url)
    if not source:
        tag = f' (tag {pcfg.tag})' if pcfg is not None and pcfg.tag else ''
        raise ConfigError(f'{cfg.model}{tag} has no registered pretrained weights; give a weights file with '
                          '--pretrained-path FILE')
    return str(source)


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """Hold back huggingface_hub's warnings (a line per retried request without a network): the failure is one line."""
    import logging
    logger = logging.getLogger('huggingface_hub')
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def build_model(cfg: TrainConfig, num_classes: int, *, pretrained: bool = False) -> nn.Module:
    """``timm.create_model`` for ``cfg`` (SP models registered), with a ``num_classes`` head.

    Args:
        cfg: The run's configuration (model, ``model_kwargs``, ``pretrained_path``).
        num_classes: Classes of the head (``head_classes``).
        pretrained: Load ``cfg``'s pretrained weights as timm does (``cfg.pretrained_path`` as
            ``pretrained_cfg_overlay=dict(file=..., num_classes=-1)``, timm's ``train.py --pretrained-path``: the
            file's classifier is dropped and re-initialised); without, the weights are random.

    Raises:
        ConfigError: Unknown model, keyword arguments it rejects, no pretrained weights registered, weights that
            cannot be fetched (no network) or do not fit.
    """
    if not timm.is_model(cfg.model):
        close = timm.list_models(f'*{cfg.model.split(".")[0][-8:]}*')[:5]
        hint = f' (close: {", ".join(close)})' if close else ''
        raise ConfigError(f'unknown model {cfg.model!r}{hint}; see timm.list_models() or spsearch.list_sp_models()')
    kwargs = {'num_classes': num_classes, **cfg.model_kwargs}
    source = ''
    if pretrained:
        source = _pretrained_source(cfg)
        kwargs['pretrained'] = True
        if cfg.pretrained_path:
            kwargs['pretrained_cfg_overlay'] = {**kwargs.get('pretrained_cfg_overlay', {}),
                                                'file': cfg.pretrained_path, 'num_classes': -1}
    try:
        with _quiet_hub():
            return timm.create_model(cfg.model, **kwargs)
    except (ValueError, TypeError, KeyError, OSError, RuntimeError) as e:
        if not pretrained or isinstance(e, TypeError):
            if isinstance(e, (OSError, RuntimeError)):
                raise
            raise ConfigError(f'cannot build {cfg.model} with {cfg.model_kwargs}: {e}') from None
        with torch.device('meta'):  # the weights failed, not the model: say which
            build_model(cfg, num_classes)
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)[:200]
        if cfg.pretrained_path:
            raise ConfigError(f'--pretrained-path {source} does not fit {cfg.model} {cfg.model_kwargs} '
                              f'({type(e).__name__}: {first}); give weights of this model') from None
        raise ConfigError(f'cannot fetch the pretrained weights of {cfg.model} from {source} (no network or not '
                          f'cached: {type(e).__name__}); download them where there is a network and pass '
                          '--pretrained-path FILE') from None


def check_input_size(cfg: TrainConfig, num_classes: int, flag: str = '--img-size') -> tuple[int, int, int]:
    """Build ``cfg``'s model on the meta device and run one forward at its input size (no memory, no compute).

    Returns:
        The (C, H, W) input size.

    Raises:
        ConfigError: The model cannot take that size (a map shrinks to nothing), in one line.
    """
    with torch.device('meta'):
        model = build_model(cfg, num_classes)
    size = _input_size(model, cfg)
    try:
        with torch.no_grad():
            model.eval()(torch.empty(2, *size, device='meta'))
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f'{cfg.model} cannot take {size[1]}x{size[2]} inputs ({first[:160]}); raise {flag} '
                          f'(e.g. 32 for the CIFAR layouts)') from None
    return size


def _input_size(model: nn.Module, cfg: TrainConfig) -> tuple[int, int, int]:
    pretrained_cfg: dict[str, Any] = getattr(model, 'pretrained_cfg', None) or {}
    c, h, w = pretrained_cfg.get('input_size', (3, 224, 224))
    c = int(getattr(model, 'in_chans', c))
    if cfg.img_size:
        h = w = cfg.img_size
    return int(c), int(h), int(w)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, accelerator: Any, *, channels_last: bool = False) -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) of ``model`` over ``loader``, summed over all processes.

    Every process evaluates its own shard with the unwrapped model (no DDP collectives in the
    forward); the sums of loss, correct predictions and samples are reduced, so the result is
    exact whatever the number of processes.
    """
    was_training = model.training
    model.eval()
    device = accelerator.device
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss_sum, correct1, correct5, count
    for images, targets in loader:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            logits = model(images)
        logits = logits.float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top.eq(targets[:, None])
        totals += torch.stack([
            nn.functional.cross_entropy(logits, targets, reduction='sum').double(),
            hits[:, :1].sum().double(), hits.sum().double(), torch.tensor(float(targets.numel()), device=device,
                                                                          dtype=torch.float64)])
    totals = accelerator.reduce(totals, reduction='sum')
    model.train(was_training)
    loss_sum, c1, c5, n = totals.tolist()
    n = max(n, 1)
    return {'val_loss': loss_sum / n, 'top1': 100 * c1 / n, 'top5': 100 * c5 / n, 'val_samples': n}


PRECISE_BN_EPOCH = 0
"""The training epoch whose first batches recalibrate the norms: the same images before every evaluation."""


@torch.no_grad()
def precise_bn(model: nn.Module, loader: Any, batches: int, channels_last: bool = False) -> None:
    """Recompute every BatchNorm's running statistics with the current weights (pycls's "precise BN").

    Momentum-averaged running statistics mix the weights of many past steps; after a short training
    they describe none of them, and an evaluation in eval mode with them can be tens of points off
    (SP layers, with three norms and a gate each, suffer most). This resets them and averages the
    batch statistics of the first ``batches`` training batches of epoch ``PRECISE_BN_EPOCH`` under
    the current weights (``torch.optim.swa_utils.update_bn``, in train mode, no gradients). The
    loader's epoch is left at ``PRECISE_BN_EPOCH``; the training loop sets its own before each epoch.

    Args:
        model: The model (its norms are changed in place); the unwrapped one, not DDP or compiled.
        loader: This process' training ``EpochLoader``.
        batches: Training batches to average over (>= 1).
        channels_last: Feed the batches in NHWC, as training does.
    """
    loader.set_epoch(PRECISE_BN_EPOCH)

    def images() -> Iterator[torch.Tensor]:
        for step, (x, _) in enumerate(loader):
            if step >= batches:
                return
            yield x.contiguous(memory_format=torch.channels_last) if channels_last else x

    torch.optim.swa_utils.update_bn(images(), model)


def _norm_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every BatchNorm's running statistics (``running_mean``, ``running_var``, ``num_batches_tracked``)."""
    return {f'{name}.{key}': buf.detach().clone() for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
            for key, buf in module.named_buffers(recurse=False) if buf is not None}


@torch.no_grad()
def _load_norm_buffers(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Put back statistics saved by ``_norm_buffers``."""
    buffers = dict(model.named_buffers())
    for key, value in saved.items():
        buffers[key].copy_(value)


def _any_process(accelerator: Any, flag: bool) -> bool:
    """True on every process when ``flag`` is true on any of them."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor(int(flag), device=accelerator.device), reduction='sum').item() > 0)


@torch.no_grad()
def _average_norm_statistics(model: nn.Module, accelerator: Any) -> None:
    """Average floating-point buffers (BN running statistics) over processes, as timm's ``distribute_bn``.

    DDP keeps parameters identical but every process updates its norms' running statistics on
    its own shard; without this, processes would evaluate (and rank 0 would export) different models.
    """
    if accelerator.num_processes == 1:
        return
    import torch.distributed as dist
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(accelerator.num_processes)


def _gather_rng_states(accelerator: Any) -> list[dict[str, Any]]:
    mine = rng_state()
    if accelerator.num_processes == 1:
        return [mine]
    import torch.distributed as dist
    states: list[Any] = [None] * accelerator.num_processes
    dist.all_gather_object(states, mine)
    return states


def _write_log_csv(path: Path, history: list[dict[str, float]]) -> None:
    if not history:
        return
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for row in history for k in row))
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buf.getvalue())


def _format_epoch(row: dict[str, float], epochs: int) -> str:
    line = (f"epoch {int(row['epoch'])}/{epochs}  lr {row['lr']:.4g}  train_loss {row['train_loss']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  top1 {row['top1']:.2f}  top5 {row['top5']:.2f}")
    if 'ema_top1' in row:
        line += f"  ema_top1 {row['ema_top1']:.2f}"
    return line + f"  {row['images_per_s']:.0f} img/s  {row['epoch_time_s']:.1f}s"


@contextlib.contextmanager
def _progress(total: int, desc: str, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm
    bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
    try:
        yield bar
    finally:
        bar.close()


class _Run:
    """One call of ``train``: the objects of the run and the epoch loop (kept private)."""

    def __init__(self, cfg: TrainConfig, accelerator: Any, epoch_callback: EpochCallback | None) -> None:
        self.cfg = cfg
        self.acc = accelerator
        self.callback = epoch_callback
        self.main = accelerator.is_main_process
        self.out = check_output_folder(cfg.output) if cfg.output else None
        self.lock: FolderLock | None = None

    def log(self, text: str) -> None:
        if self.main and self.cfg.progress:
            print(text, flush=True)

    def setup(self) -> None:
        cfg, acc = self.cfg, self.acc
        if acc.device.type == 'cpu' and acc.mixed_precision == 'bf16':
            warnings.warn('bf16 autocast on this CPU can be ~30x slower than fp32 (no AVX-512/AMX); '
                          'mixed precision is meant for the GPU', stacklevel=3)
        info = dataset_info(cfg.data)
        self.num_classes = head_classes(cfg, info.num_classes)
        check_input_size(cfg, self.num_classes)  # before anything is written or allocated
        set_seed(cfg.data.seed)  # identical initialisation on every process and on resume
        model = build_model(cfg, self.num_classes, pretrained=cfg.pretrained)
        if cfg.checkpoint:  # timm's --initial-checkpoint: fine-tune from these weights (a resume overrides them)
            _load_into(model, cfg)
        self.params = sum(p.numel() for p in model.parameters())
        self.input_size = _input_size(model, cfg)
        self.loaders: Loaders = create_loaders(
            cfg.data, input_size=self.input_size, device=acc.device, mean=cfg.mean, std=cfg.std,
            process_index=acc.process_index, num_processes=acc.num_processes)
        self.hist = (CheckpointHistory(self.out, cfg.checkpoint_hist) if self.out is not None and cfg.checkpoint_hist
                     and cfg.save_checkpoints else None)
        # a --grad-accum-steps larger than an epoch is refused here, before the folder's hold
        self.updates_per_epoch = _updates_per_epoch(cfg, acc, len(self.loaders.train))
        if self.out is not None and self.main:
            check_folder_free(self.out)  # a busy folder is named as such; its contents are checked next
        self.resume_state = self._find_resume_state()
        self._check_output_folder()
        if self.out is not None and self.main:  # one process per run folder, from here until the run ends
            self.lock = lock_folder(self.out)  # after the checks: bad input leaves not even the lock file

        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model = model.to(acc.device)
        self.optimizer = timm.optim.create_optimizer_v2(
            model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
        self.scheduler = None
        if cfg.sched != 'none':
            self.scheduler, _ = timm.scheduler.create_scheduler_v2(
                self.optimizer, sched=cfg.sched, num_epochs=cfg.epochs, decay_epochs=cfg.decay_epochs,
                decay_milestones=list(cfg.decay_milestones), decay_rate=cfg.decay_rate, min_lr=cfg.min_lr,
                warmup_lr=cfg.warmup_lr, warmup_epochs=cfg.warmup_epochs, step_on_epochs=False,
                updates_per_epoch=self.updates_per_epoch)
        self.ema = timm.utils.ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
        self.mixup = _mixup(cfg, self.num_classes)
        # with mixup/cutmix the targets are soft (smoothing folded in), as in timm's train.py
        self.criterion = (timm.loss.SoftTargetCrossEntropy() if self.mixup is not None
                          else nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing))
        self.erasing = (timm.data.random_erasing.RandomErasing(cfg.reprob, mode=cfg.remode, max_count=cfg.recount,
                                                               device=str(acc.device)) if cfg.reprob > 0 else None)
        self.raw_model = model
        if cfg.compile:
            model = torch.compile(model)  # type: ignore[assignment]
        self.model, self.optimizer = acc.prepare(model, self.optimizer)
        self.start_epoch, self.num_updates = 0, 0
        self.running_stats: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, float]] = []
        self.best_top1, self.best_epoch = -1.0, 0
        if self.resume_state is not None:
            self._restore(self.resume_state)
        elif self.scheduler is not None:
            self.scheduler.step_update(0)

    def _find_resume_state(self) -> dict[str, Any] | None:
        cfg = self.cfg
        if not cfg.resume:
            return None
        auto = cfg.resume is True or str(cfg.resume).lower() in ('auto', 'true')
        path = (self.out / 'last.pth') if auto and self.out else Path(str(cfg.resume))
        if auto and not path.exists():
            self.log(f'resume: no checkpoint at {path} yet; starting from scratch')
            return None
        state = load_checkpoint(path)
        saved = state.get('config', {})
        now = cfg.to_dict()
        # options newer than the checkpoint are not in it: they ran with their defaults
        changed = sorted(k for k in now if k not in TrainConfig.RESUMABLE_CHANGES and k in saved and saved[k] != now[k])
        if changed:
            diffs = ', '.join(f'{k}: {saved.get(k)!r} -> {now[k]!r}' for k in changed[:4])
            raise ConfigError(f'cannot resume {path}: the run used different settings ({diffs}); '
                              f'resume with the same options or start a new --output')
        if state['epoch'] >= cfg.epochs:
            self.log(f'resume: {path} already finished {state["epoch"]} epochs (of --epochs {cfg.epochs})')
        self.log(f'resume: continuing {path} after epoch {state["epoch"]}')
        threads = state.get('torch_threads')
        if threads is not None and threads != torch.get_num_threads():
            # float sums split over another number of threads round differently in their last bits
            warnings.warn(f'resume: the run used {threads} torch threads and this process has '
                          f'{torch.get_num_threads()}; it continues, but not bit-identically '
                          f'(set OMP_NUM_THREADS={threads} for that)', stacklevel=2)
        return state

    def _check_output_folder(self) -> None:
        if self.out is None or self.resume_state is not None or self.cfg.evaluate_only:
            return
        if (self.out / 'last.pth').exists() and not self.cfg.resume:
            raise ConfigError(f'output folder {self.out} already holds a run (last.pth); '
                              f'pass --resume to continue it or choose another --output')

    def _restore(self, state: dict[str, Any]) -> None:
        self.raw_model.load_state_dict(state['model'])
        self.optimizer.load_state_dict(state['optimizer'])
        if self.scheduler is not None and state.get('scheduler') is not None:
            self.scheduler.load_state_dict(state['scheduler'])
        ema = state.get('state_dict_ema', state.get('ema'))  # 'ema' in checkpoints written before timm's key
        if self.ema is not None and ema is not None:
            self.ema.module.load_state_dict(ema)
        rngs = state.get('rng') or []
        if len(rngs) == self.acc.num_processes:
            set_rng_state(rngs[self.acc.process_index])
        self.start_epoch = int(state['epoch'])
        self.num_updates = int(state.get('num_updates', 0))
        self.history = list(state.get('history', []))
        self.best_top1 = float(state.get('best_top1', -1.0))
        self.best_epoch = int(state.get('best_epoch', 0))
        if self.hist is not None:
            self.hist.kept = [(float(m), str(n)) for m, n in state.get('checkpoint_hist', [])]

    def _state(self, epoch: int) -> dict[str, Any]:
        return {
            'config': self.cfg.to_dict(), 'epoch': epoch, 'num_updates': self.num_updates,
            'model': self.raw_model.state_dict(), 'optimizer': self.optimizer.state_dict(),
            'scheduler': self.scheduler.state_dict() if self.scheduler is not None else None,
            # timm's key: timm.models.load_checkpoint(model, 'last.pth', use_ema=True) loads it
            'state_dict_ema': self.ema.module.state_dict() if self.ema is not None else None,
            'rng': _gather_rng_states(self.acc), 'torch_threads': torch.get_num_threads(), 'history': self.history,
            'best_top1': self.best_top1, 'best_epoch': self.best_epoch,
            'metric': _score(self.history[-1]) if self.history else None, 'arch': self.cfg.model,  # timm's keys
            'checkpoint_hist': self.hist.state() if self.hist is not None else [],
        }

    def train_epoch(self, epoch: int) -> tuple[dict[str, float], bool]:
        """One epoch of training; returns its metrics and whether the loss became non-finite."""
        cfg, acc = self.cfg, self.acc
        loader = self.loaders.train
        loader.set_epoch(epoch)
        self.model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=acc.device)
        nonfinite = torch.zeros((), dtype=torch.int64, device=acc.device)
        seen, start, steps = 0, time.perf_counter(), self.updates_per_epoch * cfg.grad_accum_steps
        acc.step = 0  # accumulation groups start with the epoch (accelerate counts micro-batches in acc.step)
        # a bar on a terminal; in a log file (retrains, CI, nohup) a plain line every log_interval steps instead
        tty = sys.stderr.isatty()
        with _progress(steps, f'epoch {epoch + 1}/{cfg.epochs}', self.main and cfg.progress and tty) as bar:
            for step, (images, targets) in enumerate(loader):
                if step >= steps:  # the last batches that fill no accumulation group (--grad-accum-steps)
                    break
                if self.erasing is not None:
                    images = self.erasing(images)  # on normalised batches, as timm's prefetcher does
                if self.mixup is not None:
                    images, targets = self.mixup(images, targets)
                if cfg.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with acc.accumulate(self.model):  # steps and zeroes only on a group's last micro-batch
                    with acc.autocast():
                        loss = self.criterion(self.model(images), targets)
                    acc.backward(loss)  # divided by --grad-accum-steps
                    if cfg.clip_grad is not None and acc.sync_gradients:
                        acc.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                if acc.sync_gradients:  # one optimizer update: the schedule and the EMA follow updates, as timm's
                    self.num_updates += 1
                    if self.scheduler is not None:
                        self.scheduler.step_update(self.num_updates)
                    if self.ema is not None:
                        self.ema.update(self.raw_model, step=self.num_updates)
                loss = loss.detach()
                loss_sum += loss.double() * targets.shape[0]
                nonfinite += (~torch.isfinite(loss)).long()
                seen += targets.shape[0]
                if (step + 1) % cfg.log_interval == 0 or step + 1 == steps:
                    if _any_process(acc, bool(nonfinite.item())):
                        return {}, True
                    rate = seen * acc.num_processes / (time.perf_counter() - start)
                    if bar is not None:
                        bar.set_postfix(loss=f'{loss.item():.3f}', img_s=f'{rate:.0f}')
                    elif not tty and step + 1 < steps:
                        self.log(f'epoch {epoch + 1}/{cfg.epochs} step {step + 1}/{steps}: loss {loss.item():.3f}, '
                                 f'{rate:.0f} img/s')
                if bar is not None:
                    bar.update(1)
        elapsed = time.perf_counter() - start
        totals = acc.reduce(torch.stack([loss_sum, torch.tensor(float(seen), dtype=torch.float64,
                                                                device=acc.device)]), reduction='sum')
        loss_total, seen_total = totals.tolist()
        lr = self.optimizer.param_groups[0]['lr']
        return {'train_loss': loss_total / max(seen_total, 1), 'lr': lr,
                'images_per_s': seen_total / elapsed, 'train_time_s': elapsed}, False

    def run(self) -> TrainResult:
        cfg, acc = self.cfg, self.acc
        started = time.perf_counter()
        result = TrainResult(params=self.params, output=str(self.out) if self.out else None)
        if self.main:
            self.log(f'{cfg.model} {cfg.model_kwargs or ""} | {self.params / 1e6:.3f}M params | '
                     f'input {"x".join(map(str, self.input_size))} | {self.loaders.info.name}: '
                     f'{self.loaders.info.num_train} train / {self.loaders.info.num_val} val | '
                     f'loader {self.loaders.kind} ({self.loaders.reason}) | {acc.num_processes} process(es) on '
                     f'{acc.device.type}, precision {acc.mixed_precision}')
            if self.out is not None:
                atomic_write_yaml(self.out / 'args.yaml', cfg.to_dict())
        if cfg.log_with:  # accelerate's trackers (main process only), in the run folder
            acc.init_trackers('spsearch', config=tracker_config(cfg.to_dict()))
        throughputs = []
        for epoch in range(self.start_epoch, cfg.epochs):
            epoch_start = time.perf_counter()
            if self.running_stats is not None:  # stale_bn_eval: train on as if precise BN had not run
                _load_norm_buffers(self.raw_model, self.running_stats)
                self.running_stats = None
            train_metrics, bad = self.train_epoch(epoch)
            if bad:
                result.stopped_by = 'nonfinite'
                where = f'{self.out / "last.pth"} (epoch {epoch})' if self.out and epoch > 0 else 'none (first epoch)'
                result.message = (f'training loss became non-finite in epoch {epoch + 1}; stopped. Last good '
                                  f'checkpoint: {where}. Lower --lr or set --clip-grad')
                break
            stale: dict[str, float] = {}
            if cfg.precise_bn_batches and cfg.stale_bn_eval:
                self.running_stats = _norm_buffers(self.raw_model)
                stale = evaluate(self.raw_model, self.loaders.val, acc, channels_last=cfg.channels_last)
            for model in (self.raw_model, *([self.ema.module] if self.ema is not None else [])):
                if cfg.precise_bn_batches:
                    precise_bn(model, self.loaders.train, cfg.precise_bn_batches, cfg.channels_last)
                _average_norm_statistics(model, acc)
            metrics = evaluate(self.raw_model, self.loaders.val, acc, channels_last=cfg.channels_last)
            row: dict[str, float] = {'epoch': epoch + 1, **train_metrics, **metrics}
            if stale:
                row.update(stale_top1=stale['top1'], stale_val_loss=stale['val_loss'])
            if self.ema is not None:
                ema_metrics = evaluate(self.ema.module, self.loaders.val, acc, channels_last=cfg.channels_last)
                row.update({f'ema_{k}': v for k, v in ema_metrics.items() if k != 'val_samples'})
            score = _score(row)
            row['epoch_time_s'] = time.perf_counter() - epoch_start
            self.history.append(row)
            throughputs.append(train_metrics['images_per_s'])
            is_best = score > self.best_top1
            if is_best:
                self.best_top1, self.best_epoch = score, epoch + 1
            self._save(epoch + 1, is_best, score)
            acc.log({k: v for k, v in row.items() if k != 'epoch'}, step=epoch + 1)
            self.log(_format_epoch(row, cfg.epochs))
            stop = bool(self.callback(epoch + 1, dict(row))) if self.main and self.callback is not None else False
            if _any_process(acc, stop):
                result.stopped_by = 'callback'
                result.message = f'stopped by the epoch callback after epoch {epoch + 1}'
                break
        else:
            result.message = f'finished {cfg.epochs} epochs'
        if self.history:
            last = self.history[-1]
            result.final_top1, result.final_top5 = last['top1'], last['top5']
            result.final_val_loss = last['val_loss']
        result.best_top1, result.best_epoch = max(self.best_top1, 0.0), self.best_epoch
        result.epochs_run = len(self.history)
        result.history = list(self.history)
        result.images_per_s = sum(throughputs) / len(throughputs) if throughputs else 0.0
        result.peak_mem_mb = process_peak_memory_mb(acc.device)
        result.wall_s = time.perf_counter() - started
        if self.out is not None and self.main and result.stopped_by != 'nonfinite' and self.history:
            result.weights = str(export_weights(self.raw_model, self.out / 'model.safetensors'))
            self._export_timm_config()
            if self.ema is not None:
                export_weights(self.ema.module, self.out / 'model_ema.safetensors')
        if self.out is not None and self.main:
            self._write_summary(result)
        return result

    def _export_timm_config(self) -> None:
        """``config.json`` beside ``model.safetensors``: ``timm.create_model('local-dir:<output>', pretrained=True)``
        rebuilds this model with its classifier and loads the weights; timm's data config gets its input size and
        normalisation."""
        assert self.out is not None
        c = self.input_size[0]
        info = self.loaders.info
        export_timm_config(
            self.raw_model, self.out / 'config.json',
            model_args={**self.cfg.model_kwargs, 'num_classes': self.num_classes, 'in_chans': c},
            input_size=self.input_size, mean=resolve_stats(info.mean, c, self.cfg.mean, 'mean'),
            std=resolve_stats(info.std, c, self.cfg.std, 'std'),
            crop_pct=DEFAULT_CROP_PCT if self.cfg.data.dataset == 'imagefolder'
            and not small_image_recipe(self.cfg.data, self.input_size) else 1.0)

    def _save(self, epoch: int, is_best: bool, score: float) -> None:
        if self.out is None:
            return
        if self.cfg.save_checkpoints:
            write, drop = self.hist.update(epoch, score) if self.hist is not None else ([], [])
            state = self._state(epoch)  # every process takes part (RNG states are gathered)
            if self.main:
                save_checkpoint(self.out / 'last.pth', state,
                                copy_to=[*([self.out / 'best.pth'] if is_best else []), *write])
                for path in drop:  # after the new files are in place, as timm's CheckpointSaver
                    path.unlink(missing_ok=True)
        if self.main:
            _write_log_csv(self.out / 'log.csv', self.history)

    def _write_summary(self, result: TrainResult) -> None:
        from ..cost import UnsupportedModuleError, analytic_count
        try:
            macs: int | None = analytic_count(self.raw_model, self.input_size).macs
        except UnsupportedModuleError:
            macs = None
        summary = {
            **{k: v for k, v in result.to_dict().items() if k != 'history'},
            'gmacs': macs / 1e9 if macs is not None else None,
            'gmacs_convention': 'GMACs = 1e9 multiply-accumulates (the SPConv paper\'s "GFLOPs")',
            'input_size': list(self.input_size),
            'loader': {'kind': self.loaders.kind, 'reason': self.loaders.reason},
            'dataset': {'name': self.loaders.info.name, 'num_train': self.loaders.info.num_train,
                        'num_val': self.loaders.info.num_val, 'root': self.loaders.info.root},
            'num_processes': self.acc.num_processes, 'mixed_precision': self.acc.mixed_precision,
            'device': str(self.acc.device), 'peak_mem_kind': 'cuda_max_allocated' if self.acc.device.type == 'cuda'
            else 'cpu_peak_rss_main_process',
            'config': self.cfg.to_dict(), **provenance(),
        }
        atomic_write_json(self.out / 'summary.json', summary)  # type: ignore[operator]


def _score(row: dict[str, float]) -> float:
    """What ranks an epoch (best.pth, --checkpoint-hist): its top-1, or its EMA's when that is higher."""
    return max(row['top1'], row.get('ema_top1', row['top1']))


def _updates_per_epoch(cfg: TrainConfig, accelerator: Any, batches: int) -> int:
    """Optimizer updates per epoch with ``cfg.grad_accum_steps`` micro-batches each (the schedule's unit, as timm's).

    ``accelerator`` is set to accumulate that many (the search passes one of its own). Each epoch trains on the
    whole groups only, ``batches // N * N`` batches: no gradient is carried across an epoch's end, so last.pth
    (which holds no gradients) still resumes exactly. timm instead steps on a shorter last group.

    Raises:
        ConfigError: Fewer batches per epoch than ``N``.
    """
    n = cfg.grad_accum_steps
    if batches < n:
        raise ConfigError(f'--grad-accum-steps {n} needs at least {n} training batches per epoch, there are '
                          f'{batches}; lower it (or --batch-size)')
    if accelerator.gradient_accumulation_steps != n:
        accelerator.gradient_accumulation_steps = n
    return batches // n


def _mixup(cfg: TrainConfig, num_classes: int) -> Any:
    """timm's ``Mixup`` (mixup and/or cutmix on each training batch, label smoothing folded in), or None."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return timm.data.Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                           switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode,
                           label_smoothing=cfg.label_smoothing, num_classes=num_classes)


def _load_into(model: nn.Module, cfg: TrainConfig) -> None:
    """Load ``cfg.checkpoint``'s weights into ``model`` (strict).

    Raises:
        ConfigError: If the file is unreadable or does not fit the model (one line).
    """
    state = load_weights(str(cfg.checkpoint))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f'{cfg.checkpoint} does not fit {cfg.model} {cfg.model_kwargs}: {first}; '
                          f'pass the same --model and --model-kwargs as the run that wrote it') from None


def _evaluate_only(cfg: TrainConfig, accelerator: Any) -> TrainResult:
    info = dataset_info(cfg.data)
    model = build_model(cfg, head_classes(cfg, info.num_classes))
    _load_into(model, cfg)
    loaders = create_loaders(cfg.data, input_size=_input_size(model, cfg), device=accelerator.device, mean=cfg.mean,
                             std=cfg.std, process_index=accelerator.process_index,
                             num_processes=accelerator.num_processes)
    model = model.to(accelerator.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    started = time.perf_counter()
    metrics = evaluate(model, loaders.val, accelerator, channels_last=cfg.channels_last)
    result = TrainResult(final_top1=metrics['top1'], final_top5=metrics['top5'], best_top1=metrics['top1'],
                         final_val_loss=metrics['val_loss'],
                         params=sum(p.numel() for p in model.parameters()), wall_s=time.perf_counter() - started,
                         history=[metrics], output=cfg.output,
                         message=f'evaluated {cfg.checkpoint}: top1 {metrics["top1"]:.2f} top5 {metrics["top5"]:.2f} '
                                 f'on {int(metrics["val_samples"])} {info.name} images')
    if cfg.output and accelerator.is_main_process:
        atomic_write_json(Path(cfg.output) / 'eval.json', {**metrics, 'checkpoint': cfg.checkpoint,
                                                          'config': cfg.to_dict(), **provenance()})
    return result


def train(cfg: TrainConfig, *, accelerator: Any = None, epoch_callback: EpochCallback | None = None) -> TrainResult:
    """Train (or, with ``cfg.evaluate_only``, evaluate) a model as ``cfg`` says.

    Args:
        cfg: The run's configuration.
        accelerator: An ``accelerate.Accelerator`` to use (the search passes its own); by default
            one is made for ``cfg`` (``make_accelerator``).
        epoch_callback: Called on the main process after each epoch's evaluation with the epoch
            (1-based) and its metrics (``top1``, ``top5``, ``val_loss``, ``train_loss``, ...);
            returning True stops the run on every process (an Optuna pruner, for example).

    Returns:
        The run's ``TrainResult``.

    Raises:
        SPSearchError: On bad input (unknown model, missing data, bad options), before anything is
            written to ``cfg.output``.
    """
    owned = accelerator is None
    accelerator = make_accelerator(cfg) if owned else accelerator
    if cfg.mixed_precision != accelerator.mixed_precision:  # what runs is what args.yaml and summary.json record
        cfg = cfg.replace(mixed_precision=accelerator.mixed_precision)
    try:
        if cfg.evaluate_only:
            return _evaluate_only(cfg, accelerator)
        run = _Run(cfg, accelerator, epoch_callback)
        try:
            try:
                run.setup()
            except SPSearchError:
                if run.lock is not None:  # bad input found after the hold was taken: leave the folder as found
                    run.lock.release(discard=True)
                raise
            return run.run()
        finally:
            if run.lock is not None:
                run.lock.release()
    finally:
        if owned:
            accelerator.end_training()  # finishes the trackers, tears a process group down
        else:
            for tracker in accelerator.trackers:  # a caller's accelerator keeps its process group
                tracker.finish()
        accelerator.free_memory()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
