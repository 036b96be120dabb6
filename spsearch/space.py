"""The search space: per-stage SPConv split ratio and groups of one SP model, as data.

pycls-style: the space is a table, one row of allowed choices per stage, fixed up front from the
model's stage description (``spsearch.models.stage_specs``: per stage, its SP sites with their
channels). A stage's choice is either ``vanilla`` (a plain 3x3 conv; its group count is
meaningless, so it appears once) or a pair ``(alpha, G)``. A pair is kept only if it splits
*every* SP site of the stage exactly: ``alpha * C_in`` is a whole multiple of ``G`` for each input
width, and ``G`` divides each output width. ``sp_split`` would round an inexact pair (e.g. alpha
1/16 with G 8 on 64 channels) to another ratio, which would make two names for one network.

Each stage is one Optuna categorical parameter ``stage<i>`` whose values are labels such as
``vanilla`` or ``alpha=1/2,G=2``. One flat categorical per stage keeps every architecture
exactly one parameter set (no duplicates, no conditional parameters whose value sets change
with alpha, which Optuna's distributions cannot express) and reads well in optuna-dashboard.

Costs are exact and cheap: at a fixed input size a stage's MACs and parameters depend only on its
own choice, so ``cost(arch) = reference + sum_i delta_i(choice_i)``. The deltas are the analytic
counts of each stage's SP sites (``spsearch.cost.analytic_site_counts``) in one ``meta``-device
model per distinct choice against the all-vanilla model, which makes costing an architecture (and
the space's exact minimum and maximum) a table look-up.

Example:
    >>> space = SearchSpace.build('sp_resnet34')
    >>> arch = space.paper_arch()
    >>> space.model_kwargs(arch)
    {'sp_alpha': (0.5, 0.5, 0.5, 0.5), 'sp_groups': (2, 2, 2, 2)}
    >>> round(space.cost(arch).macs / 1e9, 2)
    1.46
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import timm
import torch

from .cost import Count, analytic_count, analytic_site_counts
from .errors import ConfigError
from .models import VANILLA, StageSpec, format_alpha, format_stage_values, parse_alpha, parse_groups, stage_specs
from .ops import sp_split

if TYPE_CHECKING:
    import optuna

__all__ = [
    'ALPHA_CHOICES', 'GROUP_CHOICES', 'PAPER_ALPHA', 'PAPER_GROUPS', 'Architecture', 'SearchSpace', 'StageChoice',
]

ALPHA_CHOICES: tuple[float | None, ...] = (None, 1.0, 1 / 2, 1 / 4, 1 / 8, 1 / 16)
"""Default split ratios per stage; ``None`` is a vanilla 3x3 conv."""
GROUP_CHOICES: tuple[int, ...] = (1, 2, 4, 8)
"""Default group counts of the group-wise conv."""
PAPER_ALPHA, PAPER_GROUPS = 1 / 2, 2
"""The paper's setting, used in every stage: the baseline of every study."""


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
        return f'alpha={format_alpha(self.alpha)},G={self.groups}'

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
            return cls(parse_alpha(alpha), parse_groups(groups))
        except ValueError:
            raise ConfigError(f'{label!r} is not a stage choice: expected "vanilla" or e.g. "alpha=1/2,G=2"') from None


Architecture = tuple[StageChoice, ...]
"""One architecture of the space: a choice per stage."""


def _create(model: str, **kwargs: Any) -> torch.nn.Module:
    with torch.device('meta'):
        return timm.create_model(model, **kwargs)


def _stages_of(model: str, num_classes: int | None) -> tuple[StageSpec, ...]:
    """The stage description of a registered SP model (any family, in this package or not), or a one-line error."""
    if not timm.is_model(model):
        raise ConfigError(f'unknown model {model!r}: choose an SP model (spsearch.list_sp_models(), e.g. '
                          f'sp_resnet34)')
    try:
        return stage_specs(model, **({} if num_classes is None else {'num_classes': num_classes}))
    except (ValueError, TypeError):
        raise ConfigError(f'model {model!r} has no per-stage SPConv settings (sp_alpha/sp_groups, sp_stages()): '
                          f'choose an SP model such as sp_resnet34 (spsearch.list_sp_models())') from None


