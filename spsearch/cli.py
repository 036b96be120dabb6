"""Shared plumbing of the thin CLIs: one-line errors with exit code 2, ``k=v`` keyword parsing,
and timm-style ``-c config.yaml`` defaults that flags override."""
from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from .errors import MachineError, RunFailed, SPSearchError

__all__ = ['ArgumentParser', 'CliError', 'load_yaml_config', 'option_values', 'parse_kwargs', 'parse_with_config',
           'prog_name', 'run_cli']


class CliError(SPSearchError):
    """A command-line misuse: printed as one line ``error: ...`` and exit code 2, no traceback."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line (``error: ... (see --help)``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f'error: {message} (see {self.prog} --help)\n')


def prog_name(script: str, module: str) -> str:
    """How the running command was invoked, for usage lines: ``python -m <module>`` or the script's name."""
    return f'python -m {module}' if Path(sys.argv[0]).name == '__main__.py' else script


_PENDING_INTERRUPT: list[bool] = [False]


def _keep_interrupts(unraisable: Any) -> None:
    """``sys.unraisablehook``: a Ctrl-C that lands in a finalizer (``__del__``, a ``gc.collect`` callback, as
    Optuna's ``gc_after_trial`` runs them) would be printed as "Exception ignored in ..." and lost, the job going
    on; keep it for ``raise_pending_interrupt`` instead. Anything else goes to Python's own hook."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        _PENDING_INTERRUPT[0] = True
        return
    sys.__unraisablehook__(unraisable)


def raise_pending_interrupt() -> None:
    """Raise the ``KeyboardInterrupt`` that a finalizer swallowed since the last call (see ``run_cli``), if any.

    Raises:
        KeyboardInterrupt: If Ctrl-C landed where Python could not raise it.
    """
    if _PENDING_INTERRUPT[0]:
        _PENDING_INTERRUPT[0] = False
        raise KeyboardInterrupt


def run_cli(main: Callable[[], int | None]) -> int:
    """Run ``main``; any ``SPSearchError`` (CLI misuse, bad config or data) becomes one line and exit code 2, a
    failure of the machine (a full disk, a quota, a file-size limit: ``MachineError`` or such an ``OSError``) one
    line and exit code 1, Ctrl-C one line and exit code 130 (also one that lands in a finalizer: kept by an
    unraisable hook and raised where the job checks, ``raise_pending_interrupt``)."""
    from .io import DISK_ERRNOS, disk_failure
    sys.unraisablehook = _keep_interrupts
    try:
        return main() or 0
    except SPSearchError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except (MachineError, RunFailed) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    except OSError as e:
        failure = disk_failure(e, e.filename) if e.errno in DISK_ERRNOS else None
        if failure is None:
            raise
        print(f'error: {failure}', file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f'interrupted: {e}' if str(e) else 'interrupted', file=sys.stderr)
        return 130


def parse_kwargs(items: Sequence[str] | None, flag: str = '--model-kwargs') -> dict[str, Any]:
    """Parse ``['k=v', ...]`` into a dict; values are Python literals where they parse, else strings.

    ``sp_alpha=vanilla`` gives the string ``'vanilla'``, ``sp_alpha=(0.5,0.25,0.25)`` a tuple,
    ``sp_alpha=(0.5,vanilla,0.25)`` the string (the model parses it), as timm's ``--model-kwargs``.

    Raises:
        CliError: On an item without ``=`` or with an empty key.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition('=')
        if not sep or not key.strip():
            raise CliError(f'{flag} takes key=value pairs, got {item!r} (e.g. {flag} sp_alpha=0.5)')
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping of option names (dashes or underscores) to values.

    Raises:
        CliError: If the file is missing, not valid YAML, or not a mapping.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise CliError(f'config file {path} does not exist') from None
    except yaml.YAMLError as e:
        where = getattr(e, 'problem_mark', None)
        at = f' at line {where.line + 1}' if where is not None else ''
        raise CliError(f'config file {path} is not valid YAML{at}: {getattr(e, "problem", e)}') from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CliError(f'config file {path} must be a mapping of option: value, got {type(data).__name__}')
    return {str(k).replace('-', '_'): v for k, v in data.items()}


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None, *,
                      translate: Callable[[dict[str, Any], str], tuple[dict[str, Any], list[str]]] | None = None,
                      ) -> argparse.Namespace:
    """timm-style parsing: ``-c/--config FILE`` sets the parser's defaults, flags override them.

    The mapping read from the file is kept on the result as ``config_values`` (empty without
    ``-c``), so a caller can merge values that flags extend rather than replace (``--model-kwargs``).

    Args:
        parser: The command's parser.
        argv: The arguments (default ``sys.argv[1:]``).
        translate: ``translate(mapping, file) -> (mapping, ignored keys)`` applied to the file first (train.py:
            timm's ``args.yaml`` keys, ``spsearch.train.timm_args.from_timm``); the ignored keys are kept on the
            result as ``config_ignored``.

    Raises:
        CliError: On a config key that is not an option of ``parser`` (``-c``, ``--help`` and positional
            arguments such as ``search.py``'s mode are not options a file can set).
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('-c', '--config', default=None)
    known, _ = pre.parse_known_args(argv)
    config: dict[str, Any] = {}
    ignored: list[str] = []
    if known.config:
        config = load_yaml_config(known.config)
        if translate is not None:
            config, ignored = translate(config, known.config)
        # a flag's other long spellings are keys too (timm's args.yaml: smoothing, model_ema, torchcompile, ...)
        spelled = {o[2:].replace('-', '_'): a.dest for a in parser._actions for o in a.option_strings
                   if o.startswith('--') and not o.startswith('--no-')}
        config = {spelled.get(str(k).replace('-', '_'), k): v for k, v in config.items()}
        valid = {a.dest for a in parser._actions if a.option_strings and a.dest not in ('help', 'config')}
        unknown = sorted(set(config) - valid)
        if unknown:
            raise CliError(f'config file {known.config} has unknown key(s) {", ".join(unknown)}; '
                           f'see --help for the valid options')
        parser.set_defaults(**config)
    args = parser.parse_args(argv)
    args.config_values = config
    args.config_ignored = ignored
    return args


def option_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The flat option values of ``parse_with_config``'s result for config class ``cls``.

    ``dict`` options (``--model-kwargs``) are the YAML mapping extended by the ``K=V`` flags.
    """
    from .options import flat_fields
    values: dict[str, Any] = {}
    for f in flat_fields(cls):
        value = getattr(args, f.name)
        if f.type is dict or str(f.type).startswith('dict'):
            from_yaml = args.config_values.get(f.name)
            if from_yaml is not None and not isinstance(from_yaml, dict):
                raise CliError(f'{f.name} in the config file must be a mapping of keyword: value (e.g. {f.name}: '
                               f'{{sp_alpha: 0.5}}), got {type(from_yaml).__name__} {from_yaml!r}')
            value = value if isinstance(value, dict) else {
                **(from_yaml if isinstance(from_yaml, dict) else {}), **parse_kwargs(value, f.flag)}
        values[f.name] = value
    return values
