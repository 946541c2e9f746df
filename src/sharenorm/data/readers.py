"""Bounded readers for the containers data files come in: ``.npz`` members, (gzipped) byte
streams, pickles.

Each learns the size of what it will decode from the file's own headers, charges it to a
:class:`~sharenorm.data.limits.Budget` first, then decodes no more than that, so a compression
bomb is refused after reading a header, not after filling the memory. A pickle is loaded by a
restricted unpickler (plain containers and numeric numpy arrays: a data file runs no code)
whose work is bounded by the file's size, and whose result must be flat (see
:func:`load_data_pickle`).
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import pickletools
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from sharenorm.data.dataset import DataError
from sharenorm.data.limits import Budget

__all__ = ["read_npz_arrays", "open_maybe_gzip", "read_exact", "STREAM_ERRORS", "load_data_pickle"]


# ----------------------------------------------------------------------------------- npz
def read_npz_arrays(path: Path, names: tuple[str, ...], budget: Budget) -> dict[str, np.ndarray]:
    """The arrays ``names`` that the ``.npz`` at ``path`` holds (others are never read).

    Each member's ``.npy`` header (shape, dtype) is read first and its size charged to
    ``budget``; then exactly that many bytes are decompressed.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "a.npz"
        >>> np.savez(path, x=np.ones(3), unused=np.zeros(5))
        >>> read_npz_arrays(path, ("x", "y"), Budget())
        {'x': array([1., 1., 1.])}

    Raises:
        DataError: not a zip of ``.npy`` members, a member holding Python objects, a member
            that is corrupt or shorter than its header says, or sizes past the budget.
    """
    try:
        zf = zipfile.ZipFile(path)
    except Exception as e:  # noqa: BLE001 - zipfile raises many types for a damaged file
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from e
    with zf:
        members = {n.removesuffix(".npy"): n for n in zf.namelist()}
        out = {}
        for name in names:
            if name in members:
                out[name] = _read_member(path, zf, members[name], name, budget)
        return out


def _read_member(path: Path, zf: zipfile.ZipFile, member: str, name: str,
                 budget: Budget) -> np.ndarray:
    fmt = np.lib.format
    try:
        with zf.open(member) as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(f)
            else:
                raise DataError(f"{path}: array '{name}' is .npy version {version}; save it with "
                                "numpy.savez")
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - zip, zlib and npy header errors alike
        raise DataError(f"{path}: array '{name}' is not a readable .npy member "
                        f"({type(e).__name__}: {e})") from e
    if dtype.hasobject:
        raise DataError(f"{path}: array '{name}' holds Python objects ({dtype}), which a data "
                        "file must not (loading them would run code); save numeric arrays")
    budget.charge(math.prod(shape) * dtype.itemsize, path, f"array '{name}' {shape} {dtype}")
    try:
        with zf.open(member) as f:
            return fmt.read_array(f, allow_pickle=False)  # reads the declared bytes, no more
    except Exception as e:  # noqa: BLE001 - truncated data, bad CRC, zlib errors
        raise DataError(f"{path}: array '{name}' cannot be read ({type(e).__name__}: {e})") from e


# ------------------------------------------------------------------------- byte streams
STREAM_ERRORS = (OSError, EOFError, zlib.error)  # what reading a damaged (gzip) stream raises


def open_maybe_gzip(raw) -> tuple[io.BufferedIOBase, bool]:
    """``(stream, gzipped)``: a binary file as it is, or decompressing if it starts like gzip.

    The gzip trailer's size field (ISIZE) is never trusted (it is the size modulo 2³² and
    anyone can write it): callers read what a header declares, with :func:`read_exact`.
    """
    gz = raw.read(2) == b"\x1f\x8b"
    raw.seek(0)
    return (gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw), gz


def read_exact(f, n: int) -> bytearray:
    """Up to ``n`` bytes of ``f``, read into one buffer (shorter only at the end of ``f``)."""
    buf = bytearray(n)
    got = 0
    with memoryview(buf) as view:
        while got < n:
            k = f.readinto(view[got: got + (1 << 24)])
            if not k:
                break
            got += k
    del buf[got:]
    return buf


# -------------------------------------------------------------------------------- pickle
def _latin1(text, encoding="latin1"):
    # what protocol-2 pickles store bytes as: `_codecs.encode(str, "latin1")`; other codecs
    # (zlib_codec, bz2_codec, ...) are refused
    if encoding not in ("latin1", "latin-1", "iso-8859-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode(..., {encoding!r}) in a data file")
    return text.encode("latin1")


def _numeric_dtype(*args):
    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError(f"refusing an array of Python objects ({dt}) in a data file")
    return dt


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickle plain containers and numeric numpy arrays only: a data file must not run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar")}
    _WRAPPED = {("numpy", "dtype"): _numeric_dtype, ("_codecs", "encode"): _latin1}

    def find_class(self, module: str, name: str):
        if (module, name) in self._WRAPPED:
            return self._WRAPPED[module, name]
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


_SCALARS = (int, float, bytes, str, bool, type(None), np.generic)
_OPS = {op.code.encode("latin1")[0]: op for op in pickletools.opcodes}
# argument length prefixes: (bytes, struct format)
_LENGTH = {pickletools.TAKEN_FROM_ARGUMENT1: (1, "<B"), pickletools.TAKEN_FROM_ARGUMENT4: (4, "<i"),
           pickletools.TAKEN_FROM_ARGUMENT4U: (4, "<I"), pickletools.TAKEN_FROM_ARGUMENT8U: (8, "<Q")}


def _bound_opcodes(data: bytes) -> None:
    """Refuse a pickle that makes the unpickler do more than its size allows.

    A data batch is mostly one long byte string (the images) and a few operations per sample
    (a label, a file name): at most one operation per 64 bytes, plus 100 000. A pickle of many
    tiny operations (a million empty lists) is refused before it is built, as is a memo index
    beyond the operations so far (CPython's unpickler sizes its memo table by the largest
    index). The scan skips over arguments without decoding them (``pickletools.genops`` would
    decode the images' string: 10× slower).
    """
    cap = len(data) // 64 + 100_000
    pos, count = 0, 0
    while pos < len(data):
        op = _OPS.get(data[pos])
        if op is None:
            raise pickle.UnpicklingError(f"unknown opcode 0x{data[pos]:02x} at byte {pos}")
        if count >= cap:
            raise pickle.UnpicklingError(f"more than {cap} operations for {len(data)} bytes; a "
                                         "data batch needs far fewer")
        start = pos = pos + 1
        n = op.arg.n if op.arg is not None else 0
        if n >= 0:
            pos += n
        elif n == pickletools.UP_TO_NEWLINE:  # GLOBAL and INST take two lines
            for _ in range(2 if op.name in ("GLOBAL", "INST") else 1):
                pos = data.find(b"\n", pos) + 1
                if pos == 0:
                    raise pickle.UnpicklingError(f"{op.name} argument without end at byte {start}")
        else:
            size, fmt = _LENGTH[n]
            if pos + size > len(data):
                break
            length = struct.unpack_from(fmt, data, pos)[0]
            if length < 0:
                raise pickle.UnpicklingError(f"negative length at byte {start}")
            pos += size + length
        if op.name == "STOP":
            return
        if op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            raw = data[start:pos]
            index = (int(raw) if op.name == "PUT" else
                     int.from_bytes(raw, "little") if len(raw) == n else -1)
            if not 0 <= index <= count:
                raise pickle.UnpicklingError(f"memo index {index} at operation {count}")
        count += 1
    raise pickle.UnpicklingError("pickle data was truncated (no STOP)")


def load_data_pickle(data: bytes, where, what: str = "data pickle") -> object:
    """Unpickle a data file (CIFAR python batches) with bounded work and a flat result.

    Allowed: dicts whose values are scalars, numeric numpy arrays, or flat lists/tuples of
    scalars (labels, file names). Refused: any class but numpy's array machinery, arrays of
    Python objects, and nested containers (lists that share one another expand to gigabytes
    when turned into an array), besides what :func:`_bound_opcodes` refuses.

    Example:
        >>> batch = {b"data": np.zeros((2, 3), np.uint8), b"labels": [0, 1]}
        >>> load_data_pickle(pickle.dumps(batch, protocol=2), "batch")[b"labels"]
        [0, 1]

    Raises:
        DataError: naming ``where`` (the file, "not a readable ``what``") and what was refused.
    """
    try:
        _bound_opcodes(data)
        obj = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
        raise DataError(f"{where}: not a readable {what} ({type(e).__name__}: {e})") from e
    if isinstance(obj, dict):
        for key, value in obj.items():
            _check_flat(value, key, where)
    return obj


def _check_flat(value, key, where) -> None:
    if isinstance(value, _SCALARS):
        return
    if isinstance(value, np.ndarray):
        return  # object arrays never load (see _numeric_dtype)
    if isinstance(value, (list, tuple)):
        bad = next((type(v).__name__ for v in value if not isinstance(v, _SCALARS)), None)
        if bad is None:
            return
        what = f"a {type(value).__name__} holding a {bad}"
    else:
        what = f"a {type(value).__name__}"
    raise DataError(f"{where}: entry {key!r} is {what}; a data batch holds numpy arrays and flat "
                    "lists of numbers or strings (nested lists are refused: shared ones expand "
                    "to gigabytes)")
