"""The :class:`Dataset` container every loader returns, and the error they raise."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from sharenorm._checks import as_count

__all__ = ["Dataset", "DataError", "split_train_test", "MIN_TRAIN", "MIN_TEST"]

MIN_TRAIN = 2  # training samples: a batch statistic (BN, the standardization) needs two
MIN_TEST = 1   # test samples: an accuracy over no samples is meaningless


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

    Raises:
        DataError: x and y disagree in length, a sample holds no values (a dimension of size
            0: it would fail later, inside training), the training split has fewer than
            :data:`MIN_TRAIN` samples or the test split fewer than :data:`MIN_TEST` (an empty
            split would train on nothing or report 0% accuracy), or train and test samples
            differ in shape.
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
            if 0 in x.shape[1:]:
                raise DataError(f"{self.source or self.name}: x_{split} has shape "
                                f"{tuple(x.shape)}: its samples hold no values; give each sample "
                                "at least one value")
            need = MIN_TRAIN if split == "train" else MIN_TEST
            if x.shape[0] < need:
                n = x.shape[0]
                raise DataError(
                    f"{self.source or self.name}: x_{split} has {n} sample{'' if n == 1 else 's'}; "
                    f"the {split} split needs ≥ {need} (add samples to it"
                    + (", or leave x_test/y_test out to split one off)" if split == "test" else ")")
                )
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
        total = self.x_train.shape[0]
        try:
            k = as_count(n, "n", "")  # numpy's ints too; not a bool or a float
        except ValueError:
            k = None
        if k is None or not MIN_TRAIN <= k <= total:
            raise DataError(f"subset_train: n must be an int from {MIN_TRAIN} to the "
                            f"{total} training samples, got {n!r}")
        n = k
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

    Raises:
        DataError: labels that are not non-negative integers, one class only, or a given
            test split with classes that have no training samples (a model never sees them:
            the test accuracy would silently count them as errors), as the image-folder loader
            refuses.
    """
    given_test = x_test is not None
    if not given_test:
        x, y, x_test, y_test = split_train_test(x, y, test_fraction, seed, where=source)
    y_all = np.concatenate([np.asarray(y).ravel(), np.asarray(y_test).ravel()])
    if y_all.size and not np.issubdtype(y_all.dtype, np.integer):
        if np.issubdtype(y_all.dtype, np.floating) and np.all(np.mod(y_all, 1) == 0):
            y_all = y_all.astype(np.int64)
        else:
            raise DataError(f"{source}: labels must be integers, got dtype {y_all.dtype}")
    if y_all.size and y_all.min() < 0:
        raise DataError(f"{source}: labels must be ≥ 0 (class indices), found {int(y_all.min())}; "
                        "map every class to 0, 1, 2, ...")
    classes = np.unique(y_all)
    if len(classes) == 1:
        # every accuracy would be 100% and every comparison between norms a tie
        raise DataError(f"{source}: every label is {int(classes[0])}: a classifier needs at "
                        "least two classes; give samples of another class")
    n = len(y)
    remap = {int(c): i for i, c in enumerate(classes)}
    lab = np.array([remap[int(v)] for v in y_all], dtype=np.int64)
    ds = Dataset(  # its own checks (sizes, shapes) first: they name the more basic problem
        name=name,
        x_train=torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32),
        y_train=torch.as_tensor(lab[:n]),
        x_test=torch.as_tensor(np.ascontiguousarray(x_test), dtype=torch.float32),
        y_test=torch.as_tensor(lab[n:]),
        num_classes=len(classes),
        source=source,
        # the labels as given, where they are not 0..K-1 (the i-th is class i)
        info={} if np.array_equal(classes, np.arange(len(classes))) else {
            "labels": [int(c) for c in classes]},
    )
    unseen = np.setdiff1d(y_all[n:], y_all[:n]) if given_test else []
    if len(unseen):
        raise DataError(f"{source}: classes {unseen.tolist()} of the test split have no "
                        "training samples, so no model can learn them; add training samples of "
                        "them, or remove them from the test split (x_test/y_test, or the test/ "
                        "folder)")
    return ds


def split_train_test(x: np.ndarray, y: np.ndarray, test_fraction: float = 0.2, seed: int = 0,
                     where: str = ""):
    """A seeded random split; the test part holds ``round(test_fraction·N)`` samples, at least
    :data:`MIN_TEST`, leaving at least :data:`MIN_TRAIN` to train on. A class the random split
    left without a training sample gets one of its test samples back (no model could learn
    it, and the test accuracy would count it as a certain error).

    ``where`` (the file or folder) starts the error message.

    Example:
        >>> import numpy as np
        >>> x, y, xt, yt = split_train_test(np.arange(10), np.arange(10))
        >>> len(x), len(xt)
        (8, 2)
    """
    n = len(y)
    if n < MIN_TRAIN + MIN_TEST:
        raise DataError(f"{where + ': ' if where else ''}need at least {MIN_TRAIN + MIN_TEST} "
                        f"samples to split off a test set, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    k = min(n - MIN_TRAIN, max(MIN_TEST, round(test_fraction * n)))
    te, tr = perm[:k], perm[k:]
    unseen = ~np.isin(y[te], y[tr])
    if unseen.any():  # one test sample of each such class goes back to training
        _, first = np.unique(y[te][unseen], return_index=True)
        back = np.flatnonzero(unseen)[first]
        if len(te) - len(back) >= MIN_TEST:  # (else every test sample is a lone class's)
            tr, te = np.concatenate([tr, te[back]]), np.delete(te, back)
    return x[tr], y[tr], x[te], y[te]
