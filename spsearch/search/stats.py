"""Statistics for "configuration X beats configuration Y": means with t intervals, paired differences, verdicts.

The protocol (``shared/reference/search-quality.md``): every configuration is retrained with the same
list of seeds, so runs with the same seed form pairs (common random numbers: data order,
augmentation, initialisation). A configuration's score is the mean over seeds with a 95 % Student-t
confidence interval; a comparison is the mean paired difference with its t interval, a paired
t-test and a Wilcoxon signed-rank test (``scipy.stats``), Holm-corrected across the comparisons of
one study. The verdict says "beats" only when the difference's interval lies above zero, "loses"
when it lies below, and "matches" otherwise: with few seeds most honest verdicts are "matches".
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ['Comparison', 'Estimate', 'compare', 'estimate', 'holm', 'verdict']


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its confidence interval (``half_width`` is nan with one seed)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def __str__(self) -> str:
        if self.n < 2:
            return f'{self.mean:.2f} (1 seed, no interval)'
        return f'{self.mean:.2f} ± {self.half_width:.2f}'


def _t_quantile(confidence: float, dof: int) -> float:
    from scipy import stats
    return float(stats.t.ppf(0.5 + confidence / 2, dof))


def estimate(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean of ``values`` and the half-width of its Student-t interval (``t_{1-a/2, n-1} * s / sqrt(n)``).

    Raises:
        ValueError: With no values.
    """
    n = len(values)
    if n == 0:
        raise ValueError('no values to estimate a mean from')
    mean = sum(values) / n
    if n < 2:
        return Estimate(mean, math.nan, n)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return Estimate(mean, _t_quantile(confidence, n - 1) * sd / math.sqrt(n), n)


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b`` over paired seeds: the difference ``a - b`` and its tests.

    Attributes:
        difference: Mean paired difference with its t interval.
        p_t: Two-sided paired t-test p-value (nan with fewer than 2 pairs or no spread).
        p_wilcoxon: Two-sided Wilcoxon signed-rank p-value (nan where it is undefined).
        p_holm: ``p_t`` after Holm's correction across the comparisons it was computed with (``holm``).
        verdict: ``beats``, ``matches`` or ``loses`` (``verdict``).
    """

    difference: Estimate
    p_t: float
    p_wilcoxon: float
    p_holm: float
    verdict: str


def verdict(difference: Estimate) -> str:
    """``beats`` when the interval of ``a - b`` lies above 0, ``loses`` below, else ``matches`` (also with 1 pair)."""
    if difference.n < 2 or math.isnan(difference.half_width):
        return 'matches'
    if difference.low > 0:
        return 'beats'
    if difference.high < 0:
        return 'loses'
    return 'matches'


def compare(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Comparison:
    """Paired comparison of two configurations' scores over the same seeds (``a[i]`` and ``b[i]``: seed ``i``).

    Raises:
        ValueError: If the lists differ in length or are empty.
    """
    if len(a) != len(b) or not a:
        raise ValueError(f'paired scores need the same seeds on both sides, got {len(a)} and {len(b)}')
    from scipy import stats
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    difference = estimate(diffs, confidence)
    p_t = p_w = math.nan
    if len(diffs) >= 2 and any(d != diffs[0] for d in diffs):
        p_t = float(stats.ttest_rel(a, b).pvalue)
    if any(d != 0 for d in diffs):
        try:
            p_w = float(stats.wilcoxon(diffs).pvalue)
        except ValueError:
            p_w = math.nan
    return Comparison(difference, p_t, p_w, p_t, verdict(difference))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``pvalues`` (nan stays nan); each adjusted value is <= 1.

    The k-th smallest of m p-values becomes ``max_{j <= k} min(1, (m - j + 1) p_(j))``.
    """
    finite = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    out = [math.nan] * len(pvalues)
    m, running = len(finite), 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
