"""The search space: per-stage SPConv split ratio and groups of one SP model, as data.

pycls-style: the space is a table, one row of allowed choices per stage, fixed up front.
A stage's choice is either ``vanilla`` (a plain 3x3 conv; its group count is meaningless, so it
appears once) or a pair ``(alpha, G)``. A pair is kept only if it splits *every* SPConv of the
stage exactly: ``alpha * C_in`` is a whole multiple of ``G`` for each input width, and ``G``
divides each output width. ``sp_split`` would round an inexact pair (e.g. alpha 1/16 with G 8
on 64 channels) to another ratio, which would make two names for one network.

Each stage is one Optuna categorical parameter ``stage<i>`` whose values are labels such as
``vanilla`` or ``alpha=1/2,G=2``. One flat categorical per stage keeps every architecture
exactly one parameter set (no duplicates, no conditional parameters whose value sets change
with alpha, which Optuna's distributions cannot express) and reads well in optuna-dashboard.

Costs are exact and cheap: at a fixed input size a stage's MACs and parameters depend only on its
own choice, so ``cost(config) = reference + sum_i delta_i(choice_i)``. The deltas are computed
once from models built on the ``meta`` device with ``spsearch.cost.analytic_count``, which makes
costing a configuration (and the space's exact minimum and maximum) a table look-up.

Example:
    >>> import timm_plugins  # registers the SP models
    >>> space = SearchSpace.build('sp_resnet34')
    >>> config = space.paper_config()
    >>> space.model_kwargs(config)
    {'sp_alpha': (0.5, 0.5, 0.5, 0.5), 'sp_groups': (2, 2, 2, 2)}
    >>> round(space.cost(config).macs / 1e9, 2)
    1.46
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property
from typing import TYPE_CHECKING, Any

import timm
import torch

from .cost import Count, analytic_count
from .errors import ConfigError
from .models.stage_config import VANILLA, format_stage_values
from .ops import SPConv2d, sp_split

if TYPE_CHECKING:
    import optuna

__all__ = [
    'ALPHA_CHOICES', 'GROUP_CHOICES', 'PAPER_ALPHA', 'PAPER_GROUPS', 'Config', 'SearchSpace', 'StageChoice',
    'parse_alpha_choice',
]

ALPHA_CHOICES: tuple[float | None, ...] = (None, 1.0, 1 / 2, 1 / 4, 1 / 8, 1 / 16)
"""Default split ratios per stage; ``None`` is a vanilla 3x3 conv."""
GROUP_CHOICES: tuple[int, ...] = (1, 2, 4, 8)
"""Default group counts of the group-wise conv."""
PAPER_ALPHA, PAPER_GROUPS = 1 / 2, 2
"""The paper's setting, used in every stage: the baseline of every study."""


def _fraction(value: float) -> str:
    frac = Fraction(value).limit_denominator(1024)
    return str(frac) if float(frac) == value else f'{value:g}'


def parse_alpha_choice(value: Any) -> float | None:
    """Parse one alpha choice as users write it (``vanilla``, ``1/2``, ``0.5``, ``1``).

    Raises:
        ConfigError: If it is neither vanilla nor a ratio in (0, 1].
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in ('vanilla', 'none', 'null')):
        return None
    try:
        alpha = float(Fraction(str(value).strip()))
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f'alpha choice {value!r} is not a split ratio: use a number in (0, 1] such as 1/2, '
                          f'or vanilla') from None
    if not 0 < alpha <= 1:
        raise ConfigError(f'alpha choice {value!r} is out of range: a split ratio must be in (0, 1]')
    return alpha


@dataclass(frozen=True, order=True)
class StageChoice:
    """One stage's setting: ``alpha=None`` (vanilla, ``groups`` None too) or a split ratio and groups."""

    alpha: float | None
    groups: int | None = None

    @property
    def is_vanilla(self) -> bool:
        return self.alpha is None

    @property
    def label(self) -> str:
        """The Optuna parameter value: ``vanilla`` or ``alpha=1/2,G=2``."""
        if self.alpha is None:
            return VANILLA
        return f'alpha={_fraction(self.alpha)},G={self.groups}'

    @classmethod
    def from_label(cls, label: str) -> StageChoice:
        """Inverse of ``label``.

        Raises:
            ConfigError: On a string that is not a label.
        """
        if label == VANILLA:
            return cls(None)
        try:
            alpha_part, groups_part = label.split(',')
            key_a, alpha = alpha_part.split('=')
            key_g, groups = groups_part.split('=')
            if (key_a, key_g) != ('alpha', 'G'):
                raise ValueError(label)
            return cls(float(Fraction(alpha)), int(groups))
        except ValueError:
            raise ConfigError(f'{label!r} is not a stage choice: expected "vanilla" or e.g. "alpha=1/2,G=2"') from None


