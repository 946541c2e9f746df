"""Verdicts from made-up run records: diverged runs, one seed, clipped intervals, N2, N7."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sharenorm.lab.experiments import (
    batch_size,
    depth,
    lr_sweep,
    norm_training,
    rnn_sharing,
    sharing_training,
    style,
    tying_reg,
)
from sharenorm.lab.spec import INCONCLUSIVE, MIXED, NOT_SUPPORTED, SUPPORTED, UNDECIDABLE, decide
from sharenorm.lab.stats import fmt_ci, separated


def _train_metrics(acc, steps_hit=None):
    """What train_classifier records; ``acc=None`` is a diverged run."""
    if acc is None:
        return {"train_acc": None, "test_acc": None, "gap": None, "diverged": True,
                "steps_to_target": None, "curve": [[25, 0.1]]}
    return {"train_acc": acc + 0.02, "test_acc": acc, "gap": 0.02, "diverged": False,
            "steps_to_target": steps_hit, "curve": [[25, acc - 0.2], [50, acc]]}


def _run(exp, cfg, seed, metrics, time=None):
    return {"experiment": exp, "config": cfg, "seed": seed, "metrics": metrics,
            "time": time or {"s_per_step": 0.001, "s_to_target": None, "run_s": 1.0}}


def _norm_training_runs(accs, hit_at=None):
    """N1/N4's records: test accuracies per seed (None: diverged); a run reaching 60% does so
    at step ``hit_at[norm]`` (default 50; checkpoints every 5 steps)."""
    runs = []
    for norm, vals in accs.items():
        cfg = {"norm": norm, "steps": 100, "batch_size": 32, "lr": 0.05, "eval_every": 5,
               "target": 0.6}
        hit = (hit_at or {}).get(norm, 50)
        runs += [_run("norm_training", cfg, s, _train_metrics(a, hit if a and a >= 0.6 else None))
                 for s, a in enumerate(vals)]
    return runs


def _claim(results, cid):
    return next(r for r in results if r.claim == cid)


def test_a_diverged_run_is_not_dropped_from_n4(tmp_path):
    # BN 0.90, 0.91 and one diverged run vs no norm 0.80, 0.81, 0.80: dropping the diverged
    # run would give BN 90.5 % and "supported"; it counts as 0, so BN's mean is 60.3 %
    runs = _norm_training_runs({"batch": [0.90, 0.91, None], "none": [0.80, 0.81, 0.80]})
    n4 = _claim(norm_training.analyze(runs, tmp_path, "en"), "N4")
    assert n4.verdict != SUPPORTED
    assert "60.3" in n4.measured and "BN 1/3" in n4.measured
    table = "\n".join(" ".join(r) for r in n4.tables[0].rows)
    assert "1/3" in table and "n=2 of 3" in table  # diverged shown; the gap has 2 of 3 values


def test_a_diverged_run_counts_in_s3_and_s4(tmp_path):
    runs = []
    for shuf in (False, True):
        for model, vals in {"cnn": [0.9, 0.91, None], "locally_connected": [0.8, 0.81, 0.8],
                            "mlp": [0.7, 0.71, 0.7]}.items():
            cfg = {"model": model, "shuffled": shuf, "steps": 100, "eval_every": 50,
                   "target": 0.4, "batch_size": 32, "lr": 2e-3}
            runs += [_run("sharing_training", cfg, s, _train_metrics(a) | {"n_train": 4000})
                     for s, a in enumerate(vals)]
    s3 = _claim(sharing_training.analyze(runs, tmp_path, "en"), "S3")
    # CNN 90, 91 and a diverged run (0) vs LC 80-81: no longer "supported"; the interval of
    # the difference is wide enough that it cannot tell either way
    assert s3.verdict == INCONCLUSIVE and "CNN 60.3" in s3.measured

    rnn = []
    for shared, vals in ((True, [0.9, 0.9, None]), (False, [0.9, 0.91, 0.9])):
        cfg = {"shared": shared, "hidden": 64, "chunk": 4, "steps": 50, "eval_every": 25}
        params = 1000 if shared else 10000
        rnn += [_run("rnn_sharing", cfg, s, _train_metrics(a) | {"params": params,
                                                                  "recurrent_params": params})
                for s, a in enumerate(vals)]
    s4 = _claim(rnn_sharing.analyze(rnn, tmp_path, "en"), "S4")
    assert "shared 60.0" in s4.measured  # not 90.0: the diverged run counts as 0
    assert s4.tables[0].rows[0][3] == "1/3"  # and the table says it diverged


def test_separated_and_decide_with_one_seed():
    assert separated([0.9], [0.1, 0.11]) is None
    assert separated([0.9, 0.91], [0.1, 0.11]) is True
    assert separated([0.9, 0.1], [0.5, 0.55]) is False
    assert decide(None, True) == UNDECIDABLE and decide(False, None) == UNDECIDABLE
    assert decide(False, False) == NOT_SUPPORTED and decide(True, None) == SUPPORTED


def test_one_seed_gives_not_decidable_not_supported(tmp_path):
    # S4: shared 10 % vs separate 90 % with one seed each used to pass as "supported"
    rnn = []
    for shared, a in ((True, 0.1), (False, 0.9)):
        cfg = {"shared": shared, "hidden": 64, "chunk": 4, "steps": 50, "eval_every": 25}
        p = 1000 if shared else 10000
        rnn.append(_run("rnn_sharing", cfg, 0, _train_metrics(a) | {"params": p,
                                                                     "recurrent_params": p}))
    assert _claim(rnn_sharing.analyze(rnn, tmp_path, "en"), "S4").verdict == UNDECIDABLE
    # N4 with one seed: BN clearly better in the mean, but no interval to compare
    runs = _norm_training_runs({"batch": [0.95], "none": [0.5]})
    res = norm_training.analyze(runs, tmp_path, "en")
    assert _claim(res, "N4").verdict == UNDECIDABLE
    assert _claim(res, "N1").verdict == UNDECIDABLE  # BN hit the target at 50, none never


def test_one_seed_n6_n8_t2(tmp_path):
    runs = []
    for norm, accs in {"batch": {2: 0.3, 32: 0.9}, "group": {2: 0.9, 32: 0.9}}.items():
        for bs, a in accs.items():
            cfg = {"norm": norm, "batch_size": bs, "epochs": 1, "lr": 0.05 * bs / 32}
            runs.append(_run("batch_size", cfg, 0, _train_metrics(a)))
    # (a) holds from the means; (b) needs intervals: "mixed" or "supported" -> not decidable
    assert batch_size.analyze(runs, tmp_path, "en")[0].verdict == UNDECIDABLE
    runs = []
    for norm, accs in {"batch": {2: 0.9, 6: 0.2}, "group": {2: 0.9, 6: 0.8}}.items():
        for d, a in accs.items():
            cfg = {"norm": norm, "depth": d, "batch_size": 4, "epochs": 0.1, "lr": 0.00625}
            runs.append(_run("depth", cfg, 0, _train_metrics(a)))
    assert depth.analyze(runs, tmp_path, "en")[0].verdict == UNDECIDABLE
    runs = []
    for mode, mse in (("untied", 0.5), ("tied", 0.3)):
        cfg = {"n": 50, "mode": mode, "strength": 0.0, "steps": 150}
        runs.append(_run("tying_reg", cfg, 0, {"train_mse": mse - 0.1, "test_mse": mse,
                                               "gap": 0.1 if mode == "tied" else 0.2,
                                               "tie_distance": 0.0 if mode == "tied" else 3.0,
                                               "params": 100}, {"train_s": 1.0}))
    assert tying_reg.analyze(runs, tmp_path, "en")[0].verdict == UNDECIDABLE


def test_clipped_intervals():
    assert fmt_ci([0.0, 0.3], 100, bounds=(0, 1)).startswith("15.0 [0.0, ")
    assert fmt_ci([0.5, 0.52], 100, bounds=(0, 1)) == "51.0 ± 12.7"
    from sharenorm.lab.common import ci_band

    _, _, lo, hi = ci_band({1: [0.0, 0.3], 2: [0.99, 1.0]}, 100, (0, 100))
    assert min(lo) >= 0 and max(hi) <= 100


def _lr_runs(stable):
    runs = []
    for norm, accs in stable.items():
        for lr, a in accs.items():
            cfg = {"norm": norm, "lr": lr, "steps": 100, "batch_size": 32}
            runs += [_run("lr_sweep", cfg, s, _train_metrics(a)) for s in range(2)]
    return runs


@pytest.mark.parametrize("bn, none, verdict", [
    # neither has a stable learning rate: BN stabilises nothing here
    ([None, 0.2, None], [None, 0.2, None], NOT_SUPPORTED),
    # the same largest stable rate: mixed
    ([0.9, 0.9, None], [0.9, 0.9, None], MIXED),
    # BN stable up to 10, none only at 0.01 (a hole inside BN's range does not matter)
    ([0.9, 0.2, 0.9], [0.9, None, None], SUPPORTED),
    ([0.9, 0.2, 0.9], [0.9, 0.9, None], SUPPORTED),
    # the upper end decides, not whether the range contains none's: BN stable at 0.3 and 10,
    # none at 0.01 only
    ([None, 0.9, 0.9], [0.9, None, None], SUPPORTED),
    ([0.9, None, None], [0.9, 0.9, None], NOT_SUPPORTED),
    # none never stable, BN stable somewhere: BN's upper end is above
    ([None, 0.9, None], [None, None, None], SUPPORTED),
])
def test_n2_is_decided_by_the_upper_end_of_the_stable_range(tmp_path, bn, none, verdict):
    lrs = [0.01, 0.3, 10.0]
    runs = _lr_runs({"batch": dict(zip(lrs, bn, strict=True)),
                     "none": dict(zip(lrs, none, strict=True))})
    res = lr_sweep.analyze(runs, tmp_path, "en")[0]
    assert res.verdict == verdict
    # "none" names the no-norm contender: a missing rate is said in words, not as "none none"
    assert "no norm" in res.measured and "none" not in res.measured, res.measured


def _seeded_lr_runs(accs):  # {(norm, lr): [test accuracy of each seed, None = diverged]}
    return [_run("lr_sweep", {"norm": n, "lr": lr, "steps": 100, "batch_size": 32}, s,
                 _train_metrics(a)) for (n, lr), vals in accs.items() for s, a in enumerate(vals)]


def test_n2_stability_is_decided_by_an_interval_and_an_undecided_rate_can_make_it_inconclusive(
        tmp_path):
    # lab v12's runs at lr 0.1 and 0.3 on the AVX2 machine: BN at 0.3 spans 29-58%, so
    # whether BN is stable there cannot be told; it decides between supported and mixed
    v12 = {("batch", 0.03): [0.9] * 5, ("none", 0.03): [0.85] * 5,
           ("batch", 0.1): [0.829, 0.828, 0.79, 0.793, 0.849],
           ("none", 0.1): [0.707, 0.755, 0.724, 0.639, 0.471],
           ("batch", 0.3): [0.292, 0.58, 0.446, 0.339, 0.41],
           ("none", 0.3): [0.102, 0.098, 0.102, 0.106, 0.099]}
    res = lr_sweep.analyze(_seeded_lr_runs(v12), tmp_path, "en")[0]
    assert res.verdict == INCONCLUSIVE and "undecided" in res.measured and "BN at 0.3" in res.measured
    rows = {r[0]: r for r in res.tables[0].rows}
    assert rows["0.3"][3] == "undecided" and rows["0.1"][9] == "yes"  # one seed at 47.1%: stable
    # the same runs with BN clearly below the bar at 0.3: both largest stable rates are 0.1
    clear = v12 | {("batch", 0.3): [0.321, 0.402, 0.355, 0.379, 0.41]}
    assert lr_sweep.analyze(_seeded_lr_runs(clear), tmp_path, "en")[0].verdict == MIXED
    # an undecided rate that cannot change the verdict leaves it decided
    low = clear | {("batch", 0.3): [0.9] * 5, ("none", 0.03): [0.3, 0.6, 0.45]}
    assert lr_sweep.analyze(_seeded_lr_runs(low), tmp_path, "en")[0].verdict == SUPPORTED
    # a diverged seed is instability, whatever the others reach
    assert lr_sweep.stability([{"diverged": True, "test_acc": None}] + [
        {"diverged": False, "test_acc": 0.9}] * 4) is False
    assert lr_sweep.stability([{"diverged": False, "test_acc": 0.9}]) is None  # one seed


@pytest.mark.parametrize("stacked", [False, True])
def test_gradient_norms_are_recorded_per_step_also_when_stacked(stacked):
    # gradient hooks on a member model do not see stacked training: the trainer records the
    # norms itself, the same as hooks on a model trained alone
    import torch

    from sharenorm.data import load_digits
    from sharenorm.lab.experiments.lr_sweep import SPIKE, grad_summary
    from sharenorm.lab.train import TrainConfig, train_classifier, train_classifiers
    from sharenorm.models import MLP

    ds = load_digits()
    cfg = TrainConfig(steps=6, batch_size=8, lr=0.05, record_steps=True)
    nets = []
    for s in (0, 1):
        torch.manual_seed(s)
        nets.append(MLP(ds.sample_shape, ds.num_classes, hidden=16))
    if stacked:
        out = [m for m, t in train_classifiers(nets, ds, cfg, [0, 1])]
        assert all(t["stacked"] == 2 for _, t in train_classifiers(
            [MLP(ds.sample_shape, ds.num_classes, hidden=16) for _ in (0, 1)], ds, cfg, [0, 1]))
    else:
        out = [train_classifier(n, ds, cfg, s)[0] for s, n in enumerate(nets)]
    for m in out:
        assert len(m["grad_norms"]) == len(m["step_losses"]) == 6
        assert all(g > 0 for g in m["grad_norms"])
    # the same norms as gradient hooks on a model trained alone
    torch.manual_seed(0)
    net = MLP(ds.sample_shape, ds.num_classes, hidden=16)
    seen, sq = [], [0.0, 0]
    params = list(net.parameters())

    def hook(g):
        sq[0] += float(g.double().pow(2).sum())
        sq[1] += 1
        if sq[1] == len(params):
            seen.append(sq[0] ** 0.5)
            sq[:] = [0.0, 0]
        return g

    for p in params:
        p.register_hook(hook)
    train_classifier(net, ds, TrainConfig(steps=6, batch_size=8, lr=0.05), 0)
    assert seen == pytest.approx(out[0]["grad_norms"], rel=1e-5)
    s = grad_summary([1.0, 1.0, 1.0, 100.0])
    assert s["grad_spikes"] == 1 and s["grad_cv"] > 0.5 and 100.0 > SPIKE * 1.0


def test_loss_spikes_are_local_jumps_above_the_recent_median():
    import math

    from sharenorm.lab.experiments.lr_sweep import (
        LOSS_HISTORY,
        LOSS_SPIKE,
        LOSS_WINDOW,
        loss_spikes,
    )

    rng = np.random.default_rng(0)
    # a healthy run: the loss falls 30-fold with ±40% batch noise; 3× the run's overall
    # median would call its first 81 steps spikes, 3× the median of the recent steps none
    healthy = [2.3 * math.exp(-i / 150) * (1 + 0.4 * rng.uniform(-1, 1)) for i in range(500)]
    assert loss_spikes(healthy) == 0
    spiky = list(healthy)
    for i in (LOSS_HISTORY + 2, 300):  # one before the window is full, one after
        spiky[i] = 1.05 * LOSS_SPIKE * max(healthy[max(0, i - LOSS_WINDOW):i])
    spiky[400] = 0.95 * LOSS_SPIKE * min(healthy[380:400])  # just under: not a spike
    assert loss_spikes(spiky) == 2
    # the non-finite step of a diverged run is its divergence, not a spike; too short: None
    assert loss_spikes([2.3] * 6 + [10.0, 1e3, float("inf")]) == 2
    assert loss_spikes([2.3] * LOSS_HISTORY) is None


def test_n2_shows_loss_spikes_beside_the_gradient_norms_without_deciding(tmp_path):
    lrs = [0.01, 0.3, 10.0]
    runs = _lr_runs({"batch": dict(zip(lrs, [0.9, 0.9, None], strict=True)),
                     "none": dict(zip(lrs, [0.9, 0.9, None], strict=True))})
    for r in runs:
        r["metrics"] |= {"loss_spikes": 3 if r["config"]["lr"] == 10.0 else 0,
                         "grad_spikes": 1, "grad_cv": 0.5}
    res = lr_sweep.analyze(runs, tmp_path, "en")[0]
    head = res.tables[0].headers
    bn, none = head.index(next(h for h in head if h.startswith("BN loss spikes"))), \
        head.index(next(h for h in head if h.startswith("none loss spikes")))
    assert head[bn - 2] == "BN grad spikes" and head[none - 2] == "none grad spikes"
    col = {r[0]: (r[bn], r[none]) for r in res.tables[0].rows}
    assert col == {"0.01": ("0", "0"), "0.3": ("0", "0"), "10": ("6", "6")}  # summed over seeds
    assert res.verdict == MIXED  # the verdict is the stable range's alone
    for r in runs:
        if r["seed"] == 1:
            del r["metrics"]["loss_spikes"]  # a run stored before the count: said, not hidden
    assert lr_sweep.analyze(runs, tmp_path, "en")[0].tables[0].rows[2][bn] == "3 (n=1 of 2)"
    # the criterion's prose, in both languages, states the threshold of the code
    en, hi = lr_sweep.N2.criterion.en, lr_sweep.N2.criterion.hi
    k, w = f"{lr_sweep.LOSS_SPIKE:g}×", f"{lr_sweep.LOSS_WINDOW}"
    assert k in en and w in en and k in hi and w in hi


def test_n2_runs_record_loss_spikes():
    from sharenorm.lab import runner

    m, _ = runner.execute("lr_sweep", {"norm": "none", "lr": 0.05, "steps": 12,
                                       "batch_size": 16}, 0, True, None)
    assert m["loss_spikes"] == 0 and "step_losses" not in m and "grad_norms" not in m


@pytest.mark.parametrize("none, verdict", [
    ([0.5, 0.5, 0.5], SUPPORTED),
    ([0.05, 0.05, 0.5], NOT_SUPPORTED),  # no norm sensitive in one seed only: not every seed
    (None, INCONCLUSIVE),  # no-norm runs missing: no verdict, not "not supported"
])
def test_n7_decides_in_every_seed_and_not_without_a_contender(tmp_path, none, verdict):
    runs = [_run("style", {"part": "invariance", "norm": "instance"}, s, {"rel_change": 1e-4},
                 {}) for s in range(3)]
    runs += [_run("style", {"part": "invariance", "norm": "none"}, s, {"rel_change": v}, {})
             for s, v in enumerate(none or [])]
    assert _claim(style.analyze(runs, tmp_path, "en"), "N7").verdict == verdict


@pytest.mark.parametrize("bn, norms, verdict", [
    ([0.1, 0.1, 0.1], ("instance", "group", "layer"), SUPPORTED),
    ([1e-7, 1e-7, 0.1], ("instance", "group", "layer"), NOT_SUPPORTED),  # BN in one seed only
    ([0.1, 0.1, 0.1], ("instance", "group"), INCONCLUSIVE),  # LN's runs missing
])
def test_n5_decides_in_every_seed_and_not_without_a_contender(tmp_path, bn, norms, verdict):
    from sharenorm.lab.experiments import batch_dependence

    def run(norm, s, d):
        return _run("batch_dependence", {"norm": norm, "batch": 16}, s,
                    {"delta_train": d, "delta_eval": 0.0}, {})

    runs = [run("batch", s, d) for s, d in enumerate(bn)]
    runs += [run(n, s, 0.0) for n in norms for s in range(3)]
    assert batch_dependence.analyze(runs, tmp_path, "en")[0].verdict == verdict


def test_n7_a_contradicting_cell_is_not_supported(tmp_path):
    # BN invariant (contradicts "Style Transfer: No"? no: BN "No" is supported when BN is NOT
    # invariant); here IN is not invariant, which contradicts the document's "Yes"
    runs = [_run("style", {"part": "invariance", "norm": n}, 0, {"rel_change": v}, {})
            for n, v in (("instance", 0.5), ("batch", 0.5), ("group", 1e-4), ("none", 0.5))]
    cells = _claim(style.analyze(runs, tmp_path, "en"), "N7").cells
    assert cells[("norm", "style", "instance")][1] == NOT_SUPPORTED
    assert cells[("norm", "style", "group")][1] == NOT_SUPPORTED
    assert cells[("norm", "style", "batch")][1] == SUPPORTED


def _s2_runs(steps_to_target, step_s, run_s_per_step=None, seeds=3):
    """S2's records, ``seeds`` seeds: each model's steps to the 40% target (None: never reached in
    100 steps; seed s adds s) in both position orders, its training runs' own seconds per step
    (``run_s_per_step``), and the interleaved timing's seconds per step (``step_s``)."""
    runs = []
    for shuf in (False, True):
        for model in ("cnn", "locally_connected", "mlp"):
            cfg = {"model": model, "shuffled": shuf, "steps": 100, "eval_every": 10,
                   "target": 0.4, "batch_size": 32, "lr": 2e-3}
            k = steps_to_target[model]
            own = (run_s_per_step or {}).get(model, 0.01)
            runs += [_run("sharing_training", cfg, s,
                          _train_metrics(0.5, k and k + s) | {"n_train": 640},
                          {"s_per_step": own, "s_to_target": 0.5}) for s in range(seeds)]
    return runs + [_run("sharing_training", {"part": "timing", "batch_size": 32, "rounds": 10},
                        s, {"part": "timing"},
                        {"step_s": {k: v * (1 + s / 100) for k, v in step_s.items()}})
                   for s in range(seeds)]


