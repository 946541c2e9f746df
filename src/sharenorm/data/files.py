"""Loaders for datasets users have on disk, and :func:`load_path`, which picks one.

Accepted (:data:`ACCEPTED_FORMATS`): a folder of MNIST/Fashion-MNIST IDX files (``.gz`` or
not), a folder of CIFAR-10/100 python batches, a ``.npz`` with ``x``, ``y`` (optionally
``x_test``, ``y_test``), and a folder of images with one sub-folder per class. 8-bit inputs
are scaled to [0, 1], then standardized per channel with the training split's statistics.
Bad or hostile files raise :class:`DataError` naming the file and the problem, before
anything large is decoded. The exact rules: docs/design/data-loading.md.
"""

from __future__ import annotations

import math
import os
import stat
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from sharenorm.data.dataset import DataError, Dataset, split_train_test, to_dataset
from sharenorm.data.limits import Budget, regular_file
from sharenorm.data.readers import (
    STREAM_ERRORS,
    load_data_pickle,
    open_maybe_gzip,
    read_exact,
    read_npz_arrays,
)

__all__ = ["ACCEPTED_FORMATS", "load_path", "read_idx", "load_idx_pair", "load_cifar",
           "load_npz", "load_image_folder"]

ACCEPTED_FORMATS = (
    "a folder of MNIST/Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], "
    "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])",
    "a folder of CIFAR-10 python batches (data_batch_1..5, test_batch) or CIFAR-100 (train, test)",
    "a .npz file with arrays x and y (optional x_test, y_test)",
    "a folder of images with one sub-folder per class (optionally under train/ and test/)",
)
_CHANNELS = (1, 3, 4)  # gray, RGB, RGBA: a dim of this size is read as channels
_IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/ format description)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_NAMES = {
    "x_train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "y_train": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "x_test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "y_test": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def _formats_hint() -> str:
    return "Accepted formats: " + "; ".join(ACCEPTED_FORMATS) + "."


# ----------------------------------------------------------------------------------- IDX
def read_idx(path: str | os.PathLike, *, limit: int | None = None) -> np.ndarray:
    """Read one IDX file (gzipped or not) into a numpy array of its stored type and shape.

    Layout: two zero bytes, a type byte, the number of dims ``d``, then ``d`` big-endian uint32
    sizes, then the data in C order. The size the header declares is checked against the data
    limit (``limit`` bytes, default :func:`~sharenorm.data.limits.data_limit`) before any data
    is decompressed, and no more than that is.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
        >>> _ = path.write_bytes(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 8, 9]))  # uint8, shape (3,)
        >>> read_idx(path)
        array([7, 8, 9], dtype=uint8)

    Raises:
        DataError: the file cannot be read or decompressed, is not IDX, holds a different
            number of bytes than its header declares, or declares more than the data limit
            (the message names the file).
    """
    return _read_idx(Path(path), Budget(limit))


def _read_idx(path: Path, budget: Budget) -> np.ndarray:
    regular_file(path)
    try:
        with open(path, "rb") as raw:
            f, gz = open_maybe_gzip(raw)
            head = bytes(read_exact(f, 4))
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise DataError(f"{path}: not an IDX file (the first two bytes must be zero)")
            code, ndim = head[2], head[3]
            if code not in _IDX_DTYPES:
                raise DataError(f"{path}: unknown IDX data type byte 0x{code:02x}")
            dims = bytes(read_exact(f, 4 * ndim))
            if ndim == 0 or len(dims) < 4 * ndim:
                raise DataError(f"{path}: IDX header is truncated or declares {ndim} dimensions")
            shape = tuple(int.from_bytes(dims[4 * i: 4 * i + 4], "big") for i in range(ndim))
            dtype = np.dtype(_IDX_DTYPES[code])
            need = math.prod(shape) * dtype.itemsize  # Python ints: np.prod wraps at 2**64
            if not gz:  # the file's size says it all before anything is read
                have = os.fstat(raw.fileno()).st_size - 4 - 4 * ndim
                if have != need:
                    raise DataError(f"{path}: IDX header says shape {shape} ({need} data bytes) "
                                    f"but the file holds {have} data bytes (truncated or corrupt)")
            budget.charge(need, path, f"IDX data of shape {shape}")
            data = read_exact(f, need)
            extra = gz and f.read(1)
    except STREAM_ERRORS as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read IDX file ({type(e).__name__}: {e})") from e
    if len(data) != need or extra:
        held = f"only {len(data)}" if len(data) != need else "more"
        raise DataError(f"{path}: IDX header says shape {shape} ({need} data bytes) but the file "
                        f"holds {held} data bytes (truncated or corrupt)")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="),
                                                                   copy=False)


