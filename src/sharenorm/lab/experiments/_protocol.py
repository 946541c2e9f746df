"""The fair-comparison protocol: a learning rate per contender chosen on a validation split
carved from the training data (never the test set), then a fresh seed for the final run.

One lab run does both, so the runner's plan stays static: for a final seed ``s`` the grid is
tried with selection seed ``s + SELECT_SEED`` (other initial weights, other batch order) on
the training data minus a validation split, the rate with the best validation accuracy wins
(a diverged try counts as 0; a tie goes to the smaller rate), and the final run trains on the
whole training set with seed ``s`` at that rate and reports the test accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from sharenorm.data import Dataset
from sharenorm.lab.spec import all3
from sharenorm.lab.stats import PLATEAU_MIN_GAIN, PLATEAU_TAIL, tail_gain

__all__ = ["validation_split", "select_lr", "classifier_trial", "accuracy_score",
           "checkpoint_every", "converged", "mean_tail_gain", "tail_gain_cell", "GAIN_HEADER",
           "SELECT_SEED", "VAL_FRACTION", "SELECT_FRACTION", "SCHEDULE", "CHECKPOINTS",
           "unconverged_text", "selection_text"]

SELECT_SEED = 1000   # selection seeds are the final seeds + this: never the same weights
VAL_FRACTION = 0.2   # share of the training set held out for choosing the learning rate
SELECT_FRACTION = 0.5  # a selection run trains this share of the final run's steps
# The rate schedule of the runs whose final accuracy is compared (train.lr_at): the rate
# anneals to 0 over the budget, so a run ends at its plateau instead of wandering at the peak
# rate; selection tries use it over their own, shorter budget.
SCHEDULE = "cosine"
# accuracy checkpoints of a run without a curve of its own: the plateau check needs
# PLATEAU_MIN_CHECKPOINTS in each of its two windows (the last 20% and the 20% before)
CHECKPOINTS = 10


def validation_split(ds: Dataset, fraction: float = VAL_FRACTION, seed: int = 0) -> Dataset:
    """``ds`` with a random ``fraction`` of its *training* samples as the evaluation split and
    the rest to train on; the test set is not used at all.

    Example:
        >>> import torch
        >>> from sharenorm.data import Dataset
        >>> ds = Dataset("t", torch.randn(100, 1, 8), torch.arange(100) % 10,
        ...              torch.randn(50, 1, 8), torch.arange(50) % 10, 10)
        >>> v = validation_split(ds, 0.2)
        >>> len(v.x_train), len(v.x_test), bool((v.x_test[:, None] == ds.x_test).all(-1).any())
        (80, 20, False)
    """
    n = len(ds.x_train)
    n_val = max(1, int(round(fraction * n)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = perm[:n_val], perm[n_val:]
    return Dataset(ds.name + "-val", ds.x_train[train], ds.y_train[train], ds.x_train[val],
                   ds.y_train[val], ds.num_classes, ds.source + " (validation split)")


def accuracy_score(m: dict) -> float:
    """A classifier's validation score: its accuracy on the split, 0 when it diverged."""
    return 0.0 if m.get("diverged") else float(m.get("test_acc") or 0.0)


def select_lr(train: Callable[[Dataset, float, int], dict], ds: Dataset, grid: list[float],
              seed: int, score: Callable[[dict], float] = accuracy_score
              ) -> tuple[float, dict[str, float]]:
    """The learning rate of ``grid`` with the best validation score, and each rate's score
    (``{"0.05": 0.91, ...}``).

    ``train(ds, lr, seed)`` trains a fresh model and returns its metrics (those of
    ``train_classifier``: the "test" numbers of the split are validation numbers); it is
    called on :func:`validation_split` of ``ds`` with the selection seed. ``score(metrics)``
    is higher for better (default :func:`accuracy_score`; an error enters negated); a
    non-finite score (a diverged try) loses to every finite one and is stored as None.

    Example:
        >>> import torch
        >>> from sharenorm.data import Dataset
        >>> ds = Dataset("t", torch.randn(100, 1, 8), torch.arange(100) % 10,
        ...              torch.randn(50, 1, 8), torch.arange(50) % 10, 10)
        >>> select_lr(lambda d, lr, s: {"test_acc": 1 - abs(lr - 0.1)}, ds, [0.01, 0.1, 1.0], 0)
        (0.1, {'0.01': 0.91, '0.1': 1.0, '1': 0.1})
    """
    val = validation_split(ds, seed=seed + SELECT_SEED)
    raw = {lr: score(train(val, lr, seed + SELECT_SEED)) for lr in grid}
    raw = {lr: float(f"{v:.8g}") if math.isfinite(v) else -math.inf for lr, v in raw.items()}
    best = max(sorted(grid), key=lambda lr: raw[lr])  # ties: the smaller rate
    return best, {f"{lr:g}": v if math.isfinite(v) else None for lr, v in raw.items()}