def test_s2_seconds_come_from_the_interleaved_timing(tmp_path):
    # the training runs' own wall-clocks say the CNN is slowest: they must not count
    runs = _s2_runs({"cnn": 50, "locally_connected": 50, "mlp": 50},
                    {"cnn": 0.01, "locally_connected": 0.03, "mlp": 0.02},
                    run_s_per_step={"cnn": 0.5})
    s2 = _claim(sharing_training.analyze(runs, tmp_path, "en"), "S2")
    assert "640 samples" in s2.tables[0].headers[2]
    assert s2.tables[0].rows[0][2] == "0.20"  # 640 / 32 = 20 steps of 0.01 s (median)
    # same steps to target; CNN's step is the cheapest: it wins every comparison
    assert s2.verdict == SUPPORTED, [str(c) for c in s2.comparisons]


def _n1_runs(bn_steps, none_steps):
    """N1's records: steps to the 60% target per seed (None: never reached in 100 steps)."""
    runs = []
    for norm, steps in (("batch", bn_steps), ("none", none_steps)):
        cfg = {"norm": norm, "steps": 100, "batch_size": 32, "lr": 0.05, "eval_every": 25,
               "target": 0.6}
        runs += [_run("norm_training", cfg, s, _train_metrics(0.7 if k else 0.5, k))
                 for s, k in enumerate(steps)]
    # the interleaved timing: a BN step as fast as a no-norm one
    return runs + [_run("norm_training", {"part": "timing"}, s, {"part": "timing"},
                        {"step_s": {"batch": 0.001, "none": 0.001}}) for s in range(3)]


