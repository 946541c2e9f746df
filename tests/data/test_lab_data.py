"""``sharenorm lab --data``: a data set too small for the chosen experiments is refused up front."""

from __future__ import annotations

import numpy as np
import pytest

from sharenorm.cli import main
from sharenorm.data import DataError
from sharenorm.lab.runner import run_lab


def _small_npz(path, n_train, n_test=10):
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.normal(size=(n_train, 40)), y=np.arange(n_train) % 3,
             x_test=rng.normal(size=(n_test, 40)), y_test=np.arange(n_test) % 3)
    return path


def test_too_few_training_samples_names_the_minimum(tmp_path):
    data = _small_npz(tmp_path / "small.npz", 30)
    with pytest.raises(DataError, match=r"small.npz: 30 training samples.*batches of up to 32.*≥ 32"):
        run_lab(["N4"], quick=True, seeds=2, data=str(data), out=tmp_path / "out",
                progress=False, report=False, echo=lambda *a: None)
    assert not (tmp_path / "out" / "results.jsonl").exists()  # refused before any run


def test_too_few_training_samples_exits_2(tmp_path, capsys):
    data = _small_npz(tmp_path / "small.npz", 30)
    assert main(["lab", "N4", "--quick", "--no-progress", "--data", str(data),
                 "--out", str(tmp_path / "out")]) == 2
    assert "30 training samples" in capsys.readouterr().err
