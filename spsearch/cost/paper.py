"""The SPConv paper's published costs (Zhang et al., IJCAI 2020, Tables 1-3), as data.

"FLOPs" in the paper are multiply-accumulates counted with thop. ``exact_params`` are the exact
counts established for the reference layout (``shared/reference/spconv-paper.md``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

__all__ = ['PaperRow', 'PAPER_ROWS']


@dataclass(frozen=True)
class PaperRow:
    """One model/alpha row of a paper table."""

    table: str
    label: str
    model: str
    sp_alpha: Union[float, str]
    input_size: tuple[int, int, int]
    num_classes: int
    macs: float
    params: float
    params_printed: str
    exact_params: int | None = None


_R50 = ('ImageNet ResNet-50', 'sp_resnet50', (3, 224, 224), 1000)
_R20 = ('CIFAR-10 ResNet-20', 'sp_resnet20', (3, 32, 32), 10)
_VGG = ('CIFAR-10 VGG-16', 'sp_vgg16_cifar', (3, 32, 32), 10)

PAPER_ROWS: tuple[PaperRow, ...] = (
    PaperRow(_R50[0], 'ResNet-50', _R50[1], 'vanilla', _R50[2], _R50[3], 4.14e9, 25.56e6, '25.56M', 25_557_032),
    PaperRow(_R50[0], 'SPConv α=1/2', _R50[1], 1 / 2, _R50[2], _R50[3], 2.97e9, 18.34e6, '18.34M', 18_345_448),
    PaperRow(_R50[0], 'SPConv α=1/4', _R50[1], 1 / 4, _R50[2], _R50[3], 2.74e9, 16.93e6, '16.93M', 16_930_792),
    PaperRow(_R50[0], 'SPConv α=1/8', _R50[1], 1 / 8, _R50[2], _R50[3], 2.62e9, 16.22e6, '16.22M', 16_223_464),
    PaperRow(_R20[0], 'ResNet-20', _R20[1], 'vanilla', _R20[2], _R20[3], 41.62e6, 0.27e6, '0.27M'),
    PaperRow(_R20[0], 'SPConv-ResNet-20 α=1/2', _R20[1], 1 / 2, _R20[2], _R20[3], 17.91e6, 0.10e6, '0.10M'),
    PaperRow(_R20[0], 'SPConv-ResNet-20 α=1/4', _R20[1], 1 / 4, _R20[2], _R20[3], 12.89e6, 0.071e6, '0.071M'),
    PaperRow(_VGG[0], 'VGG-16', _VGG[1], 'vanilla', _VGG[2], _VGG[3], 349.51e6, 16.62e6, '16.62M'),
    PaperRow(_VGG[0], 'SPConv-VGG-16 α=1/2', _VGG[1], 1 / 2, _VGG[2], _VGG[3], 118.27e6, 5.6e6, '5.6M'),
    PaperRow(_VGG[0], 'SPConv-VGG-16 α=1/4', _VGG[1], 1 / 4, _VGG[2], _VGG[3], 79.34e6, 3.77e6, '3.77M'),
    PaperRow(_VGG[0], 'SPConv-VGG-16 α=1/8', _VGG[1], 1 / 8, _VGG[2], _VGG[3], 59.87e6, 2.85e6, '2.85M'),
    PaperRow(_VGG[0], 'SPConv-VGG-16 α=1/16', _VGG[1], 1 / 16, _VGG[2], _VGG[3], 55.14e6, 2.39e6, '2.39M'),
)