@pytest.mark.parametrize("bn, none, verdict", [
    # nobody reached the target: each count is the budget, a lower bound, and the
    # zero-width interval [+33, +33] there decides nothing
    ([None] * 5, [None] * 5, INCONCLUSIVE),
    # no norm's true steps only larger: every seed pair beyond the margin, rank p = 1/252
    ([30, 31, 29, 30, 31], [None] * 5, SUPPORTED),
    ([30, 31, 29], [None] * 3, INCONCLUSIVE),  # the same with 3 seeds: p = 1/20 > 0.025
    ([None] * 5, [30, 31, 29, 30, 31], NOT_SUPPORTED),  # BN's true steps only larger
    ([30, 31, None], [40, 41, 39], INCONCLUSIVE),  # one BN seed may need any number
])
def test_n1_a_run_that_never_reached_the_target_decides_only_what_it_cannot_overturn(
        tmp_path, bn, none, verdict):
    n1 = _claim(norm_training.analyze(_n1_runs(bn, none), tmp_path, "en"), "N1")
    assert n1.verdict == verdict, [str(c) for c in n1.comparisons]
    if None in bn + none:
        n = len(bn)
        assert f"BN {n - bn.count(None)}/{n}, none {n - none.count(None)}/{n}" in n1.measured


def test_s2_against_an_mlp_that_never_reached_the_target(tmp_path):
    """The CNN slower in seconds than an MLP counted at the budget is no verdict: the MLP's true
    time is only larger. Faster than one counted at the budget, it is."""
    def vs_mlp(cnn_steps):
        runs = _s2_runs({"cnn": cnn_steps, "locally_connected": 90, "mlp": None},
                        {"cnn": 0.01, "locally_connected": 0.03, "mlp": 0.002}, seeds=5)
        s2 = _claim(sharing_training.analyze(runs, tmp_path, "en"), "S2")
        assert "MLP 0/5" in s2.measured
        return next(c for c in s2.comparisons if "mlp" in c.label)

    assert vs_mlp(10).holds is True  # 10 × 0.01 s < (≥ 100) × 0.002 s
    slower = vs_mlp(60)  # 60 × 0.01 s against ≥ 100 × 0.002 s: unknown
    assert slower.holds is None and "lower bound" in str(slower)


