"""Means and 95% confidence intervals over seeds (Student t), and their formatting."""

from __future__ import annotations

import math

__all__ = ["mean_ci", "fmt_ci", "overlap", "separated", "mean_or_inf"]


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
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    m = sum(xs) / n
    if n == 1:
        return m, math.nan, 1
    from scipy.stats import t

    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    return m, float(t.ppf((1 + level) / 2, n - 1)) * s / math.sqrt(n), n


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
