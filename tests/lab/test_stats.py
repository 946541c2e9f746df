"""Means and t-intervals against scipy's own interval function."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from sharenorm.lab.stats import fmt_ci, mean_ci, overlap


@pytest.mark.parametrize("xs", [[1.0, 2.0], [0.9, 0.93, 0.91], list(np.linspace(0, 1, 7))])
def test_mean_ci_matches_scipy(xs):
    m, h, n = mean_ci(xs)
    lo, hi = stats.t.interval(0.95, len(xs) - 1, loc=np.mean(xs), scale=stats.sem(xs))
    assert n == len(xs) and m == pytest.approx(np.mean(xs))
    assert m - h == pytest.approx(lo) and m + h == pytest.approx(hi)


def test_edge_cases():
    assert math.isnan(mean_ci([])[0])
    m, h, n = mean_ci([3.0, None, float("nan")])
    assert (m, n) == (3.0, 1) and math.isnan(h)
    assert fmt_ci([]) == "—" and fmt_ci([0.5], 100) == "50.0 (n=1)"
    assert fmt_ci([0.5, 0.5], 100) == "50.0 ± 0.0"


def test_overlap():
    assert not overlap([1.0, 1.01, 0.99], [2.0, 2.01, 1.99])
    assert overlap([1.0, 2.0, 3.0], [2.5, 3.0, 3.5])
    assert overlap([1.0], [5.0])  # no interval: cannot claim a difference
