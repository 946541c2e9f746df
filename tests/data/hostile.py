"""Builders of hostile data files: small on disk, huge (or never-ending) once decoded.

Used by test_hostile_data.py (at sizes that keep the tests fast) and runnable as a script that
times loading each one at the sizes of the original reports:

    python tests/data/hostile.py OUTDIR      # builds the files, prints their sizes
"""

from __future__ import annotations

import gzip
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

MiB = 1 << 20


def _npy_header(shape, descr: str) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                              "shape": tuple(shape)})
    return buf.getvalue()


def _write_zeros(f, nbytes: int) -> None:
    chunk = bytes(min(nbytes, 4 * MiB))
    while nbytes > 0:
        f.write(chunk[: min(nbytes, len(chunk))])
        nbytes -= len(chunk)


def npz_bomb(path: Path, decoded: int, *, name: str = "x", descr: str = "<f8",
             others: dict | None = None) -> Path:
    """An .npz whose member ``name`` is ``decoded`` bytes of zeros (deflated about 1000:1), plus
    the small arrays ``others``."""
    itemsize = np.dtype(descr).itemsize
    shape = (decoded // (64 * itemsize), 64)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
            f.write(_npy_header(shape, descr))
            _write_zeros(f, shape[0] * 64 * itemsize)
        for key, arr in (others or {}).items():
            with zf.open(f"{key}.npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(arr))
    return path


def idx_gz_bomb(folder: Path, decoded: int) -> Path:
    """An MNIST folder whose gzipped training images are ``decoded`` bytes of zeros; the other
    three files are small and valid."""
    folder.mkdir(parents=True, exist_ok=True)
    n = decoded // (28 * 28)
    with gzip.GzipFile(folder / "train-images-idx3-ubyte.gz", "wb", compresslevel=9) as f:
        f.write(bytes([0, 0, 0x08, 3]) + struct.pack(">III", n, 28, 28))
        _write_zeros(f, n * 28 * 28)
    small = {"train-labels-idx1-ubyte": np.zeros(4, np.uint8),
             "t10k-images-idx3-ubyte": np.zeros((2, 28, 28), np.uint8),
             "t10k-labels-idx1-ubyte": np.zeros(2, np.uint8)}
    for name, arr in small.items():
        head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
        (folder / name).write_bytes(head + arr.tobytes())
    return folder / "train-images-idx3-ubyte.gz"


# pickle opcodes (protocol 2), written by hand: pickle.dumps cannot make these files
_PROTO2, _STOP, _MARK = b"\x80\x02", b".", b"("
_EMPTY_DICT, _EMPTY_LIST, _APPENDS, _SETITEMS, _POP = b"}", b"]", b"e", b"u", b"0"


def _binint1(v):
    return b"K" + bytes([v])


def _binput(i):
    return b"q" + bytes([i])


def _binget(i):
    return b"h" + bytes([i])


def _key(name: bytes):  # a Python 2 str: bytes when loaded with encoding="bytes"
    return b"U" + bytes([len(name)]) + name


def _list(items: list[bytes], put: int | None = None) -> bytes:
    """A list of ``items`` (opcodes that push one object each), memoized at ``put``."""
    return (_EMPTY_LIST + (b"" if put is None else _binput(put))
            + b"".join(_MARK + b"".join(items[i:i + 1000]) + _APPENDS
                       for i in range(0, len(items), 1000)))


def cifar_shared_lists(path: Path, n: int, k: int = 1000) -> Path:
    """A CIFAR batch whose ``data`` is ``n`` references to one list of ``k`` references to one
    list of ``k`` zeros: about ``2n + 4k`` bytes on disk, an ``(n, k, k)`` int64 array (8·n·k²
    bytes) once ``np.asarray`` expands it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    zeros = _list([_binint1(0)] * k, put=1) + _POP       # memo 1: [0] * k
    rows = _list([_binget(1)] * k, put=2) + _POP         # memo 2: [memo 1] * k
    data = _list([_binget(2)] * n)                       # [memo 2] * n
    path.write_bytes(_PROTO2 + _EMPTY_DICT + _MARK
                     + _key(b"data") + zeros + rows + data
                     + _key(b"labels") + _list([_binint1(0)] * n)
                     + _SETITEMS + _STOP)
    return path


def pickle_of_many_lists(path: Path, count: int) -> Path:
    """``count`` empty lists in one list: one byte each on disk, ~64 bytes each in memory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = b"".join(_MARK + _EMPTY_LIST * min(1000, count - i) + _APPENDS
                    for i in range(0, count, 1000))
    path.write_bytes(_PROTO2 + _EMPTY_LIST + body + _STOP)
    return path


def pickle_memo_index(path: Path, index: int) -> Path:
    """One memo store at ``index``: CPython's unpickler sizes its memo table to 2·index slots."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_PROTO2 + _EMPTY_LIST + b"r" + struct.pack("<I", index) + _STOP)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width``×``height`` RGB pixels and holds none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def build_all(out: Path, scale: int = 1) -> dict[str, Path]:
    """Every hostile input, at ``scale`` × 1.5 GiB decoded where a size applies."""
    out.mkdir(parents=True, exist_ok=True)
    size = scale * 3 * (1 << 29)
    files = {
        "npz zip bomb": npz_bomb(out / "bomb.npz", size, others={"y": np.zeros(3, np.int64)}),
        "npz unused array": npz_bomb(out / "unused.npz", size, name="unused", descr="|u1",
                                     others={"x": np.random.rand(40, 8),
                                             "y": np.arange(40) % 2}),
        "IDX .gz bomb": idx_gz_bomb(out / "idx", size).parent,
        "CIFAR shared lists": cifar_shared_lists(out / "cifar" / "test_batch",
                                                 n=size // 8 // 10**6),
        "pickle of many lists": pickle_of_many_lists(out / "spam" / "test_batch", 10**7),
        "pickle memo index": pickle_memo_index(out / "memo" / "test_batch", 1 << 26),
        "PNG 20000x20000": png_header_only(out / "png" / "a" / "big.png", 20000, 20000),
    }
    for d in ("cifar", "spam", "memo"):
        (out / d / "data_batch_1").write_bytes((out / d / "test_batch").read_bytes())
    png = out / "png" / "b"
    png.mkdir(parents=True, exist_ok=True)
    (png / "small.png").write_bytes(png_header_only(out / "small.png", 4, 4).read_bytes())
    return files


if __name__ == "__main__":
    import sys

    for what, p in build_all(Path(sys.argv[1])).items():
        size = sum(f.stat().st_size for f in p.rglob("*")) if p.is_dir() else p.stat().st_size
        print(f"{what:22s} {size / 1024:9.0f} KiB  {p}")
