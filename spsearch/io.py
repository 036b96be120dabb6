"""Atomic file writes (a temporary file in the same folder, fsync, then rename) and run-folder locks.

A reader (or a resumed run) sees either the old file or the complete new one, never half of it.
A folder a run writes in is owned by one process at a time (``lock_folder``: an OS lock on its
``.lock`` file, released by the kernel when the process ends, however it ends).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

_UMASK = os.umask(0o022)
os.umask(_UMASK)

__all__ = ['LOCK_FILE', 'FolderLock', 'atomic_write', 'atomic_write_bytes', 'atomic_write_json', 'atomic_write_text',
           'atomic_write_yaml', 'check_folder_free', 'check_output_folder', 'disk_failure', 'lock_folder']

LOCK_FILE = '.lock'
"""The file in a run or search folder whose OS lock says which process owns the folder (never deleted: removing a
lock file lets a third process lock a new file while the second still holds the old one)."""

DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
"""Write failures of the machine, not of the program: full disk, quota, file-size limit, read-only file system."""
_PROBE_BYTES = 1 << 20


def check_output_folder(path: str | os.PathLike[str], flag: str = '--output') -> Path:
    """Check, before anything is written, that ``path`` is or can become a folder this process writes in.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ConfigError: If ``path`` is a file, lies under a file, or its nearest existing folder is not writable
            (one line naming the path and the fix).
    """
    from .errors import ConfigError
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f'{flag} {path} is a file, not a folder; give a folder (it is created if missing)')
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f'{flag} {path} lies under the file {parent}; give a folder path')
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f'{flag} {path}: {parent} is not writable by this user; give a folder you can write in')
    return path


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then move the result to ``path`` atomically.

    Args:
        path: Destination; its folder is created if missing.
        write: Writes the complete content to the temporary path it is given.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
        os.close(fd)
    except OSError as e:
        failure = disk_failure(e, path)
        if failure is None:
            raise
        raise failure from e
    try:
        write(tmp)
        # mkstemp makes it 0600 (and some writers, safetensors' save_file, recreate it so): the file gets the
        # permissions open() would give
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.unlink(tmp)
        failure = disk_failure(e, path, probe_bytes=written) if isinstance(e, Exception) else None
        if failure is not None:
            raise failure from e
        raise
    return path


def disk_failure(error: BaseException, path: str | os.PathLike[str] | None, probe_bytes: int | None = None
                 ) -> Exception | None:
    """A ``MachineError`` (one line, exit code 1) if writing ``path`` failed because of the machine, else None.

    An ``OSError`` says so by its errno (``DISK_ERRNOS``). Other writers hide it (``torch.save`` raises a
    ``RuntimeError`` with no errno): when ``probe_bytes`` is given, a probe file of at least that many bytes
    (and 1 MiB) is written next to ``path`` and removed, and its ``OSError`` decides.

    Args:
        error: What the write raised.
        path: The file that was being written (``None``: unknown, no probe).
        probe_bytes: How far the failed write got, in bytes (``None``: do not probe).
    """
    from .errors import MachineError
    cause = error if isinstance(error, OSError) and error.errno in DISK_ERRNOS else None
    folder = Path(path).parent if path is not None else None
    if cause is None and folder is not None and probe_bytes is not None and not isinstance(error, OSError):
        cause = _probe(folder, max(probe_bytes + 1, _PROBE_BYTES))
    if cause is None:
        return None
    where = f'{path}: ' if path is not None else ''
    return MachineError(f'cannot write {where}{os.strerror(cause.errno or errno.EIO)}; free space '
                        f'{f"in {folder} " if folder is not None else ""}(or write elsewhere), then run the command '
                        f'again (train.py and search.py continue with --resume)')


def _probe(folder: Path, size: int) -> OSError | None:
    try:
        fd, probe = tempfile.mkstemp(prefix='.probe.', dir=folder)
    except OSError as e:
        return e if e.errno in DISK_ERRNOS else None
    try:
        block = bytes(min(size, 1 << 20))
        left = size
        while left > 0:
            left -= os.write(fd, block[:left])
        os.fsync(fd)
    except OSError as e:
        return e if e.errno in DISK_ERRNOS else None
    finally:
        os.close(fd)
        os.unlink(probe)
    return None


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    def write(tmp: str) -> None:
        Path(tmp).write_bytes(data)
    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode('utf-8'))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + '\n')


def atomic_write_yaml(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as block-style YAML to ``path`` atomically."""
    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, default_flow_style=None))


_HELD: dict[tuple[int, str], list[int]] = {}
"""The folders this process holds, by (pid, real path): [file descriptor, holders]. The pid keeps a forked child
from taking its parent's holds for its own."""