Config = tuple[StageChoice, ...]
"""One architecture of the space: a choice per stage."""


@dataclass(frozen=True)
class _StageConvs:
    in_channels: tuple[int, ...]
    out_channels: tuple[int, ...]


def _create(model: str, **kwargs: Any) -> torch.nn.Module:
    with torch.device('meta'):
        return timm.create_model(model, **kwargs)


def _probe_stages(model: str, num_classes: int | None) -> list[_StageConvs]:
    """Find the stages of an SP model and the widths of the SPConvs in each (on ``meta``)."""
    extra = {} if num_classes is None else {'num_classes': num_classes}
    try:
        _create(model, sp_alpha=1 / 2, sp_groups=1, **extra)
    except RuntimeError as e:
        if 'Unknown model' not in str(e):
            raise
        raise ConfigError(f'unknown model {model!r}: choose an SP model (timm_plugins.list_sp_models(), '
                          f'e.g. sp_resnet34) and import timm_plugins before building it') from None
    except TypeError:
        raise ConfigError(f'model {model!r} has no per-stage SPConv settings (sp_alpha/sp_groups): choose an SP '
                          f'model such as sp_resnet34 (timm_plugins.list_sp_models())') from None
    for num_stages in range(1, 17):
        # stage i gets alpha 1/(i+2): each SPConv's alpha then names its stage
        alphas = tuple(1 / (i + 2) for i in range(num_stages))
        try:
            net = _create(model, sp_alpha=alphas, sp_groups=1, **extra)
        except ValueError:
            continue
        stages: list[tuple[list[int], list[int]]] = [([], []) for _ in range(num_stages)]
        for m in net.modules():
            if isinstance(m, SPConv2d):
                index = round(1 / m.alpha) - 2
                stages[index][0].append(m.in_channels)
                stages[index][1].append(m.out_channels)
        return [_StageConvs(tuple(i), tuple(o)) for i, o in stages]
    raise ConfigError(f'could not determine the stages of model {model!r}: it does not take per-stage sp_alpha')


def _exact_split(stage: _StageConvs, alpha: float, groups: int) -> bool:
    for c_in in stage.in_channels:
        try:
            rep, _ = sp_split(c_in, alpha, groups)
        except ValueError:
            return False
        if not math.isclose(rep, alpha * c_in):
            return False
    return all(c_out % groups == 0 for c_out in stage.out_channels)


