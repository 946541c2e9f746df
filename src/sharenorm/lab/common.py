"""Helpers the experiments share: data by name, figures, number formatting."""

from __future__ import annotations

import functools
from pathlib import Path

from sharenorm.data import Dataset, load_digits, load_mnist1d, load_path
from sharenorm.lab.spec import RunContext
from sharenorm.lab.stats import mean_ci

__all__ = ["dataset", "figure", "save_figure", "pct", "ci_band", "accuracies", "PCT_BOUNDS"]


@functools.lru_cache(maxsize=4)
def _load(name: str) -> Dataset:
    if name == "mnist1d":
        return load_mnist1d()
    if name == "mnist1d-shuffled":
        return load_mnist1d(shuffle_seq=True)
    if name == "digits":
        return load_digits()
    return load_path(name)


def dataset(ctx: RunContext, default: str = "mnist1d", allow_user: bool = True) -> Dataset:
    """The user's ``--data`` if given and allowed, else the embedded default (cached)."""
    if allow_user and ctx.data_path:
        return _load(ctx.data_path)
    return _load(default)


def figure(*size):
    """A new matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(*size[:2], figsize=size[2] if len(size) > 2 else (6, 4))


def save_figure(fig, figdir: Path, name: str) -> str:
    """Save to ``figdir/name.png``; returns the path relative to the report folder."""
    import matplotlib.pyplot as plt

    figdir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(figdir / f"{name}.png", dpi=110)
    plt.close(fig)
    return f"{figdir.name}/{name}.png"


def pct(values, digits: int = 1) -> str:
    """Accuracies in [0, 1] as ``"93.4 ± 0.8"`` percent points, the interval clipped to
    [0, 100] (``"15.2 [0.0, 57.8]"``); see :func:`~sharenorm.lab.stats.fmt_ci`."""
    from sharenorm.lab.stats import fmt_ci

    return fmt_ci(values, 100.0, digits, bounds=(0.0, 1.0))


def ci_band(values_by_x: dict, scale: float = 1.0, bounds: tuple[float, float] | None = None):
    """(xs, means, lows, highs) for plotting a mean line with its 95% interval band.

    ``bounds`` (in plotted units, after ``scale``) clips the band to the possible range:
    ``(0, 100)`` for an accuracy or error in percent, ``(0, inf)`` for an MSE.
    """
    xs, ms, lo, hi = [], [], [], []
    for x, vals in values_by_x.items():
        m, h, n = mean_ci(vals)
        if n == 0:
            continue
        h = 0.0 if n < 2 else h
        low, high = (m - h) * scale, (m + h) * scale
        if bounds is not None:
            low, high = max(low, bounds[0]), min(high, bounds[1])
        xs.append(x)
        ms.append(m * scale)
        lo.append(low)
        hi.append(high)
    return xs, ms, lo, hi


PCT_BOUNDS = (0.0, 100.0)


def accuracies(metrics, key: str = "test_acc") -> list[float]:
    """Accuracy ``key`` of each run, a diverged run counting as 0 (not dropped: that would
    flatter it). Every aggregate of accuracies in the lab goes through this."""
    return [0.0 if m.get("diverged") else m.get(key) for m in metrics]