class FolderLock:
    """This process' hold on a folder (``lock_folder``); ``release`` (or leaving the ``with`` block) gives it up."""

    def __init__(self, path: Path, key: tuple[int, str], created: tuple[bool, bool] = (False, False)) -> None:
        self.path = path
        self._key: tuple[int, str] | None = key
        self._created = created  # (the folder, its lock file) made by this hold

    def release(self, discard: bool = False) -> None:
        """Give the hold up (once); the OS lock goes when this process holds the folder no more.

        Args:
            discard: Also remove what taking the hold created, the lock file and the then empty folder (a run
                whose set-up failed on bad input leaves nothing behind). The file is removed while still locked,
                so a process that finds it afterwards creates and locks a new one.
        """
        if self._key is None:
            return
        held = _HELD[self._key]
        held[1] -= 1
        if held[1] == 0:
            del _HELD[self._key]
            if discard and self._created[1]:
                with contextlib.suppress(OSError):
                    (self.path / LOCK_FILE).unlink()
                if self._created[0]:
                    with contextlib.suppress(OSError):
                        self.path.rmdir()  # only if empty
            os.close(held[0])  # closing the descriptor drops the flock
        self._key = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(file: Path) -> str:
    """Who holds ``file``'s lock, as its holder wrote it: ``pid N (command) on host H since T``."""
    try:
        info = json.loads(file.read_text())
        return (f'pid {info["pid"]} ({info["command"]}) on host {info["host"]} since {info["since"]}')
    except (OSError, ValueError, KeyError, TypeError):
        return 'another process (it has not written its pid yet)'


def _busy(path: str | os.PathLike[str], flag: str, fix: str) -> Exception:
    """The one-line error for a folder another process holds (``check_folder_free``, ``lock_folder``)."""
    from .errors import ConfigError
    return ConfigError(f'{flag} {path} is in use by {_holder(Path(path) / LOCK_FILE)}; wait for it to finish or stop '
                       f'it, or give another {flag}{fix}')


def check_folder_free(path: str | os.PathLike[str], flag: str = '--output', fix: str = '') -> None:
    """Raise if another process holds folder ``path`` (``lock_folder``), writing nothing: what a command checks
    before validating the folder's contents, so that bad input leaves even the lock file unwritten and a busy
    folder is named as busy. The hold itself is taken afterwards with ``lock_folder``.

    Raises:
        ConfigError: If another process holds the folder: one line naming it (pid, command) and the fix.
    """
    import fcntl

    file = Path(path) / LOCK_FILE
    if (os.getpid(), os.path.realpath(path)) in _HELD or not file.is_file():
        return
    fd = os.open(file, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(path, flag, fix) from None
    finally:
        os.close(fd)  # closing drops a lock taken here


def lock_folder(path: str | os.PathLike[str], flag: str = '--output', fix: str = '') -> FolderLock:
    """Make this process the owner of folder ``path`` (created if missing) until ``release`` or its exit.

    An exclusive ``fcntl.flock`` on ``path/.lock``: the kernel drops it when the process ends, by
    ``kill -9`` too, so a lock is never stale and needs no clean-up. The lock file names its holder
    (pid, command, host, time) for the error of the next process. One process may take the same
    folder more than once (a search that opens its study twice); each hold is released on its own.
    On a network file system the lock is as good as the file system's ``flock`` (NFSv4: yes).

    Args:
        path: The folder.
        flag: The option that named it, for the error.
        fix: What else to do instead, appended to the error (e.g. how a parallel worker gets its own folder).

    Returns:
        The hold, a context manager.

    Raises:
        ConfigError: If another process holds the folder: one line naming it (pid, command) and the fix.
    """
    import fcntl

    path = Path(path)
    made_folder = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    key = (os.getpid(), os.path.realpath(path))
    if key in _HELD:
        _HELD[key][1] += 1
        return FolderLock(path, key)
    file = path / LOCK_FILE
    made_file = not file.exists()
    fd = os.open(file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _busy(path, flag, fix) from None
    except BaseException:
        os.close(fd)
        raise
    holder = {'pid': os.getpid(), 'host': socket.gethostname(), 'command': ' '.join(sys.argv)[:200],
              'since': time.strftime('%Y-%m-%d %H:%M:%S')}
    os.ftruncate(fd, 0)  # the file keeps its inode: the lock is on it
    os.pwrite(fd, (json.dumps(holder) + '\n').encode(), 0)
    _HELD[key] = [fd, 1]
    return FolderLock(path, key, (made_folder, made_file))