class SearchSpace:
    """Per-stage choices of alpha and G for one SP model, with exact costs at one input size.

    Build it with ``SearchSpace.build``; it is immutable afterwards.

    Args:
        model: timm model name (an SP model registered by ``timm_plugins``).
        stages: Allowed choices per stage.
        input_size: ``(C, H, W)`` at which costs are counted.
        num_classes: Classifier width used for costs (None: the model's default).
        reference: Cost of the all-vanilla model.
        deltas: Per stage, the cost change of each choice against vanilla.
    """

    def __init__(
            self,
            model: str,
            stages: Sequence[Sequence[StageChoice]],
            input_size: tuple[int, int, int],
            num_classes: int | None,
            reference: Count,
            deltas: Sequence[dict[StageChoice, Count]],
    ) -> None:
        self.model = model
        self.stages: tuple[tuple[StageChoice, ...], ...] = tuple(tuple(s) for s in stages)
        self.input_size: tuple[int, int, int] = (int(input_size[0]), int(input_size[1]), int(input_size[2]))
        self.num_classes = num_classes
        self._reference = reference
        self._deltas = [dict(d) for d in deltas]

    @classmethod
    def build(
            cls,
            model: str = 'sp_resnet34',
            alphas: Sequence[Any] = ALPHA_CHOICES,
            groups: Sequence[int] = GROUP_CHOICES,
            input_size: int | tuple[int, int, int] | None = None,
            num_classes: int | None = None,
    ) -> SearchSpace:
        """The space of ``model`` with the given alpha and group choices in every stage.

        Args:
            model: An SP model name (``timm_plugins`` must have been imported).
            alphas: Split ratios; ``None``/``"vanilla"`` for a plain conv; strings such as ``"1/2"`` work.
            groups: Group counts >= 1.
            input_size: Side length or ``(C, H, W)`` at which costs are counted (default: the model's
                ``pretrained_cfg`` input size, 3x224x224 for the ImageNet-layout models).
            num_classes: Classifier width for costs (default: the model's, 1000 for ImageNet layouts).

        Raises:
            ConfigError: On an unknown or non-SP model, invalid choices, or a stage left without any
                valid choice (an empty space).
        """
        alpha_values = sorted({parse_alpha_choice(a) for a in alphas}, key=lambda a: (a is not None, -(a or 0)))
        group_values: list[int] = []
        for g in groups:
            if isinstance(g, bool) or not isinstance(g, int) or g < 1:
                raise ConfigError(f'group choice {g!r} is invalid: groups must be integers >= 1, e.g. 1 2 4 8')
            if g not in group_values:
                group_values.append(g)
        if not alpha_values:
            raise ConfigError('the search space is empty: give at least one alpha choice (e.g. --alphas vanilla 1/2)')
        if not group_values and any(a is not None for a in alpha_values):
            raise ConfigError('the search space is empty: give at least one group choice (e.g. --groups 2)')
        stage_convs = _probe_stages(model, num_classes)
        size = _resolve_input_size(model, input_size, num_classes)
        stages: list[list[StageChoice]] = []
        for index, convs in enumerate(stage_convs):
            choices = [StageChoice(None)] if None in alpha_values else []
            choices += [StageChoice(a, g) for a in alpha_values if a is not None for g in sorted(group_values)
                        if _exact_split(convs, a, g)]
            if not choices:
                raise ConfigError(
                    f'the search space is empty: stage {index + 1} of {model} (input widths '
                    f'{sorted(set(convs.in_channels))}) has no exact split among alphas '
                    f'{", ".join(_fraction(a) if a else VANILLA for a in alpha_values)} and groups '
                    f'{", ".join(map(str, group_values))}; add vanilla or smaller groups')
            stages.append(choices)
        reference, deltas = _cost_tables(model, stages, size, num_classes)
        return cls(model, stages, size, num_classes, reference, deltas)

    # -- the space as data ---------------------------------------------------------------------------------------

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def size(self) -> int:
        """Number of distinct architectures."""
        return math.prod(len(s) for s in self.stages)

    @staticmethod
    def param_name(stage: int) -> str:
        """Optuna parameter of stage ``stage`` (0-based): ``stage1``, ``stage2``, ..."""
        return f'stage{stage + 1}'

    def describe(self) -> str:
        """One line per stage listing its choices, for logs and reports."""
        return '\n'.join(f'{self.param_name(i)}: {", ".join(c.label for c in choices)}'
                         for i, choices in enumerate(self.stages))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe identity of the space (stored with a study to check that a resume searches the same space)."""
        return {'model': self.model, 'input_size': list(self.input_size), 'num_classes': self.num_classes,
                'stages': [[c.label for c in choices] for choices in self.stages]}

    def __repr__(self) -> str:
        return (f'SearchSpace({self.model}, {self.num_stages} stages, {self.size} configurations, '
                f'costs at {"x".join(map(str, self.input_size))})')

    # -- configurations ------------------------------------------------------------------------------------------

    def suggest(self, trial: optuna.trial.BaseTrial) -> Config:
        """Sample (or read, for an enqueued or fixed trial) one configuration through Optuna."""
        labels = [trial.suggest_categorical(self.param_name(i), [c.label for c in choices])
                  for i, choices in enumerate(self.stages)]
        return tuple(StageChoice.from_label(str(label)) for label in labels)

    def params(self, config: Config) -> dict[str, str]:
        """The Optuna parameters of ``config`` (what ``study.enqueue_trial`` takes)."""
        self.check(config)
        return {self.param_name(i): c.label for i, c in enumerate(config)}

    def from_params(self, params: dict[str, Any]) -> Config:
        """The configuration of an Optuna parameter dict.

        Raises:
            ConfigError: If a stage is missing or its value is not a choice of the space.
        """
        try:
            config = tuple(StageChoice.from_label(str(params[self.param_name(i)])) for i in range(self.num_stages))
        except KeyError as e:
            raise ConfigError(f'parameters {params} miss {e.args[0]}: not a configuration of this space') from None
        self.check(config)
        return config

    def check(self, config: Config) -> None:
        """Raise ``ConfigError`` unless ``config`` belongs to the space."""
        if len(config) != self.num_stages:
            raise ConfigError(f'a configuration of {self.model} has {self.num_stages} stages, got {len(config)}')
        for i, (choice, allowed) in enumerate(zip(config, self.stages, strict=True)):
            if choice not in allowed:
                raise ConfigError(f'{choice.label} is not a choice of {self.param_name(i)} '
                                  f'(allowed: {", ".join(c.label for c in allowed)})')

    def contains(self, config: Config) -> bool:
        try:
            self.check(config)
        except ConfigError:
            return False
        return True

    def paper_config(self) -> Config:
        """The paper's setting, alpha 1/2 and G 2 in every stage (it may lie outside a restricted space)."""
        return tuple(StageChoice(PAPER_ALPHA, PAPER_GROUPS) for _ in self.stages)

    def model_kwargs(self, config: Config) -> dict[str, Any]:
        """``timm.create_model`` keyword arguments: per-stage ``sp_alpha`` (``"vanilla"``) and ``sp_groups``.

        A vanilla stage gets groups 1, which its plain conv ignores.
        """
        return {'sp_alpha': tuple(VANILLA if c.alpha is None else c.alpha for c in config),
                'sp_groups': tuple(1 if c.groups is None else c.groups for c in config)}

    @staticmethod
    def format(config: Config) -> str:
        """``alpha (1/2, vanilla, 1/4, 1/8) G (2, -, 4, 8)``."""
        alphas = format_stage_values([c.alpha for c in config])
        groups = '(' + ', '.join('-' if c.groups is None else str(c.groups) for c in config) + ')'
        return f'alpha {alphas} G {groups}'

    def __iter__(self) -> Iterator[Config]:
        """Every configuration (the product of the stages' choices; mind ``size``)."""
        def rec(prefix: Config, i: int) -> Iterator[Config]:
            if i == self.num_stages:
                yield prefix
                return
            for choice in self.stages[i]:
                yield from rec(prefix + (choice,), i + 1)
        return rec((), 0)

    def sample(self, rng: random.Random) -> Config:
        """A uniformly random configuration (for tests and checks)."""
        return tuple(rng.choice(choices) for choices in self.stages)

    # -- costs ---------------------------------------------------------------------------------------------------

    def cost(self, config: Config) -> Count:
        """Exact MACs and parameters of ``config`` at ``input_size`` (a table look-up).

        Raises:
            ConfigError: If ``config`` has a choice the tables do not hold.
        """
        total = self._reference
        for i, choice in enumerate(config):
            if choice.is_vanilla:
                continue
            try:
                total += self._deltas[i][choice]
            except KeyError:
                raise ConfigError(f'no cost for {choice.label} in {self.param_name(i)}: not a choice of the space') \
                    from None
        return total

    def cost_direct(self, config: Config) -> Count:
        """The same count from a freshly built model: slower, the check on ``cost``."""
        extra = {} if self.num_classes is None else {'num_classes': self.num_classes}
        return analytic_count(_create(self.model, **self.model_kwargs(config), **extra), self.input_size)

    @cached_property
    def _extremes(self) -> dict[str, tuple[Config, Config]]:
        out = {}
        for metric in ('macs', 'params'):
            low: list[StageChoice] = []
            high: list[StageChoice] = []
            for i, choices in enumerate(self.stages):
                values = {c: 0 if c.is_vanilla else int(getattr(self._deltas[i][c], metric)) for c in choices}
                low.append(min(choices, key=values.__getitem__))
                high.append(max(choices, key=values.__getitem__))
            out[metric] = (tuple(low), tuple(high))
        return out

    def bounds(self, metric: str = 'macs') -> tuple[tuple[int, Config], tuple[int, Config]]:
        """Exact ``((min, argmin), (max, argmax))`` of ``metric`` (``macs`` or ``params``) over the space.

        Exact because stages are independent at a fixed input size: the extreme of a sum of
        independent terms is the sum of the per-stage extremes.
        """
        if metric not in ('macs', 'params'):
            raise ValueError(f'metric must be macs or params, got {metric!r}')
        low, high = self._extremes[metric]
        return (getattr(self.cost(low), metric), low), (getattr(self.cost(high), metric), high)


