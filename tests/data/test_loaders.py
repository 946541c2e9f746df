"""Every data loader on tiny files written here, and every corrupt input's error."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import struct

import numpy as np
import pytest
import torch

from sharenorm.data import (
    DataError,
    load_cifar,
    load_digits,
    load_idx_pair,
    load_image_folder,
    load_mnist1d,
    load_npz,
    load_path,
    read_idx,
)


# ----------------------------------------------------------------------------- writers
def write_idx(path, arr: np.ndarray, gz: bool = False) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    header = bytes([0, 0, codes[arr.dtype], arr.ndim]) + b"".join(
        struct.pack(">I", d) for d in arr.shape)
    raw = header + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def make_idx_folder(root, gz: bool, n=(6, 4), hw=(5, 7)):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in zip(("train", "t10k"), n, strict=True):
        x = rng.integers(0, 256, (count, *hw), dtype=np.uint8)
        y = (np.arange(count) % 3).astype(np.uint8)
        suffix = ".gz" if gz else ""
        write_idx(root / f"{split}-images-idx3-ubyte{suffix}", x, gz)
        write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", y, gz)
        arrays[split] = (x, y)
    return arrays


def make_cifar_folder(root, hundred: bool = False):
    rng = np.random.default_rng(1)
    key = b"fine_labels" if hundred else b"labels"
    names = (["train"], "test") if hundred else (["data_batch_1", "data_batch_2"], "test_batch")
    for name in names[0] + [names[1]]:
        d = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
             key: [0, 1, 2, 1]}
        (root / name).write_bytes(pickle.dumps(d))


# --------------------------------------------------------------------------- embedded
def test_mnist1d_default_sizes_and_determinism():
    state = np.random.get_state()
    a, b = load_mnist1d(), load_mnist1d()
    assert np.array_equal(np.random.get_state()[1], state[1])  # global numpy RNG untouched
    assert tuple(a.x_train.shape) == (4000, 1, 40) and tuple(a.x_test.shape) == (1000, 1, 40)
    assert a.num_classes == 10 and a.x_train.dtype == torch.float32
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert "url" not in a.source  # generated, never downloaded


def test_mnist1d_shuffled_is_one_permutation_of_positions():
    a, s = load_mnist1d(), load_mnist1d(shuffle_seq=True)
    assert torch.equal(a.y_train, s.y_train)
    # the same fixed permutation for every sample: sorted values per sample agree
    assert torch.allclose(a.x_train[:50].sort(-1).values, s.x_train[:50].sort(-1).values,
                          atol=1e-5)
    assert not torch.allclose(a.x_train[:50], s.x_train[:50])


def test_digits():
    ds = load_digits()
    assert ds.sample_shape == (1, 8, 8) and ds.num_classes == 10
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert abs(ds.x_train.mean().item()) < 1e-5  # standardized with training statistics


# ------------------------------------------------------------------------------- files
@pytest.mark.parametrize("gz", [False, True])  # plain and gzipped IDX
def test_idx_folder(tmp_path, gz):
    arrays = make_idx_folder(tmp_path, gz)
    ds = load_path(tmp_path)
    assert tuple(ds.x_train.shape) == (6, 1, 5, 7) and tuple(ds.x_test.shape) == (4, 1, 5, 7)
    assert ds.y_train.tolist() == arrays["train"][1].tolist()
    # standardized: the ordering of pixel values is preserved
    x = arrays["train"][0].astype(np.float32).ravel()
    got = ds.x_train.numpy().ravel()
    assert np.array_equal(np.argsort(x, kind="stable"), np.argsort(got, kind="stable"))


def test_read_idx_values_and_dtypes(tmp_path):
    arr = np.arange(12, dtype=">i4").reshape(3, 4)
    write_idx(tmp_path / "a", arr)
    assert np.array_equal(read_idx(tmp_path / "a"), arr)
    f = np.linspace(0, 1, 6, dtype=">f4").reshape(2, 3)
    write_idx(tmp_path / "f.gz", f, gz=True)
    assert np.array_equal(read_idx(tmp_path / "f.gz"), f)


@pytest.mark.parametrize("hundred", [False, True])  # CIFAR-10 and CIFAR-100 layouts
def test_cifar_folder(tmp_path, hundred):
    make_cifar_folder(tmp_path, hundred)
    ds = load_path(tmp_path)
    assert ds.sample_shape == (3, 32, 32)
    assert len(ds.x_train) == (4 if hundred else 8) and len(ds.x_test) == 4
    assert ds.num_classes == 3


def test_npz_with_and_without_test_split(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", x=rng.normal(size=(20, 12)), y=np.arange(20) % 4)
    ds = load_path(tmp_path / "a.npz")
    assert ds.sample_shape == (1, 12) and len(ds.x_test) == 4 and len(ds.x_train) == 16
    np.savez(tmp_path / "b.npz", x=rng.normal(size=(10, 2, 9)), y=np.arange(10) % 2,
             x_test=rng.normal(size=(3, 2, 9)), y_test=np.array([0, 1, 1]))
    ds = load_npz(tmp_path / "b.npz")
    assert ds.sample_shape == (2, 9) and len(ds.x_test) == 3


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            arr = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.png")
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(tmp_path / "dog" / "big_gray.png")
    ds = load_path(tmp_path)
    assert ds.sample_shape == (3, 6, 8)  # RGB, resized to the first image's size
    assert len(ds.x_train) + len(ds.x_test) == 11 and ds.info["classes"] == ["cat", "dog"]


def test_image_folder_train_test(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.fromarray(np.full((4, 4, 3), 200 if cls == "a" else 10, np.uint8)).save(
                tmp_path / split / cls / "0.png")
    ds = load_image_folder(tmp_path)
    assert len(ds.x_train) == 2 and len(ds.x_test) == 2


# ------------------------------------------------------------------------------ errors
def test_missing_path_lists_formats(tmp_path):
    with pytest.raises(DataError, match="does not exist.*Accepted formats.*IDX.*CIFAR.*npz"):
        load_path(tmp_path / "nope")


def test_unknown_file_format(tmp_path):
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"data.csv.*unknown data format '.csv'.*Accepted"):
        load_path(tmp_path / "data.csv")


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="no dataset recognised.*Accepted formats"):
        load_path(tmp_path)


@pytest.mark.parametrize("damage, match", [
    (lambda b: b[:-5], "truncated or corrupt"),            # data cut short
    (lambda b: b"\x01\x02" + b[2:], "not an IDX file"),      # bad magic
    (lambda b: b[:2] + b"\x07" + b[3:], "unknown IDX data type"),
    (lambda b: b[:6], "header is truncated"),
])
def test_corrupt_idx_names_the_file(tmp_path, damage, match):
    make_idx_folder(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(damage(p.read_bytes()))
    with pytest.raises(DataError, match=match) as e:
        load_path(tmp_path)
    assert "train-images-idx3-ubyte" in str(e.value)


def test_bad_gzip_idx(tmp_path):
    make_idx_folder(tmp_path, gz=True)
    p = tmp_path / "t10k-labels-idx1-ubyte.gz"
    p.write_bytes(p.read_bytes()[:12])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: cannot read"):
        load_idx_pair(tmp_path)


def test_idx_count_mismatch(tmp_path):
    make_idx_folder(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(DataError, match="6 images but .* 5 labels"):
        load_path(tmp_path)


def test_idx_missing_file(tmp_path):
    make_idx_folder(tmp_path, gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DataError, match="IDX files missing: t10k-images-idx3-ubyte"):
        load_path(tmp_path)


@pytest.mark.parametrize("content, match", [
    (b"garbage bytes", "test_batch: not a readable CIFAR python batch"),
    (pickle.dumps({b"labels": [1]}), "test_batch: CIFAR batch has no 'data'"),
    (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), "3072"),
    (pickle.dumps([1, 2]), "must hold a dict"),
])
def test_corrupt_cifar_names_the_file(tmp_path, content, match):
    make_cifar_folder(tmp_path)
    (tmp_path / "test_batch").write_bytes(content)
    with pytest.raises(DataError, match=match):
        load_cifar(tmp_path)


def test_cifar_refuses_code_in_pickle(tmp_path):
    make_cifar_folder(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    # named as pickle names it (posix.system here), not hard-coded: a test that ran before
    # may have replaced a builtin (Ray's driver swaps print for its own)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(DataError, match=re.escape(
            f"refusing to load {os.system.__module__}.{os.system.__name__}")):
        load_cifar(tmp_path)


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 3)))
    with pytest.raises(DataError, match="a.npz: .npz must contain arrays 'x' and 'y'"):
        load_path(tmp_path / "a.npz")
    (tmp_path / "b.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="b.npz: not a readable .npz"):
        load_path(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", x=np.zeros((4, 3)), y=np.zeros(3))
    with pytest.raises(DataError, match="4 samples"):
        load_path(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", x=np.full((4, 3), np.nan), y=np.arange(4))
    with pytest.raises(DataError, match="NaN"):
        load_path(tmp_path / "d.npz")


def test_corrupt_image_names_the_file(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / cls / "ok.png")
    (tmp_path / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png: not a readable image"):
        load_path(tmp_path)


def test_mnist1d_is_standardized_with_training_statistics_only():
    from sharenorm.data import load_mnist1d

    ds = load_mnist1d()
    assert abs(ds.x_train.mean().item()) < 1e-5 and abs(ds.x_train.std().item() - 1) < 1e-3
    # the test split uses the train split's scalars: not itself centred exactly
    from sharenorm.data.embedded import _mnist1d_arrays

    x, _, xt, _, _ = _mnist1d_arrays(False, 42, 5000)
    expected = (xt - x.mean()) / x.std()
    assert abs(ds.x_test - torch.as_tensor(expected, dtype=ds.x_test.dtype)[:, None]).max() < 1e-5


# ------------------------------------------------------------------- sizes and layouts
def test_npz_empty_test_split_names_the_file(tmp_path):
    x, y = np.random.default_rng(0).normal(size=(10, 5)), np.arange(10) % 2
    np.savez(tmp_path / "e.npz", x=x, y=y, x_test=x[:0], y_test=y[:0])
    with pytest.raises(DataError, match=r"e.npz: x_test has 0 samples.*≥ 1"):
        load_path(tmp_path / "e.npz")
    np.savez(tmp_path / "f.npz", x=x[:1], y=y[:1], x_test=x, y_test=y)
    with pytest.raises(DataError, match=r"f.npz: x_train has 1 sample.*≥ 2"):
        load_path(tmp_path / "f.npz")


@pytest.mark.parametrize("n, split", [((0, 4), "x_train"), ((1, 4), "x_train"), ((6, 0), "x_test")])
def test_idx_empty_split(tmp_path, n, split):
    make_idx_folder(tmp_path, gz=False, n=n)
    with pytest.raises(DataError, match=f"{tmp_path.name}.*{split} has {n[split == 'x_test']} "):
        load_path(tmp_path)


def test_split_of_too_few_samples_names_the_file(tmp_path):
    np.savez(tmp_path / "t.npz", x=np.zeros((2, 5)), y=np.array([0, 1]))
    with pytest.raises(DataError, match=r"t.npz: need at least 3 samples .*got 2"):
        load_path(tmp_path / "t.npz")
    np.savez(tmp_path / "u.npz", x=np.arange(15.0).reshape(3, 5), y=np.array([0, 1, 0]))
    ds = load_path(tmp_path / "u.npz")
    assert len(ds.x_train) == 2 and len(ds.x_test) == 1


def test_inputs_that_overflow_when_standardized(tmp_path):
    x = np.full((6, 4), 3e38, np.float32)
    x[::2] = -3e38  # finite, but the mean and std overflow float32
    np.savez(tmp_path / "big.npz", x=x, y=np.arange(6) % 2)
    with pytest.raises(DataError, match=r"big.npz: .*not finite after standardizing.*rescale"):
        load_path(tmp_path / "big.npz")


def test_npz_test_classes_without_training_samples(tmp_path):
    # as the image-folder loader: a class only in the test split can never be predicted
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "t.npz", x=rng.normal(size=(12, 5)), y=np.arange(12) % 3,
             x_test=rng.normal(size=(4, 5)), y_test=np.array([0, 3, 7, 3]))
    with pytest.raises(DataError, match=r"t.npz: classes \[3, 7\] of the test split have no "
                                        r"training samples.*add training samples of them"):
        load_path(tmp_path / "t.npz")


def test_the_automatic_split_leaves_every_class_a_training_sample(tmp_path):
    # the seed-0 split of 10 samples puts indices 4 and 6 in test: a class whose one sample
    # is at 4 would be test-only (a certain error), so it gets that sample back
    y = np.array([0, 1, 0, 1, 2, 0, 1, 0, 1, 0])
    np.savez(tmp_path / "s.npz", x=np.random.default_rng(0).normal(size=(10, 6)), y=y)
    ds = load_path(tmp_path / "s.npz")
    assert set(ds.y_train.tolist()) == {0, 1, 2} and len(ds.y_test) == 1
    # labels that are not 0..K-1 are kept in info, the i-th being class i
    np.savez(tmp_path / "r.npz", x=np.zeros((10, 6)) + np.arange(10)[:, None], y=y * 3 + 1)
    assert load_path(tmp_path / "r.npz").info["labels"] == [1, 4, 7]


def test_subset_train_refuses_a_count_it_cannot_take():
    from sharenorm.data import load_digits

    ds = load_digits()
    for n in (-5, 1, 5000, 2.5, True):
        with pytest.raises(DataError, match="n must be an int from 2 to the 1348"):
            ds.subset_train(n)
    assert ds.subset_train(np.int64(10)).x_train.shape[0] == 10


def test_npz_negative_labels(tmp_path):
    np.savez(tmp_path / "n.npz", x=np.zeros((6, 3)), y=np.array([-1, 0, 1, 0, 1, 0]))
    with pytest.raises(DataError, match=r"n.npz: labels must be ≥ 0.*-1"):
        load_path(tmp_path / "n.npz")


def test_npz_channels_last_is_transposed(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (10, 6, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "hwc.npz", x=x, y=np.arange(10) % 2, x_test=x[:3], y_test=np.arange(3) % 2)
    ds = load_path(tmp_path / "hwc.npz")
    assert ds.sample_shape == (3, 6, 5) and "channels-last" in ds.info["layout"]
    # channel 0 of the loaded data is x[..., 0] (standardized, so compare the ordering)
    got, want = ds.x_train[:, 0].numpy().ravel(), x[..., 0].astype(np.float32).ravel()
    assert np.array_equal(np.argsort(want, kind="stable"), np.argsort(got, kind="stable"))
    # channels-first data and ambiguous shapes (shape[1] looks like channels) are kept
    np.savez(tmp_path / "chw.npz", x=x.transpose(0, 3, 1, 2), y=np.arange(10) % 2)
    assert load_path(tmp_path / "chw.npz").sample_shape == (3, 6, 5)
    np.savez(tmp_path / "amb.npz", x=np.zeros((10, 3, 8, 3)), y=np.arange(10) % 2)
    assert load_path(tmp_path / "amb.npz").sample_shape == (3, 8, 3)


def test_corrupt_gzip_stream_is_a_data_error(tmp_path):
    make_idx_folder(tmp_path, gz=True)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    b = bytearray(p.read_bytes())
    for i in range(12, 30):
        b[i] ^= 0xFF  # damage the deflate stream, keep the gzip magic
    p.write_bytes(bytes(b))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: cannot read"):
        load_path(tmp_path)


def test_idx_header_with_overflowing_size(tmp_path):
    p = tmp_path / "ov"
    p.write_bytes(bytes([0, 0, 8, 4]) + struct.pack(">IIII", 65536, 65536, 65536, 65536))
    with pytest.raises(DataError, match=r"ov: IDX header says shape .*18446744073709551616 data "
                                        r"bytes.*holds 0"):
        read_idx(p)


# ---------------------------------------------------------------------- image folders
def _png(path, arr):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_image_folder_drops_empty_class_folders(tmp_path):
    for cls, v in (("a", 10), ("c", 200)):
        for i in range(3):
            _png(tmp_path / cls / f"{i}.png", np.full((4, 4, 3), v, np.uint8))
    (tmp_path / "b_empty").mkdir()
    with pytest.warns(UserWarning, match="b_empty"):
        ds = load_image_folder(tmp_path)
    assert ds.info["classes"] == ["a", "c"] and ds.num_classes == 2
    # label 1 is class c (the bright images)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        for xi, yi in zip(x, y, strict=True):
            assert (xi.mean() > 0) == (yi == 1)


def test_image_folder_skips_hidden_folders_and_files(tmp_path):
    for cls in ("a", "b"):
        for i in range(2):
            _png(tmp_path / cls / f"{i}.png", np.zeros((4, 4, 3), np.uint8))
    _png(tmp_path / "b" / ".ipynb_checkpoints" / "0-checkpoint.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "a" / "._0.png").write_bytes(b"macOS resource fork, not an image")
    ds = load_image_folder(tmp_path)
    assert len(ds.x_train) + len(ds.x_test) == 4


def test_image_folder_with_train_but_no_test(tmp_path):
    for cls in ("a", "b"):
        _png(tmp_path / "train" / cls / "0.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"has train/ but no test/"):
        load_path(tmp_path)


def test_image_folder_16_bit_images_are_scaled_not_saturated(tmp_path):
    from sharenorm.data.files import _read_images

    for cls, v in (("a", 1000), ("b", 60000)):
        for i in range(2):
            _png(tmp_path / cls / f"{i}.png", np.full((4, 6), v, np.uint16))  # mode I;16
    _png(tmp_path / "b" / "8bit.png", np.full((4, 6, 3), 255, np.uint8))
    xs, ys, _ = _read_images(tmp_path, ["a", "b"], None)
    assert [x.shape for x in xs] == [(3, 4, 6)] * 5
    # sorted file names: a/0, a/1, b/0, b/1, b/8bit
    np.testing.assert_allclose([x[0, 0, 0] for x in xs], [1000 / 65535] * 2 + [60000 / 65535] * 2
                               + [1.0], rtol=1e-6)
    ds = load_image_folder(tmp_path)
    assert ds.x_train.std() > 0.5  # the two classes stay apart


# ------------------------------------------------------------------------------ CIFAR
def test_cifar_ignores_files_that_only_start_like_a_batch(tmp_path):
    make_cifar_folder(tmp_path)
    (tmp_path / "data_batch_1.bak").write_bytes(b"junk")
    (tmp_path / "data_batch_notes.txt").write_text("notes")
    ds = load_path(tmp_path)
    assert len(ds.x_train) == 8


@pytest.mark.parametrize("x, y, match", [
    # float32 would keep the real parts only, silently
    (np.random.rand(20, 8) + 1j, np.arange(20) % 2, r"'x' must be real numbers.*two channels"),
    # every accuracy 100%, every comparison a tie
    (np.random.rand(20, 8), np.zeros(20, dtype=int), "every label is 0.*at least two classes"),
], ids=["complex", "one-class"])
def test_npz_data_no_classifier_can_use_is_refused(tmp_path, x, y, match):
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError, match=match):
        load_path(tmp_path / "d.npz")


def test_npz_splits_of_two_dtypes_get_a_warning_about_their_scales(tmp_path):
    # a float32 x of 0..255 beside a uint8 x_test: only the uint8 one is divided by 255
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "m.npz", x=rng.integers(0, 256, (20, 6)).astype(np.float32),
             y=np.arange(20) % 2, x_test=rng.integers(0, 256, (6, 6)).astype(np.uint8),
             y_test=np.arange(6) % 2)
    with pytest.warns(UserWarning, match="'x' is float32 but 'x_test' is uint8"):
        load_path(tmp_path / "m.npz")
    np.savez(tmp_path / "same.npz", x=np.zeros((20, 6), np.uint8) + np.arange(6, dtype=np.uint8),
             y=np.arange(20) % 2, x_test=np.ones((6, 6), np.uint8), y_test=np.arange(6) % 2)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_path(tmp_path / "same.npz")