SEEDS = __import__("pathlib").Path(__file__).resolve().parents[3] / "shared" / "seeds"


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the seed documents are not beside the checkout")
def test_every_quote_is_the_documents_own_words():
    from sharenorm.lab.claims import DOC_TABLES, NOT_MEASURED, quote
    from sharenorm.lab.experiments import all_claims

    text = " ".join(p.read_text() for p in SEEDS.glob("*.txt"))
    for c in all_claims().values():
        for q in quote(c):
            assert q in text, (c.id, q)
    for _, q, _, _ in NOT_MEASURED:
        assert q in text, q
    for _, _, _, rows in DOC_TABLES:
        for _, label, cells, _ in rows:
            assert f"{label} | " + " | ".join(cells) + " |" in text, label
    # the rows the README promises
    labels = {label for *_, rows in DOC_TABLES for _, label, _, _ in rows}
    assert {"Normalization किस पर लागू होता है?", "उद्देश्य"} <= labels


def test_symmetry_cells_are_judged_by_the_tie_distance(tmp_path):
    runs = []
    for mode, mse, dist in (("untied", 0.3, 2.0), ("tied", 0.5, 0.0)):  # tied: worse MSE
        for s in range(2):
            cfg = {"n": 50, "mode": mode, "strength": 0.0, "steps": 150}
            runs.append(_run("tying_reg", cfg, s, {
                "train_mse": mse - 0.1, "test_mse": mse + s / 100, "gap": 0.1,
                "tie_distance": dist, "params": 100}, {"train_s": 1.0}))
    t2 = tying_reg.analyze(runs, tmp_path, "en")[0]
    assert t2.verdict == NOT_SUPPORTED  # the regularization claim fails on test MSE ...
    assert t2.cells[("share", "reg", "tying")][1] == SUPPORTED  # ... symmetry is kept exactly
    assert t2.cells[("share", "purpose", "tying")][1] == SUPPORTED


