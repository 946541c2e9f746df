"""The :class:`Dataset` container every loader returns, and the error they raise."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

__all__ = ["Dataset", "DataError", "split_train_test"]


class DataError(ValueError):
    """A data file is missing, of an unknown format, or corrupt; the message names the file."""


@dataclass
class Dataset:
    """Train/test tensors of one classification dataset.

    Args:
        name: short name shown in reports ("mnist1d", "digits", the file name, ...).
        x_train, x_test: float32 inputs ``(N, C, *spatial)``.
        y_train, y_test: int64 class labels ``(N,)`` in ``[0, num_classes)``.
        num_classes: number of classes.
        source: where the data came from (a package and its arguments, or a path).
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    source: str = ""
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.shape[0] != y.shape[0]:
                raise DataError(
                    f"{self.name}: x_{split} has {x.shape[0]} samples but y_{split} has "
                    f"{y.shape[0]} labels"
                )
            if x.dim() < 2:
                raise DataError(f"{self.name}: x_{split} must be (N, C, *spatial), got {tuple(x.shape)}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(
                f"{self.name}: train samples {tuple(self.x_train.shape[1:])} and test samples "
                f"{tuple(self.x_test.shape[1:])} differ in shape"
            )

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """``(C, *spatial)`` of one sample."""
        return tuple(self.x_train.shape[1:])

    @property
    def spatial_dims(self) -> int:
        """1 for signals ``(C, L)``, 2 for images ``(C, H, W)``."""
        return len(self.sample_shape) - 1

    def subset_train(self, n: int, seed: int = 0) -> Dataset:
        """The same dataset with a random ``n``-sample training subset (test set unchanged)."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(self.x_train.shape[0], generator=g)[:n]
        return Dataset(self.name, self.x_train[idx], self.y_train[idx], self.x_test, self.y_test,
                       self.num_classes, self.source, dict(self.info, train_subset=n))

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={tuple(self.x_train.shape)}, "
                f"test={tuple(self.x_test.shape)}, classes={self.num_classes})")


def to_dataset(name: str, x: np.ndarray, y: np.ndarray, x_test: np.ndarray | None,
               y_test: np.ndarray | None, source: str, test_fraction: float = 0.2,
               seed: int = 0) -> Dataset:
    """Build a :class:`Dataset` from numpy arrays, splitting off a test set when none is given.

    Labels are remapped to ``0..K-1`` in sorted order when they are not already.
    """
    if x_test is None:
        x, y, x_test, y_test = split_train_test(x, y, test_fraction, seed)
    y_all = np.concatenate([np.asarray(y).ravel(), np.asarray(y_test).ravel()])
    if y_all.size and not np.issubdtype(y_all.dtype, np.integer):
        if np.issubdtype(y_all.dtype, np.floating) and np.all(np.mod(y_all, 1) == 0):
            y_all = y_all.astype(np.int64)
        else:
            raise DataError(f"{source}: labels must be integers, got dtype {y_all.dtype}")
    classes = np.unique(y_all)
    remap = {int(c): i for i, c in enumerate(classes)}
    lab = np.array([remap[int(v)] for v in y_all], dtype=np.int64)
    n = len(y)
    return Dataset(
        name=name,
        x_train=torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32),
        y_train=torch.as_tensor(lab[:n]),
        x_test=torch.as_tensor(np.ascontiguousarray(x_test), dtype=torch.float32),
        y_test=torch.as_tensor(lab[n:]),
        num_classes=len(classes),
        source=source,
    )


def split_train_test(x: np.ndarray, y: np.ndarray, test_fraction: float = 0.2, seed: int = 0):
    """A seeded random split; the test part holds ``round(test_fraction·N)`` samples (≥ 1)."""
    n = len(y)
    if n < 2:
        raise DataError(f"need at least 2 samples to split off a test set, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    k = min(n - 1, max(1, round(test_fraction * n)))
    te, tr = perm[:k], perm[k:]
    return x[tr], y[tr], x[te], y[te]
