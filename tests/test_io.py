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


def test_a_writer_that_recreates_the_file_still_gets_the_umask_permissions(tmp_path):
    """safetensors' save_file replaces the temporary file with a 0600 one: the weights must still be readable as
    every other output is (seen by a new user: model.safetensors was -rw-------)."""
    import safetensors.torch
    import torch

    from spsearch.train.checkpoint import export_weights
    umask = os.umask(0)
    os.umask(umask)
    path = export_weights(torch.nn.Linear(2, 2), tmp_path / 'model.safetensors')
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert set(safetensors.torch.load_file(str(path))) == {'weight', 'bias'}