def test_t2_with_a_diverged_autoencoder_decides_nothing(tmp_path):
    # the untied model's third seed diverged (no MSE): dropped, untied looked better by its
    # two good seeds, and a NaN could not even be stored
    runs = []
    for mode, mses, gap in (("untied", [0.7, 0.7001, None], 0.2),
                            ("tied", [0.5, 0.5001, 0.5002], 0.1)):
        for s, mse in enumerate(mses):
            cfg = {"n": 50, "mode": mode, "strength": 0.0, "steps": 150}
            runs.append(_run("tying_reg", cfg, s, {
                "train_mse": None if mse is None else mse - gap, "test_mse": mse,
                "gap": None if mse is None else gap + s / 1e4, "tie_distance": 1.0,
                "params": 100}, {"train_s": 1.0}))
    t2 = tying_reg.analyze(runs, tmp_path, "en")[0]
    assert t2.verdict == INCONCLUSIVE and "(n=2 of 3)" in t2.measured


def test_t2_runs_store_no_nan(monkeypatch):
    # a loss that became non-finite: the metrics hold None, which the results file can hold
    import json

    import torch

    from sharenorm.data import load_digits

    ds = load_digits().subset_train(50, 0)
    monkeypatch.setattr(torch.nn.functional, "mse_loss", lambda a, b: (a - b).sum() * math.nan)
    m, _ = tying_reg.train_autoencoder({"mode": "tied", "strength": 0.0}, ds, 1e-3, 0, 2)
    assert m["test_mse"] is None and m["train_mse"] is None
    json.dumps(m, allow_nan=False)