def _find_idx(folder: Path, key: str) -> Path | None:
    for stem in _IDX_NAMES[key]:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def load_idx_pair(folder: str | os.PathLike, *, limit: int | None = None) -> Dataset:
    """MNIST or Fashion-MNIST from the four IDX files in ``folder`` as ``(N, 1, 28, 28)``.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> folder = Path(tempfile.mkdtemp()) / "mnist"
        >>> folder.mkdir()
        >>> def idx(name, arr):  # the IDX header: 0, 0, type 0x08 (uint8), ndim, sizes
        ...     head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
        ...     _ = (folder / name).write_bytes(head + arr.tobytes())
        >>> for split, n in (("train", 6), ("t10k", 2)):
        ...     idx(f"{split}-images-idx3-ubyte", np.zeros((n, 28, 28), np.uint8))
        ...     idx(f"{split}-labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 2)
        >>> load_idx_pair(folder)
        Dataset('mnist', train=(6, 1, 28, 28), test=(2, 1, 28, 28), classes=2)

    ``limit``: see :func:`read_idx` (one limit for the four files together).
    """
    folder = Path(folder)
    budget = Budget(limit)
    paths = {k: _find_idx(folder, k) for k in _IDX_NAMES}
    missing = [_IDX_NAMES[k][0] for k, p in paths.items() if p is None]
    if missing:
        raise DataError(f"{folder}: IDX files missing: {', '.join(missing)} (.gz or not)")
    arr = {k: _read_idx(p, budget) for k, p in paths.items()}
    for split in ("train", "test"):
        x, y = arr[f"x_{split}"], arr[f"y_{split}"]
        if x.ndim != 3:
            raise DataError(f"{paths[f'x_{split}']}: images must be 3-d (N, H, W), got {x.shape}")
        if y.ndim != 1:
            raise DataError(f"{paths[f'y_{split}']}: labels must be 1-d (N,), got {y.shape}")
        if len(x) != len(y):
            raise DataError(f"{paths[f'x_{split}']} has {len(x)} images but "
                            f"{paths[f'y_{split}']} has {len(y)} labels")
    ds = to_dataset(folder.name or "idx", _scale(arr["x_train"])[:, None],
                    arr["y_train"], _scale(arr["x_test"])[:, None], arr["y_test"],
                    source=str(folder))
    return _standardize(ds)


