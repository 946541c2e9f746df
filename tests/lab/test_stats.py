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


@pytest.mark.parametrize("a, b", [([0.9, 0.93, 0.91], [0.8, 0.85, 0.81, 0.83]),
                                  ([1.0, 2.0, 4.0, 8.0, 3.0], [2.0, 2.1, 1.9]),
                                  (list(np.linspace(0, 1, 7)), [0.3, 0.9])])
def test_welch_interval_matches_scipy(a, b):
    from sharenorm.lab.stats import diff_ci

    d = diff_ci(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d.estimate == pytest.approx(np.mean(a) - np.mean(b))
    assert (d.lo, d.hi) == (pytest.approx(ref.low), pytest.approx(ref.high))


def test_ratio_as_a_contrast():
    from sharenorm.lab.stats import diff_ci

    a, b = [60.0, 70.0, 65.0], [100.0, 110.0, 90.0]
    d = diff_ci(a, b, b_factor=2 / 3)
    ref = stats.ttest_ind(a, [x * 2 / 3 for x in b], equal_var=False).confidence_interval()
    assert (d.lo, d.hi) == (pytest.approx(ref.low), pytest.approx(ref.high))


@pytest.mark.parametrize("a, b, margin, at_most, holds", [
    ([0.80, 0.81, 0.82], [0.70, 0.71, 0.72], 5, False, True),    # CI [7.7, 12.3] ≥ 5
    ([0.80, 0.81, 0.82], [0.70, 0.71, 0.72], 15, False, False),  # CI wholly below 15
    ([0.80, 0.81, 0.82], [0.70, 0.71, 0.72], 10, False, None),   # straddles 10
    ([0.80, 0.81, 0.82], [0.70, 0.71, 0.72], 15, True, True),    # at most 15
    ([0.80, 0.81, 0.82], [0.70, 0.71, 0.72], 5, True, False),
    ([0.80], [0.70, 0.71], 5, False, None),                      # one seed: no interval
    ([0.8, 0.8], [0.7, 0.7], 5, False, True),                    # no spread: the point decides
    ([0.8, 0.8], [0.7, 0.7], 10, False, True),                   # exactly on the margin holds
    ([], [0.7, 0.7], 1, False, None),
])
def test_compare_four_outcomes(a, b, margin, at_most, holds):
    from sharenorm.lab.stats import compare

    c = compare("x", a, b, margin, scale=100, at_most=at_most)
    assert c.holds is holds, str(c)
    assert {True: "holds", False: "fails", None: "inconclusive"}[holds] in str(c)


# mean(a) − mean(b) with steps to a target, where a run that never reached it is counted at the
# budget (100): a lower bound of its true count, so the true difference may be higher (a
# censored) or lower (b censored). Only an outcome such a shift could overturn is withheld;
# the other is decided by the seed pairs (5 against 5: rank test p = 1/252).
F, S = [20, 22, 21, 23, 20], [40, 42, 41, 43, 40]  # fast, slower; B: at the budget
B = [100] * 5


@pytest.mark.parametrize("a, b, lower_bounds, at_most, holds", [
    (B, B, (True, True), True, None),    # N1 of the old quick lab: nobody reached it
    (F, B, (False, True), True, True),   # a far faster; b only more: holds
    (F, B, (True, False), True, None),   # a's true steps may be far more
    (B, S, (True, False), True, False),  # a already slower: fails
    (B, S, (False, True), True, None),   # b's true steps may be far more
    (B, S, (True, False), False, True),  # "a − b ≥ 0" holds: a only more
    (S, B, (False, True), False, False),  # "a − b ≥ 0" fails: b only more
    (S, B, (True, False), False, None),
    (S, B, (False, False), False, False),  # nothing censored: the Welch interval decides
    (F[:2], B[:2], (False, True), True, None),  # 2 against 2: p = 1/6, not significant
    (F[:3], B[:3], (False, True), True, None),  # 3 against 3: p = 1/20 > 0.025
])
def test_a_count_that_is_only_a_lower_bound_decides_only_what_it_cannot_overturn(
        a, b, lower_bounds, at_most, holds):
    from sharenorm.lab.stats import compare

    c = compare("x", a, b, 0, at_most=at_most, lower_bounds=lower_bounds)
    assert c.holds is holds, str(c)
    assert ("lower bound" in str(c)) == (holds is None and any(lower_bounds))
    # a negative scale turns both the reported difference and the criterion around
    neg = compare("x", a, b, 0, scale=-1, at_most=not at_most, lower_bounds=lower_bounds)
    assert neg.holds is holds, str(neg)


def test_a_lower_bound_can_widen_the_spread_so_the_welch_interval_does_not_decide():
    """Larger true values raise the censored side's mean but may also raise its spread:
    b = [100, 100] at the budget, true [101, 120], turns a Welch interval of [−92, −66]
    into [−205, +26]. What decides is whether every seed pair lies beyond the margin."""
    from sharenorm.lab.stats import compare, diff_ci

    assert diff_ci([20, 22], [101, 120]).hi > 0  # the true values: inconclusive
    c = compare("x", [20, 22], [100, 100], 0, at_most=True, lower_bounds=(False, True))
    assert c.welch_interval[1] < 0 and c.holds is None
    # pairs that straddle the margin: inconclusive whatever the Welch interval says
    mixed = compare("x", [20, 22, 21, 23, 105], B, 0, at_most=True, lower_bounds=(False, True))
    assert mixed.welch_interval[1] < 0 and mixed.holds is None
    assert "every pairwise difference in [-80.0, +5.0], rank test p = 0.004" in str(mixed)
    # the grid's spacing and a measured factor widen the pairs as they widen the interval
    near = compare("x", [95] * 5, B, 0, at_most=True, lower_bounds=(False, True))
    assert near.holds is True
    assert compare("x", [95] * 5, B, 0, at_most=True, lower_bounds=(False, True),
                   resolution=10).holds is None  # a true b may be 91 < 95
    assert compare("x", [95] * 5, B, 0, at_most=True, b_factor=1.0, lower_bounds=(False, True),
                   b_factor_range=(0.9, 1.1)).holds is None  # 0.9·100 < 95


def test_a_lower_bound_in_b_raises_a_difference_that_adds_it():
    """mean(a) − c·mean(b) with c < 0 grows with b: a censored b may raise it."""
    from sharenorm.lab.stats import compare

    c = compare("a + b", [1, 2] * 3, B[:6], 0, b_factor=-1, lower_bounds=(False, True))
    assert (c.could_rise, c.could_fall) == (True, False)
    assert c.holds is True  # a + b ≥ 0 holds, and a larger b only strengthens it
    # "a + b ≤ 200" holds as measured (101.5), but a larger b could overturn it
    assert compare("a + b", [1, 2] * 3, B[:6], 200, b_factor=-1, at_most=True,
                   lower_bounds=(False, True)).holds is None
    assert compare("a + b", [1, 2] * 3, B[:6], 200, b_factor=-1, at_most=True).holds is True


def test_values_read_on_a_grid_widen_the_interval_by_its_spacing():
    """Steps to a target are read every 50 steps: BN at 500 and no norm at 750 in every seed
    give a zero-width interval exactly on N1's margin (500 − ⅔·750 = 0), "holds"; the true
    crossings lie in (450, 500] and (700, 750], so the difference lies in (−50, +33.3]."""
    from sharenorm.lab.stats import compare

    bare = compare("BN − ⅔ none", [500] * 5, [750] * 5, 0, at_most=True, b_factor=2 / 3)
    assert bare.holds is True
    c = compare("BN − ⅔ none", [500] * 5, [750] * 5, 0, at_most=True, b_factor=2 / 3,
                resolution=50)
    assert c.holds is None and c.interval == pytest.approx((-50, 100 / 3))
    assert "95% CI [+0.0, +0.0] widened by the checkpoint spacing to [-50.0, +33.3]" in str(c)
    # a difference wider than the spacing is still decided
    assert compare("BN − none", [500] * 5, [750] * 5, 0, at_most=True,
                   resolution=50).holds is True
    # the sides swap for a negative weight on b, and a negative scale turns them around
    assert compare("a + b", [0] * 3, [0] * 3, 0, b_factor=-1, resolution=10).interval == (-20, 0)
    assert compare("−(a − 2b)", [0] * 3, [0] * 3, 0, scale=-1, b_factor=2,
                   resolution=10).interval == (-20, 10)
    with pytest.raises(ValueError, match="resolution"):
        compare("x", [1, 2], [1, 2], 0, resolution=-1)


def test_a_measured_factor_widens_the_interval_to_cover_its_own_interval():
    """Seconds to a target compare steps_a − (t_b/t_a)·steps_b with a ratio of measured step
    times: over a ratio interval [1.95, 2.05] around 2.0 and mean(b) = 100, the difference
    moves by ∓5, on top of the Welch interval."""
    from sharenorm.lab.stats import compare

    bare = compare("sec", [190, 190], [100, 100], 0, at_most=True, b_factor=2.0)
    assert bare.interval == (-10, -10) and bare.holds is True
    c = compare("sec", [190, 190], [100, 100], 0, at_most=True, b_factor=2.0,
                b_factor_range=(1.95, 2.05))
    assert c.interval == pytest.approx((-15, -5)) and c.holds is True
    assert "95% CI [-10.0, -10.0] widened by the timing's 95% interval to [-15.0, -5.0]" in str(c)
    wide = compare("sec", [190, 190], [100, 100], 0, at_most=True, b_factor=2.0,
                   b_factor_range=(1.8, 2.2), resolution=5)
    assert wide.interval == pytest.approx((-35, 20)) and wide.holds is None
    assert "the checkpoint spacing and the timing's 95% interval" in str(wide)


def test_hairline_differences_are_inconclusive_not_decided():
    # N6(b) of the old report: GN ahead of BN in every seed, but by about 3.3 < 5 points.
    # Mean-vs-margin would say "fails"; the interval [-0.3, 6.9] says "cannot tell".
    from sharenorm.lab.stats import compare

    gn, bn = [0.60, 0.64, 0.615], [0.58, 0.59, 0.586]
    c = compare("GN − BN", gn, bn, 5, scale=100)
    assert c.estimate < 5 and c.holds is None


def plateaued(curve, budget):
    """The lab's plateau rule (``_protocol.converged``) for one run: a contender of one seed."""
    from sharenorm.lab.experiments._protocol import converged

    return converged([{"curve": curve, "steps_done": budget}])


def _curve(acc_at, budget=100, every=10):
    """Checkpoints ``[[step, acc_at(step)], ...]`` every ``every`` steps up to ``budget``."""
    return [[s, acc_at(s)] for s in range(every, budget + 1, every)]


def test_plateau_ignores_an_early_peak():
    from sharenorm.lab.stats import tail_gain

    # best at 20% of the budget, flat at 90% from 30% on: the last 20% gained nothing; the
    # peak anywhere minus the checkpoint at 80% would call it 3 points of gain
    curve = _curve(lambda s: 0.93 if s == 20 else 0.9 if s >= 30 else 0.5)
    assert tail_gain(curve, 100) == pytest.approx(0.0)
    assert plateaued(curve, 100) is True


def test_plateau_ignores_one_dipped_checkpoint():
    from sharenorm.lab.stats import tail_gain

    # flat at 90% with one checkpoint 3 points low exactly at 80%: one checkpoint in four of
    # its window, so it moves the gain by 3/4 point, under the 1-point threshold
    curve = _curve(lambda s: 0.87 if s == 80 else 0.9, every=5)
    assert tail_gain(curve, 100) == pytest.approx(0.0075)
    assert plateaued(curve, 100) is True


@pytest.mark.parametrize("per_step, flagged", [(0.0015, True), (0.0004, False)])
def test_plateau_flags_a_curve_still_rising(per_step, flagged):
    from sharenorm.lab.stats import tail_gain

    # steadily rising: the gain over the last 20 steps is 20·per_step (3 and 0.8 points)
    curve = _curve(lambda s: 0.6 + per_step * s)
    assert tail_gain(curve, 100) == pytest.approx(20 * per_step)
    assert plateaued(curve, 100) is (not flagged)


def test_plateau_is_robust_to_checkpoint_noise():
    # a converged run (flat at 90%) whose checkpoints carry the noise of a 1000-sample test
    # set (s.d. ≈ 1 point): with 6 checkpoints per window (N1's 1500 steps, one every 50)
    # the rule calls it converged far more often than the noise-free threshold would miss
    rng = np.random.default_rng(0)
    calls = [plateaued(_curve(lambda s: 0.9 + 0.0095 * rng.standard_normal(), 1500, 50), 1500)
             for _ in range(400)]
    assert sum(calls) / len(calls) > 0.85  # σ·√(2/6) = 0.55 point: P(gain < 1) ≈ 0.96


def test_plateau_cannot_tell_without_two_checkpoints_per_window():
    from sharenorm.lab.stats import tail_gain

    assert plateaued([[100, 0.5], [400, 0.9], [500, 0.905]], 500) is None
    assert plateaued([[500, 0.9]], 500) is None and plateaued([], 10) is None
    assert plateaued([[70, 0.9], [80, 0.9], [90, 0.9], [100, 0.9]], 100) is True
    with pytest.raises(ValueError, match="tail must be in"):
        tail_gain([[100, 0.9]], 100, tail=0.6)


def test_strict_margins():
    from sharenorm.lab.stats import compare

    # "smaller": equal values are not smaller, even with no spread at all
    assert compare("x", [0.1, 0.1], [0.1, 0.1], 0, strict=True).holds is False
    assert compare("x", [0.1, 0.1], [0.1, 0.1], 0).holds is True
    assert compare("x", [0.1, 0.1], [0.2, 0.2], 0, at_most=True, strict=True).holds is True
    assert compare("x", [0.2, 0.2], [0.2, 0.2], 0, at_most=True, strict=True).holds is False


def test_intervals_at_extreme_magnitudes_are_the_scaled_ones():
    # squares of 1e200 overflowed (OverflowError) and spreads of 1e-90 underflowed the
    # Welch degrees of freedom to 0/0 (ZeroDivisionError)
    from sharenorm.lab.stats import diff_ci, mean_ci

    a, b = [1.0, 2.0, 3.5], [0.0, 1.0, 0.5, 0.2]
    m, h, _ = mean_ci(a)
    for k in (1e200, 1e-90):
        mk, hk, _ = mean_ci([x * k for x in a])
        assert mk == pytest.approx(m * k) and hk == pytest.approx(h * k)
        d, dk = diff_ci(a, b), diff_ci([x * k for x in a], [x * k for x in b])
        assert (dk.lo, dk.hi) == pytest.approx((d.lo * k, d.hi * k))