def _resolve_input_size(model: str, input_size: int | tuple[int, int, int] | None,
                        num_classes: int | None) -> tuple[int, int, int]:
    if input_size is None:
        cfg = timm.get_pretrained_cfg(model)
        size = tuple(cfg.input_size) if cfg is not None and cfg.input_size else (3, 224, 224)
        return (int(size[0]), int(size[1]), int(size[2]))
    if isinstance(input_size, int):
        if isinstance(input_size, bool) or input_size < 1:
            raise ConfigError(f'input size {input_size!r} is invalid: give a side length >= 1, e.g. 224')
        return (3, input_size, input_size)
    if len(input_size) != 3 or any(int(v) < 1 for v in input_size):
        raise ConfigError(f'input size {input_size!r} is invalid: give (C, H, W) or one side length')
    return (int(input_size[0]), int(input_size[1]), int(input_size[2]))


def _cost_tables(model: str, stages: Sequence[Sequence[StageChoice]], input_size: tuple[int, int, int],
                 num_classes: int | None) -> tuple[Count, list[dict[StageChoice, Count]]]:
    """The all-vanilla cost and, per stage, each choice's cost change (one ``meta`` model per stage and choice)."""
    extra = {} if num_classes is None else {'num_classes': num_classes}
    num_stages = len(stages)

    def count(alphas: Sequence[Any], groups: Sequence[int]) -> Count:
        return analytic_count(_create(model, sp_alpha=tuple(alphas), sp_groups=tuple(groups), **extra), input_size)

    reference = count([VANILLA] * num_stages, [1] * num_stages)
    deltas: list[dict[StageChoice, Count]] = [{} for _ in stages]
    for i, choices in enumerate(stages):
        for choice in choices:
            if choice.is_vanilla:
                continue
            alphas = [choice.alpha if j == i else VANILLA for j in range(num_stages)]
            groups = [choice.groups or 1 if j == i else 1 for j in range(num_stages)]
            single = count(alphas, groups)
            deltas[i][choice] = Count(single.macs - reference.macs, single.params - reference.params)
    return reference, deltas


