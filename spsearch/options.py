"""Options as data: each option is one dataclass field, and its flag, help, check and YAML key follow from it.

A config class (``DataConfig``, ``TrainConfig``, ``SearchConfig``) declares each option once, with
``option(default, help=..., ...)``: the field's type annotation and these settings give

- the command-line flag (``--batch-size`` for ``batch_size``; booleans get ``--x/--no-x``, sequences
  ``nargs='+'``, ``dict`` fields ``K=V`` pairs) in a named argument group (``add_arguments``);
- the check run by ``validate`` (type, range, choices; ``None`` only where the type is optional),
  whose error names the flag, the value and the valid range in one line (``ConfigError``);
- the key in YAML files and ``to_flat``/``from_flat`` (the field name).

A config may hold another one (``TrainConfig.data: DataConfig``; ``SearchConfig.train: TrainConfig``)
with ``nested(...)``. Users still see one flat set of options: the nested fields' names are unique
across the tree (checked), and a nesting can leave out fields that the outer config sets itself
(the search sets each training's epochs and output folder, so ``search.py`` has no ``--epochs``).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Iterator
from dataclasses import MISSING, dataclass, field
from typing import Any

from .errors import ConfigError

__all__ = ['Option', 'add_arguments', 'flat_fields', 'from_flat', 'nested', 'option', 'to_flat', 'validate']


@dataclass(frozen=True)
class Option:
    """How one field is offered and checked; see ``option``."""

    help: str
    group: str = 'options'
    minimum: float | None = None
    maximum: float | None = None
    open_min: bool = False
    open_max: bool = False
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    nargs: str | None = None
    const: Any = None
    aliases: tuple[str, ...] = ()
    hint: str = ''


def option(default: Any = MISSING, *, default_factory: Any = MISSING, help: str, group: str = 'options',
           minimum: float | None = None, maximum: float | None = None, open_min: bool = False,
           open_max: bool = False, choices: tuple[str, ...] | None = None, metavar: str | None = None,
           nargs: str | None = None, const: Any = None, aliases: tuple[str, ...] = (), hint: str = '') -> Any:
    """A dataclass field that is an option.

    Args:
        default: Default value (or ``default_factory`` for mutable ones).
        help: One line for ``--help``, with the unit where there is one.
        group: Title of the ``--help`` group it is listed in.
        minimum: Smallest allowed value of a number (or of each entry of a sequence of numbers).
        maximum: Largest allowed value.
        open_min: ``minimum`` itself is not allowed (``> minimum``).
        open_max: ``maximum`` itself is not allowed.
        choices: The allowed strings.
        metavar: The value's name in ``--help``.
        nargs: argparse ``nargs`` where the type does not imply it (``'?'`` with ``const``).
        const: argparse ``const`` for ``nargs='?'``.
        aliases: Other flags for the same option (e.g. timm's spelling).
        hint: Added to the error message of an invalid value (``leave it out for no budget``).
    """
    meta = {'option': Option(help, group, minimum, maximum, open_min, open_max, choices, metavar, nargs, const,
                             tuple(aliases), hint)}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def nested(default_factory: Any, *, exclude: frozenset[str] = frozenset()) -> Any:
    """A field holding another config class, whose options join this one's flat set, minus ``exclude``."""
    return field(default_factory=default_factory, metadata={'nested': frozenset(exclude)})


@dataclass(frozen=True)
class FlatField:
    """One option of a config tree: its flat name, the path of fields to it, its type and ``Option``."""

    name: str
    path: tuple[str, ...]
    type: Any
    option: Option

    @property
    def flag(self) -> str:
        return '--' + self.name.replace('_', '-')


_FLAT_FIELDS: dict[type, tuple[FlatField, ...]] = {}


def flat_fields(cls: type) -> tuple[FlatField, ...]:
    """Every option of ``cls`` and of the configs it nests (minus excluded ones), with unique names.

    Raises:
        TypeError: If two options of the tree share a name, or a field is neither option nor nested.
    """
    if cls not in _FLAT_FIELDS:
        _FLAT_FIELDS[cls] = _collect(cls)
    return _FLAT_FIELDS[cls]


def _collect(cls: type) -> tuple[FlatField, ...]:
    out: list[FlatField] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if 'nested' in f.metadata:
            out += [dataclasses.replace(inner, path=(f.name, *inner.path)) for inner in flat_fields(hints[f.name])
                    if inner.name not in f.metadata['nested']]
        elif 'option' in f.metadata:
            out.append(FlatField(f.name, (f.name,), hints[f.name], f.metadata['option']))
        else:
            raise TypeError(f'{cls.__name__}.{f.name} is neither option() nor nested()')
    names = [o.name for o in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TypeError(f'{cls.__name__}: options {duplicates} appear twice in its tree of configs')
    return tuple(out)


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


def to_flat(obj: Any) -> dict[str, Any]:
    """The options of ``obj`` as one flat dict (YAML-safe: tuples as lists, nested dicts as dicts)."""
    return {f.name: _yaml_safe(_get(obj, f.path)) for f in flat_fields(type(obj))}


def _yaml_safe(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_yaml_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _yaml_safe(v) for k, v in value.items()}
    return value


def from_flat(cls: type, values: dict[str, Any], source: str = 'options', base: Any = None) -> Any:
    """Build ``cls`` from flat option values (dashes or underscores), on top of ``base`` (default: ``cls()``).

    Nested configs are rebuilt (and so validated) with the values that belong to them; options a
    nesting excludes keep ``base``'s values.

    Raises:
        ConfigError: On an unknown key (naming it), or a value its check rejects.
    """
    values = {str(k).replace('-', '_'): v for k, v in values.items()}
    known = {f.name: f for f in flat_fields(cls)}
    for f in known.values():  # timm's spellings (an option's long aliases) are keys too: timm args.yaml files
        for alias in (a[2:].replace('-', '_') for a in f.option.aliases if a.startswith('--')):
            if alias in values:
                if f.name in values and values[f.name] != values[alias]:
                    raise ConfigError(f'{source} gives both {f.name} and its alias {alias}; keep one')
                values[f.name] = values.pop(alias)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f'{source} has unknown option(s) {", ".join(unknown)}; see --help for the valid ones')
    base = cls() if base is None else base
    return _rebuild(cls, base, {known[k].path: v for k, v in values.items()}, source)


def _rebuild(cls: type, base: Any, changes: dict[tuple[str, ...], Any], source: str) -> Any:
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        inner = {path[1:]: v for path, v in changes.items() if path[0] == f.name and len(path) > 1}
        if inner:
            kwargs[f.name] = _rebuild(typing.get_type_hints(cls)[f.name], getattr(base, f.name), inner, source)
        elif (f.name,) in changes:
            kwargs[f.name] = changes[(f.name,)]
    try:
        return dataclasses.replace(base, **kwargs)
    except TypeError as e:
        raise ConfigError(f'{source}: {e}') from None


def _optional(tp: Any) -> tuple[Any, bool]:
    """``(T, True)`` for ``T | None``, else ``(tp, False)``."""
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return tp, False


def _describe(o: Option, what: str) -> str:
    if o.minimum is not None and o.maximum is not None:
        return f'{what} in {"(" if o.open_min else "["}{o.minimum:g}, {o.maximum:g}{")" if o.open_max else "]"}'
    if o.minimum is not None:
        return f'{what} {">" if o.open_min else ">="} {o.minimum:g}'
    if o.maximum is not None:
        return f'{what} {"<" if o.open_max else "<="} {o.maximum:g}'
    return what


def _check_number(name: str, value: Any, kind: type, o: Option) -> Any:
    what = 'an integer' if kind is int else 'a number'
    bad = isinstance(value, bool) or not isinstance(value, numbers.Real) or (
        kind is int and not isinstance(value, numbers.Integral)) or not math.isfinite(value)
    if not bad and o.minimum is not None:
        bad = value < o.minimum or (o.open_min and value == o.minimum)
    if not bad and o.maximum is not None:
        bad = value > o.maximum or (o.open_max and value == o.maximum)
    if bad:
        raise ConfigError(f'{name} {value!r} is invalid: it must be {_describe(o, what)}'
                          + (f' ({o.hint})' if o.hint else ''))
    return int(value) if kind is int else float(value)


def _check(name: str, value: Any, tp: Any, o: Option) -> Any:
    """The checked (and normalised: ints to floats, lists to tuples) value of one option."""
    tp, optional = _optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f'{name} must be set (it has no "none")')
    origin = typing.get_origin(tp)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f'{name} {value!r} is invalid: it must be true or false')
        return value
    if tp in (int, float):
        return _check_number(name, value, tp, o)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f'{name} {value!r} is invalid: it must be a string')
        if o.choices is not None and value not in o.choices:
            raise ConfigError(f'{name} {value!r} is not supported; choose one of {", ".join(o.choices)}')
        return value
    if origin in (list, tuple):
        item = typing.get_args(tp)[0]
        if isinstance(value, (str, numbers.Number)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'{name} {value!r} is invalid: give a list of values')
        checked = [_check(name, v, item, o) if item is not str else str(v) for v in value]
        return tuple(checked) if origin is tuple else checked
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f'{name} {value!r} is invalid: give a mapping of keyword: value')
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        allowed = typing.get_args(tp)
        if not isinstance(value, allowed):
            raise ConfigError(f'{name} {value!r} is invalid: it must be a {" or a ".join(a.__name__ for a in allowed)}')
        return value
    raise TypeError(f'option {name}: unsupported type {tp!r}')


