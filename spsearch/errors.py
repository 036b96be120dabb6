"""Exceptions the CLIs print as one line: user errors (exit code 2), failures of the machine such as a full disk
(exit code 1) and Ctrl-C (exit code 130)."""
from __future__ import annotations

__all__ = ['ConfigError', 'DataError', 'Interrupted', 'MachineError', 'SPSearchError']


class SPSearchError(Exception):
    """Base class of errors caused by the user's input (a config, a path, a value), not by a bug.

    The message names the problem and the fix, in one line.
    """


class ConfigError(SPSearchError, ValueError):
    """An invalid option, config key or combination of settings."""


class DataError(SPSearchError, ValueError):
    """A data set that is missing, empty, truncated or otherwise unreadable."""


class MachineError(Exception):
    """A failure of the machine rather than of the input: a full disk, a quota, a file-size limit, a file system
    that became read-only.

    The CLIs print ``error: <message>`` (what could not be written, and what to do) and exit with code 1.
    """


class RunFailed(Exception):
    """A job that ran and failed (e.g. a retrain whose training exited with an error), after its reports were
    written.

    The CLIs print ``error: <message>`` (what failed, where its output is, what to do) and exit with code 1.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a long job, with one line on what was kept and how to continue.

    The CLIs print ``interrupted: <message>`` and exit with code 130.
    """