def _share_within(space: SearchSpace, metric: str, budget: float) -> float:
    """Exact share of the space's configurations with ``metric <= budget`` (a walk over the per-stage tables)."""
    counts: dict[int, int] = {0: 1}  # partial cost -> number of partial configurations
    for i, choices in enumerate(space.stages):
        nxt: dict[int, int] = {}
        for partial, n in counts.items():
            for c in choices:
                value = partial + (0 if c.is_vanilla else getattr(space._deltas[i][c], metric))
                nxt[value] = nxt.get(value, 0) + n
        counts = nxt
    base = getattr(space._reference, metric)
    return sum(n for value, n in counts.items() if base + value <= budget) / space.size


def main(argv: list[str] | None = None) -> int:
    """``python -m spsearch.space --model sp_resnet34 --budget-gflops 2.0``: what a search space holds."""
    import argparse

    import timm_plugins  # noqa: F401  (registers the SP models)

    parser = argparse.ArgumentParser(description='Describe the per-stage alpha/G search space of an SP model: '
                                                 'choices, size and exact GMACs/params extremes.')
    parser.add_argument('--model', default='sp_resnet34')
    parser.add_argument('--alphas', nargs='+', default=['vanilla', '1', '1/2', '1/4', '1/8', '1/16'])
    parser.add_argument('--groups', nargs='+', type=int, default=list(GROUP_CHOICES))
    parser.add_argument('--eval-img-size', type=int, default=None)
    parser.add_argument('--budget-gflops', type=float, default=None, help='also give the share of the space within it')
    args = parser.parse_args(argv)
    space = SearchSpace.build(args.model, args.alphas, args.groups, args.eval_img_size)
    print(f'{space!r}; GMACs = 1e9 multiply-accumulates')
    print(space.describe())
    for metric, scale, unit in (('macs', 1e9, 'GMACs'), ('params', 1e6, 'M params')):
        (low, low_config), (high, high_config) = space.bounds(metric)
        print(f'{unit}: min {low / scale:.4f} {space.format(low_config)}; max {high / scale:.4f} '
              f'{space.format(high_config)}')
    vanilla = tuple(StageChoice(None) for _ in space.stages)
    for name, config in (('paper (alpha 1/2, G 2)', space.paper_config()), ('vanilla', vanilla)):
        cost = space.cost(config) if space.contains(config) else space.cost_direct(config)
        print(f'{name}: {cost.macs / 1e9:.4f} GMACs, {cost.params / 1e6:.3f}M params')
    if args.budget_gflops is not None:
        share = _share_within(space, 'macs', args.budget_gflops * 1e9)
        print(f'within {args.budget_gflops:g} GMACs: {share:.1%} of the {space.size:,} configurations')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