# --------------------------------------------------------------------------------- CIFAR
def _read_cifar_batch(path: Path, budget: Budget) -> tuple[np.ndarray, np.ndarray]:
    regular_file(path)
    # the images are most of the file: it decodes to about its own size
    budget.charge(path.stat().st_size, path, "the CIFAR batch")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e})") from e
    d = load_data_pickle(raw, path, "CIFAR python batch")
    if not isinstance(d, dict):
        raise DataError(f"{path}: a CIFAR batch must hold a dict, found {type(d).__name__}")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d:
        raise DataError(f"{path}: CIFAR batch has no 'data' entry (keys: {sorted(map(str, d))})")
    label_key = next((k for k in ("labels", "fine_labels") if k in d), None)
    if label_key is None:
        raise DataError(f"{path}: CIFAR batch has no 'labels' or 'fine_labels' entry")
    try:
        x, y = np.asarray(d["data"]), np.asarray(d[label_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise DataError(f"{path}: CIFAR '{label_key}' are not integers ({e})") from e
    if x.ndim != 2 or x.shape[1] != 3072:
        raise DataError(f"{path}: CIFAR 'data' must be (N, 3072) = 3×32×32 bytes, got {x.shape}")
    if y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{path}: {len(x)} images but labels of shape {y.shape}")
    return x.reshape(-1, 3, 32, 32), y


def _cifar10_batches(folder: Path) -> list[Path]:
    """The CIFAR-10 training batches present, by their exact names (not ``data_batch_1.bak``)."""
    return [folder / f"data_batch_{i}" for i in range(1, 6) if (folder / f"data_batch_{i}").is_file()]


def load_cifar(folder: str | os.PathLike, *, limit: int | None = None) -> Dataset:
    """CIFAR-10 (``data_batch_1`` … ``data_batch_5`` + ``test_batch``) or CIFAR-100 (``train`` +
    ``test``) python batches, as ``(N, 3, 32, 32)``.

    Only those exact file names are read (a ``data_batch_1.bak`` next to them is ignored). The
    pickles are loaded by a restricted unpickler: numpy arrays and flat lists only, no code,
    bounded work; together they may decode to at most ``limit`` bytes (default
    :func:`~sharenorm.data.limits.data_limit`).

    Example:
        >>> import pickle, tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in ("data_batch_1", "test_batch"):
        ...     batch = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 0, 1]}
        ...     _ = (folder / name).write_bytes(pickle.dumps(batch))
        >>> load_cifar(folder).sample_shape
        (3, 32, 32)
    """
    folder = Path(folder)
    train = _cifar10_batches(folder)
    test = [folder / "test_batch"]
    if not train:
        train, test = [folder / "train"], [folder / "test"]
    for p in train + test:
        if not p.is_file():
            raise DataError(f"{folder}: CIFAR file {p.name} is missing")
    budget = Budget(limit)
    tr = [_read_cifar_batch(p, budget) for p in train]
    te = [_read_cifar_batch(p, budget) for p in test]
    x = np.concatenate([a for a, _ in tr])
    y = np.concatenate([b for _, b in tr])
    xt = np.concatenate([a for a, _ in te])
    yt = np.concatenate([b for _, b in te])
    return _standardize(to_dataset(folder.name or "cifar", _scale(x), y, _scale(xt), yt,
                                   source=str(folder)))


# ----------------------------------------------------------------------------------- npz
def load_npz(path: str | os.PathLike, *, limit: int | None = None) -> Dataset:
    """A ``.npz`` with ``x`` ``(N, *)`` and ``y`` ``(N,)``, optionally ``x_test``/``y_test``.

    ``x`` of shape ``(N, L)`` becomes ``(N, 1, L)``; ``(N, H, W)`` becomes ``(N, 1, H, W)``;
    ``(N, C, L)`` with C ≤ 4 and ``(N, C, H, W)`` are kept. A 4-d array whose last dim looks
    like channels (1, 3 or 4: gray, RGB, RGBA) while its second does not is taken as
    channels-last ``(N, H, W, C)`` (numpy/PIL/TensorFlow images) and transposed to
    ``(N, C, H, W)``; ``info["layout"]`` says which reading was used. Without a test split,
    20% is held out (seeded). Only these four arrays are read; each one's size is checked
    against the data limit (``limit`` bytes, default :func:`~sharenorm.data.limits.data_limit`)
    from its header, before it is decompressed.

    Example:
        >>> import tempfile, numpy as np
        >>> path = tempfile.mkdtemp() + "/rgb.npz"
        >>> x = np.zeros((10, 8, 8, 3), np.uint8)  # channels-last RGB
        >>> np.savez(path, x=x, y=np.arange(10) % 2)
        >>> ds = load_npz(path)
        >>> ds.sample_shape, len(ds.x_train), len(ds.x_test)
        ((3, 8, 8), 8, 2)
        >>> ds.info["layout"]
        'channels-last (N, H, W, C), transposed to (N, C, H, W)'
    """
    path = regular_file(path)
    arrays = read_npz_arrays(path, ("x", "y", "x_test", "y_test"), Budget(limit))
    for k in ("x", "y"):
        if k not in arrays:
            raise DataError(f"{path}: .npz must contain arrays 'x' and 'y' (found "
                            f"{sorted(_npz_names(path))})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path}: give both 'x_test' and 'y_test' or neither")

    layouts = {}

    def shaped(x: np.ndarray, key: str) -> np.ndarray:
        if x.ndim >= 2 and 0 in x.shape[1:]:
            raise DataError(f"{path}: '{key}' has shape {x.shape}: its samples hold no values; "
                            "give each sample at least one value, (N, L) with L ≥ 1")
        # A 3-d array is (N, C, L) when its second dim looks like channels (≤ 4: gray, RGB,
        # RGBA), else (N, H, W) images that get a channel dim.
        if x.ndim == 2 or (x.ndim == 3 and x.shape[1] > 4):
            layouts[key] = "(N, L), given one channel" if x.ndim == 2 else \
                "(N, H, W), given one channel"
            return x[:, None]  # (N, L) or (N, H, W): add the channel dim
        if x.ndim == 4 and x.shape[-1] in _CHANNELS and x.shape[1] not in _CHANNELS:
            layouts[key] = "channels-last (N, H, W, C), transposed to (N, C, H, W)"
            return x.transpose(0, 3, 1, 2)
        if x.ndim in (3, 4):
            layouts[key] = "(N, C, L)" if x.ndim == 3 else "(N, C, H, W)"
            return x
        raise DataError(f"{path}: '{key}' must be (N, L), (N, C, L), (N, H, W) or (N, C, H, W), "
                        f"got {x.shape}")

    xt = arrays.get("x_test")
    if xt is not None and (arrays["x"].dtype == np.uint8) != (xt.dtype == np.uint8):
        # only 8-bit arrays are scaled by 1/255: a float32 x of 0..255 beside a uint8 x_test
        # would leave the splits on scales 255 apart, silently (after standardization the
        # test set sits far off the training set's 0)
        warnings.warn(f"{path}: 'x' is {arrays['x'].dtype} but 'x_test' is {xt.dtype}; only 8-bit "
                      "(uint8) arrays are scaled to [0, 1] (by 1/255), the other as it is: make "
                      "sure both end on one scale, or save them in one dtype", stacklevel=3)
    x, y = shaped(_scale(arrays["x"], f"{path}: 'x'"), "x"), arrays["y"]
    xt = shaped(_scale(xt, f"{path}: 'x_test'"), "x_test") if xt is not None else None
    for a, b, kx in ((x, y, "x"), (xt, arrays.get("y_test"), "x_test")):
        if a is not None and (b.ndim != 1 or len(a) != len(b)):
            raise DataError(f"{path}: '{kx}' has {len(a)} samples but its labels have shape {b.shape}")
    ds = to_dataset(path.stem, x, y, xt, arrays.get("y_test"), source=str(path))
    ds.info["layout"] = layouts["x"]
    return _standardize(ds)


def _npz_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return [n.removesuffix(".npy") for n in zf.namelist()]


# -------------------------------------------------------------------------- image folder
def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(d: Path) -> list[Path]:
    """Image files under ``d``, skipping hidden files and folders (``.ipynb_checkpoints``,
    macOS ``._*`` files)."""
    return sorted(p for p in d.rglob("*") if p.suffix.lower() in _IMAGE_EXT and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(d).parts))


def _classes_with_images(root: Path) -> list[str]:
    """Class folder names under ``root`` that hold images; empty ones are dropped with a warning,
    so that label ``i`` is ``classes[i]``."""
    classes, empty = [], []
    for d in _class_dirs(root):
        (classes if _images_in(d) else empty).append(d.name)
    if empty:
        warnings.warn(f"{root}: skipping class folders without images: {', '.join(empty)}",
                      UserWarning, stacklevel=3)
    return classes


# PIL modes with more than 8 bits per value, and the value that maps to 1.0 ("I" holds 16-bit
# PNG/TIFF data in older Pillow versions; "F" is taken as already in [0, 1]).
_WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535,
               "F": 1.0}
