"""The verification's statistics on constructed numbers: t intervals, paired differences, Holm, verdicts."""
from __future__ import annotations

import math

import pytest

from spsearch.search.stats import compare, estimate, holm, verdict


def test_estimate_is_the_mean_with_a_student_t_interval():
    est = estimate([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2) = 4.3027
    assert est.mean == 2.0 and est.n == 3
    assert est.half_width == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert (est.low, est.high) == pytest.approx((2 - est.half_width, 2 + est.half_width))
    one = estimate([81.0])
    assert one.n == 1 and math.isnan(one.half_width) and 'no interval' in str(one)
    with pytest.raises(ValueError):
        estimate([])


def test_paired_differences_and_verdicts():
    # the same +1 point on every seed: the interval is [1, 1], "beats" (no spread: no t-test p)
    same = compare([80.0, 81.0, 82.0], [79.0, 80.0, 81.0])
    assert same.difference.mean == pytest.approx(1.0) and same.verdict == 'beats' and math.isnan(same.p_t)
    # unpaired these would overlap completely; paired, the consistent gain shows: t = mean / (sd / sqrt(n))
    a, b = [80.1, 75.2, 78.3, 81.0], [79.6, 74.5, 78.0, 80.2]
    result = compare(a, b)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    sd = math.sqrt(sum((d - sum(diffs) / 4) ** 2 for d in diffs) / 3)
    assert result.difference.mean == pytest.approx(sum(diffs) / 4)
    assert result.difference.half_width == pytest.approx(3.182446 * sd / 2, rel=1e-5)
    assert result.verdict == 'beats' and result.p_t < 0.05
    # a gain on one seed and losses on the others: the interval holds 0
    assert compare([80.0, 81.0, 82.0], [80.5, 80.0, 82.5]).verdict == 'matches'
    assert compare([70.0, 71.0, 72.0], [75.0, 75.5, 77.0]).verdict == 'loses'
    assert verdict(estimate([2.0])) == 'matches'  # one seed never decides
    with pytest.raises(ValueError, match='same seeds'):
        compare([1.0, 2.0], [1.0])


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.2, math.nan, 0.9])
    assert adjusted[0] == pytest.approx(0.4) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.9)
