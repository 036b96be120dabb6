"""Exceptions for user errors. The CLIs print them as one line and exit with code 2."""
from __future__ import annotations

__all__ = ['ConfigError', 'DataError', 'Interrupted', 'SPSearchError']


class SPSearchError(Exception):
    """Base class of errors caused by the user's input (a config, a path, a value), not by a bug.

    The message names the problem and the fix, in one line.
    """


class ConfigError(SPSearchError, ValueError):
    """An invalid option, config key or combination of settings."""


class DataError(SPSearchError, ValueError):
    """A data set that is missing, empty, truncated or otherwise unreadable."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a long job, with one line on what was kept and how to continue.

    The CLIs print ``interrupted: <message>`` and exit with code 130.
    """