def test_n6_high_needs_accuracy_well_above_chance(tmp_path):
    runs = []
    accs = {"batch": {2: 0.3, 32: 0.9}, "group": {2: 0.12, 32: 0.11}, "instance": {2: 0.8, 32: 0.8}}
    for norm, by in accs.items():
        for bs, a in by.items():
            cfg = {"norm": norm, "batch_size": bs, "epochs": 1, "lr": 0.05 * bs / 32}
            runs += [_run("batch_size", cfg, s, _train_metrics(a)) for s in range(2)]
    cells = batch_size.analyze(runs, tmp_path, "en")[0].cells
    assert cells[("norm", "small", "group")][1] == NOT_SUPPORTED  # no drop, but near chance
    assert cells[("norm", "small", "instance")][1] == SUPPORTED


def test_scope_row_is_measured(tmp_path):
    from sharenorm.lab import runner

    runs = []
    for norm in ("batch", "instance", "group", "layer", "none"):
        m, _ = runner.execute("batch_dependence", {"norm": norm, "batch": 16}, 0, True, None)
        runs.append(_run("batch_dependence", {"norm": norm, "batch": 16}, 0, m, {}))
    from sharenorm.lab.experiments import batch_dependence

    cells = batch_dependence.analyze(runs, tmp_path, "en")[0].cells
    for col in ("batch", "instance", "group"):
        assert cells[("norm", "applies", col)][1] == SUPPORTED, cells[("norm", "applies", col)]


