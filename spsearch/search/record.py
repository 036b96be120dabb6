"""``TrialRecord``: what SPSearch stores with each trial, in one place.

Optuna keeps a trial's parameters, state, values, constraints and intermediate values; everything
else SPSearch knows about a trial is a user attribute, and each attribute is a field here: its key
is the field name, readable in optuna-dashboard and ``optuna trials``. The driver, the reports,
the retrain and the storage recovery read and write trials through this class only (``of`` reads,
``update`` writes), so a key is never spelled anywhere else.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial

__all__ = ['TrialRecord']


@dataclass
class TrialRecord:
    """A trial's SPSearch attributes (Optuna user attributes; None/False: not recorded).

    Attributes:
        baseline: ``paper`` (alpha 1/2, G 2) or ``uniform`` (the best uniform architecture within the budgets): a
            baseline enqueued by the study (and its retries); empty for the others.
        retry_of: The number of the interrupted trial this one re-runs with the same parameters.
        worker: ``{'host', 'pid', 'started'}`` of the process that ran it (``storage.this_worker``).
        status: One human line: ``complete``, ``over budget: ...``, ``pruned after epoch 1``, ...
        feasible: Within every budget (Optuna's constraints, as a plain attribute the dashboard and CLI show).
        sp_alpha: Per-stage split ratio (``'vanilla'`` for a plain stage), as the model takes it.
        sp_groups: Per-stage GWC groups.
        gmacs: 1e9 multiply-accumulates at the space's evaluation size.
        mparams: Parameters, millions.
        latency_ms: Median latency under the study's latency protocol.
        latency: The latency measurement (median, quartiles, device, batch size).
        epochs: Epochs of proxy training run; None: never trained (over budget, duplicate of an untrained one).
        final_top1: Proxy top-1 (%) after the last epoch run.
        final_val_loss: Proxy validation loss (nats) after the last epoch run.
        best_top1: Best proxy top-1 (%) over the epochs run.
        train_s: Wall time of the proxy training, seconds.
        trial_s: Wall time of the whole trial, seconds.
        images_per_s: Training throughput, all processes.
        peak_mem_mb: Peak memory of the main process during the training.
        processes: Processes the candidate was trained on.
        duplicate_of: The earlier trial with the same parameters whose result this one reuses.
    """

    baseline: str = ''
    retry_of: int | None = None
    worker: dict[str, Any] | None = None
    status: str = ''
    feasible: bool | None = None
    sp_alpha: list[Any] | None = None
    sp_groups: list[int] | None = None
    gmacs: float | None = None
    mparams: float | None = None
    latency_ms: float | None = None
    latency: dict[str, Any] | None = None
    epochs: int | None = None
    final_top1: float | None = None
    final_val_loss: float | None = None
    best_top1: float | None = None
    train_s: float | None = None
    trial_s: float | None = None
    images_per_s: float | None = None
    peak_mem_mb: float | None = None
    processes: int | None = None
    duplicate_of: int | None = None

    @classmethod
    def of(cls, trial: FrozenTrial | optuna.Trial) -> TrialRecord:
        """The record stored with ``trial`` (attributes it lacks keep their defaults; unknown ones are ignored)."""
        attrs = trial.user_attrs
        return cls(**{f.name: attrs[f.name] for f in dataclasses.fields(cls) if f.name in attrs})

    def scalars(self) -> dict[str, Any]:
        """The fields that hold one number, string or flag (``None`` as ``''``): the columns of ``trials.csv``."""
        hints = typing.get_type_hints(type(self))
        return {f.name: '' if getattr(self, f.name) is None else getattr(self, f.name)
                for f in dataclasses.fields(self) if _is_scalar(hints[f.name])}

    @property
    def trained(self) -> bool:
        """Whether the candidate was proxy-trained (by this trial, or by the one it duplicates)."""
        return self.epochs is not None

    def as_user_attrs(self, **changes: Any) -> dict[str, Any]:
        """``changes`` as user attributes (for ``study.enqueue_trial(..., user_attrs=...)``), checked by name."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise AttributeError(f'TrialRecord has no field(s) {", ".join(unknown)}')
        return dict(changes)

    def update(self, trial: optuna.Trial | tuple[BaseStorage, int], **changes: Any) -> None:
        """Set fields on this record and store them with ``trial`` (a live trial, or ``(storage, trial_id)``)."""
        for key, value in self.as_user_attrs(**changes).items():
            setattr(self, key, value)
            if isinstance(trial, tuple):
                storage, trial_id = trial
                storage.set_trial_user_attr(trial_id, key, value)
            else:
                trial.set_user_attr(key, value)


def _is_scalar(tp: Any) -> bool:
    return all(arg in (bool, int, float, str, type(None)) for arg in (typing.get_args(tp) or (tp,)))
