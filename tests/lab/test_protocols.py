"""The fair-comparison protocols: learning rates chosen on a validation split (S3, S4, T2),
plateau checks for runs without a long curve (N6, N8), the mnist1d logistic row, the budget."""

from __future__ import annotations

import pytest

from sharenorm.lab import runner, train
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


def _metrics(acc, steps, rising):
    """A run with 10 checkpoints; ``rising``: it still gained 5 points in the last 20%."""
    curve = [[steps * k // 10, acc] for k in range(1, 11)]
    if rising:
        for c in curve[:-2]:  # up to 80% of the budget: 5 points below the last 20%
            c[1] = acc - 0.05
    return {"train_acc": acc, "test_acc": acc, "val_acc": acc, "gap": 0.0, "diverged": False,
            "steps_done": steps, "curve": curve}


def _n6_runs(rising_key):
    runs = []
    for norm, by in {"batch": {2: 0.5, 32: 0.9}, "group": {2: 0.9, 32: 0.9}}.items():
        for bs, a in by.items():
            cfg = {"norm": norm, "batch_size": bs, "epochs": 1, "lr": 0.05 * bs / 32}
            runs += [{"experiment": "batch_size", "config": cfg, "seed": s, "time": {},
                      "metrics": _metrics(a + s / 100, 100, (norm, bs) == rising_key)}
                     for s in range(3)]
    return runs


def test_n6_rests_on_converged_runs_only(tmp_path):
    from sharenorm.lab.experiments import batch_size
    from sharenorm.lab.spec import INCONCLUSIVE, SUPPORTED

    ok = batch_size.analyze(_n6_runs(None), tmp_path, "en")[0]
    assert ok.verdict == SUPPORTED and "gained" in ok.tables[-1].headers[0]
    assert ok.tables[-1].rows[0][1:] == ["+0.0 ✓", "+0.0 ✓"]
    late = batch_size.analyze(_n6_runs(("group", 2)), tmp_path, "en")[0]
    assert late.verdict == INCONCLUSIVE and "not converged" in late.measured
    assert late.cells[("norm", "small", "group")][1] == INCONCLUSIVE
    # each comparison is marked by the runs it rests on: GN at batch 2 is in "GN − BN" only
    assert [c.unconverged for c in ok.comparisons] == [False, False]
    assert [c.unconverged for c in late.comparisons] == [False, True]
    assert str(late.comparisons[1]).endswith("inconclusive (a contender not converged)")
    bn_big = batch_size.analyze(_n6_runs(("batch", 32)), tmp_path, "en")[0]
    assert bn_big.verdict == INCONCLUSIVE
    assert [c.unconverged for c in bn_big.comparisons] == [True, False]
    # a run the verdict does not rest on (GN at batch 32 is only in the cells) leaves it alone
    assert batch_size.analyze(_n6_runs(("group", 32)), tmp_path, "en")[0].verdict == SUPPORTED


def test_n6_and_n8_runs_record_checkpoints(monkeypatch):
    from sharenorm.lab.experiments import batch_size, depth
    from sharenorm.lab.stats import tail_gain

    cfg = {"norm": "group", "batch_size": 32, "epochs": 0.5, "lr": 0.05}
    m, _ = runner.execute("batch_size", cfg, 0, False, None)
    assert len(m["curve"]) >= 5 and m["curve"][-1][0] == m["steps_done"] == 62
    assert tail_gain(m["curve"], m["steps_done"]) is not None  # the check can answer
    cfg = {"arch": "residual", "norm": "batch", "depth": 3, "lr": 0.006, "batch_size": 32,
           "epochs": 0.5}
    m, _ = runner.execute("depth", cfg, 0, False, None)
    assert len(m["curve"]) >= 5 and m["curve"][-1] == [m["steps_done"], m["val_acc"]]
    assert depth.planned_steps(cfg, 4000) == m["steps_done"]
    assert batch_size.planned_steps(cfg | {"epochs": 0.5}, 4000) == 62


def test_n8_is_inconclusive_when_a_deciding_run_had_not_converged(tmp_path):
    from sharenorm.lab.experiments import depth
    from sharenorm.lab.spec import INCONCLUSIVE, SUPPORTED

    def runs(rising_key):
        out = []
        for (norm, d), acc in {("batch", 3): 0.9, ("batch", 17): 0.6, ("group", 3): 0.9,
                               ("group", 17): 0.9}.items():
            cfg = {"arch": "residual", "norm": norm, "depth": d, "lr": 0.006, "batch_size": 4,
                   "epochs": 1}
            out += [{"experiment": "depth", "config": cfg, "seed": s, "time": {},
                     "metrics": _metrics(acc + s / 100, 800, (norm, d) == rising_key)}
                    for s in range(3)]
        return out

    ok = depth.analyze(runs(None), tmp_path, "en")[0]
    assert ok.verdict == SUPPORTED and ", last 20% +0.0 ✓" in ok.tables[0].rows[0][2]
    late = depth.analyze(runs(("batch", 17)), tmp_path, "en")[0]
    assert late.verdict == INCONCLUSIVE and ", last 20% +5.0" in late.tables[0].rows[0][3]
    assert "✓" not in late.tables[0].rows[0][3]
    # the comparisons say so too, not "holds"/"fails" from an interval of unconverged runs
    assert [c.holds for c in ok.comparisons] == [True, True]
    assert all(c.holds is None and str(c).endswith("inconclusive (a contender not converged)")
               for c in late.comparisons)


def test_n8_final_runs_use_fresh_seeds_and_a_rate_chosen_on_another_split(monkeypatch):
    from sharenorm.lab.experiments import depth

    seen = _spy_datasets(monkeypatch)
    trained = []
    real = depth.train_classifier

    def spy(model, ds, cfg, seed, *a, **kw):
        trained.append((len(ds.x_train), cfg.steps, cfg.lr, seed))
        return real(model, ds, cfg, seed, *a, **kw)

    monkeypatch.setattr(depth, "train_classifier", spy)
    monkeypatch.setattr(train, "train_classifier", spy)  # the tries' (classifier_trial)
    cfg = {"arch": "residual", "norm": "group", "depth": 3, "lr_grid": [0.006, 0.02],
           "batch_size": 32, "epochs": 0.5}
    m, _ = runner.execute("depth", cfg, 0, False, None)
    assert m["lr_chosen"] in cfg["lr_grid"] and set(m["val_acc_by_lr"]) == {"0.006", "0.02"}
    tries, final = trained[:-1], trained[-1]
    assert final == (3200, 50, m["lr_chosen"], 0)  # the seed itself, its own 80% split
    # the tries: another split (seed + 1000) of the training data, TRY_FRACTION (a quarter) of the steps
    assert [(s, lr, seed) for _, s, lr, seed in tries] == [(12, 0.006, 1000), (12, 0.02, 1000)]
    assert m["steps_done"] == 50 and depth.planned_steps(cfg, 4000) == 50 + 2 * 12
    assert any(v.name.endswith("-val") and n == 4000 for n, _, _, v in seen)
    assert all(c.get("lr_grid") for c in depth.configs(False) + depth.configs(True))


def test_the_plateau_is_decided_per_contender_on_the_mean_over_seeds():
    """One seed's checkpoint noise must not make a converged contender "unconverged" (with 25
    runs each crossing 1 point one time in nine, "every run below 1 point" would almost never
    hold), while a contender still learning on average is flagged."""
    from sharenorm.lab.experiments._protocol import converged, mean_tail_gain, tail_gain_cell

    flat = _metrics(0.9, 100, False)
    noisy = _metrics(0.9, 100, False)
    for c in noisy["curve"][6:8]:  # the window before the tail dipped: a +1.5-point "gain"
        c[1] = 0.885
    rising = _metrics(0.9, 100, True)
    assert converged([noisy]) is False  # alone, its noise reads as a gain
    assert converged([flat, flat, noisy, flat, flat]) is True  # mean +0.3 points
    assert converged([flat] * 5, [rising, rising, flat]) is False  # mean +3.3 points
    assert round(100 * mean_tail_gain([flat, rising, {"diverged": True}]), 6) == 2.5
    assert converged([{"diverged": True}]) is True  # decided: counts as 0, not unconverged
    assert converged([{"steps_done": 10}]) is None  # no curve: cannot tell
    assert tail_gain_cell([rising]) == "+5.0" and tail_gain_cell([flat]) == "+0.0 ✓"


def test_s4_is_inconclusive_when_an_rnn_had_not_converged(tmp_path):
    from sharenorm.lab.experiments import rnn_sharing
    from sharenorm.lab.spec import INCONCLUSIVE, SUPPORTED

    def runs(rising):
        out = []
        for shared in (True, False):
            cfg = {"shared": shared, "hidden": 64, "chunk": 4, "steps": 100, "eval_every": 10,
                   "lr": 3e-3}
            out += [{"experiment": "rnn_sharing", "config": cfg, "seed": s,
                     "time": {"s_per_step": 1e-3},
                     "metrics": _metrics((0.6 if shared else 0.5) + s / 100, 100,
                                         rising and not shared)
                     | {"params": 1000 if shared else 9000, "recurrent_params": 100,
                        "_time": {"s_per_step": 1e-3}}}
                    for s in range(3)]
        return out

    assert rnn_sharing.analyze(runs(False), tmp_path, "en")[0].verdict == SUPPORTED
    late = rnn_sharing.analyze(runs(True), tmp_path, "en")[0]
    assert late.verdict == INCONCLUSIVE and "not converged" in late.measured
    assert [c.unconverged for c in late.comparisons] == [True]


def test_n4_s3_n9_comparisons_are_marked_by_the_runs_they_rest_on(tmp_path):
    """A comparison whose contenders had not reached a plateau reads "inconclusive (a
    contender not converged)", whatever its interval says, and only that one: the others keep
    their holds/fails."""
    from sharenorm.lab.experiments import distributed_bn, norm_training, sharing_training
    from sharenorm.lab.spec import INCONCLUSIVE

    def n4(rising):
        runs = []
        for norm, acc in (("batch", 0.95), ("none", 0.80)):
            cfg = {"norm": norm, "steps": 100, "batch_size": 32, "lr": 0.05, "eval_every": 10,
                   "target": 0.6}
            runs += [{"experiment": "norm_training", "config": cfg, "seed": s,
                      "time": {"s_per_step": 1e-3, "s_to_target": None, "run_s": 1.0},
                      "metrics": _metrics(acc + s / 100, 100, rising == norm)
                      | {"steps_to_target": 50}} for s in range(3)]
        return next(r for r in norm_training.analyze(runs, tmp_path, "en") if r.claim == "N4")

    assert [c.unconverged for c in n4(None).comparisons] == [False, False]
    late = n4("none")
    assert late.verdict == INCONCLUSIVE and [c.holds for c in late.comparisons] == [None, None]

    def s3(rising_key):
        runs = []
        for (model, shuf), acc in {("cnn", False): 0.9, ("locally_connected", False): 0.8,
                                   ("mlp", False): 0.7, ("cnn", True): 0.6,
                                   ("locally_connected", True): 0.6, ("mlp", True): 0.7}.items():
            cfg = {"model": model, "shuffled": shuf, "steps": 100, "eval_every": 10,
                   "target": 0.4, "batch_size": 32, "lr": 2e-3}
            runs += [{"experiment": "sharing_training", "config": cfg, "seed": s, "time": {},
                      "metrics": _metrics(acc + s / 100, 100, (model, shuf) == rising_key)
                      | {"steps_to_target": 50, "n_train": 4000}} for s in range(3)]
        return next(r for r in sharing_training.analyze(runs, tmp_path, "en") if r.claim == "S3")

    assert [c.holds for c in s3(None).comparisons] == [True, True, True]
    # the shuffled MLP is in the third comparison only; the locally connected net in the first
    shuffled = s3(("mlp", True))
    assert [c.holds for c in shuffled.comparisons] == [True, True, None]
    assert shuffled.verdict == INCONCLUSIVE and "not converged" in shuffled.measured
    assert [c.holds for c in s3(("locally_connected", False)).comparisons] == [None, True, True]

    def n9(rising):
        cfg = distributed_bn.configs(quick=False)[0]
        acc = {"bn_large": 0.80, "bn": 0.70, "syncbn": 0.80, "bn_large_sync_steps": 0.80,
               "renorm": 0.72, "gn": 0.79}
        runs = [{"config": cfg, "seed": s, "metrics": {"steps": 100, "sync_max_param_diff": 0.0}
                 | {k: v + s / 1000 for k, v in acc.items()}
                 | {f"{v}_curve": _metrics(0.8, 100, v == rising)["curve"]
                    for v in distributed_bn.TRAINED}} for s in range(3)]
        return distributed_bn.analyze(runs, tmp_path, "en")[0]

    # SyncBN − its reference (both sides of "within 1 point"), whole-batch − per-process BN,
    # GN − whole-batch BN
    assert [c.unconverged for c in n9(None).comparisons] == [False, False, False, False]
    # SyncBN's check is a same-seed equality after a few steps, not a training: never marked
    assert [c.unconverged for c in n9("gn").comparisons] == [False, False, False, True]
    assert [c.unconverged for c in n9("bn").comparisons] == [False, False, True, False]
    assert n9("renorm").verdict != INCONCLUSIVE  # BatchRenorm is shown, not compared
    assert n9("bn").verdict == INCONCLUSIVE


def test_the_hindi_texts_carry_every_number_of_the_english_ones():
    # a Hindi reader must be told what an English one is: the quick batch sizes and N6's
    # checkpoints, N7's groups, N8's quick settings
    import re

    from sharenorm.lab.experiments import all_claims, all_experiments

    number = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e[-+]?\d+)?%?")
    texts = [(f"{e.id} {what}", t) for e in all_experiments().values()
             for what, t in (("protocol", e.protocol), ("title", e.title))]
    texts += [(f"{c.id} criterion", c.criterion) for c in all_claims().values()]
    missing = {name: sorted(set(number.findall(t.en)) - set(number.findall(t.hi)))
               for name, t in texts if t.hi}
    assert not {k: v for k, v in missing.items() if v}
