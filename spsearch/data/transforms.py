"""Batched transforms, on the device, for images held as uint8 tensors ``(N, C, H, W)``.

One call turns a batch of stored images into what the model takes: fit to the input size (zero
padding in pixel space, i.e. background, when the target is at most 1.25x larger; bilinear resize
otherwise), the training augmentation (random crop with 1/8-side zero padding, 4 px at 32, and a
horizontal flip, both done by one gather), the channel conversion (grey repeated to RGB, RGB to
luminance) and normalisation. The random parameters are drawn up front from a seeded generator
on the CPU, so the result does not depend on the device or on how the batch was assembled.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError

__all__ = ['LUMINANCE', 'PAD_LIMIT', 'BatchTransform', 'crop_pad_for', 'fits_memory', 'plan_geometry', 'resolve_stats']

LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R 601, as PIL's convert('L')
PAD_LIMIT = 1.25  # a larger target is resized instead of padded


def resolve_stats(source: Sequence[float], chans: int, override: Sequence[float] | float | None,
                  name: str) -> tuple[float, ...]:
    """Normalisation ``mean``/``std`` for ``chans`` model channels.

    Args:
        source: The data set's values, one per source channel.
        chans: Channels the model takes.
        override: The caller's values (one, or one per model channel), replacing ``source``.
        name: ``mean`` or ``std``, for the error message.

    Raises:
        ConfigError: If ``override`` has neither 1 nor ``chans`` entries, or a std is not positive.
    """
    if override is not None:
        values = (float(override),) if isinstance(override, (int, float)) else tuple(float(v) for v in override)
        if len(values) not in (1, chans):
            raise ConfigError(f'{name} has {len(values)} values for a {chans}-channel model; give 1 or {chans}')
    elif len(source) == chans:
        values = tuple(source)
    elif len(source) == 1:
        values = tuple(source)
    elif len(source) == 3 and chans == 1:
        values = (sum(w * v for w, v in zip(LUMINANCE, source, strict=True)),)
    else:
        raise DataError(f'no {name} for {chans} channels from a {len(source)}-channel data set; pass --{name}')
    if len(values) == 1:
        values = values * chans
    if name == 'std' and any(v <= 0 for v in values):
        raise ConfigError(f'std={values} is invalid: every entry must be > 0')
    return values


def plan_geometry(source_hw: tuple[int, int], target_hw: tuple[int, int]) -> tuple[str, tuple[int, int, int, int]]:
    """How stored images reach the input size: ``('none'|'pad'|'resize', (left, right, top, bottom))``.

    Padding (centred, the odd pixel at the bottom/right) when the target is no smaller and at most
    ``PAD_LIMIT`` times larger in both sides, e.g. Fashion-MNIST 28x28 into a 32x32 CIFAR-layout model.
    """
    (h, w), (th, tw) = source_hw, target_hw
    if (h, w) == (th, tw):
        return 'none', (0, 0, 0, 0)
    if h <= th <= PAD_LIMIT * h and w <= tw <= PAD_LIMIT * w:
        return 'pad', ((tw - w) // 2, tw - w - (tw - w) // 2, (th - h) // 2, th - h - (th - h) // 2)
    return 'resize', (0, 0, 0, 0)


def crop_pad_for(size: tuple[int, int]) -> int:
    """Padding of the random-crop augmentation: 1/8 of the shorter side (4 px at 32, 28 at 224)."""
    return max(1, round(min(size) / 8))


class BatchTransform:
    """uint8 ``(N, C_src, H_src, W_src)`` -> normalised float32 ``(N, C, H, W)`` on ``device``.

    Args:
        source_chans: Channels as stored (1 or 3).
        source_size: ``(H, W)`` as stored.
        input_size: ``(C, H, W)`` the model takes (C of 1 or 3).
        mean: Normalisation mean per model channel, [0, 1] units.
        std: Normalisation std per model channel.
        augment: Apply the random crop and flip (when parameters are passed to the call).
        device: Where the work happens.
    """

    def __init__(self, *, source_chans: int, source_size: tuple[int, int], input_size: tuple[int, int, int],
                 mean: Sequence[float], std: Sequence[float], augment: bool, device: torch.device | str) -> None:
        chans, height, width = input_size
        if source_chans != chans and (source_chans, chans) not in ((1, 3), (3, 1)):
            raise DataError(f'the model takes {chans} channels but the images have {source_chans}; '
                            f'create the model with in_chans={source_chans}')
        self.source_chans, self.chans = source_chans, chans
        self.size = (height, width)
        self.device = torch.device(device)
        self.mode, self.pads = plan_geometry(source_size, self.size)
        self.downscale = height < source_size[0] or width < source_size[1]
        self.augment = augment
        self.crop_pad = crop_pad_for(self.size) if augment else 0
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)  # one fused multiply-add from [0, 255]
        self.shift = -mean_t / std_t
        self.luminance = torch.tensor(LUMINANCE, device=self.device).view(1, 3, 1, 1)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random-crop offsets ``(n, 2)`` in ``[0, 2 * crop_pad]`` and flips ``(n,)``, drawn on the CPU."""
        offsets = torch.randint(0, 2 * self.crop_pad + 1, (n, 2), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5
        return offsets, flips

    def _crop_flip(self, x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        p = self.crop_pad
        height, width = x.shape[-2:]
        xp = F.pad(x, (p, p, p, p)).permute(0, 2, 3, 1)  # NHWC: one gather moves whole pixels
        offsets, flips = offsets.to(x.device, non_blocking=True), flips.to(x.device, non_blocking=True)
        rows = offsets[:, :1] + torch.arange(height, device=x.device)
        ar = torch.arange(width, device=x.device)
        cols = offsets[:, 1:] + torch.where(flips[:, None], width - 1 - ar, ar)
        batch = torch.arange(x.shape[0], device=x.device)[:, None, None]
        return xp[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)

    def __call__(self, x: torch.Tensor, offsets: torch.Tensor | None = None,
                 flips: torch.Tensor | None = None) -> torch.Tensor:
        """Transform one batch; ``offsets``/``flips`` from ``sample`` (``None``: no augmentation)."""
        x = x.to(self.device, non_blocking=True)
        if self.mode == 'pad':
            x = F.pad(x, self.pads)
        elif self.mode == 'resize':
            x = F.interpolate(x.float(), size=self.size, mode='bilinear', align_corners=False,
                              antialias=self.downscale)
        if self.augment and offsets is not None and flips is not None and x.shape[0]:
            x = self._crop_flip(x, offsets, flips)
        x = x.float()
        if self.source_chans == 3 and self.chans == 1:
            x = (x * self.luminance).sum(1, keepdim=True)
        out = torch.addcmul(self.shift, x, self.scale)  # broadcasting also repeats a grey channel
        return out.contiguous()

    def describe(self) -> str:
        """One phrase for logs: ``pad 28x28 -> 32x32`` etc."""
        what = {'none': 'as stored', 'pad': f'zero-padded to {self.size[0]}x{self.size[1]}',
                'resize': f'resized to {self.size[0]}x{self.size[1]}'}[self.mode]
        if self.source_chans != self.chans:
            what += ', grey repeated to RGB' if self.chans == 3 else ', RGB to luminance'
        if self.augment:
            what += f', random crop (pad {self.crop_pad}) + flip'
        return what


def _available_ram() -> int | None:
    try:
        with open('/proc/meminfo') as f:
            for line in f:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def fits_memory(nbytes: int, device: torch.device) -> tuple[bool, str]:
    """Whether ``nbytes`` of images may be held on ``device`` (at most half its free memory), and how much that is."""
    if device.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= free // 2, f'{nbytes / 2**20:.0f} MiB of {free / 2**30:.1f} GiB free on {device}'
    avail = _available_ram()
    if avail is None:
        return True, f'{nbytes / 2**20:.0f} MiB'
    return nbytes <= avail // 2, f'{nbytes / 2**20:.0f} MiB of {avail / 2**30:.1f} GiB available memory'
