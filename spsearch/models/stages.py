"""Stages of an SP model: how users write per-stage settings, and what a stage holds.

Settings. ``sp_alpha`` and ``sp_groups`` take a scalar for the whole model or one entry per stage
(a tuple, a list, or a string such as ``"(1/2, vanilla, 0.25)"`` as it arrives from
``--model-kwargs``). An ``sp_alpha`` entry ``"vanilla"`` (or ``None``) is a plain k x k conv in
that stage; ratios may be written as fractions (``1/2``). ``parse_alpha`` and ``format_alpha``
are the one parser and formatter of a split ratio in SPSearch (models, the search space, reports).

Description. Every SP model family exports its stages as data (pycls's "design space as data"):
``model.sp_stages()`` returns one ``StageSpec`` per stage, naming the modules the stage runs (for
per-stage timing) and its ``SPSite``\\ s, the k x k convs that the stage's setting turns into
SPConv, with their channels and stride. The search space, the latency bounds and the cost tables
read this description; nothing probes a model with dummy ratios or guesses module names.
"""
from __future__ import annotations

import ast
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol, Union, runtime_checkable

from torch import nn

from ..ops import SPConv2d

__all__ = [
    'VANILLA', 'SPSite', 'SPStagedModel', 'StageAlpha', 'StageSpec', 'format_alpha', 'format_stage_values',
    'parse_alpha', 'parse_groups', 'parse_stage_alphas', 'parse_stage_groups',
]

VANILLA = 'vanilla'
"""The ``sp_alpha`` value of a stage whose k x k convs stay plain convs."""
StageAlpha = Union[float, None]
"""One stage's split ratio; ``None`` means vanilla."""

_VANILLA_WORDS = (VANILLA, 'none', 'null')


def parse_alpha(value: Any, name: str = 'sp_alpha') -> StageAlpha:
    """Parse one split ratio as users write it: ``0.5``, ``"1/2"``, ``1``, or ``"vanilla"``/``None``.

    Args:
        value: The value.
        name: What it is called in error messages (``sp_alpha[2]``, ``--alphas``).

    Returns:
        The ratio in (0, 1] as a float, or None for vanilla.

    Raises:
        ValueError: Naming ``name`` and the valid range, if it is neither.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _VANILLA_WORDS:
            return None
        try:
            value = float(Fraction(text))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f'{name}={value!r} is not a split ratio: use a number in (0, 1] such as 0.5 or 1/2, '
                             f'or "{VANILLA}" for a plain conv') from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) <= 1:
        raise ValueError(f'{name}={value!r} is out of range: a split ratio must be in (0, 1], '
                         f'or "{VANILLA}" for a plain conv')
    return float(value)


def parse_groups(value: Any, name: str = 'sp_groups') -> int:
    """Parse one group count (an integer >= 1; ``"4"`` and ``4.0`` are accepted).

    Raises:
        ValueError: Naming ``name``, if it is not an integer >= 1.
    """
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            pass
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
        value = int(float(value))
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f'{name}={value!r} is invalid: groups must be an integer >= 1')
    return value


def format_alpha(alpha: StageAlpha) -> str:
    """``vanilla`` for None, else the exact fraction (``1/2``, ``1/100``, ``1``) or, if none is short, ``%g``."""
    if alpha is None:
        return VANILLA
    frac = Fraction(alpha).limit_denominator(1024)
    return str(frac) if float(frac) == alpha else f'{alpha:g}'


def format_stage_values(values: Sequence[Any]) -> str:
    """Per-stage values for reports: ``(1/2, vanilla, 1/4)`` (ratios as ``format_alpha``, others as str)."""
    return '(' + ', '.join(format_alpha(v) if v is None or isinstance(v, float) else str(v) for v in values) + ')'


def _split_sequence_string(text: str) -> list[str] | None:
    body = text.strip()
    if body[:1] in '([' and body[-1:] in ')]':
        body = body[1:-1]
    elif ',' not in body:
        return None
    return [part.strip() for part in body.split(',') if part.strip()]


def _per_stage(value: Any, num_stages: int, name: str) -> list[tuple[Any, str]]:
    """Broadcast ``value`` to ``(entry, entry_name)`` pairs, one per stage."""
    if isinstance(value, str):
        parts = _split_sequence_string(value)
        if parts is not None:
            value = parts
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != num_stages:
            raise ValueError(f'{name} has {len(value)} entries but the model has {num_stages} stages; '
                             f'give one value or exactly {num_stages}')
        return [(v, f'{name}[{i}]') for i, v in enumerate(value)]
    return [(value, name)] * num_stages


def parse_stage_alphas(value: Any, num_stages: int, name: str = 'sp_alpha') -> tuple[StageAlpha, ...]:
    """One split ratio per stage (None for vanilla) from a scalar or a per-stage sequence.

    Raises:
        ValueError: On a wrong length or an entry that ``parse_alpha`` rejects.
    """
    return tuple(parse_alpha(v, entry) for v, entry in _per_stage(value, num_stages, name))


def parse_stage_groups(value: Any, num_stages: int, name: str = 'sp_groups') -> tuple[int, ...]:
    """One group count per stage from a scalar or a per-stage sequence.

    Raises:
        ValueError: On a wrong length or an entry that ``parse_groups`` rejects.
    """
    return tuple(parse_groups(v, entry) for v, entry in _per_stage(value, num_stages, name))


@dataclass(frozen=True)
class SPSite:
    """A k x k conv that a stage's setting makes an SPConv (or keeps vanilla).

    Attributes:
        module: Its name in the model (``layer2.0.conv1``).
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel size k.
        stride: Stride.
    """

    module: str
    in_channels: int
    out_channels: int
    kernel_size: int
    stride: int

    @classmethod
    def of(cls, name: str, conv: nn.Module) -> SPSite:
        """The site of ``conv`` (an ``nn.Conv2d`` or an ``SPConv2d``) named ``name``."""
        if isinstance(conv, SPConv2d):
            return cls(name, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride)
        if isinstance(conv, nn.Conv2d):
            return cls(name, conv.in_channels, conv.out_channels, int(conv.kernel_size[0]), int(conv.stride[0]))
        raise TypeError(f'{name} is a {type(conv).__name__}, not a conv an SP setting applies to')


@dataclass(frozen=True)
class StageSpec:
    """One stage of an SP model: the modules it runs and the sites its setting applies to.

    Attributes:
        modules: Names of the model's modules that make up the stage, in forward order (one stage
            module such as ``layer1``, or a run of layers such as ``features.0`` ... ``features.6``);
            the stage's time is from the first one's input to the last one's output.
        sites: Its SP sites, in forward order.
    """

    modules: tuple[str, ...]
    sites: tuple[SPSite, ...]

    @property
    def name(self) -> str:
        """``layer1``, or ``features.0..features.6`` for a run of modules."""
        return self.modules[0] if len(self.modules) == 1 else f'{self.modules[0]}..{self.modules[-1]}'


@runtime_checkable
class SPStagedModel(Protocol):
    """What every SP model family implements: its stage description."""

    def sp_stages(self) -> tuple[StageSpec, ...]:
        """One ``StageSpec`` per stage, in forward order (the order of ``sp_alpha``'s entries)."""
        ...
