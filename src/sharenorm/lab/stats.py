"""Means and 95% confidence intervals over seeds (Student t), differences of means with their
Welch intervals, and the rule that turns a difference into a criterion's outcome.

A criterion compares the 95% interval of a *difference* with a stated margin (:func:`compare`):
the whole interval beyond the margin holds, the whole interval short of it fails, and an
interval that straddles it is inconclusive — never decided by the noise of a few seeds.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

__all__ = ["mean_ci", "fmt_ci", "overlap", "separated", "mean_or_inf", "Diff", "diff_ci",
           "Comparison", "compare", "tail_gain", "PLATEAU_TAIL",
           "PLATEAU_MIN_GAIN", "PLATEAU_MIN_CHECKPOINTS"]


def _finite(values) -> list[float]:
    """The values as floats, None/NaN/inf dropped (a run without that number)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_ci(values, level: float = 0.95) -> tuple[float, float, int]:
    r"""Mean and half-width of the two-sided t confidence interval.

    .. math::
        \bar x \pm t_{(1+\text{level})/2,\; n-1}\; s/\sqrt n, \qquad s^2 = \tfrac{1}{n-1}\sum (x_i-\bar x)^2

    None/NaN values are dropped. With one value the half-width is NaN (no interval), with
    none the mean is NaN too.

    Example:
        >>> m, h, n = mean_ci([1.0, 2.0, 3.0])
        >>> round(m, 3), round(h, 3), n
        (2.0, 2.484, 3)
    """
    xs = _finite(values)
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    m = sum(xs) / n
    if n == 1:
        return m, math.nan, 1
    s = _sd(xs)
    return m, t_quantile((1 + level) / 2, n - 1) * s / math.sqrt(n), n


def fmt_ci(values, scale: float = 1.0, digits: int = 1, unit: str = "",
           bounds: tuple[float, float] | None = None) -> str:
    """``"93.4 ± 0.8"`` (× ``scale``); ``"93.4 (n=1)"`` for one value; ``"—"`` for none.

    Values that :func:`mean_ci` drops (None/NaN: a run without that number) are never dropped
    silently: the text ends in ``(n=2 of 3)``. With ``bounds`` (the possible range, before
    ``scale``: ``(0, 1)`` for an accuracy) an interval that reaches outside it is shown clipped
    as ``"15.2 [0.0, 57.8]"`` instead of an impossible ``"15.2 ± 42.6"``.

    Example:
        >>> fmt_ci([0.9, 0.91, None], 100), fmt_ci([0.1, 0.3], 100, bounds=(0, 1))
        ('90.5 ± 6.4 (n=2 of 3)', '20.0 [0.0, 100.0]')
    """
    vals = list(values)
    m, h, n = mean_ci(vals)
    note = f" (n={n} of {len(vals)})" if n < len(vals) else ""
    if n == 0:
        return "—" + note
    if n == 1:
        return f"{m * scale:.{digits}f}{unit} " + (note.strip() or "(n=1)")
    if bounds is not None and (m - h < bounds[0] or m + h > bounds[1]):
        lo, hi = max(m - h, bounds[0]), min(m + h, bounds[1])
        return (f"{m * scale:.{digits}f}{unit} [{lo * scale:.{digits}f}, "
                f"{hi * scale:.{digits}f}]{note}")
    return f"{m * scale:.{digits}f} ± {h * scale:.{digits}f}{unit}{note}"


def overlap(a, b) -> bool:
    """Whether the 95% intervals of two samples overlap (True when either has no interval).

    A criterion should use :func:`separated`, which says when it cannot tell.
    """
    return separated(a, b) is not True


def separated(a, b) -> bool | None:
    """Whether the 95% intervals of two samples do *not* overlap; None when either sample has
    fewer than 2 values (no interval: the question cannot be decided, see
    :data:`~sharenorm.lab.spec.UNDECIDABLE`).

    Example:
        >>> separated([1.0, 1.01, 0.99], [2.0, 2.01, 1.99]), separated([1.0], [5.0, 5.1])
        (True, None)
    """
    ma, ha, na = mean_ci(a)
    mb, hb, nb = mean_ci(b)
    if na < 2 or nb < 2:
        return None
    return ma - ha > mb + hb or mb - hb > ma + ha


def mean_or_inf(values) -> float:
    """Mean of times-to-target where ``None`` means "never reached": infinite if any is None.

    Example:
        >>> mean_or_inf([1.0, 3.0]), mean_or_inf([1.0, None])
        (2.0, inf)
    """
    vals = list(values)
    if not vals or any(v is None for v in vals):
        return math.inf
    return sum(vals) / len(vals)


