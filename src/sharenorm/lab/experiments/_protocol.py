"""The fair-comparison protocol: a learning rate per contender chosen on a validation split
carved from the training data (never the test set), then a fresh seed for the final run.

One lab run does both, so the runner's plan stays static: for a final seed ``s`` the grid is
tried with selection seed ``s + SELECT_SEED`` (other initial weights, other batch order) on
the training data minus a validation split, the rate with the best validation accuracy wins
(a diverged try counts as 0; a tie goes to the smaller rate), and the final run trains on the
whole training set with seed ``s`` at that rate and reports the test accuracy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sharenorm.data import Dataset

__all__ = ["validation_split", "select_lr", "SELECT_SEED", "VAL_FRACTION"]

SELECT_SEED = 1000   # selection seeds are the final seeds + this: never the same weights
VAL_FRACTION = 0.2   # share of the training set held out for choosing the learning rate


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


def select_lr(train: Callable[[Dataset, float, int], dict], ds: Dataset, grid: list[float],
              seed: int) -> tuple[float, dict[str, float]]:
    """The learning rate of ``grid`` with the best validation accuracy, and each rate's
    accuracy (``{"0.05": 0.91, ...}``).

    ``train(ds, lr, seed)`` trains a fresh model and returns ``train_classifier``'s metrics;
    it is called on :func:`validation_split` of ``ds`` with the selection seed.
    """
    val = validation_split(ds, seed=seed + SELECT_SEED)
    scores = {}
    for lr in grid:
        m = train(val, lr, seed + SELECT_SEED)
        scores[f"{lr:g}"] = 0.0 if m.get("diverged") else float(m.get("test_acc") or 0.0)
    best = max(sorted(grid), key=lambda lr: scores[f"{lr:g}"])  # ties: the smaller rate
    return best, scores
