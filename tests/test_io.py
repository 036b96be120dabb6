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


def test_a_full_disk_is_a_machine_error_and_a_bug_stays_a_bug(tmp_path, monkeypatch):
    """ENOSPC (or a writer that hides it behind another exception, as torch.save does, seen by a probe write) is a
    one-line MachineError naming the file and what to do; an exception on a healthy disk is raised unchanged."""
    import errno

    import spsearch.io as io
    from spsearch.errors import MachineError

    def no_space(tmp: str) -> None:
        raise OSError(errno.ENOSPC, 'No space left on device')

    def hidden(tmp: str) -> None:
        raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 248128 vs 248024')

    with pytest.raises(MachineError, match=r'cannot write .*w\.pth: No space left on device; free space in .*--resume'):
        atomic_write(tmp_path / 'w.pth', no_space)
    with pytest.raises(RuntimeError, match='unexpected pos'):  # the disk has room: not the machine's fault
        atomic_write(tmp_path / 'w.pth', hidden)
    monkeypatch.setattr(io, '_probe', lambda folder, size: OSError(errno.EFBIG, 'File too large'))
    with pytest.raises(MachineError, match='File too large'):
        atomic_write(tmp_path / 'w.pth', hidden)
    assert list(tmp_path.iterdir()) == []


def test_run_cli_gives_one_line_and_exit_1_for_a_full_disk_and_130_for_ctrl_c(capsys):
    import errno

    from spsearch.cli import run_cli
    from spsearch.errors import Interrupted

    def full() -> int:
        raise OSError(errno.ENOSPC, 'No space left on device', '/data/run/log.csv')

    def stopped() -> int:
        raise Interrupted('the last finished epoch is saved in x/last.pth; continue with --resume')

    assert run_cli(full) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: cannot write /data/run/log.csv: No space left on device')
    assert run_cli(stopped) == 130
    assert capsys.readouterr().err == 'interrupted: the last finished epoch is saved in x/last.pth; continue with ' \
                                      '--resume\n'
    with pytest.raises(OSError, match='Permission denied'):  # not a machine failure: a bug or a check missed
        run_cli(lambda: (_ for _ in ()).throw(PermissionError(errno.EACCES, 'Permission denied')))