# --------------------------------------------------------------------------- differences
@dataclass(frozen=True)
class Diff:
    """A difference of means with its 95% interval: ``estimate`` in [``lo``, ``hi``]."""

    estimate: float
    lo: float
    hi: float
    n_a: int
    n_b: int


def diff_ci(a, b, level: float = 0.95, b_factor: float = 1.0) -> Diff:
    r"""Welch's interval for :math:`\bar a - c\,\bar b` (``c`` = ``b_factor``).

    .. math::
        d = \bar a - c\bar b,\quad se^2 = \frac{s_a^2}{n_a} + \frac{c^2 s_b^2}{n_b},\quad
        \nu = \frac{se^4}{\frac{(s_a^2/n_a)^2}{n_a-1} + \frac{(c^2 s_b^2/n_b)^2}{n_b-1}},\quad
        d \pm t_{(1+\text{level})/2,\,\nu}\; se

    Unequal variances are allowed (Welch–Satterthwaite degrees of freedom). ``b_factor``
    tests a ratio as a linear contrast: ":math:`\bar a \le \tfrac23 \bar b`" is
    ``diff_ci(a, b, b_factor=2/3).hi <= 0``. None/NaN values are dropped; with fewer than two
    values on either side there is no interval (``lo, hi = -inf, inf``). With no spread on
    either side the interval is the point itself.

    Example:
        >>> d = diff_ci([0.90, 0.92, 0.91], [0.80, 0.83, 0.81])
        >>> round(d.estimate, 3), round(d.lo, 3), round(d.hi, 3)
        (0.097, 0.065, 0.128)
        >>> diff_ci([1.0], [0.0, 0.1]).hi
        inf
    """
    xa, xb = _finite(a), [v * b_factor for v in _finite(b)]
    na, nb = len(xa), len(xb)
    if na == 0 or nb == 0:
        return Diff(math.nan, -math.inf, math.inf, na, nb)
    d = sum(xa) / na - sum(xb) / nb
    if na < 2 or nb < 2:
        return Diff(d, -math.inf, math.inf, na, nb)
    sa, sb = _sd(xa) / math.sqrt(na), _sd(xb) / math.sqrt(nb)  # the two standard errors
    se = math.hypot(sa, sb)
    if se == 0:
        return Diff(d, d, d, na, nb)
    # Welch–Satterthwaite as shares of se² (each in [0, 1]: no under- or overflow)
    wa, wb = (sa / se) ** 2, (sb / se) ** 2
    df = 1 / (wa ** 2 / (na - 1) + wb ** 2 / (nb - 1))
    h = t_quantile((1 + level) / 2, df) * se
    return Diff(d, d - h, d + h, na, nb)


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """Student's t quantile: ``P(T ≤ t_quantile(p, df)) = p`` for ``df`` (real) degrees of
    freedom (scipy.special's ``stdtrit``: scipy.stats would cost ~1 s of import per command).

    Example:
        >>> round(t_quantile(0.975, 4), 4)
        2.7764
    """
    from scipy.special import stdtrit

    return float(stdtrit(df, p))


def _sd(xs: list[float]) -> float:
    """The sample standard deviation, summed in units of the largest deviation: squares of
    values near 1e200 would overflow, of spreads near 1e-170 underflow to 0."""
    m = sum(xs) / len(xs)
    big = max(abs(x - m) for x in xs)
    if big == 0 or not math.isfinite(big):
        return big
    return big * math.sqrt(sum(((x - m) / big) ** 2 for x in xs) / (len(xs) - 1))


