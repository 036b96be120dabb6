"""What a proxy training scores a candidate by: the study's objective value, in one place.

``results/proxy_fidelity.md`` measured every score a proxy training gives against a longer target
training (Kendall tau over 16 in-budget architectures, 2 seeds): the validation loss of the last
epoch ranks better than its top-1 (12,000 images x 1 epoch: tau 0.34 [0.03, 0.60] vs 0.14
[-0.10, 0.35]; 4,000 x 3: 0.28 vs 0.19). Top-1 over 2,000 held-out images moves in steps of 0.05
points and saturates; the loss is continuous and keeps the model's confidence. So the default is
``val_loss`` (minimised); ``top1`` (maximised) stays available. Both are the **last** epoch's, as
measured: the best over epochs would add a maximum over noisy values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ['PROXY_SCORES', 'ProxyScore', 'proxy_score']


@dataclass(frozen=True)
class ProxyScore:
    """One way to score a proxy training.

    Attributes:
        name: The option value (``--proxy-score``).
        metric: The key of the training's per-epoch metrics (``spsearch.train.evaluate``).
        column: The Optuna metric name and the reports' column.
        direction: ``'maximize'`` or ``'minimize'`` (Optuna's).
        label: Axis and table label, with its unit.
        digits: Decimals shown.
    """

    name: str
    metric: str
    column: str
    direction: str
    label: str
    digits: int

    def goodness(self, value: float) -> float:
        """``value`` oriented so that higher is better (for sorting and Pareto fronts)."""
        return value if self.direction == 'maximize' else -value

    def format(self, value: float | None) -> str:
        return '-' if value is None else f'{value:.{self.digits}f}'


PROXY_SCORES: dict[str, ProxyScore] = {s.name: s for s in (
    ProxyScore('val_loss', 'val_loss', 'proxy_val_loss', 'minimize', 'proxy validation loss (nats)', 4),
    ProxyScore('top1', 'top1', 'proxy_top1', 'maximize', 'proxy top-1 (%)', 2),
)}
"""Every proxy score, by ``--proxy-score`` name."""


def proxy_score(name: str) -> ProxyScore:
    """The score called ``name``.

    Raises:
        KeyError: For an unknown name (the config's choices prevent it).
    """
    return PROXY_SCORES[name]


def score_of(metrics: dict[str, Any], score: ProxyScore) -> float:
    """The score of one evaluation's metrics."""
    return float(metrics[score.metric])
