"""The processes of a search: the hand-off under ``accelerate launch``, and child processes that die with it.

Only the main process samples and talks to the storage. For each candidate it broadcasts the
training config; every process trains that candidate on its shard (``spsearch.train.train`` with
the launch's accelerator), and a prune decided on the main process stops all of them together
(``train`` shares the epoch callback's answer). At the end the main process says ``stop``, or
``error`` with the one-line message of a bad input, which the others raise too.

A retrain is a child process tree (``accelerate launch`` and its training processes): ``run_child``
starts it in a process group of its own under a small supervisor, so that the whole tree ends
with the search however the search ends (Ctrl-C, ``kill``, ``kill -9``), and no orphan keeps
training into a folder a resumed search retrains again (its run-folder lock would refuse that too).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import ConfigError
from ..train import EpochCallback, TrainConfig, TrainResult, train

__all__ = ['ProcessGroup', 'run_child']


def _broadcast(message: dict[str, Any] | None) -> dict[str, Any]:
    from accelerate.utils import broadcast_object_list
    box: list[Any] = [message]
    broadcast_object_list(box, from_process=0)
    return box[0]


class ProcessGroup:
    """The processes of one launch, as the search uses them.

    Args:
        accelerator: The launch's ``accelerate.Accelerator``.
    """

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    @property
    def distributed(self) -> bool:
        return int(self.accelerator.num_processes) > 1

    def train(self, cfg: TrainConfig, trial: int, epoch_callback: EpochCallback | None = None) -> TrainResult:
        """Main process: have every process train ``cfg`` (trial number ``trial``) and return the result."""
        if self.distributed:
            _broadcast({'cmd': 'train', 'trial': trial, 'config': cfg.to_dict()})
        return train(cfg, accelerator=self.accelerator, epoch_callback=epoch_callback)

    def stop(self) -> None:
        """Main process: the search is over; the other processes return from ``follow``."""
        if self.distributed:
            _broadcast({'cmd': 'stop'})

    def close(self) -> None:
        """Every process, once no collective is left: tear the process group down (``end_training``), so that
        no process exits while gloo/NCCL threads of another still wait on it."""
        if self.distributed:
            self.accelerator.end_training()

    def fail(self, message: str) -> None:
        """Main process: the search stopped on an error; the other processes raise ``message`` too."""
        if self.distributed:
            _broadcast({'cmd': 'error', 'message': message})

    def follow(self, log: Callable[[str], None] = print) -> None:
        """A non-main process: train each candidate the main process broadcasts, until it says stop.

        Raises:
            ConfigError: If the main process stopped on bad input (the same one-line error).
        """
        rank = self.accelerator.process_index
        while True:
            message = _broadcast(None)
            if message['cmd'] == 'stop':
                return
            if message['cmd'] == 'error':
                raise ConfigError(message['message'])
            cfg = TrainConfig.from_dict(message['config'], source='broadcast')
            log(f'[rank {rank}] trial {message["trial"]}: training {cfg.model_kwargs}')
            train(cfg, accelerator=self.accelerator)


_SUPERVISOR = """
import ctypes, os, signal, subprocess, sys
parent, cmd = int(sys.argv[1]), sys.argv[2:]
if sys.platform.startswith('linux'):  # SIGTERM the moment the parent dies, however it dies (PR_SET_PDEATHSIG)
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
child = None

def end(signum=signal.SIGTERM, frame=None):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    try:
        if child is not None:
            child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    os.killpg(0, signal.SIGKILL)

for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, end)
if os.getppid() != parent:
    end()
child = subprocess.Popen(cmd)
while True:
    try:
        code = child.wait(timeout=1)
        break
    except subprocess.TimeoutExpired:
        if os.getppid() != parent:  # the parent is gone (where no PR_SET_PDEATHSIG said so)
            end()
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.killpg(0, signal.SIGTERM)  # anything of the tree the command left behind
sys.exit(code)
"""
"""Run by ``run_child`` as ``python -c _SUPERVISOR PARENT_PID CMD...``: the leader of the child's process group.
It runs ``CMD`` and ends the whole group (SIGTERM, then SIGKILL after 30 s) when it is told to (SIGTERM, SIGINT,
SIGHUP) or when the parent ``PARENT_PID`` dies: at once on Linux (the kernel's parent-death signal), within a second
elsewhere (it sees itself re-parented), with no help from the parent, so ``kill -9`` of the search ends it too.
Plain Python without imports of ours: it starts in milliseconds."""


def run_child(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Run ``cmd`` to its end in a process group of its own that ends with this process; return its exit code.

    The command and every process it starts (``accelerate launch`` and its training processes) form one
    process group led by a supervisor (``_SUPERVISOR``). If this process is interrupted (Ctrl-C, or any
    exception while it waits) the group is ended before the exception goes on; if this process dies
    (``kill``, ``kill -9``) the supervisor ends the group by itself. A Ctrl-C in the terminal reaches
    this process only (the group is not in the terminal's foreground), which then ends the group.
    Call it from the main thread: on Linux the parent-death signal follows the thread that started the child.

    Args:
        cmd: The command and its arguments.
        env: Its environment (default: this process').

    Returns:
        The command's exit code (negative: the signal that ended it).
    """
    proc = subprocess.Popen([sys.executable, '-c', _SUPERVISOR, str(os.getpid()), *cmd],
                            env=dict(env) if env is not None else None, start_new_session=True)
    try:
        return proc.wait()
    except BaseException:
        _end_group(proc)
        raise


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """Tell the supervisor to end its group and wait for it (SIGKILL the group if it does not end in 60 s)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()