@dataclass(frozen=True)
class Comparison:
    r"""One criterion's comparison: the 95% CI of a difference against a stated margin.

    ``holds`` is True when the whole interval is on the claimed side of the margin
    (``≥ margin``, or ``≤ margin`` with ``at_most``), False when the whole interval is on the
    other side, and None (inconclusive) when the interval straddles the margin — the
    four-outcome rule of the lab: a criterion is never decided by noise.

    The numbers are in report units: ``scale`` times the raw values (100 for accuracies in
    points), ``margin`` in those units. ``unconverged``: a contender it rests on had not
    reached a plateau, so it is inconclusive whatever the interval says
    (:meth:`resting_on_unconverged`).

    ``could_rise`` / ``could_fall``: some values entered as lower bounds (a run that never
    reached its target counts as the step budget, and its true count is larger), so the true
    difference (in report units) may be higher / lower than the one measured, by an unknown
    amount. The Welch interval then decides nothing: larger true values move the mean one
    way but may widen the spread without bound, so either outcome could be overturned. An
    outcome that such a shift could overturn is inconclusive ("≤ margin" holds only if
    nothing could rise, fails only if nothing could fall; the reverse for "≥ margin"). The
    other outcome is decided by the seed pairs instead: it stands when every pairwise
    difference :math:`a_i - c\,b_j` (``pairs``: their range, each value anywhere in its grid
    cell and ``c`` anywhere in ``b_factor_range``) lies beyond the margin, so that larger
    true values only keep it there, and when that complete separation is significant: the
    exact one-sided rank-sum test of it has :math:`p = 1/\binom{n_a+n_b}{n_a} \le 0.025`
    (``rank_p``; 5 seeds against 5 give 0.004, 3 against 3 only 0.05).

    ``slack``: (below, above), in the values' own units: how far the true difference may lie
    below / above the measured one for reasons the Welch interval does not see (``widened_by``
    names them): values read on a grid (steps to a target, checked every so many steps, each
    rounded up to the checkpoint that saw it), a ``b_factor`` that is itself measured (a ratio
    of times). The interval that decides is the Welch interval widened by it; both are shown.
    """

    label: str
    diff: Diff
    margin: float
    scale: float = 1.0
    unit: str = ""
    digits: int = 1
    at_most: bool = False
    strict: bool = False
    unconverged: bool = False
    could_rise: bool = False
    could_fall: bool = False
    slack: tuple[float, float] = (0.0, 0.0)
    widened_by: str = ""
    pairs: tuple[float, float] | None = None
    rank_p: float = 1.0

    def resting_on_unconverged(self, yes: bool = True) -> Comparison:
        """This comparison, marked inconclusive when ``yes`` (a contender had not converged).

        Example:
            >>> c = compare("x", [0.80, 0.81, 0.82], [0.70, 0.71, 0.72], 5, scale=100)
            >>> c.holds, c.resting_on_unconverged().holds, str(c.resting_on_unconverged())[-40:]
            (True, None, 'inconclusive (a contender not converged)')
        """
        return replace(self, unconverged=yes)

    @property
    def estimate(self) -> float:
        return self.diff.estimate * self.scale

    @property
    def interval(self) -> tuple[float, float]:
        """The interval that decides: the Welch interval widened by ``slack``, in report
        units."""
        return self._in_report_units(self.diff.lo - self.slack[0], self.diff.hi + self.slack[1])

    @property
    def welch_interval(self) -> tuple[float, float]:
        """The 95% Welch interval of the measured values, in report units."""
        return self._in_report_units(self.diff.lo, self.diff.hi)

    def _in_report_units(self, lo: float, hi: float) -> tuple[float, float]:
        lo, hi = lo * self.scale, hi * self.scale
        return (lo, hi) if self.scale >= 0 else (hi, lo)

    @property
    def censored(self) -> bool:
        """Whether values that are only lower bounds left the outcome open."""
        return not self.unconverged and (self.could_rise or self.could_fall) and self.holds is None

    @property
    def holds(self) -> bool | None:
        out = None if self.unconverged else self._measured()
        if out is None:
            return None
        # "≤ margin" holding (the interval below it) or "≥ margin" failing: only a true
        # difference higher than measured could overturn it; the other two, only a lower one
        overturned_by_rise = out == self.at_most
        return None if (self.could_rise if overturned_by_rise else self.could_fall) else out

    def _measured(self) -> bool | None:
        """The outcome the interval gives (with lower bounds: the seed pairs, where their
        rank test is significant), before censoring and convergence are weighed."""
        if math.isnan(self.estimate):
            return None
        if self.could_rise or self.could_fall:
            if self.pairs is None or self.rank_p > _ONE_SIDED:
                return None
            lo, hi = self._in_report_units(*self.pairs)
        else:
            lo, hi = self.interval
        m = self.margin
        if self.at_most:
            if (hi < m) if self.strict else (hi <= m):
                return True
            return False if ((lo >= m) if self.strict else (lo > m)) else None
        if (lo > m) if self.strict else (lo >= m):
            return True
        return False if ((hi <= m) if self.strict else (hi < m)) else None

    def __str__(self) -> str:
        k = self.digits
        lo, hi = self.welch_interval
        iv = ("no interval (n < 2)" if not math.isfinite(lo) or not math.isfinite(hi)
              else f"95% CI [{lo:+.{k}f}, {hi:+.{k}f}]")
        if self.slack != (0.0, 0.0) and math.isfinite(lo) and math.isfinite(hi):
            lo, hi = self.interval
            iv += f" widened by {self.widened_by} to [{lo:+.{k}f}, {hi:+.{k}f}]"
        if (self.could_rise or self.could_fall) and self.pairs is not None:
            lo, hi = self._in_report_units(*self.pairs)
            iv += (f"; a run never reached the target, so it is decided by the seed pairs: every "
                   f"pairwise difference in [{lo:+.{k}f}, {hi:+.{k}f}], rank test p = "
                   f"{self.rank_p:.3f}")
        rel = ("<" if self.strict else "≤") if self.at_most else (">" if self.strict else "≥")
        out = ("inconclusive (a contender not converged)" if self.unconverged else
               "inconclusive (a run never reached the target: its count is only a lower bound)"
               if self.censored else
               {True: "holds", False: "fails", None: "inconclusive"}[self.holds])
        return (f"{self.label} {self.estimate:+.{k}f}{self.unit}, {iv} vs margin {rel} "
                f"{self.margin:g}: {out}")