def test_n1_use_cell_has_no_verdict_of_its_own(tmp_path):
    from sharenorm.lab.spec import INFORMATIONAL

    runs = _norm_training_runs({"batch": [0.9, 0.91, 0.9], "none": [0.8, 0.81, 0.8]},
                               hit_at={"batch": 80, "none": 50})
    n1 = _claim(norm_training.analyze(runs, tmp_path, "en"), "N1")
    # N1 itself is decided (BN needs more steps, not fewer) ...
    assert n1.verdict == NOT_SUPPORTED, n1.measured
    assert n1.cells[("norm", "use", "batch")][1] == INFORMATIONAL  # ... the usage cell has none


def test_n6_equal_steps_runs_are_shown_not_mixed_into_the_verdict(tmp_path):
    runs = []
    for budget, accs in ((None, {"batch": {2: 0.5, 32: 0.9}, "group": {2: 0.9, 32: 0.9}}),
                         ("equal_steps", {"batch": {2: 0.1, 32: 0.9}, "group": {2: 0.1, 32: 0.9}})):
        for norm, by in accs.items():
            for bs, a in by.items():
                cfg = {"norm": norm, "batch_size": bs, "epochs": 1, "lr": 0.05 * bs / 32}
                if budget:
                    cfg["budget"] = budget
                runs += [_run("batch_size", cfg, s, _train_metrics(a + s / 100))
                         for s in range(3)]
    n6 = batch_size.analyze(runs, tmp_path, "en")[0]
    assert n6.verdict == SUPPORTED  # decided by the same-epochs runs alone
    assert len(n6.tables) == 2 and "equal steps" in n6.tables[1].headers[0]
    assert "with equal steps, change 32→2: BN -80.0, GN -80.0" in n6.measured
    assert batch_size.budget_steps({"epochs": 3, "batch_size": 2, "budget": "equal_steps"},
                                   4000) == 375


def test_demonstrations_are_labelled_and_criteria_come_from_the_constants():
    from sharenorm.lab.experiments import all_claims, interval_claims

    claims = all_claims()
    assert {c for c, cl in claims.items() if cl.demonstration} == {"N5", "S1", "T1", "T3"}
    # N7's verdict rests on the invariance; its AdaIN part is named a demonstration
    assert "demonstration" in claims["N7"].criterion("en")
    # the prose is formatted from the numbers the analysis decides with
    assert f"≥ {batch_size.DROP_MARGIN:g} points" in claims["N6"].criterion("en")
    assert f"≥ {batch_size.LEAD_MARGIN:g} points" in claims["N6"].criterion("hi")
    assert f"≥ {depth.DEPTH_MARGIN:g} points" in claims["N8"].criterion("en")
    assert f"≤ {norm_training.STEP_RATIO:.2f}×" in claims["N1"].criterion("en")
    assert f"≥ {sharing_training.SHARE_MARGIN:g} points" in claims["S3"].criterion("hi")
    # the runner's --seeds 1 warning lists what the experiments' flags say
    assert "N6" in interval_claims() and "N5" not in interval_claims()