def _exact_split(stage: StageSpec, alpha: float, groups: int) -> bool:
    for site in stage.sites:
        try:
            rep, _ = sp_split(site.in_channels, alpha, groups)
        except ValueError:
            return False
        if not math.isclose(rep, alpha * site.in_channels) or site.out_channels % groups:
            return False
    return True


class SearchSpace:
    """Per-stage choices of alpha and G for one SP model, with exact costs at one input size.

    Build it with ``SearchSpace.build``; it is immutable afterwards.

    Args:
        model: Registered SP model name.
        stages: The model's stage description.
        choices: Allowed choices per stage.
        input_size: ``(C, H, W)`` at which costs are counted.
        num_classes: Classifier width used for costs (None: the model's default).
        reference: Cost of the all-vanilla model.
        deltas: Per stage, the cost change of each choice against vanilla.
    """

    def __init__(
            self,
            model: str,
            stages: Sequence[StageSpec],
            choices: Sequence[Sequence[StageChoice]],
            input_size: tuple[int, int, int],
            num_classes: int | None,
            reference: Count,
            deltas: Sequence[dict[StageChoice, Count]],
    ) -> None:
        self.model = model
        self.stages: tuple[StageSpec, ...] = tuple(stages)
        self.choices: tuple[tuple[StageChoice, ...], ...] = tuple(tuple(c) for c in choices)
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
            model: A registered SP model name (``spsearch.list_sp_models()``).
            alphas: Split ratios; ``None``/``"vanilla"`` for a plain conv; strings such as ``"1/2"`` work.
            groups: Group counts >= 1.
            input_size: Side length or ``(C, H, W)`` at which costs are counted (default: the model's
                ``pretrained_cfg`` input size, 3x224x224 for the ImageNet-layout models).
            num_classes: Classifier width for costs (default: the model's, 1000 for ImageNet layouts).

        Raises:
            ConfigError: On an unknown or non-SP model, invalid choices, or a stage left without any
                valid choice (an empty space).
        """
        try:
            parsed = {parse_alpha(a, 'alpha choice') for a in alphas}
        except ValueError as e:
            raise ConfigError(str(e)) from None
        alpha_values = sorted(parsed, key=lambda a: (a is not None, -(a or 0)))
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
        stages = _stages_of(model, num_classes)
        size = _resolve_input_size(model, input_size)
        choices: list[list[StageChoice]] = []
        for index, stage in enumerate(stages):
            allowed = [StageChoice(None)] if None in alpha_values else []
            allowed += [StageChoice(a, g) for a in alpha_values if a is not None for g in sorted(group_values)
                        if _exact_split(stage, a, g)]
            if not allowed:
                raise ConfigError(
                    f'the search space is empty: stage {index + 1} of {model} (input widths '
                    f'{sorted({s.in_channels for s in stage.sites})}) has no exact split among alphas '
                    f'{", ".join(format_alpha(a) for a in alpha_values)} and groups '
                    f'{", ".join(map(str, group_values))}; add vanilla or smaller groups')
            choices.append(allowed)
        reference, deltas = _cost_tables(model, stages, choices, size, num_classes)
        return cls(model, stages, choices, size, num_classes, reference, deltas)

    # -- the space as data ---------------------------------------------------------------------------------------

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def size(self) -> int:
        """Number of distinct architectures."""
        return math.prod(len(c) for c in self.choices)

    @staticmethod
    def param_name(stage: int) -> str:
        """Optuna parameter of stage ``stage`` (0-based): ``stage1``, ``stage2``, ..."""
        return f'stage{stage + 1}'

    def describe(self) -> str:
        """One line per stage (its modules and its choices), for logs and reports."""
        return '\n'.join(f'{self.param_name(i)} ({stage.name}, {len(stage.sites)} SP sites): '
                         f'{", ".join(c.label for c in choices)}'
                         for i, (stage, choices) in enumerate(zip(self.stages, self.choices, strict=True)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe identity of the space (stored with a study to check that a resume searches the same space)."""
        return {'model': self.model, 'input_size': list(self.input_size), 'num_classes': self.num_classes,
                'stages': [[c.label for c in choices] for choices in self.choices]}

    def __repr__(self) -> str:
        return (f'SearchSpace({self.model}, {self.num_stages} stages, {self.size} configurations, '
                f'costs at {"x".join(map(str, self.input_size))})')

    # -- architectures -------------------------------------------------------------------------------------------

    def suggest(self, trial: optuna.trial.BaseTrial) -> Architecture:
        """Sample (or read, for an enqueued or fixed trial) one architecture through Optuna."""
        labels = [trial.suggest_categorical(self.param_name(i), [c.label for c in choices])
                  for i, choices in enumerate(self.choices)]
        return tuple(StageChoice.from_label(str(label)) for label in labels)

    def optuna_params(self, arch: Architecture) -> dict[str, str]:
        """The Optuna parameters of ``arch`` (what ``study.enqueue_trial`` takes)."""
        self.check(arch)
        return {self.param_name(i): c.label for i, c in enumerate(arch)}

    def from_optuna_params(self, params: dict[str, Any]) -> Architecture:
        """The architecture of an Optuna parameter dict.

        Raises:
            ConfigError: If a stage is missing or its value is not a choice of the space.
        """
        try:
            arch = tuple(StageChoice.from_label(str(params[self.param_name(i)])) for i in range(self.num_stages))
        except KeyError as e:
            raise ConfigError(f'parameters {params} miss {e.args[0]}: not a configuration of this space') from None
        self.check(arch)
        return arch

    def check(self, arch: Architecture) -> None:
        """Raise ``ConfigError`` unless ``arch`` belongs to the space."""
        if len(arch) != self.num_stages:
            raise ConfigError(f'a configuration of {self.model} has {self.num_stages} stages, got {len(arch)}')
        for i, (choice, allowed) in enumerate(zip(arch, self.choices, strict=True)):
            if choice not in allowed:
                raise ConfigError(f'{choice.label} is not a choice of {self.param_name(i)} '
                                  f'(allowed: {", ".join(c.label for c in allowed)})')

    def contains(self, arch: Architecture) -> bool:
        try:
            self.check(arch)
        except ConfigError:
            return False
        return True

    def paper_arch(self) -> Architecture:
        """The paper's setting, alpha 1/2 and G 2 in every stage (it may lie outside a restricted space)."""
        return tuple(StageChoice(PAPER_ALPHA, PAPER_GROUPS) for _ in self.stages)

    def vanilla_arch(self) -> Architecture:
        """Every stage a plain conv: the model the SP architectures are compared with."""
        return tuple(StageChoice(None) for _ in self.stages)

    def model_kwargs(self, arch: Architecture) -> dict[str, Any]:
        """``timm.create_model`` keyword arguments: per-stage ``sp_alpha`` (``"vanilla"``) and ``sp_groups``.

        A vanilla stage gets groups 1, which its plain conv ignores.
        """
        return {'sp_alpha': tuple(VANILLA if c.alpha is None else c.alpha for c in arch),
                'sp_groups': tuple(1 if c.groups is None else c.groups for c in arch)}

    @staticmethod
    def format(arch: Architecture) -> str:
        """``alpha (1/2, vanilla, 1/4, 1/8) G (2, -, 4, 8)``."""
        alphas = format_stage_values([c.alpha for c in arch])
        groups = '(' + ', '.join('-' if c.groups is None else str(c.groups) for c in arch) + ')'
        return f'alpha {alphas} G {groups}'

    def __iter__(self) -> Iterator[Architecture]:
        """Every architecture (the product of the stages' choices; mind ``size``)."""
        def rec(prefix: Architecture, i: int) -> Iterator[Architecture]:
            if i == self.num_stages:
                yield prefix
                return
            for choice in self.choices[i]:
                yield from rec(prefix + (choice,), i + 1)
        return rec((), 0)

    def sample(self, rng: random.Random) -> Architecture:
        """A uniformly random architecture (for tests and checks)."""
        return tuple(rng.choice(choices) for choices in self.choices)

    # -- costs ---------------------------------------------------------------------------------------------------

    def cost(self, arch: Architecture) -> Count:
        """Exact MACs and parameters of ``arch`` at ``input_size`` (a table look-up).

        Raises:
            ConfigError: If ``arch`` has a choice the tables do not hold.
        """
        total = self._reference
        for i, choice in enumerate(arch):
            if choice.is_vanilla:
                continue
            try:
                total += self._deltas[i][choice]
            except KeyError:
                raise ConfigError(f'no cost for {choice.label} in {self.param_name(i)}: not a choice of the space') \
                    from None
        return total

    def cost_direct(self, arch: Architecture) -> Count:
        """The same count from a freshly built model: slower, the check on ``cost``."""
        extra = {} if self.num_classes is None else {'num_classes': self.num_classes}
        return analytic_count(_create(self.model, **self.model_kwargs(arch), **extra), self.input_size)

    def stage_map_sizes(self, img_size: int) -> list[tuple[int, int]]:
        """``(H, W)`` of each stage's maps (its last SP site's output) for ``img_size`` square inputs.

        One forward pass on the ``meta`` device (shapes only). At small proxy resolutions the deep stages of
        an ImageNet-layout model see maps of 2x2 or 1x1, where a 3x3 conv acts almost as a 1x1: the proxy
        then measures something else than the target resolution does.
        """
        model = _create(self.model, **self.model_kwargs(self.vanilla_arch()),
                        **({} if self.num_classes is None else {'num_classes': self.num_classes})).eval()
        sizes: dict[int, tuple[int, int]] = {}
        handles = [model.get_submodule(stage.sites[-1].module).register_forward_hook(
            lambda _m, _i, out, i=i: sizes.__setitem__(i, (int(out.shape[-2]), int(out.shape[-1]))))
            for i, stage in enumerate(self.stages)]
        try:
            with torch.no_grad():
                model(torch.empty(1, self.input_size[0], img_size, img_size, device='meta'))
        finally:
            for handle in handles:
                handle.remove()
        return [sizes[i] for i in range(self.num_stages)]

    def stage_value(self, stage: int, choice: StageChoice, metric: str) -> int:
        """Exact change of ``metric`` (``macs`` or ``params``) when stage ``stage`` takes ``choice`` (vanilla: 0)."""
        return 0 if choice.is_vanilla else int(getattr(self._deltas[stage][choice], metric))

    @cached_property
    def _extremes(self) -> dict[str, tuple[Architecture, Architecture]]:
        out = {}
        for metric in ('macs', 'params'):
            low: list[StageChoice] = []
            high: list[StageChoice] = []
            for i, choices in enumerate(self.choices):
                values = {c: self.stage_value(i, c, metric) for c in choices}
                low.append(min(choices, key=values.__getitem__))
                high.append(max(choices, key=values.__getitem__))
            out[metric] = (tuple(low), tuple(high))
        return out

    def bounds(self, metric: str = 'macs') -> tuple[tuple[int, Architecture], tuple[int, Architecture]]:
        """Exact ``((min, argmin), (max, argmax))`` of ``metric`` (``macs`` or ``params``) over the space.

        Exact because stages are independent at a fixed input size: the extreme of a sum of
        independent terms is the sum of the per-stage extremes.
        """
        if metric not in ('macs', 'params'):
            raise ValueError(f'metric must be macs or params, got {metric!r}')
        low, high = self._extremes[metric]
        return (getattr(self.cost(low), metric), low), (getattr(self.cost(high), metric), high)

    def share_within(self, metric: str, budget: float) -> float:
        """Exact share of the space's architectures with ``metric <= budget`` (a walk over the per-stage tables)."""
        counts: dict[int, int] = {0: 1}  # partial cost -> number of partial architectures
        for i, choices in enumerate(self.choices):
            nxt: dict[int, int] = {}
            for partial, n in counts.items():
                for c in choices:
                    value = partial + self.stage_value(i, c, metric)
                    nxt[value] = nxt.get(value, 0) + n
            counts = nxt
        base = getattr(self._reference, metric)
        return sum(n for value, n in counts.items() if base + value <= budget) / self.size


def _resolve_input_size(model: str, input_size: int | tuple[int, int, int] | None) -> tuple[int, int, int]:
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


def _cost_tables(model: str, stages: Sequence[StageSpec], choices: Sequence[Sequence[StageChoice]],
                 input_size: tuple[int, int, int], num_classes: int | None
                 ) -> tuple[Count, list[dict[StageChoice, Count]]]:
    """The all-vanilla cost and, per stage, each choice's cost change, from the stages' SP sites.

    Only a stage's SP sites differ between its choices, so a choice's change is the analytic count of
    the stage's sites with that choice minus their count as plain convs. One ``meta`` model per distinct
    choice (that choice in every stage that allows it) gives the site counts of all its stages at once.
    """
    extra = {} if num_classes is None else {'num_classes': num_classes}
    sites = [site.module for stage in stages for site in stage.sites]

    def site_counts(arch: Sequence[StageChoice]) -> tuple[Count, dict[str, Count]]:
        kwargs = {'sp_alpha': tuple(VANILLA if c.alpha is None else c.alpha for c in arch),
                  'sp_groups': tuple(c.groups or 1 for c in arch)}
        return analytic_site_counts(_create(model, **kwargs, **extra), input_size, sites)

    reference, vanilla = site_counts([StageChoice(None)] * len(stages))
    deltas: list[dict[StageChoice, Count]] = [{} for _ in stages]
    for choice in sorted({c for allowed in choices for c in allowed if not c.is_vanilla}):
        arch = [choice if choice in allowed else StageChoice(None) for allowed in choices]
        _, counts = site_counts(arch)
        for i, (stage, allowed) in enumerate(zip(stages, choices, strict=True)):
            if choice in allowed:
                change = Count()
                for site in stage.sites:
                    sp, plain = counts[site.module], vanilla[site.module]
                    change += Count(sp.macs - plain.macs, sp.params - plain.params)
                deltas[i][choice] = change
    return reference, deltas


def main(argv: list[str] | None = None) -> int:
    """``python -m spsearch.space --model sp_resnet34 --budget-gflops 2.0``: what a search space holds."""
    from .cli import ArgumentParser

    parser = ArgumentParser(prog='python -m spsearch.space',
                            description='Describe the per-stage alpha/G search space of an SP model: choices, size '
                                        'and exact GMACs/params extremes.')
    parser.add_argument('--model', default='sp_resnet34')
    parser.add_argument('--alphas', nargs='+', default=[format_alpha(a) for a in ALPHA_CHOICES])
    parser.add_argument('--groups', nargs='+', type=int, default=list(GROUP_CHOICES))
    parser.add_argument('--eval-img-size', type=int, default=None)
    parser.add_argument('--budget-gflops', type=float, default=None, help='also give the share of the space within it')
    args = parser.parse_args(argv)
    space = SearchSpace.build(args.model, args.alphas, args.groups, args.eval_img_size)
    print(f'{space!r}; GMACs = 1e9 multiply-accumulates')
    print(space.describe())
    for metric, scale, unit in (('macs', 1e9, 'GMACs'), ('params', 1e6, 'M params')):
        (low, low_arch), (high, high_arch) = space.bounds(metric)
        print(f'{unit}: min {low / scale:.4f} {space.format(low_arch)}; max {high / scale:.4f} '
              f'{space.format(high_arch)}')
    for name, arch in (('paper (alpha 1/2, G 2)', space.paper_arch()), ('vanilla', space.vanilla_arch())):
        cost = space.cost(arch) if space.contains(arch) else space.cost_direct(arch)
        print(f'{name}: {cost.macs / 1e9:.4f} GMACs, {cost.params / 1e6:.3f}M params')
    if args.budget_gflops is not None:
        share = space.share_within('macs', args.budget_gflops * 1e9)
        print(f'within {args.budget_gflops:g} GMACs: {share:.1%} of the {space.size:,} configurations')
    return 0


if __name__ == '__main__':
    from .cli import run_cli
    raise SystemExit(run_cli(main))