def compare(label: str, a, b, margin: float, *, scale: float = 1.0, unit: str = "",
            digits: int = 1, at_most: bool = False, b_factor: float = 1.0,
            strict: bool = False, lower_bounds: tuple[bool, bool] = (False, False),
            resolution: float = 0.0,
            b_factor_range: tuple[float, float] | None = None) -> Comparison:
    """The criterion "mean(a) − b_factor·mean(b) ≥ margin" (``≤`` with ``at_most``; ``>`` /
    ``<`` with ``strict``, for "lower", "smaller", "fewer") decided from the 95% Welch interval
    of the difference; see :class:`Comparison`. ``lower_bounds``: whether some values of ``a``,
    of ``b`` are only lower bounds (runs that never reached a target, counted at the budget).
    ``resolution``: the values were read on a grid of this spacing, each rounded up (a true
    value lies in (recorded − resolution, recorded]), so the true difference may lie up to
    ``resolution`` below the measured one through ``a`` and ``b_factor·resolution`` above it
    through ``b`` (for ``b_factor`` > 0; the sides swap for a negative one).
    ``b_factor_range``: an interval the measured ``b_factor`` is known to lie in (the 95%
    interval of a ratio of step times); the deciding interval is widened to cover the
    difference at every value in it.

    Example:
        >>> c = compare("GN − BN", [0.80, 0.81, 0.82], [0.70, 0.71, 0.72], 5, scale=100,
        ...             unit=" points")
        >>> c.holds, str(c)
        (True, 'GN − BN +10.0 points, 95% CI [+7.7, +12.3] vs margin ≥ 5: holds')
        >>> compare("x", [0.80, 0.90], [0.70, 0.74], 5, scale=100).holds is None
        True
    """
    # a larger a raises the difference; a larger b raises it when b enters with a negative
    # weight (−b_factor > 0); a negative scale turns both around in report units
    rise = lower_bounds[0] or (lower_bounds[1] and b_factor < 0)
    fall = lower_bounds[1] and b_factor > 0
    if scale < 0:
        rise, fall = fall, rise
    if resolution < 0:
        raise ValueError(f"resolution must be ≥ 0 (a grid spacing), got {resolution!r}")
    # a true a lower by up to r lowers the difference; a true b lower by up to r raises it by
    # up to b_factor·r (lowers it, for a negative b_factor)
    below = resolution + max(0.0, -b_factor * resolution)
    above = max(0.0, b_factor * resolution)
    reasons = ["the checkpoint spacing"] if resolution else []
    if b_factor_range is not None:
        # mean(a) − c·mean(b) is linear in c: over the range it moves by (b_factor − c)·mean(b)
        xb = _finite(b)
        mean_b = sum(xb) / len(xb) if xb else 0.0
        shifts = [(b_factor - c) * mean_b for c in b_factor_range]
        below += max(0.0, -min(shifts))
        above += max(0.0, max(shifts))
        reasons.append("the timing's 95% interval")
    pairs, rank_p = None, 1.0
    if rise or fall:
        factors = (b_factor, *(b_factor_range or ()))
        pairs = _pairwise_range(a, b, factors, resolution)
        na, nb = len(_finite(a)), len(_finite(b))
        rank_p = 1 / math.comb(na + nb, na) if na and nb else 1.0
    return Comparison(label, diff_ci(a, b, b_factor=b_factor), margin, scale, unit, digits,
                      at_most, strict, could_rise=bool(rise), could_fall=bool(fall),
                      slack=(below, above), widened_by=" and ".join(reasons), pairs=pairs,
                      rank_p=rank_p)


