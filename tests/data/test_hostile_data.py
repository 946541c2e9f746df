"""Hostile --data inputs: devices, FIFOs, compression bombs, pickles that expand, huge images.

Each is refused with a DataError that names the file, within a bounded time and memory: the
files are built here, small, against a small data limit (the decoded sizes are 16-64× the
limit, so loading them the old way shows as a memory peak far above it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import tracemalloc

import hostile
import numpy as np
import pytest

from sharenorm.data import DataError, load_cifar, load_npz, load_path, read_idx
from sharenorm.data.limits import DEFAULT_LIMIT, LIMIT_ENV, Budget, data_limit, parse_size

MiB = 1 << 20
LIMIT = 1 * MiB


@contextlib.contextmanager
def bounded(seconds: int = 20):
    """Fail if the block takes more than ``seconds`` (a FIFO that blocks, a bomb that
    decodes); yields a dict whose "peak" is the most bytes Python and numpy held meanwhile."""
    def timeout(*_):
        raise TimeoutError(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(seconds)
    tracemalloc.start()
    out = {}
    try:
        yield out
    finally:
        out["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ----------------------------------------------------------------- not a file or a folder
@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_a_device_is_refused_without_reading_it(device):
    if not os.path.exists(device):
        pytest.skip(f"no {device}")
    with bounded(), pytest.raises(DataError, match=f"{device} is a character device, not a data "
                                                   "file: pass a regular file or a folder"):
        load_path(device)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
@pytest.mark.parametrize("name", ["data.npz", "train-images-idx3-ubyte"])
def test_a_fifo_is_refused_without_opening_it(tmp_path, name):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    with bounded(), pytest.raises(DataError, match=r"is a FIFO \(named pipe\), not a data file"):
        load_path(fifo)
    with bounded(), pytest.raises(DataError, match="FIFO"):
        (load_npz if name.endswith(".npz") else read_idx)(fifo)


def test_a_fifo_among_cifar_batches_is_not_read(tmp_path):
    os.mkfifo(tmp_path / "data_batch_1")
    with bounded(), pytest.raises(DataError):
        load_path(tmp_path)


def test_an_unreadable_folder_is_a_data_error(tmp_path, monkeypatch):
    import pathlib

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "iterdir", refuse)
    with pytest.raises(DataError, match="cannot be read .*Permission denied"):
        load_path(tmp_path)


@pytest.mark.parametrize("shape", [(40, 0), (40, 3, 0), (40, 0, 8, 8)])
def test_samples_without_values_are_refused_at_load(tmp_path, shape):
    # they used to load and fail later, inside a training worker
    np.savez(tmp_path / "e.npz", x=np.zeros(shape), y=np.arange(40) % 2)
    with pytest.raises(DataError, match=rf"e.npz: 'x' has shape \({shape[0]}, .*samples hold no "
                                        "values"):
        load_path(tmp_path / "e.npz")


def test_the_dataset_itself_refuses_empty_samples():
    import torch

    from sharenorm.data import Dataset

    with pytest.raises(DataError, match=r"x_train has shape \(4, 1, 0\).*no values"):
        Dataset("d", torch.zeros(4, 1, 0), torch.zeros(4, dtype=torch.long),
                torch.zeros(2, 1, 0), torch.zeros(2, dtype=torch.long), 2)


# ---------------------------------------------------------------------- compression bombs
def test_npz_zip_bomb_is_refused_from_its_header(tmp_path):
    p = hostile.npz_bomb(tmp_path / "bomb.npz", 64 * MiB, others={"y": np.zeros(3, np.int64)})
    assert p.stat().st_size < 200 * 1024
    with bounded() as b, pytest.raises(DataError, match=r"bomb.npz: array 'x' \(131072, 64\) "
                                                        r"float64 takes 64.0 MiB once decoded, "
                                                        r"over the data limit of 1.0 MiB.*"
                                                        rf"{LIMIT_ENV}=1G"):
        load_path(p, limit=LIMIT)
    assert b["peak"] < LIMIT


def test_an_unused_array_is_never_read(tmp_path):
    p = hostile.npz_bomb(tmp_path / "u.npz", 64 * MiB, name="unused", descr="|u1",
                         others={"x": np.random.rand(40, 8), "y": np.arange(40) % 2})
    with bounded() as b:
        ds = load_path(p, limit=LIMIT)
    assert ds.sample_shape == (1, 8) and b["peak"] < 4 * MiB


def test_npz_arrays_holding_objects_are_refused(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([[1, "a"]] * 4, dtype=object), y=np.arange(4))
    with pytest.raises(DataError, match="o.npz: array 'x' holds Python objects"):
        load_path(tmp_path / "o.npz")


def test_idx_gzip_bomb_is_refused_from_its_header(tmp_path):
    p = hostile.idx_gz_bomb(tmp_path / "mnist", 64 * MiB)
    with bounded() as b, pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: IDX data "
                                                        r"of shape \(85598, 28, 28\) takes 64.0 "
                                                        r"MiB once decoded, over the data limit"):
        load_path(p.parent, limit=LIMIT)
    assert b["peak"] < LIMIT


def test_gzip_data_beyond_the_declared_size_is_not_decompressed(tmp_path):
    import gzip
    import struct

    p = tmp_path / "labels-idx1-ubyte.gz"
    with gzip.open(p, "wb") as f:  # declares 3 bytes, then 64 MiB more
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 3) + bytes(64 * MiB))
    with bounded() as b, pytest.raises(DataError, match="holds more data bytes"):
        read_idx(p, limit=LIMIT)
    assert b["peak"] < LIMIT


def test_the_limit_is_shared_by_the_files_of_one_dataset(tmp_path):
    hostile.idx_gz_bomb(tmp_path, 600 * 1024)  # 0.6 MiB of images + small files: fits 1 MiB
    with pytest.raises(DataError, match="783 images but"):  # read past the limit check
        load_path(tmp_path, limit=LIMIT)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    hostile.idx_gz_bomb(tmp_path / "b", 600 * 1024)
    (tmp_path / "b" / "train-images-idx3-ubyte.gz").rename(tmp_path / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match=r"t10k-images.*\(after 599.5 KiB read before it\)"):
        load_path(tmp_path, limit=LIMIT)


# ------------------------------------------------------------------------------- pickles
def _cifar_folder(tmp_path, build):
    build(tmp_path / "test_batch")
    (tmp_path / "data_batch_1").write_bytes((tmp_path / "test_batch").read_bytes())
    return tmp_path


def test_cifar_pickle_of_shared_nested_lists_is_refused(tmp_path):
    # 13 KB that np.asarray expands to (n, 1000, 1000) int64: 8 GB at n = 1000; 80 MB here
    folder = _cifar_folder(tmp_path, lambda p: hostile.cifar_shared_lists(p, n=10))
    assert (folder / "test_batch").stat().st_size < 13_000
    with bounded() as b, pytest.raises(DataError, match=r"data_batch_1: entry b'data' is a list "
                                                        r"holding a list.*nested lists are "
                                                        "refused"):
        load_cifar(folder, limit=LIMIT)
    assert b["peak"] < 8 * MiB


def test_cifar_pickle_of_a_million_tiny_objects_is_refused_before_building_them(tmp_path):
    folder = _cifar_folder(tmp_path, lambda p: hostile.pickle_of_many_lists(p, 2 * 10**6))
    with bounded() as b, pytest.raises(DataError, match=r"data_batch_1: not a readable CIFAR "
                                                        r"python batch .*more than 131\d\d\d "
                                                        "operations"):
        load_cifar(folder, limit=4 * MiB)
    assert b["peak"] < 16 * MiB  # the 2 MB file and its opcode scan; 2 M lists took 130 MB


def test_cifar_pickle_with_a_huge_memo_index_is_refused(tmp_path):
    # CPython's unpickler would size its memo table to 2 × 2**24 slots (256 MiB) for 10 bytes
    folder = _cifar_folder(tmp_path, lambda p: hostile.pickle_memo_index(p, 1 << 24))
    with bounded() as b, pytest.raises(DataError, match="memo index 16777216"):
        load_cifar(folder, limit=LIMIT)
    assert b["peak"] < LIMIT


@pytest.mark.parametrize("payload, match", [
    ("zlib", "refusing _codecs.encode"),
    ("object", r"refusing an array of Python objects"),
])
def test_cifar_pickle_tricks_through_allowed_names_are_refused(tmp_path, payload, match):
    import codecs
    import pickle

    class ZlibBytes:  # bytes that would be built by a codec other than latin1
        def __reduce__(self):
            return codecs.encode, ("x" * 100, "zlib_codec")

    data = ZlibBytes() if payload == "zlib" else np.array([[0] * 3072], dtype=object)
    blob = pickle.dumps({b"data": data, b"labels": [0]}, protocol=2)
    folder = _cifar_folder(tmp_path, lambda p: p.write_bytes(blob))
    with pytest.raises(DataError, match=match):
        load_cifar(folder)


def test_a_real_sized_cifar_batch_loads_within_the_operation_bound():
    # 10 000 images with labels and file names, as CIFAR-10 ships them (protocol 2): about 9
    # operations per image against the 48 that 3072 bytes per image allow
    import pickle

    from sharenorm.data.readers import load_data_pickle

    rng = np.random.default_rng(0)
    n = 10_000
    batch = {b"batch_label": b"training batch 1 of 5",
             b"labels": [int(v) for v in rng.integers(0, 10, n)],
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"filenames": [f"img_{i:05d}.png".encode() for i in range(n)]}
    d = load_data_pickle(pickle.dumps(batch, protocol=2), "data_batch_1")
    assert d[b"data"].shape == (n, 3072) and d[b"filenames"][-1] == b"img_09999.png"


# -------------------------------------------------------------------------------- images
def test_a_20000_by_20000_png_is_a_data_error(tmp_path):
    hostile.png_header_only(tmp_path / "a" / "big.png", 20000, 20000)
    hostile.png_header_only(tmp_path / "b" / "small.png", 4, 4)
    with bounded() as b, pytest.raises(DataError, match=r"big.png: an image too large to "
                                                        "decode.*shrink it"):
        load_path(tmp_path)
    assert b["peak"] < 4 * MiB  # importing PIL's plugins


def test_images_past_the_limit_are_refused_before_decoding(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (600, 600)).save(tmp_path / cls / "0.png")  # 1.03 MiB decoded each
    with bounded() as b, pytest.raises(DataError, match=r"^\S+/a/0.png: a 600×600 RGB image "
                                                        r"takes 1.0 MiB once decoded, over"):
        load_path(tmp_path, limit=LIMIT)
    assert b["peak"] < 2 * MiB


# --------------------------------------------------------------------------------- limit
def test_the_limit_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(LIMIT_ENV, raising=False)
    assert data_limit() == DEFAULT_LIMIT == 1 << 30
    monkeypatch.setenv(LIMIT_ENV, "1M")
    assert Budget().limit == MiB
    p = hostile.npz_bomb(tmp_path / "bomb.npz", 4 * MiB, others={"y": np.zeros(3, np.int64)})
    with pytest.raises(DataError, match=rf"over the data limit of 1.0 MiB.*{LIMIT_ENV}=1G"):
        load_path(p)
    monkeypatch.setenv(LIMIT_ENV, "8M")  # raised: the same file is read (and then refused
    with pytest.raises(DataError, match="samples but its labels"):  # for its labels)
        load_path(p)
    monkeypatch.setenv(LIMIT_ENV, "lots")
    with pytest.raises(DataError, match=rf"{LIMIT_ENV}='lots' is not a size.*=4G"):
        load_path(p)


@pytest.mark.parametrize("text, n", [("1000", 1000), ("4k", 4096), ("2G", 2 << 30),
                                     ("1.5GiB", 3 << 29), ("3 MB", 3 * MiB), ("1T", 1 << 40)])
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "-1G", "0", "G", "nan", "1X"])
def test_parse_size_refuses(text):
    with pytest.raises(DataError, match="is not a size"):
        parse_size(text)


def test_the_lab_refuses_a_bomb_with_exit_2(tmp_path, capsys, monkeypatch):
    from sharenorm.cli import main

    monkeypatch.setenv(LIMIT_ENV, "1M")
    p = hostile.npz_bomb(tmp_path / "bomb.npz", 16 * MiB, others={"y": np.zeros(3, np.int64)})
    with bounded():
        assert main(["lab", "N5", "--data", str(p), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bomb.npz: array 'x'" in err and f"{LIMIT_ENV}=1G" in err
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_an_image_error_keeps_its_own_message(tmp_path):
    # a DataError raised while decoding (a float image outside [0, 1]) is not re-wrapped as
    # "not a readable image"
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.full((4, 4), 7.0, np.float32), mode="F").save(tmp_path / cls / "0.tif")
    with pytest.raises(DataError, match=r"^\S+/a/0.tif: 'F' image values span \[7, 7\]") as e:
        load_path(tmp_path)
    assert "not a readable image" not in str(e.value)
