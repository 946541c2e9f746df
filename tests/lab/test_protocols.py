"""The fair-comparison protocols: learning rates chosen on a validation split (S3, S4, T2),
plateau checks for runs without a long curve (N6, N8), the mnist1d logistic row, the budget."""

from __future__ import annotations

import pytest

from sharenorm.lab import runner
from sharenorm.lab.experiments import _protocol, rnn_sharing, sharing_training, tying_reg
from sharenorm.lab.experiments._protocol import SELECT_SEED
from sharenorm.lab.spec import RunContext


@pytest.mark.parametrize("exp", [sharing_training, rnn_sharing, tying_reg])
def test_full_profile_chooses_the_rate_on_validation_quick_keeps_one(exp):
    full = [c for c in exp.configs(False) if c.get("part") != "timing"]
    quick = [c for c in exp.configs(True) if c.get("part") != "timing"]
    assert full and all(c["lr_grid"] == exp.LR_GRID and "lr" not in c for c in full)
    assert quick and all(c["lr"] == exp.LR and "lr_grid" not in c for c in quick)
    assert exp.LR in exp.LR_GRID  # the grid brackets the rate the quick profile uses


def _spy_datasets(monkeypatch):
    """Record the (train size, evaluation split, seed) of every selection try."""
    seen = []
    real = _protocol.validation_split

    def split(ds, *a, **kw):
        v = real(ds, *a, **kw)
        seen.append((len(ds.x_train), len(v.x_train), len(v.x_test), v))
        return v

    monkeypatch.setattr(_protocol, "validation_split", split)
    return seen


@pytest.mark.parametrize("exp_id, cfg, key", [
    ("sharing_training", {"model": "cnn", "shuffled": True, "steps": 4, "eval_every": 2,
                          "target": 0.8, "batch_size": 32, "lr_grid": [7e-4, 2e-3]},
     "val_acc_by_lr"),
    ("rnn_sharing", {"shared": False, "hidden": 8, "chunk": 4, "steps": 4, "eval_every": 2,
                     "lr_grid": [1e-3, 3e-3]}, "val_acc_by_lr"),
    ("tying_reg", {"n": 50, "mode": "tied", "strength": 0.0, "steps": 4,
                   "lr_grid": [1e-3, 1e-2]}, "val_mse_by_lr"),
])
def test_runs_choose_their_rate_on_a_split_of_the_training_data(monkeypatch, exp_id, cfg, key):
    seen = _spy_datasets(monkeypatch)
    m, _ = runner.execute(exp_id, cfg, 2, False, None)
    assert m["lr_chosen"] in cfg["lr_grid"] and set(m[key]) == {f"{x:g}" for x in cfg["lr_grid"]}
    (n, n_fit, n_val, val), = seen
    assert n_fit + n_val == n and n_val == round(0.2 * n)  # carved from the training set


def test_t2_selects_the_lowest_validation_error(monkeypatch):
    calls = []

    def fake(cfg, ds, lr, seed, steps):
        calls.append((len(ds.x_train), len(ds.x_test), lr, seed, steps))
        mse = {1e-3: 0.5, 3e-3: 0.2, 1e-2: float("nan")}[lr] if steps < cfg["steps"] else 0.1
        return {"test_mse": mse}, {}

    monkeypatch.setattr(tying_reg, "train_autoencoder", fake)
    cfg = {"n": 50, "mode": "untied", "strength": 0.0, "steps": 10, "lr_grid": tying_reg.LR_GRID}
    m, _ = tying_reg.run(cfg, 4, RunContext(quick=False))
    assert m["lr_chosen"] == 3e-3  # lowest validation MSE; the NaN (diverged) try loses
    assert m["val_mse_by_lr"] == {"0.001": 0.5, "0.003": 0.2, "0.01": None}
    sel, final = calls[:-1], calls[-1]
    assert {c[:2] for c in sel} == {(40, 10)} and {c[3] for c in sel} == {4 + SELECT_SEED}
    assert {c[4] for c in sel} == {5}  # half the steps
    assert final[:2] == (50, 449) and final[2:] == (3e-3, 4, 10)  # the test set: final run only


def test_the_mnist1d_logistic_row_is_measured_beside_the_published_32_percent(tmp_path):
    from sharenorm.data import MNIST1D_PUBLISHED

    assert any(c.get("model") == sharing_training.LOGISTIC for c in sharing_training.configs(False))
    runs = []
    for model in sharing_training.MODELS + [sharing_training.LOGISTIC]:
        for shuf in (False, True) if model != sharing_training.LOGISTIC else (False,):
            cfg = {"model": model, "shuffled": shuf, "steps": 100, "eval_every": 50,
                   "target": 0.4, "batch_size": 32, "lr": 2e-3}
            acc = 0.3 if model == sharing_training.LOGISTIC else 0.6
            runs += [{"experiment": "sharing_training", "config": cfg, "seed": s, "time": {},
                      "metrics": {"test_acc": acc + s / 100, "train_acc": acc, "gap": 0.0,
                                  "diverged": False, "steps_to_target": None,
                                  "curve": [[50, acc], [100, acc]], "n_train": 4000}}
                     for s in range(3)]
    s3 = [r for r in sharing_training.analyze(runs, tmp_path, "en") if r.claim == "S3"][0]
    row = [p for p in s3.published if "logistic" in p[1]]
    assert row and row[0][2] == f"{MNIST1D_PUBLISHED['logistic']:.0%}" and row[0][3].startswith("31.0")
