"""Helpers the experiments share: data by name, figures, number formatting."""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

from sharenorm.data import Dataset, load_digits, load_mnist1d, load_path
from sharenorm.lab.spec import RunContext
from sharenorm.lab.stats import mean_ci

__all__ = ["dataset", "data_label", "figure", "save_figure", "pct", "ci_band", "accuracies", "PCT_BOUNDS",
           "epoch_steps", "samples_for_one_step"]


_EMBEDDED = {"mnist1d": lambda: load_mnist1d(), "mnist1d-shuffled":
             lambda: load_mnist1d(shuffle_seq=True), "digits": lambda: load_digits()}


@functools.lru_cache(maxsize=4)
def _load(name: str) -> Dataset:
    if name in _EMBEDDED:
        return _cached(name)
    return load_path(name)


def _cached(name: str) -> Dataset:
    """An embedded dataset from the disk cache, generated (and cached) when missing.

    Generating mnist1d (and importing the packages that do it) takes seconds, in every lab
    worker process; the cached tensors load in milliseconds. The cache file is named by a
    hash of what the data depends on: the loader's source and the versions of the packages
    that generate it, so a change to any of them generates afresh. An unwritable cache dir
    only costs the time.
    """
    import hashlib
    import inspect
    from importlib import metadata

    import numpy
    import torch

    from sharenorm._cache import cache_dir
    from sharenorm.data import embedded

    key = [name, inspect.getsource(embedded), numpy.__version__, torch.__version__]
    for dist in ("mnist1d", "scikit-learn"):
        try:
            key.append(metadata.version(dist))
        except metadata.PackageNotFoundError:
            key.append("-")
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:16]
    path = cache_dir() / "lab-data" / f"{name}-{digest}.pt"
    try:
        d = torch.load(path, weights_only=True)
        return Dataset(d["name"], d["x_train"], d["y_train"], d["x_test"], d["y_test"],
                       int(d["num_classes"]), d["source"], dict(d["info"]))
    except Exception:  # noqa: BLE001 - missing, partial or foreign file: generate
        pass
    ds = _EMBEDDED[name]()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"name": ds.name, "x_train": ds.x_train, "y_train": ds.y_train,
                    "x_test": ds.x_test, "y_test": ds.y_test, "num_classes": ds.num_classes,
                    "source": ds.source, "info": ds.info}, tmp)
        os.replace(tmp, path)  # atomic: a parallel worker never reads half a file
    except OSError:
        pass
    return ds


def dataset(ctx: RunContext, default: str = "mnist1d", allow_user: bool = True) -> Dataset:
    """The user's ``--data`` if given and allowed, else the embedded default (cached)."""
    if allow_user and ctx.data_path:
        return _load(ctx.data_path)
    return _load(default)


def data_label(ctx: RunContext, ds: Dataset, allow_user: bool = True) -> str:
    """What a run measured on, as the report names it: ``"mnist1d"``, or ``"--data sig"`` for
    the user's file ``sig.npz`` (the same ``allow_user`` as the :func:`dataset` call)."""
    return f"--data {ds.name}" if allow_user and ctx.data_path else ds.name


def epoch_steps(epochs: float, n_train: int, batch_size: int) -> int:
    """Optimizer steps of ``epochs`` passes over ``n_train`` samples in full batches.

    The experiments that fix a number of epochs (N6, N8) train this many steps; it is 0 when
    the training set is too small for one full batch in that fraction of an epoch.

    Example:
        >>> epoch_steps(0.125, 4000, 32), epoch_steps(0.1, 36, 4)
        (15, 0)
    """
    return int(epochs * n_train) // batch_size


def samples_for_one_step(epochs: float, batch_size: int) -> int:
    """The fewest training samples that hold one full batch and for which :func:`epoch_steps`
    gives at least one step.

    Example:
        >>> samples_for_one_step(0.1, 4), samples_for_one_step(3, 64)
        (40, 64)
    """
    # ceil(batch / epochs) up to rounding, then corrected against epoch_steps itself, so
    # the runner's up-front check and the run agree exactly
    n = max(batch_size, math.ceil(batch_size / epochs))
    while n > batch_size and epoch_steps(epochs, n - 1, batch_size) >= 1:
        n -= 1
    while epoch_steps(epochs, n, batch_size) < 1:
        n += 1
    return n


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
