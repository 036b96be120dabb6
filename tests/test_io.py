"""Atomic writes: the new file or the old one, never half; permissions as ``open()`` would give them."""
from __future__ import annotations

import os
import stat

import pytest

from spsearch.io import atomic_write, atomic_write_text


def test_atomic_write_keeps_the_old_file_on_failure_and_respects_the_umask(tmp_path):
    path = atomic_write_text(tmp_path / 'report.md', 'old')
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600

    def fail(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write('half')
        raise OSError('disk full')

    with pytest.raises(OSError, match='disk full'):
        atomic_write(path, fail)
    assert path.read_text() == 'old' and [p.name for p in tmp_path.iterdir()] == ['report.md']
