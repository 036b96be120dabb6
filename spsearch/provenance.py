"""Provenance of a result: the command, the commit, the machine and the library versions.

Every file under ``results/`` and every run summary carries this, so a number can be traced to
what produced it and where.
"""
from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ['command_line', 'git_commit', 'machine', 'markdown_header', 'mask_secrets', 'provenance', 'redact',
           'versions']

_PACKAGES = ('torch', 'timm', 'thop', 'optuna', 'accelerate', 'nvidia-dali-cuda130', 'nvidia-dali-cuda120')
_ROOT = Path(__file__).resolve().parent.parent


# user (possibly empty) : password @ host; the password runs to the last '@' before the path, so an unencoded
# '@' in it is masked too; a shell quote around the URL is never taken into it
_URL_PASSWORD = re.compile(r'''(://[^:/@\s'"]*):[^\s'"/]*@''')
_QUERY_PASSWORD = re.compile(r'''([?&](?:password|passwd|pwd)=)[^&\s'"]*''', re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """``text`` with every URL password masked: ``postgresql://user:pw@host/db`` -> ``postgresql://user:***@host/db``
    (also ``://:pw@host`` and a password holding ``@``), ``...?password=pw`` -> ``...?password=***`` (a quoted URL
    keeps its closing quote). Used on everything written (search.yaml, study attributes, logs)."""
    return _QUERY_PASSWORD.sub(r'\1***', _URL_PASSWORD.sub(r'\1:***@', text))


def redact(text: str, url: str) -> str:
    """``text`` (a driver's error message, say) with every piece of ``url``'s password removed, then masked.

    A driver that parsed the URL differently (``postgresql://u:p@ss@host``: host ``ss@host``) echoes part of the
    password in its own words; every ``@``-separated piece of it is replaced by ``***``.
    """
    secrets = [m.group(0)[len(m.group(1)) + 1:-1] for m in _URL_PASSWORD.finditer(url)]
    secrets += [m.group(0)[len(m.group(1)):] for m in _QUERY_PASSWORD.finditer(url)]
    for secret in secrets:
        for piece in sorted({secret, *secret.split('@')}, key=len, reverse=True):
            if len(piece) >= 2:
                text = text.replace(piece, '***')
    return mask_secrets(text)


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running, as a copy-pasteable shell line."""
    argv = list(sys.argv if argv is None else argv)
    if argv and argv[0].endswith('.py'):
        argv[0] = os.path.relpath(argv[0]) if os.path.isabs(argv[0]) else argv[0]
        return mask_secrets('python ' + shlex.join(argv))
    return mask_secrets(shlex.join(argv))


SOURCE_COMMIT_FILE = '.source-commit'
"""``make gpu-wheels`` records the commit here (git-ignored) before the tree is copied to a GPU machine."""
SOURCE_COMMIT_ENV = 'SPSEARCH_SOURCE_COMMIT'
"""``make gpu-check`` puts that record here for every step: a copied tree's own ``.git`` may be missing
or stale (the device tool's copy carried the session's first commit, so HEAD named the wrong code)."""


def git_commit() -> str:
    """``HEAD``'s hash, with ``+dirty`` when tracked files differ from it; ``unknown`` outside git.

    Under ``make gpu-check`` on a copied tree: the commit ``make gpu-wheels`` recorded, with what
    this tree's git says beside it.
    """
    def run(*args: str) -> str:
        done = subprocess.run(['git', *args], cwd=_ROOT, capture_output=True, text=True, timeout=10)
        if done.returncode:
            raise subprocess.SubprocessError(done.stderr)
        return done.stdout.strip()
    try:
        commit = run('rev-parse', '--verify', 'HEAD')
        dirty = run('status', '--porcelain', '--untracked-files=no')
        here = commit + ('+dirty' if dirty else '')
    except (OSError, subprocess.SubprocessError):
        here = 'unknown'
    recorded = os.environ.get(SOURCE_COMMIT_ENV)
    if recorded:
        return f'{recorded} (copied tree, recorded by make gpu-wheels; its git says {here})'
    return here


def _cpu_name() -> str:
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """CPU model and usable cores, memory, and the GPU when torch sees one."""
    info: dict[str, Any] = {
        'cpu': _cpu_name(),
        'cores': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(),
        'os': platform.platform(),
    }
    try:
        pages, page_size = os.sysconf('SC_PHYS_PAGES'), os.sysconf('SC_PAGE_SIZE')
        info['memory_gib'] = round(pages * page_size / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import torch
        if torch.cuda.is_available():
            info['gpu'] = torch.cuda.get_device_name(0)
            info['gpu_count'] = torch.cuda.device_count()
    except ImportError:
        pass
    return info


def versions() -> dict[str, str]:
    """Python and the installed versions of the libraries results depend on."""
    found = {'python': platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """Everything above plus a UTC timestamp, as one dict."""
    return {
        'command': command_line(argv),
        'commit': git_commit(),
        'date': datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        'machine': machine(),
        'versions': versions(),
    }


def markdown_header(title: str, prov: dict[str, Any] | None = None) -> str:
    """A results-file header: title, then command, commit, date, machine and versions."""
    prov = prov or provenance()
    m = prov['machine']
    machine_line = f"{m['cpu']}, {m['cores']} cores" + (f", {m['memory_gib']} GiB" if 'memory_gib' in m else '')
    if 'gpu' in m:
        machine_line += f", GPU: {m['gpu']}"
    vers = ', '.join(f'{k} {v}' for k, v in prov['versions'].items())
    return (f'# {title}\n\n'
            f'- Command: `{prov["command"]}`\n'
            f'- Commit: `{prov["commit"]}`\n'
            f'- Date: {prov["date"]}\n'
            f'- Machine: {machine_line}\n'
            f'- Versions: {vers}\n')
