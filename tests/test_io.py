"""Atomic writes: the new file or the old one, never half; permissions as ``open()`` would give them. Folder locks:
one process owns a run folder, and the kernel frees it when that process dies."""
from __future__ import annotations

import os
import signal
import stat

import pytest

from spsearch.errors import ConfigError
from spsearch.io import LOCK_FILE, atomic_write, atomic_write_text, lock_folder


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


def _hold_in_a_child(folder) -> int:
    """Fork a process that takes ``folder`` and waits for its kill; return its pid once it holds the folder."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            lock_folder(folder)
            os.write(ready_w, b'x')
            while True:
                signal.pause()
        finally:
            os._exit(1)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b'x', 'the child could not take the folder'
    os.close(ready_r)
    return pid


def test_a_folder_has_one_owner_named_in_the_error_and_freed_by_its_death(tmp_path):
    folder = tmp_path / 'run'
    pid = _hold_in_a_child(folder)
    try:
        with pytest.raises(ConfigError) as caught:
            lock_folder(folder, fix=' (or the fix)')
        message = str(caught.value)
        assert '\n' not in message and f'in use by pid {pid} (' in message
        assert message.endswith('wait for it to finish or stop it, or give another --output (or the fix)')
        assert [p.name for p in folder.iterdir()] == [LOCK_FILE]  # the second process wrote nothing
    finally:
        os.kill(pid, signal.SIGKILL)  # no clean-up ran: the kernel drops the lock with the process
        os.waitpid(pid, 0)
    with lock_folder(folder) as held:
        assert held.path == folder and f'"pid": {os.getpid()}' in (folder / LOCK_FILE).read_text()


def _another_process_can_take(folder) -> bool:
    pid = os.fork()
    if pid == 0:
        try:
            lock_folder(folder)
            os._exit(0)
        except ConfigError:
            os._exit(3)
        finally:
            os._exit(1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_one_process_may_hold_a_folder_twice_and_releases_each_hold(tmp_path):
    folder = tmp_path / 'search'
    first, second = lock_folder(folder), lock_folder(folder)  # a search that opens its study twice
    first.release()
    first.release()  # once only
    assert not _another_process_can_take(folder)
    second.release()
    assert _another_process_can_take(folder)


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


def test_check_folder_free_names_a_busy_folder_and_writes_nothing(tmp_path):
    from spsearch.io import check_folder_free
    check_folder_free(tmp_path / 'new')  # no folder, no lock file: free, nothing created
    assert not (tmp_path / 'new').exists()
    folder = tmp_path / 'run'
    pid = _hold_in_a_child(folder)
    try:
        with pytest.raises(ConfigError, match=f'in use by pid {pid} '):
            check_folder_free(folder)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    check_folder_free(folder)  # its holder died: free again
    with lock_folder(folder):
        check_folder_free(folder)  # this process's own hold is no obstacle


def test_a_ctrl_c_landing_in_a_finalizer_is_kept_and_raised_where_the_job_checks(capsys, monkeypatch):
    """Python prints a KeyboardInterrupt raised in ``__del__`` (or a gc callback, as Optuna's gc_after_trial runs
    them) as "Exception ignored" and goes on; under run_cli it is kept and raised at the next check: exit 130,
    one line, the job stopped."""
    import sys

    from spsearch.cli import raise_pending_interrupt, run_cli
    monkeypatch.setattr(sys, 'unraisablehook', sys.unraisablehook)  # run_cli installs its own; put pytest's back
    ran_on = []

    class Finalized:
        def __del__(self):
            raise KeyboardInterrupt

    def main() -> int:
        Finalized()  # collected at once: its Ctrl-C is unraisable
        raise_pending_interrupt()
        ran_on.append(1)
        return 0

    assert run_cli(main) == 130
    assert capsys.readouterr().err == 'interrupted\n' and not ran_on
    raise_pending_interrupt()  # raised once only


def test_a_discarded_hold_removes_what_it_created_and_nothing_else(tmp_path):
    """release(discard=True), after a set-up that failed on bad input: the lock file and the folder it made go; a
    folder that was there keeps its files, and a lock file that was there stays."""
    new = tmp_path / 'a' / 'new'
    lock_folder(new).release(discard=True)
    assert not new.exists() and (tmp_path / 'a').exists()
    old = tmp_path / 'old'
    old.mkdir()
    (old / 'args.yaml').write_text('x')
    lock_folder(old).release(discard=True)
    assert sorted(p.name for p in old.iterdir()) == ['args.yaml']
    lock_folder(old).release()
    lock_folder(old).release(discard=True)
    assert (old / LOCK_FILE).exists()  # not made by that hold
