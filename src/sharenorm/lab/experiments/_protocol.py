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

__all__ = ["validation_split", "select_lr", "classifier_trial", "accuracy_score",
           "checkpoint_every", "runs_converged", "SELECT_SEED", "VAL_FRACTION",
           "SELECT_FRACTION", "CHECKPOINTS", "unconverged_text"]

SELECT_SEED = 1000   # selection seeds are the final seeds + this: never the same weights
VAL_FRACTION = 0.2   # share of the training set held out for choosing the learning rate
SELECT_FRACTION = 0.5  # a selection run trains this share of the final run's steps
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
                     **train_kw) -> Callable[[Dataset, float, int], dict]:
    """The ``train`` of :func:`select_lr` for a classifier: ``build(ds)`` (after seeding)
    trained by ``train_classifier`` for ``steps`` optimizer steps (:data:`SELECT_FRACTION`
    of the final run's, at least 1) with the other :class:`TrainConfig` fields of
    ``train_kw``."""
    from sharenorm.lab.train import TrainConfig, train_classifier

    def trial(d: Dataset, lr: float, seed: int) -> dict:
        torch.manual_seed(seed)
        return train_classifier(build(d), d, TrainConfig(
            steps=max(1, int(steps * SELECT_FRACTION)), lr=lr, **train_kw), seed)[0]

    return trial


def checkpoint_every(steps: int, checkpoints: int = CHECKPOINTS) -> int:
    """``eval_every`` that gives a run of ``steps`` steps about ``checkpoints`` accuracy
    checkpoints (and one at its last step): with the default, enough for
    :func:`~sharenorm.lab.stats.plateaued`, which needs
    :data:`~sharenorm.lab.stats.PLATEAU_MIN_CHECKPOINTS` in the last 20% of the budget and in
    the 20% before it (any 20% of ≥ 10 steps holds ≥ 2 multiples of ``steps // 10``).

    Example:
        >>> checkpoint_every(375), checkpoint_every(3)
        (37, 1)
    """
    return max(1, steps // checkpoints)


def unconverged_text(what: str = "accuracy", what_hi: str | None = None) -> tuple[str, str]:
    """The plateau rule as prose (English, Hindi), formatted from the constants of
    :func:`~sharenorm.lab.stats.plateaued`: what "a run has not converged" means.

    Example:
        >>> unconverged_text("test accuracy")[0]
        'the mean of its test accuracy checkpoints in the last 20% of the budget was ≥ 1 point above the mean of those in the 20% before it'
    """
    from sharenorm.lab.stats import PLATEAU_MIN_GAIN, PLATEAU_TAIL

    t, g = f"{PLATEAU_TAIL:.0%}", f"{100 * PLATEAU_MIN_GAIN:g}"
    return (f"the mean of its {what} checkpoints in the last {t} of the budget was ≥ {g} point "
            f"above the mean of those in the {t} before it",
            f"budget के आख़िरी {t} के {what_hi or what} checkpoints का mean उससे पहले के {t} वालों "
            f"के mean से ≥ {g} point ऊपर था")


def runs_converged(ms) -> bool | None:
    """Whether every run reached a plateau (:func:`~sharenorm.lab.stats.plateaued` over its own
    budget, ``steps_done``): False when one had not, None when one cannot tell (no curve); a
    diverged run is decided (it counts as 0), not unconverged.

    Example:
        >>> runs_converged([{"curve": [[s, 0.9] for s in range(1, 11)], "steps_done": 10},
        ...                 {"diverged": True}])
        True
    """
    from sharenorm.lab.spec import all3
    from sharenorm.lab.stats import plateaued

    return all3(*(True if m.get("diverged") else plateaued(m.get("curve"), m.get("steps_done") or 0)
                  for m in ms))