def validate(obj: Any) -> None:
    """Check and normalise every option field of ``obj`` (not nested ones: they validate themselves).

    Raises:
        ConfigError: Naming the flag, the value and the valid range or choices.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        o = f.metadata.get('option')
        if o is None:
            continue
        value = _check('--' + f.name.replace('_', '-'), getattr(obj, f.name), hints[f.name], o)
        object.__setattr__(obj, f.name, value)


def _or_none(kind: type) -> Any:
    """An argparse ``type`` that reads ``none``/``null`` as None (an optional option's "unset") and else ``kind``."""
    def parse(text: str) -> Any:
        return None if text.strip().lower() in ('none', 'null') else kind(text)
    parse.__name__ = kind.__name__  # argparse names the type in its error message
    return parse


def _iter_groups(fields: tuple[FlatField, ...]) -> Iterator[tuple[str, list[FlatField]]]:
    groups: dict[str, list[FlatField]] = {}
    for f in fields:
        groups.setdefault(f.option.group, []).append(f)
    yield from groups.items()


def add_arguments(parser: argparse.ArgumentParser, cls: type, defaults: Any = None) -> None:
    """Add every option of ``cls`` to ``parser``, in its groups, with ``defaults``' values (default ``cls()``).

    ``dict`` options take ``K=V`` items (parsed by the caller, e.g. ``spsearch.cli.parse_kwargs``).
    """
    defaults = cls() if defaults is None else defaults
    for title, fields in _iter_groups(flat_fields(cls)):
        group = parser.add_argument_group(title)
        for f in fields:
            o = f.option
            tp, optional = _optional(f.type)
            default = _get(defaults, f.path)
            shown = default if not isinstance(default, (tuple, list)) else ' '.join(map(str, default))
            hidden = default is None or isinstance(default, (bool, dict)) or default == ''
            help_text = o.help if hidden else f'{o.help} (default: {shown})'
            kwargs: dict[str, Any] = {'default': default, 'help': help_text, 'dest': f.name}
            origin = typing.get_origin(tp)
            if tp is bool:
                kwargs['action'] = argparse.BooleanOptionalAction
            elif origin is dict or tp is dict:
                kwargs.update(nargs='*', metavar=o.metavar or 'K=V', default=[])
            elif origin in (list, tuple):
                item = typing.get_args(tp)[0]
                kwargs.update(nargs=o.nargs or '+', type=item if item in (int, float) else str)
                kwargs['default'] = list(default) if default is not None else None
            elif tp in (int, float):
                kwargs['type'] = _or_none(tp) if optional else tp
            elif tp is str and optional:
                kwargs['type'] = _or_none(str)
            elif o.nargs is not None:
                kwargs.update(nargs=o.nargs, const=o.const)
            if o.choices is not None:
                kwargs['choices'] = o.choices
            if o.metavar is not None and 'metavar' not in kwargs:
                kwargs['metavar'] = o.metavar
            group.add_argument(f.flag, *o.aliases, **kwargs)
