"""Per-stage SPConv settings: parse ``sp_alpha`` / ``sp_groups`` the way users write them.

Both accept a scalar for the whole model or one entry per stage (tuple, list, or a string such
as ``"(0.5, vanilla, 0.25)"`` as it arrives from ``--model-kwargs``). An ``sp_alpha`` entry of
``"vanilla"`` (or ``None`` inside a sequence) means a plain k x k conv in that stage. Fractions
may be written ``1/2``.
"""
from __future__ import annotations

import ast
import numbers
from collections.abc import Sequence
from fractions import Fraction
from typing import Any, Union

__all__ = ['VANILLA', 'StageAlpha', 'parse_stage_alphas', 'parse_stage_groups', 'format_stage_values']

VANILLA = 'vanilla'
StageAlpha = Union[float, None]
"""One stage's split ratio; ``None`` means a vanilla conv."""

_VANILLA_WORDS = {'vanilla', 'none', 'null', 'conv', 'dense'}


def _split_sequence_string(text: str) -> list[str] | None:
    body = text.strip()
    if body[:1] in '([' and body[-1:] in ')]':
        body = body[1:-1]
    elif ',' not in body:
        return None
    return [part.strip() for part in body.split(',') if part.strip()]


def _parse_alpha(value: Any, name: str) -> StageAlpha:
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _VANILLA_WORDS:
            return None
        try:
            value = float(Fraction(text))
        except (ValueError, ZeroDivisionError):
            raise ValueError(
                f'{name}={value!r} is not a split ratio: use a number in (0, 1] such as 0.5 or 1/2, '
                f'or "{VANILLA}" for a plain conv') from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) <= 1:
        raise ValueError(f'{name}={value!r} is out of range: a split ratio must be in (0, 1], '
                         f'or "{VANILLA}" for a plain conv')
    return float(value)


def _parse_groups(value: Any, name: str) -> int:
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
    """Return one split ratio per stage (``None`` for a vanilla stage).

    Args:
        value: A ratio, ``"vanilla"``, or a sequence (or its string form) of ``num_stages`` of them.
        num_stages: Number of stages of the model.
        name: Argument name used in error messages.

    Raises:
        ValueError: On a wrong length or an entry that is not a ratio in (0, 1] or vanilla.
    """
    return tuple(_parse_alpha(v, entry_name) for v, entry_name in _per_stage(value, num_stages, name))


def parse_stage_groups(value: Any, num_stages: int, name: str = 'sp_groups') -> tuple[int, ...]:
    """Return one group count per stage.

    Args:
        value: An integer >= 1 or a sequence (or its string form) of ``num_stages`` of them.
        num_stages: Number of stages of the model.
        name: Argument name used in error messages.

    Raises:
        ValueError: On a wrong length or an entry that is not an integer >= 1.
    """
    return tuple(_parse_groups(v, entry_name) for v, entry_name in _per_stage(value, num_stages, name))


def format_stage_values(values: Sequence[Any]) -> str:
    """Format per-stage values compactly for reports: ``1/2`` for ratios, ``vanilla`` for None."""
    def one(v: Any) -> str:
        if v is None:
            return VANILLA
        if isinstance(v, float):
            frac = Fraction(v).limit_denominator(64)
            return str(frac) if float(frac) == v else f'{v:g}'
        return str(v)
    return '(' + ', '.join(one(v) for v in values) + ')'
