"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A reader (or a resumed run) sees either the old file or the complete new one, never half of it.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

_UMASK = os.umask(0o022)
os.umask(_UMASK)

__all__ = ['atomic_write', 'atomic_write_bytes', 'atomic_write_json', 'atomic_write_text', 'atomic_write_yaml',
           'check_output_folder']


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes it 0600 (and some writers, safetensors' save_file, recreate it so): the file gets the
        # permissions open() would give
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


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