_WIDE_BYTES = {"I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2, "I": 4, "F": 4}


def _to_rgb(im, p: Path) -> np.ndarray:
    """An image as float32 ``(3, H, W)`` in [0, 1]: 8-bit modes / 255, 16-bit modes / 65535
    (``convert("RGB")`` would clip them at 255)."""
    if im.mode not in _WIDE_MODES:
        return np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
    a = np.asarray(im).astype(np.float32)
    top = _WIDE_MODES[im.mode]
    if a.size and (a.min() < 0 or a.max() > top):
        raise DataError(f"{p}: {im.mode!r} image values span [{a.min():g}, {a.max():g}], outside "
                        f"[0, {top:g}]; save it as an 8- or 16-bit image")
    return np.repeat((a / top)[None], 3, axis=0)


def _read_images(root: Path, classes: list[str], size: tuple[int, int] | None,
                 budget: Budget | None = None):
    from PIL import Image, UnidentifiedImageError

    budget = Budget() if budget is None else budget
    xs, ys = [], []
    for label, cls in enumerate(classes):
        for p in _images_in(root / cls):
            try:
                with Image.open(p) as im:
                    # decoded RGB values, at the larger of its own size and the one kept
                    w, h = im.size
                    per_value = _WIDE_BYTES.get(im.mode, 1)
                    pixels = max(w * h, math.prod(size) if size else 0)
                    budget.charge(3 * per_value * pixels, p, f"a {w}×{h} {im.mode} image")
                    a = _to_rgb(im, p)
                    if size is None:
                        size = im.size
                    if im.size != size:  # resize each channel as a float image
                        a = np.stack([np.asarray(Image.fromarray(c).resize(size, Image.BILINEAR))
                                      for c in a])
                    xs.append(a)
            except DataError:  # a ValueError, but already says what is wrong
                raise
            except Image.DecompressionBombError as e:
                raise DataError(f"{p}: an image too large to decode ({e}); shrink it (the lab "
                                "trains on small images)") from e
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                raise DataError(f"{p}: not a readable image ({e})") from e
            ys.append(label)
    return xs, ys, size


def load_image_folder(root: str | os.PathLike, *, size: tuple[int, int] | None = None,
                      test_fraction: float = 0.2, seed: int = 0,
                      limit: int | None = None) -> Dataset:
    """Images in ``root/<class>/*.png`` (or ``root/train/<class>``, ``root/test/<class>``).

    Every image is converted to RGB in [0, 1] (8-bit values / 255, 16-bit values / 65535) and
    resized to ``size`` (width, height), by default the size of the first image read. Without
    ``train/``/``test/`` a seeded 20% test split is used. Hidden files and folders (names
    starting with ".") are skipped; a class folder without images is skipped with a warning, so
    label ``i`` is ``info["classes"][i]``. Each image's size is read from its header and the
    decoded total checked against the data limit (``limit`` bytes, default
    :func:`~sharenorm.data.limits.data_limit`) before it is decoded.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> root = Path(tempfile.mkdtemp())
        >>> for cls in ("cat", "dog"):
        ...     (root / cls).mkdir()
        ...     for i in range(3):
        ...         Image.new("RGB", (8, 6), (40 * i, 0, 0)).save(root / cls / f"{i}.png")
        >>> ds = load_image_folder(root)
        >>> ds.sample_shape, ds.info["classes"]
        ((3, 6, 8), ['cat', 'dog'])
    """
    root = Path(root)
    budget = Budget(limit)
    has_train, has_test = (root / "train").is_dir(), (root / "test").is_dir()
    if has_train != has_test:
        have, lack = ("train", "test") if has_train else ("test", "train")
        raise DataError(f"{root}: has {have}/ but no {lack}/ folder; add {lack}/<class>/ images, "
                        f"or move the class folders out of {have}/ into {root} for a seeded "
                        f"{test_fraction:.0%} test split")
    if has_train:
        classes = _classes_with_images(root / "train")
        x, y, size = _read_images(root / "train", classes, size, budget)
        test_classes = [p.name for p in _class_dirs(root / "test") if _images_in(p)]
        if set(test_classes) - set(classes):
            raise DataError(f"{root / 'test'}: classes {sorted(set(test_classes) - set(classes))} "
                            "have no training images")
        xt, yt, _ = _read_images(root / "test", classes, size, budget)  # same labels as train
    else:
        classes = _classes_with_images(root)
        x, y, size = _read_images(root, classes, size, budget)
        xt = yt = None
    if len(classes) < 2 or not x:
        raise DataError(f"{root}: an image folder needs ≥ 2 class sub-folders holding images "
                        f"({', '.join(sorted(_IMAGE_EXT))}); found {len(classes)} with {len(x)} images")
    x, y = np.stack(x), np.asarray(y)
    if xt is None:
        x, y, xt, yt = split_train_test(x, y, test_fraction, seed, where=str(root))
    else:
        xt, yt = (np.stack(xt), np.asarray(yt)) if xt else (x[:0], y[:0])
    ds = to_dataset(root.name, _scale(x), y, _scale(xt), yt, source=str(root))
    ds.info["classes"] = classes
    return _standardize(ds)


# ------------------------------------------------------------------------------ dispatch
def load_path(path: str | os.PathLike, *, limit: int | None = None) -> Dataset:
    """Load a dataset from a file or folder, choosing the loader from what it holds.

    ``limit``: the bytes the data may decode to (default :func:`~sharenorm.data.limits.data_limit`:
    ``$SHARENORM_DATA_LIMIT`` or 1 GiB); see :mod:`sharenorm.data.limits`.

    Example:
        >>> import tempfile, numpy as np
        >>> path = tempfile.mkdtemp() + "/signals.npz"
        >>> np.savez(path, x=np.random.rand(20, 40), y=np.arange(20) % 4)
        >>> load_path(path)
        Dataset('signals', train=(16, 1, 40), test=(4, 1, 40), classes=4)

    Raises:
        DataError: the path does not exist, is a device or FIFO, its format is not one of
            :data:`ACCEPTED_FORMATS`, a file is corrupt, or the data pass the limit (the
            message names the file and the problem).
    """
    p = Path(path)
    if limit is None:
        limit = Budget().limit  # read the environment once, before any file
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise DataError(f"--data path {str(path)!r} does not exist. {_formats_hint()}") from None
    except OSError as e:
        raise DataError(f"--data path {str(path)!r} cannot be read ({e.strerror or e})") from None
    if stat.S_ISREG(mode):
        if p.suffix.lower() == ".npz":
            return load_npz(p, limit=limit)
        raise DataError(f"{p}: unknown data format {p.suffix or '(no extension)'!r}. "
                        f"{_formats_hint()}")
    if not stat.S_ISDIR(mode):
        regular_file(p)  # raises, saying what it is (a device, a FIFO, ...): never opened
    try:
        return _load_folder(p, limit)
    except OSError as e:  # a folder or file inside it that cannot be listed or read
        raise DataError(f"{e.filename or p}: cannot be read ({e.strerror or e})") from e


def _load_folder(p: Path, limit: int) -> Dataset:
    if any(_find_idx(p, k) for k in _IDX_NAMES):
        return load_idx_pair(p, limit=limit)
    if _cifar10_batches(p) or (p / "test_batch").is_file() or (
            (p / "train").is_file() and (p / "test").is_file()):
        return load_cifar(p, limit=limit)
    for sub in ("cifar-10-batches-py", "cifar-100-python"):
        if (p / sub).is_dir():
            return load_cifar(p / sub, limit=limit)
    if _class_dirs(p):
        return load_image_folder(p, limit=limit)
    raise DataError(f"{p}: no dataset recognised in this folder. {_formats_hint()}")


# ------------------------------------------------------------------------------- helpers
def _scale(x: np.ndarray, where: str = "inputs") -> np.ndarray:
    """8-bit data to [0, 1] float32; other data to float32 unchanged. ``where`` names the
    array in errors."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise DataError(f"{where} must be numeric, got dtype {x.dtype}")
    if np.issubdtype(x.dtype, np.complexfloating):  # float32 would drop the imaginary part
        raise DataError(f"{where} must be real numbers, got dtype {x.dtype}; pass their real "
                        "and imaginary parts as two channels")
    return x.astype(np.float32)


def _standardize(ds: Dataset) -> Dataset:
    """Per-channel standardization with the training split's statistics."""
    if not np.isfinite(ds.x_train.numpy()).all() or not np.isfinite(ds.x_test.numpy()).all():
        raise DataError(f"{ds.source}: inputs contain NaN or infinity")
    dims = [0] + list(range(2, ds.x_train.dim()))
    m = ds.x_train.mean(dims, keepdim=True)
    s = ds.x_train.std(dims, keepdim=True).clamp_min(1e-8)
    ds.x_train = ((ds.x_train - m) / s)
    ds.x_test = ((ds.x_test - m) / s)
    if not torch.isfinite(ds.x_train).all() or not torch.isfinite(ds.x_test).all():
        # finite inputs near the float32 limit overflow in the mean or std
        raise DataError(f"{ds.source}: inputs are not finite after standardizing (their mean or "
                        "standard deviation overflows float32); rescale them, e.g. to [0, 1]")
    return ds
