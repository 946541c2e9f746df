"""How much a dataset on disk may decode into memory, and the check loaders make before they do.

A 1 MB file can declare gigabytes (a zip of zeros, an ``.npy`` header with a huge shape), so
every loader reads the decoded size from the file's own headers and charges it to a
:class:`Budget` before decompressing or allocating; past the limit it raises a
:class:`~sharenorm.data.dataset.DataError` that names the file and how to raise the limit
(:data:`DEFAULT_LIMIT`, 1 GiB; ``SHARENORM_DATA_LIMIT=4G``; a loader's ``limit=``). What the
limit counts: docs/design/data-loading.md.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from sharenorm._checks import not_a_regular_file
from sharenorm.data.dataset import DataError

__all__ = ["LIMIT_ENV", "DEFAULT_LIMIT", "data_limit", "parse_size", "format_size", "Budget",
           "regular_file"]

LIMIT_ENV = "SHARENORM_DATA_LIMIT"
# CIFAR-10 decodes to 180 MB, MNIST to 55 MB, Tiny-ImageNet-200 to 1.2 GB: the default keeps the
# float32 copies of the lab's processes within a small machine's memory
DEFAULT_LIMIT = 1 << 30
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from ``"123"``, ``"512K"``, ``"1.5G"`` (``"GB"``, ``"GiB"`` too; powers of 1024)."""
    t = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in _UNITS and t[-1:] else ""
    try:
        value = float(t[: len(t) - len(unit)])
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise DataError(f"{LIMIT_ENV}={text!r} is not a size: give bytes or a number with K, M, "
                        f"G or T, e.g. {LIMIT_ENV}=4G")
    return int(value * _UNITS[unit])


def data_limit() -> int:
    """The limit in bytes: ``$SHARENORM_DATA_LIMIT`` if set, else :data:`DEFAULT_LIMIT`."""
    text = os.environ.get(LIMIT_ENV, "").strip()
    return parse_size(text) if text else DEFAULT_LIMIT


def format_size(n: int) -> str:
    """``"1.0 GiB"``, ``"60 B"``."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


class Budget:
    """The bytes one dataset may still decode; loaders :meth:`charge` it before they decode.

    Args:
        limit: bytes; ``None`` reads :func:`data_limit`.

    Example:
        >>> parse_size("512M"), parse_size("1.5G"), parse_size("1000")
        (536870912, 1610612736, 1000)
        >>> budget = Budget(limit=100)
        >>> budget.charge(60, "a.npz", "array 'x'")
        >>> budget.charge(60, "a.npz", "array 'y'")
        Traceback (most recent call last):
        ...
        sharenorm.data.dataset.DataError: a.npz: array 'y' takes 60 B once decoded (after 60 B read before it), over the data limit of 100 B. ...
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = data_limit() if limit is None else int(limit)
        self.used = 0

    def charge(self, nbytes: int, where, what: str) -> None:
        """Count ``nbytes`` (the decoded size of ``what`` in file ``where``) or refuse them.

        Raises:
            DataError: the total would pass the limit; names the file, the sizes and the fix.
        """
        if self.used + nbytes <= self.limit:
            self.used += nbytes
            return
        before = f" (after {format_size(self.used)} read before it)" if self.used else ""
        need = max(1, math.ceil((self.used + nbytes) / (1 << 30)))
        raise DataError(
            f"{where}: {what} takes {format_size(nbytes)} once decoded{before}, over the data "
            f"limit of {format_size(self.limit)}. If the data are genuine, raise the limit, e.g. "
            f"{LIMIT_ENV}={need}G (the lab holds float32 copies, up to 4× that, in each "
            "process); otherwise the file is damaged or a compression bomb")



def regular_file(path) -> Path:
    """``path`` if it is a regular file (a symlink to one counts).

    A device or pipe is never opened: ``/dev/zero`` never ends and a FIFO blocks until someone
    writes to it.

    Raises:
        DataError: it does not exist, cannot be examined, or is not a regular file.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from None
    kind = not_a_regular_file(mode)
    if kind is not None:
        raise DataError(f"{path} is {kind}, not a data file: pass a regular file or a folder "
                        "of them")
    return path
