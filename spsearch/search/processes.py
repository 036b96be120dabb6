"""The hand-off between processes of one search under ``accelerate launch``.

Only the main process samples and talks to the storage. For each candidate it broadcasts the
training config; every process trains that candidate on its shard (``spsearch.train.train`` with
the launch's accelerator), and a prune decided on the main process stops all of them together
(``train`` shares the epoch callback's answer). At the end the main process says ``stop``, or
``error`` with the one-line message of a bad input, which the others raise too.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ..train import EpochCallback, TrainConfig, TrainResult, train

__all__ = ['ProcessGroup']


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