_ONE_SIDED = 0.025  # the one-sided error of a 95% two-sided interval


def _pairwise_range(a, b, factors, resolution: float) -> tuple[float, float] | None:
    r"""(min, max) of :math:`a_i - c\,b_j` over every pair of finite values, every ``c`` in
    ``factors`` and every true value in a value's grid cell (v − resolution, v]: the expression
    is bilinear, so the extremes lie at the corners. None without a value on either side."""
    xa, xb = _finite(a), _finite(b)
    if not xa or not xb:
        return None
    corners = [x - d for x in (min(xa), max(xa)) for d in (0.0, resolution)]
    b_corners = [x - d for x in (min(xb), max(xb)) for d in (0.0, resolution)]
    values = [x - c * y for x in corners for y in b_corners for c in factors]
    return min(values), max(values)


PLATEAU_TAIL = 0.2          # the share of the step budget whose gain :func:`tail_gain` measures
PLATEAU_MIN_GAIN = 0.01     # converged: that tail gained less than this (1 point) on average
PLATEAU_MIN_CHECKPOINTS = 2  # checkpoints each window needs: one alone is as noisy as the gain


def tail_gain(curve, budget: int, tail: float = PLATEAU_TAIL) -> float | None:
    r"""What the last ``tail`` of the step budget gained: the mean accuracy of the checkpoints
    inside it minus the mean of those in the equally long window just before it.

    With budget :math:`B`, tail share :math:`t`, checkpoints :math:`(s_i, a_i)`,
    :math:`T = \{i : (1-t)B < s_i \le B\}` and :math:`P = \{i : (1-2t)B < s_i \le (1-t)B\}`:

    .. math::
        g = \frac{1}{|T|}\sum_{i\in T} a_i \;-\; \frac{1}{|P|}\sum_{i\in P} a_i

    Why windows of means: the two windows' centres are :math:`tB` steps apart, so for a curve
    that is locally a line :math:`g` is exactly the gain over :math:`tB` steps, i.e. over the
    tail (for a curve that still flattens it slightly overstates it: the check errs towards
    "not converged"). Checkpoint noise (independent, s.d. :math:`\sigma`: a test accuracy on
    1000 samples has :math:`\sigma \approx 1` point at 90%) enters as
    :math:`\sigma\sqrt{1/|T| + 1/|P|}`, and one dipped checkpoint of :math:`d` points moves
    :math:`g` by :math:`d/|P|`. The alternatives are noisier or measure something else:
    "the best accuracy anywhere minus the checkpoint at the start of the tail" counts an early
    peak, or a dip at that one checkpoint, as a gain (and the maximum of :math:`n` noisy
    checkpoints sits about :math:`\sigma\sqrt{2\ln n}` above the level); "the end minus the
    start of the tail" rests on two checkpoints (noise :math:`\sigma\sqrt 2`, the size of the
    threshold); a least-squares slope inside the tail, extrapolated over it, has noise
    :math:`\sigma\sqrt{12k/(k^2-1)}` for :math:`k` checkpoints, about 2.5× that of :math:`g`
    with :math:`k` per window (:math:`\sigma\sqrt{2/k}`).

    None when either window has fewer than :data:`PLATEAU_MIN_CHECKPOINTS` checkpoints (the
    question cannot be answered; :func:`~sharenorm.lab.experiments._protocol.checkpoint_every`
    gives enough).

    Raises:
        ValueError: ``tail`` outside (0, 0.5] (the window before it must fit in the budget).

    Example:
        >>> flat = [[s, 0.9] for s in range(10, 101, 10)]
        >>> rising = [[s, 0.5 + s / 250] for s in range(10, 101, 10)]   # +8 points per 20 steps
        >>> round(tail_gain(flat, 100), 6), round(tail_gain(rising, 100), 6)
        (0.0, 0.08)
        >>> tail_gain([[50, 0.5], [100, 0.9]], 100) is None   # one checkpoint per window
        True
    """
    if not 0 < tail <= 0.5:
        raise ValueError(f"tail must be in (0, 0.5] (a share of the budget, the window before "
                         f"it must fit too), got {tail!r}")
    if not curve or budget <= 0:
        return None
    t0, p0 = budget * (1 - tail), budget * (1 - 2 * tail)
    in_tail = [float(a) for s, a in curve if t0 < s <= budget]
    before = [float(a) for s, a in curve if p0 < s <= t0]
    if min(len(in_tail), len(before)) < PLATEAU_MIN_CHECKPOINTS:
        return None
    return sum(in_tail) / len(in_tail) - sum(before) / len(before)

