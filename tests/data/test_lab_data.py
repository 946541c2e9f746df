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
    with pytest.raises(DataError, match=r"small.npz: 30 training samples.*N1/N4 \(norm_training\) "
                                        r"needs ≥ 32.*Give ≥ 32"):
        run_lab(["N4"], quick=True, seeds=2, data=str(data), out=tmp_path / "out",
                progress=False, report=False, echo=lambda *a: None)
    assert not (tmp_path / "out" / "results.jsonl").exists()  # refused before any run


def test_too_few_training_samples_exits_2(tmp_path, capsys):
    data = _small_npz(tmp_path / "small.npz", 30)
    assert main(["lab", "N4", "--quick", "--no-progress", "--data", str(data),
                 "--out", str(tmp_path / "out")]) == 2
    assert "30 training samples" in capsys.readouterr().err


def test_n8_quick_needs_one_step_of_its_epoch_fraction(tmp_path):
    # N8's quick runs train 0.25 epoch at batch 32 on the 80% left after the validation
    # split: 160 samples leave 128 (one step), 150 leave 120 (0 optimizer steps). Refused
    # before any run, with the samples it needs and the other ways out (the full profile's
    # 16 epochs need only one batch of 32 after the split: 40 samples).
    data = _small_npz(tmp_path / "tiny.npz", 150)
    with pytest.raises(DataError, match=r"tiny.npz: 150 training samples.*N8 \(depth\) needs "
                                        r"≥ 160 with --quick.*without --quick.*leave N8 out"):
        run_lab(["N8"], quick=True, seeds=2, data=str(data), out=tmp_path / "out",
                progress=False, report=False, echo=lambda *a: None)
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_n6_quick_with_too_few_samples_exits_2(tmp_path, capsys):
    # 240 training samples: batch 32 for 0.125 epoch is 30 samples, 0 steps (needs 256)
    data = _small_npz(tmp_path / "sig.npz", 240)
    assert main(["lab", "N6", "--quick", "--no-progress", "--jobs", "1", "--data", str(data),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "240 training samples" in err and "N6 (batch_size) needs ≥ 256" in err
    assert "Traceback" not in err


def test_one_step_samples_match_what_the_runs_train():
    from sharenorm.lab.common import epoch_steps, samples_for_one_step

    for epochs in (0.1, 0.125, 1, 3):
        for bs in (2, 4, 32, 64):
            n = samples_for_one_step(epochs, bs)
            assert n >= bs and epoch_steps(epochs, n, bs) >= 1
            assert n - 1 < bs or epoch_steps(epochs, n - 1, bs) == 0  # and none fewer


def test_sharing_factors_name_the_data_they_were_measured_on(tmp_path):
    # S1 measures the CNN / locally connected networks on --data; T3 (and its "Memory
    # Utilization" cells) always on mnist1d beside the digits autoencoder: each cell says which
    data = _small_npz(tmp_path / "sig.npz", 40)
    out = tmp_path / "out"
    run_lab(["S1", "T3"], quick=True, seeds=2, data=str(data), out=out, progress=False,
            echo=lambda *a: None)
    rows = {ln.split(" | ")[0]: ln for ln in (out / "report.md").read_text().splitlines()
            if ln.startswith("| ")}
    assert "params (on --data sig)" in rows["| उदाहरण"]  # S1's count, on the user's data
    assert "autoencoder on digits" in rows["| उदाहरण"]  # T1's, on the embedded digits
    memory = rows["| Memory Utilization"]
    assert "CNN vs locally connected on mnist1d" in memory and "autoencoder on digits" in memory


def test_experiments_without_a_batch_size_need_what_their_runs_take():
    """N5 builds two batches that share one sample, N9 one step in its epochs at the global
    batch of world × per-process samples (quick: 0.02 epochs of 2 × 2), S1 one step on at most
    8 samples: not the 32 of a default batch."""
    from sharenorm.lab.experiments import all_experiments

    by_claim = {e.claims[0]: e for e in all_experiments().values()}
    assert by_claim["N5"].train_samples_needed(True) == 31
    assert by_claim["N9"].train_samples_needed(True) == 200   # 0.02 · 200 = one batch of 4
    assert by_claim["N9"].train_samples_needed(False) == 8    # 16 epochs of 8 samples
    assert by_claim["S1"].train_samples_needed(True) == 1


def test_the_refusal_names_quick_only_where_the_profiles_differ(tmp_path):
    data = _small_npz(tmp_path / "small.npz", 20)
    with pytest.raises(DataError) as info:
        run_lab(["N5"], quick=True, seeds=1, data=str(data), out=tmp_path / "out",
                progress=False, report=False, echo=lambda *a: None)
    assert "N5 (batch_dependence) needs ≥ 31 (" in str(info.value)
    assert "with --quick" not in str(info.value)


@pytest.mark.parametrize("x_shape", [(300, 1), (300, 3, 1, 1)], ids=["length-1", "1x1"])
def test_samples_of_one_position_are_refused_for_the_instance_norm_claims(tmp_path, capsys,
                                                                          x_shape):
    # InstanceNorm takes statistics over one sample's positions: N1, N5 and N6 would fail
    # in every run with a traceback. Refused up front; claims without it still run on it.
    rng = np.random.default_rng(0)
    path = tmp_path / "one.npz"
    np.savez(path, x=rng.normal(size=x_shape), y=np.arange(300) % 3,
             x_test=rng.normal(size=(10, *x_shape[1:])), y_test=np.arange(10) % 3)
    for claim in ("N1", "N5", "N6"):
        assert main(["lab", claim, "--quick", "--no-progress", "--jobs", "1", "--data",
                     str(path), "--out", str(tmp_path / claim)]) == 2
        err = capsys.readouterr().err
        assert "1 position(s) per sample" in err and f"leave {claim}" in err, err
        assert "Traceback" not in err
        assert not (tmp_path / claim / "results.jsonl").exists()
    run_lab(["S1"], quick=True, seeds=1, data=str(path), out=tmp_path / "s1", progress=False,
            report=False, echo=lambda *a: None)


def test_a_data_file_rewritten_in_place_does_not_resume_into_the_old_results(tmp_path):
    # same path and shape, other values: the header's data id holds a hash of the content,
    # so the second lab refuses the folder instead of mixing results of two datasets
    from sharenorm.lab.store import LabError

    path = _small_npz(tmp_path / "d.npz", 300)
    kw = dict(quick=True, seeds=1, data=str(path), out=tmp_path / "out", progress=False,
              report=False, echo=lambda *a: None)
    run_lab(["S1"], **kw)
    run_lab(["S1"], **kw)  # the same content resumes
    rng = np.random.default_rng(1)
    with np.load(path) as z:
        arrays = dict(z)
    arrays["x"] = rng.normal(size=arrays["x"].shape)
    np.savez(path, **arrays)
    with pytest.raises(LabError, match="different lab configuration .*content"):
        run_lab(["S1"], **kw)
