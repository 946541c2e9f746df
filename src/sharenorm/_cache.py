"""sharenorm's on-disk cache: built C loops, the lab's generated datasets, the report's font.

Example:
    >>> import os, tempfile
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"SHARENORM_CACHE_DIR": tempfile.mkdtemp()}):
    ...     first = cached_bytes("demo", ["key", "1"], lambda: b"made once")
    ...     again = cached_bytes("demo", ["key", "1"], lambda: b"not made")
    >>> first, again
    (b'made once', b'made once')
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["cache_dir", "temporary_cache_dir", "cached_bytes"]


def cache_dir() -> Path:
    """``$SHARENORM_CACHE_DIR``, else ``$XDG_CACHE_HOME/sharenorm``, else
    ``~/.cache/sharenorm`` (a per-user temporary dir where there is no home)."""
    root = os.environ.get("SHARENORM_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "sharenorm"
    try:
        return Path.home() / ".cache" / "sharenorm"
    except (RuntimeError, KeyError):  # no $HOME and a uid without a passwd entry (containers)
        return temporary_cache_dir()


def temporary_cache_dir() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
    return Path(tempfile.gettempdir()) / f"sharenorm-cache-{uid}"


def cached_bytes(subdir: str, key: Sequence[str], make: Callable[[], bytes],
                 valid: Callable[[bytes], bool] = bool) -> bytes:
    """The bytes ``make()`` returns, kept in ``cache_dir()/subdir`` under a hash of ``key``
    (everything the bytes depend on): made once, read afterwards. A cached file that is not
    ``valid`` is made again; an unwritable or unreadable cache only costs the time. The file
    is renamed into place whole, so a parallel process never reads half of one."""
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:24]
    path = cache_dir() / subdir / digest
    try:
        data = path.read_bytes()
        if valid(data):
            return data
    except OSError:
        pass
    data = make()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{digest}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        pass
    return data