def classifier_trial(build: Callable[[Dataset], torch.nn.Module], steps: int,
                     fraction: float = SELECT_FRACTION,
                     **train_kw) -> Callable[[Dataset, float, int], dict]:
    """The ``train`` of :func:`select_lr` for a classifier: ``build(ds)`` (after seeding)
    trained by ``train_classifier`` for ``fraction`` of the final run's ``steps`` optimizer
    steps (at least 1) with the other :class:`TrainConfig` fields of ``train_kw``."""
    from sharenorm.lab.train import TrainConfig, train_classifier

    def trial(d: Dataset, lr: float, seed: int) -> dict:
        torch.manual_seed(seed)
        return train_classifier(build(d), d, TrainConfig(
            steps=max(1, int(steps * fraction)), lr=lr, **train_kw), seed)[0]

    return trial


def checkpoint_every(steps: int, checkpoints: int = CHECKPOINTS) -> int:
    """``eval_every`` that gives a run of ``steps`` steps about ``checkpoints`` accuracy
    checkpoints (and one at its last step): with the default, enough for
    :func:`~sharenorm.lab.stats.tail_gain`, which needs
    :data:`~sharenorm.lab.stats.PLATEAU_MIN_CHECKPOINTS` in the last 20% of the budget and in
    the 20% before it (any 20% of ≥ 10 steps holds ≥ 2 multiples of ``steps // 10``).

    Example:
        >>> checkpoint_every(375), checkpoint_every(3)
        (37, 1)
    """
    return max(1, steps // checkpoints)


def selection_text(grid, quick_lr: float, score: str = "validation accuracy",
                   score_hi: str | None = None, data: str = "training set",
                   data_hi: str | None = None) -> tuple[str, str]:
    """How :func:`select_lr` chose a rate, as prose (English, Hindi) for a protocol, formatted
    from the constants: "from <grid> by <score> after 0.5× the steps on 80% of the <data>
    (selection seeds = seed + 1000; quick: <quick_lr>)".

    Example:
        >>> selection_text([0.01, 0.1], 0.05)[0]
        'from 0.01, 0.1 by validation accuracy after 0.5× the steps on 80% of the training set (selection seeds = seed + 1000; quick: 0.05)'
    """
    rates = ", ".join(f"{x:g}" for x in grid)
    share, seeds = f"{1 - VAL_FRACTION:.0%}", f"selection seeds = seed + {SELECT_SEED}"
    return (f"from {rates} by {score} after {SELECT_FRACTION:g}× the steps on {share} of the "
            f"{data} ({seeds}; quick: {quick_lr:g})",
            f"{rates} में से, {data_hi or data} के {share} पर {SELECT_FRACTION:g}× steps के बाद "
            f"{score_hi or score} से ({seeds}; quick: {quick_lr:g})")


def unconverged_text(what: str = "accuracy", what_hi: str | None = None) -> tuple[str, str]:
    """The plateau rule as prose (English, Hindi), formatted from the constants of
    :func:`~sharenorm.lab.stats.tail_gain`: what "a contender has not converged" means.

    Example:
        >>> unconverged_text("test accuracy")[0]
        'over its seeds, the mean of its test accuracy checkpoints in the last 20% of the budget was on average ≥ 1 point above the mean of those in the 20% before it'
    """
    t, g = f"{PLATEAU_TAIL:.0%}", f"{100 * PLATEAU_MIN_GAIN:g}"
    return (f"over its seeds, the mean of its {what} checkpoints in the last {t} of the budget "
            f"was on average ≥ {g} point above the mean of those in the {t} before it",
            f"seeds का औसत लें तो budget के आख़िरी {t} के {what_hi or what} checkpoints का mean "
            f"उससे पहले के {t} वालों के mean से ≥ {g} point ऊपर था")


# the column of tail_gain_cell
GAIN_HEADER = (f"last {PLATEAU_TAIL:.0%} of the budget gained (points, mean over seeds; "
               f"✓ plateau: < {100 * PLATEAU_MIN_GAIN:g})")


def mean_tail_gain(ms) -> float | None:
    """What the last 20% of the budget gained, averaged over one contender's runs
    (:func:`~sharenorm.lab.stats.tail_gain` of each run over its own ``steps_done``).

    Why the mean over seeds and not every run on its own: one run's gain carries its
    checkpoints' noise (≈ 0.8 points s.d. at 93% on 1000 test samples, two checkpoints per
    window), so a converged run crosses the 1-point bar about one time in nine, and of 25
    converged runs "all below 1 point" holds only ~5% of the time; the mean of n seeds has
    √n times less noise, while a contender that is still learning keeps its gain in the mean.

    Diverged runs are left out (decided: they count as 0 in the comparison, they are not
    unconverged); 0.0 when every run diverged; None when a run has no curve to tell.

    Example:
        >>> flat = {"curve": [[s, 0.9] for s in range(1, 11)], "steps_done": 10}
        >>> rising = {"curve": [[s, 0.5 + s / 100] for s in range(1, 11)], "steps_done": 10}
        >>> round(mean_tail_gain([flat, rising, {"diverged": True}]), 6)
        0.01
    """
    gains = [tail_gain(m.get("curve"), m.get("steps_done") or 0)
             for m in ms if not m.get("diverged")]
    if any(g is None for g in gains):
        return None
    return math.fsum(gains) / len(gains) if gains else 0.0


def converged(*contenders) -> bool | None:
    """Whether every contender (a list of its runs' metrics) reached a plateau: its
    :func:`mean_tail_gain` is below :data:`~sharenorm.lab.stats.PLATEAU_MIN_GAIN`. False when
    one had not, None when one cannot tell (a run without a curve).

    Example:
        >>> flat = {"curve": [[s, 0.9] for s in range(1, 11)], "steps_done": 10}
        >>> rising = {"curve": [[s, 0.5 + s / 100] for s in range(1, 11)], "steps_done": 10}
        >>> converged([flat, flat]), converged([flat], [rising, rising])
        (True, False)
    """
    gains = [mean_tail_gain(ms) for ms in contenders]
    return all3(*(None if g is None else g < PLATEAU_MIN_GAIN for g in gains))


def tail_gain_cell(ms) -> str:
    """A table cell: the contender's :func:`mean_tail_gain` in points, marked ✓ when below the
    plateau bar (converged), e.g. ``"+0.4 ✓"`` or ``"+2.1"``; "—" without curves.

    Example:
        >>> tail_gain_cell([{"curve": [[s, 0.9] for s in range(1, 11)], "steps_done": 10}])
        '+0.0 ✓'
    """
    g = mean_tail_gain(ms)
    if g is None:
        return "—"
    return f"{100 * g:+.1f}" + (" ✓" if g < PLATEAU_MIN_GAIN else "")


def steps_to_target(ms, budget: int) -> tuple[list[int], bool]:
    """Each run's optimizer steps to its target accuracy, a run that never reached it counted
    at the step budget, and whether one was: its true count is only known to be larger, so a
    comparison of these must be told (``compare(..., lower_bounds=...)``).

    Example:
        >>> steps_to_target([{"steps_to_target": 40}, {"steps_to_target": None}], 100)
        ([40, 100], True)
    """
    steps = [m["steps_to_target"] for m in ms]
    return [budget if s is None else s for s in steps], None in steps


# How a comparison of steps to a target reads them (English, Hindi).
STEPS_TO_TARGET_TEXT = (
    "steps are read at the test-accuracy checkpoints, so the interval of a difference is "
    "widened by their spacing; a run that never reaches the target counts as the step budget, "
    "a lower bound of its steps, and a verdict that a larger count could overturn is "
    "inconclusive",
    "steps test-accuracy checkpoints पर पढ़े जाते हैं, इसलिए difference का interval उनकी दूरी जितना "
    "चौड़ा किया जाता है; जो run target तक नहीं पहुँचे वह पूरा step budget गिना जाए, जो उसके steps की "
    "निचली सीमा है; जिस verdict को बड़ी गिनती पलट सकती हो वह inconclusive")


def unreached_text(contenders: dict[str, list]) -> str:
    """``"; reached the target: BN 0/2, none 1/2 (…)"`` for a claim's measured text when a run
    of these contenders never reached it (their step counts are then lower bounds), else "".

    Example:
        >>> unreached_text({"BN": [{"steps_to_target": 40}], "none": [{"steps_to_target": None}]})
        '; reached the target: BN 1/1, none 0/1 (a run that did not counts as the step budget)'
    """
    hits = {k: sum(m["steps_to_target"] is not None for m in ms) for k, ms in contenders.items()}
    if all(hits[k] == len(ms) for k, ms in contenders.items()):
        return ""
    counts = ", ".join(f"{k} {hits[k]}/{len(ms)}" for k, ms in contenders.items())
    return f"; reached the target: {counts} (a run that did not counts as the step budget)"