def test_no_prose_shows_an_unformatted_placeholder():
    # a string that lost its f prefix prints "{DEPTH_MARGIN:g}" to the reader (N8's Hindi
    # criterion did): every claim, title and protocol, in both languages
    import re

    from sharenorm.lab.experiments import all_claims, all_experiments

    texts = {f"{c} criterion": cl.criterion for c, cl in all_claims().items()}
    for e in all_experiments().values():
        texts |= {f"{e.id} title": e.title, f"{e.id} protocol": e.protocol}
    placeholder = re.compile(r"\{[A-Za-z_][A-Za-z0-9_.\[\]'\"]*(![rsa])?(:[^{}]*)?\}")
    for where, text in texts.items():
        for lang in ("en", "hi"):
            assert not placeholder.search(text(lang)), (where, lang, placeholder.search(text(lang)))


def test_lr_is_chosen_on_a_validation_split_with_other_seeds():
    import torch

    from sharenorm.data import Dataset
    from sharenorm.lab.experiments._protocol import SELECT_SEED, select_lr

    ds = Dataset("t", torch.randn(100, 1, 8), torch.arange(100) % 10, torch.randn(50, 1, 8),
                 torch.arange(50) % 10, 10)
    seen = []

    def train(d, lr, seed):
        seen.append((len(d.x_train), len(d.x_test), seed))
        assert not (d.x_test[:, None] == ds.x_test).all(-1).any()  # never the test set
        return {"test_acc": {0.01: 0.5, 0.1: 0.7, 1.0: 0.7}[lr], "diverged": lr == 1.0}

    best, scores = select_lr(train, ds, [1.0, 0.1, 0.01], seed=3)
    assert best == 0.1 and scores == {"1": 0.0, "0.1": 0.7, "0.01": 0.5}  # diverged = 0
    assert {s for *_, s in seen} == {3 + SELECT_SEED} and seen[0][:2] == (80, 20)
    tie, _ = select_lr(lambda d, lr, s: {"test_acc": 0.5}, ds, [0.3, 0.1], seed=0)
    assert tie == 0.1  # a tie goes to the smaller rate


def test_full_norm_training_runs_choose_and_report_their_lr(monkeypatch):
    from sharenorm.lab.experiments import norm_training

    monkeypatch.setattr(norm_training, "LR_GRID", [0.05, 0.1])
    cfg = {"norm": "batch", "steps": 4, "batch_size": 32, "lr_grid": [0.05, 0.1],
           "eval_every": 2, "target": 0.9}
    from sharenorm.lab import runner

    m, _ = runner.execute("norm_training", cfg, 0, False, None)
    assert m["lr_chosen"] in (0.05, 0.1) and set(m["val_acc_by_lr"]) == {"0.05", "0.1"}
    assert all("lr_grid" in c for c in norm_training.configs(False) if "norm" in c)
    assert all(c.get("lr") == 0.05 for c in norm_training.configs(True) if "norm" in c)


def test_n8_compares_norms_at_their_chosen_rates_and_shows_the_stable_range(tmp_path):
    runs = []
    # residual nets, final runs at each seed's chosen rate; at depth 17 GN wins by ~10 points
    table = {("batch", 3): 0.90, ("batch", 17): 0.80, ("group", 3): 0.90, ("group", 17): 0.90}
    for (norm, d), acc in table.items():
        cfg = {"arch": "residual", "norm": norm, "depth": d, "lr_grid": [0.006, 0.02],
               "batch_size": 4, "epochs": 1}
        # BN's tries at 0.02 stay below the stable accuracy at depth 17 in one seed
        tries = [{"0.006": 0.8, "0.02": 0.4 if (norm, d, s) == ("batch", 17, 1) else 0.7}
                 for s in range(3)]
        runs += [_run("depth", cfg, s, {"val_acc": acc, "test_acc": acc + s / 200,
                                        "train_acc": acc, "gap": 0.0, "diverged": False,
                                        "lr_chosen": 0.006, "val_acc_by_lr": tries[s]})
                 for s in range(3)]
    n8 = depth.analyze(runs, tmp_path, "en")[0]
    assert n8.verdict == SUPPORTED, [str(c) for c in n8.comparisons]
    assert "(lr 0.006, 0.006, 0.006)" in n8.tables[0].rows[0][2]
    assert n8.tables[1].rows[0][2:] == ["[0.006, 0.02]", "[0.006, 0.006]"]


def test_n8_min_train_is_exactly_one_step_after_the_validation_split():
    from sharenorm.lab.common import epoch_steps
    from sharenorm.lab.experiments._protocol import VAL_FRACTION

    for cfg in depth.configs(True)[:1] + depth.configs(False)[:1]:
        n = depth.min_train(cfg)

        def trains(k, cfg=cfg):  # one full batch and at least one step after the split
            left = k - max(1, round(VAL_FRACTION * k))
            return left >= cfg["batch_size"] and epoch_steps(cfg["epochs"], left,
                                                             cfg["batch_size"]) >= 1

        assert trains(n) and not trains(n - 1)
