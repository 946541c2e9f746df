"""T2: tying regularizes (small training sets), and soft tying interpolates between the two."""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from sharenorm.lab.claims import SHARE_DOC
from sharenorm.lab.common import ci_band, dataset, figure, save_figure
from sharenorm.lab.experiments._protocol import SELECT_FRACTION, select_lr, selection_text
from sharenorm.lab.spec import (
    NOT_SUPPORTED,
    SUPPORTED,
    Claim,
    ClaimResult,
    Experiment,
    Table,
    Text,
    all3,
    any3,
    decide,
    group_runs,
)
from sharenorm.lab.stats import compare, fmt_ci, mean_ci
from sharenorm.lab.train import batches, count_steps, make_optimizer, seed_everything
from sharenorm.models import Autoencoder

AE_HIDDEN = (48, 16)
FULL_N, QUICK_N = [50, 200, 1348], [50]
FULL_STRENGTHS, QUICK_STRENGTHS = [1e-4, 1e-3, 1e-2, 1e-1, 1.0], [1e-2]
LR = 3e-3  # the quick profile's
STEPS, QUICK_STEPS = 1000, 150
# full profile: each model's Adam learning rate chosen per seed on a validation split of its
# training subset (lowest validation reconstruction error)
LR_GRID = [1e-3, 3e-3, 1e-2]


T2 = Claim(
    "T2", SHARE_DOC, "Regularization और Overfitting को कम करता है।",
    "Tying regularizes and reduces overfitting.",
    Text("Autoencoders on small training sets. Supported if at the smallest training set the tied "
       "model's test reconstruction error is lower than the untied one's and its train–test gap "
       "is smaller, each decided by the 95% Welch interval of untied − tied lying wholly above "
       "0; mixed if one holds; inconclusive when an interval straddles 0. Soft tying "
       "interpolates if the distance ‖W_dec − W_encᵀ‖ falls monotonically with the strength "
       "and the strongest setting's test error is closer to tied than to untied. The table cells "
       "\"Model की Symmetry को बनाए रखता है\" and \"Weights को समान मान रखने के लिए बाध्य करना\" are "
       "judged by symmetry itself: supported if after training ‖W_dec − W_encᵀ‖ is exactly 0 for "
       "the tied model in every seed and > 0 for the untied one.",
         "छोटे training sets पर autoencoders। Supported अगर सबसे छोटे training set पर tied model की "
       "test reconstruction error untied से कम हो और train–test gap छोटा हो, दोनों untied − tied के "
       "95% Welch interval के पूरा 0 से ऊपर होने से तय; एक शर्त हो तो mixed; कोई interval 0 के "
       "दोनों ओर हो तो inconclusive। Soft tying interpolate करता है अगर ‖W_dec − W_encᵀ‖ strength "
       "के साथ लगातार घटे और सबसे strong setting की test error untied की तुलना में tied के ज़्यादा करीब हो। "
       "Table cells \"Model की Symmetry को बनाए रखता है\" और \"Weights को समान मान रखने के लिए बाध्य "
       "करना\" symmetry से ही जाँचे जाते हैं: supported अगर training के बाद tied model का ‖W_dec − "
       "W_encᵀ‖ हर seed में ठीक 0 हो और untied का > 0।"))


def configs(quick: bool) -> list[dict]:
    ns, strengths, steps = (QUICK_N, QUICK_STRENGTHS, QUICK_STEPS) if quick else (
        FULL_N, FULL_STRENGTHS, STEPS)
    lr = {"lr": LR} if quick else {"lr_grid": LR_GRID}
    cfgs = [{"n": n, "mode": m, "strength": 0.0, "steps": steps, **lr} for n in ns
            for m in ("untied", "tied")]
    cfgs += [{"n": ns[0], "mode": "soft", "strength": s, "steps": steps, **lr}
             for s in strengths]
    return cfgs


def planned_steps(cfg: dict, n_train: int) -> int:
    """Optimizer steps of a run: the final training and its learning-rate selection."""
    return cfg["steps"] + len(cfg.get("lr_grid", ())) * max(1, int(cfg["steps"] * SELECT_FRACTION))


def train_autoencoder(cfg: dict, ds, lr: float, seed: int, steps: int) -> tuple[dict, dict]:
    """Train ``cfg``'s autoencoder (tied, untied, or untied with a soft tie) on ``ds`` with Adam
    at ``lr`` for ``steps`` steps; its train and test reconstruction MSE (None when the loss
    became non-finite: the results file holds no NaN) and the tie distance."""
    import sharenorm as sn

    gen = seed_everything(seed)
    model = Autoencoder(ds.sample_shape, AE_HIDDEN, tied=cfg["mode"] == "tied")
    soft = sn.SoftTie(model, model.soft_tie_pairs(), cfg["strength"]) \
        if cfg["mode"] == "soft" else None
    opt = make_optimizer(model.parameters(), "adam", lr)
    x = ds.x_train
    it = batches(len(x), min(32, len(x)), gen)
    t0 = time.perf_counter()
    for _ in range(steps):
        xb = x[next(it)]
        loss = nn.functional.mse_loss(model(xb), xb)
        if soft is not None:
            loss = loss + soft.penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - t0
    count_steps(steps)
    with torch.no_grad():
        tr = nn.functional.mse_loss(model(x), x).item()
        te = nn.functional.mse_loss(model(ds.x_test), ds.x_test).item()
    metrics = {"train_mse": tr, "test_mse": te, "gap": te - tr,
               "tie_distance": model.tie_distance(), "params": sn.count_parameters(model)}
    return ({k: None if isinstance(v, float) and not math.isfinite(v) else v
             for k, v in metrics.items()}, {"train_s": train_s})


def run(cfg, seed, ctx):
    ds = dataset(ctx, "digits", allow_user=False).subset_train(cfg["n"], seed)
    chosen, lr = {}, cfg.get("lr", LR)
    if "lr_grid" in cfg:
        def trial(d, lr_, seed_):
            return train_autoencoder(cfg, d, lr_, seed_,
                                     max(1, int(cfg["steps"] * SELECT_FRACTION)))[0]

        # the lowest validation MSE wins: the score is its negative (a diverged try loses)
        lr, scores = select_lr(trial, ds, cfg["lr_grid"], seed, score=lambda m: (
            -math.inf if m["test_mse"] is None else -m["test_mse"]))
        chosen = {"lr_chosen": lr, "val_mse_by_lr": {k: None if v is None else -v
                                                     for k, v in scores.items()}}
    metrics, timing = train_autoencoder(cfg, ds, lr, seed, cfg["steps"])
    return metrics | chosen, timing


def analyze(runs, figdir, lang):
    if not runs:
        return []
    g = group_runs(runs, "mode", "n", "strength")
    ns = sorted({n for (m, n, _) in g if m in ("untied", "tied")})
    rows = []
    for (mode, n, s), ms in g.items():
        rows.append([mode if mode != "soft" else f"soft λ={s:g}", str(n),
                     f"{ms[0]['params']:,}", fmt_ci([m["train_mse"] for m in ms], digits=4),
                     fmt_ci([m["test_mse"] for m in ms], digits=4),
                     fmt_ci([m["gap"] for m in ms], digits=4),
                     fmt_ci([m["tie_distance"] for m in ms], digits=3),
                     ", ".join(f"{m['lr_chosen']:g}" for m in ms) if "lr_chosen" in ms[0]
                     else f"{runs[0]['config'].get('lr', LR):g}"])
    table = Table(["model", "train size", "parameters", "train MSE", "test MSE",
                   "gap (test − train)", "‖W_dec − W_encᵀ‖",
                   "Adam lr (chosen on validation, per seed)"], rows)
    fig, (a1, a2) = figure(1, 2, (11, 4))
    for i, mode in enumerate(("untied", "tied")):
        # one colour per model: its test line, its band and its train line
        xs, mu, lo, hi = ci_band({n: [m["test_mse"] for m in g[(mode, n, 0.0)]] for n in ns
                                  if (mode, n, 0.0) in g}, bounds=(0.0, float("inf")))
        a1.plot(xs, mu, marker="o", color=f"C{i}", label=f"{mode} (test)")
        a1.fill_between(xs, lo, hi, alpha=0.2, color=f"C{i}", label=f"{mode} (test, 95% CI)")
        xs, mu, _, _ = ci_band({n: [m["train_mse"] for m in g[(mode, n, 0.0)]] for n in ns
                                if (mode, n, 0.0) in g})
        a1.plot(xs, mu, ls="--", marker=".", color=f"C{i}", label=f"{mode} (train)")
    a1.set_xscale("log")
    a1.set_xlabel("training images")
    a1.set_ylabel("reconstruction MSE")
    a1.set_title("T2: tied vs untied autoencoder")
    a1.legend()
    n0 = min(ns) if ns else None
    soft = sorted((s, ms) for (m, n, s), ms in g.items() if m == "soft" and n == n0)
    if soft:
        xs = [s for s, _ in soft]
        a2.plot(xs, [mean_ci([m["test_mse"] for m in ms])[0] for _, ms in soft], marker="o",
                color="C2", label="soft tie: test MSE")
        for mode, ls in (("untied", ":"), ("tied", "--")):
            if (mode, n0, 0.0) in g:
                a2.axhline(mean_ci([m["test_mse"] for m in g[(mode, n0, 0.0)]])[0], ls=ls,
                           color={"untied": "C0", "tied": "C1"}[mode], label=f"{mode}: test MSE")
        a2b = a2.twinx()
        a2b.plot(xs, [mean_ci([m["tie_distance"] for m in ms])[0] for _, ms in soft],
                 color="C3", marker="s", label="‖W_dec − W_encᵀ‖")
        a2b.set_ylabel("‖W_dec − W_encᵀ‖", color="C3")
        a2.set_xscale("log")
        a2.set_xlabel("soft-tie strength λ")
        a2.set_ylabel("test MSE")
        a2.set_title(f"T2: soft tying at {n0} training images")
        # the distance curve lives on the twin axis: one legend for both axes' curves
        h1, l1 = a2.get_legend_handles_labels()
        h2, l2 = a2b.get_legend_handles_labels()
        a2.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    fp = save_figure(fig, figdir, "t2_tying_regularization")
    if ("untied", n0, 0.0) not in g or ("tied", n0, 0.0) not in g:
        return []
    tu, tt = g[("untied", n0, 0.0)], g[("tied", n0, 0.0)]
    eu, et = [m["test_mse"] for m in tu], [m["test_mse"] for m in tt]
    # a run whose loss diverged has no MSE: dropped it would flatter its model, so the
    # comparisons resting on it decide nothing
    diverged = any(m["test_mse"] is None for m in tu + tt)
    c_mse = compare("untied − tied test MSE", eu, et, 0, digits=4, strict=True
                    ).resting_on_unconverged(diverged)
    c_gap = compare("untied − tied gap", [m["gap"] for m in tu], [m["gap"] for m in tt], 0,
                    digits=4, strict=True).resting_on_unconverged(diverged)
    better, gap_ok = c_mse.holds, c_gap.holds
    v = decide(all3(better, gap_ok), any3(better, gap_ok))
    measured = (f"{n0} images: test MSE tied {fmt_ci(et, digits=4)} vs untied "
                f"{fmt_ci(eu, digits=4)}; gap tied {mean_ci([m['gap'] for m in tt])[0]:.4f} vs "
                f"untied {mean_ci([m['gap'] for m in tu])[0]:.4f}")
    if len(soft) >= 2:
        dists = [mean_ci([m["tie_distance"] for m in ms])[0] for _, ms in soft]
        mono = all(b <= a for a, b in zip(dists, dists[1:], strict=False))
        last = mean_ci([m["test_mse"] for m in soft[-1][1]])[0]
        closer = abs(last - mean_ci(et)[0]) < abs(last - mean_ci(eu)[0])
        measured += (f"; soft tying: distance falls monotonically {mono}, strongest λ closer to "
                     f"tied {closer}")
    # the cells "Model की Symmetry को बनाए रखता है" / "Weights को समान मान रखने के लिए बाध्य करना"
    # are about symmetry, so they are judged by ‖W_dec − W_encᵀ‖ itself, not by the test error
    d_tied = [m["tie_distance"] for m in tt]
    d_untied = [m["tie_distance"] for m in tu]
    sym = all(d == 0 for d in d_tied) and all(d > 0 for d in d_untied)
    sym_cell = (f"‖W_dec − W_encᵀ‖ after training: tied {max(d_tied):.1g}, untied "
                f"{mean_ci(d_untied)[0]:.2f}", SUPPORTED if sym else NOT_SUPPORTED)
    return [ClaimResult("T2", v, measured, [table], [fp], comparisons=[c_mse, c_gap],
                        cells={("share", "reg", "tying"): sym_cell,
                               ("share", "purpose", "tying"): sym_cell})]


_SELECTION = selection_text(LR_GRID, LR, "the validation MSE", "validation MSE",
                            "training subset")
EXPERIMENT = Experiment(
    id="tying_reg",
    claims=(T2,),
    title=Text("Does tying regularize? Tied, untied and softly tied autoencoders",
               "क्या tying regularize करता है? Tied, untied और softly tied autoencoders"),
    protocol=Text(
        f"sharenorm.TiedAutoencoder 64 → {' → '.join(map(str, AE_HIDDEN))} (tanh) on 8×8 digits "
        "(standardized), trained on random subsets of " + ", ".join(map(str, FULL_N)) +
        " images (quick: " + ", ".join(map(str, QUICK_N)) + f"); Adam, batch 32, {STEPS} steps "
        f"(quick: {QUICK_STEPS}), MSE reconstruction, the learning rate per model and seed "
        f"{_SELECTION[0]}; test MSE on the 449 held-out images. Soft "
        "tying: the untied model plus sharenorm.SoftTie(W_dec, W_encᵀ) with λ in " +
        ", ".join(f"{s:g}" for s in FULL_STRENGTHS) + " at the smallest training set.",
        f"sharenorm.TiedAutoencoder 64 → {' → '.join(map(str, AE_HIDDEN))} (tanh), 8×8 digits "
        "(standardized) पर, " + ", ".join(map(str, FULL_N)) + f" images के random subsets पर train; "
        f"Adam, batch 32, {STEPS} steps (quick: {QUICK_STEPS}), MSE reconstruction, हर model और seed "
        f"की learning rate {_SELECTION[1]}; 449 held-out images पर test MSE। Soft tying: untied model + sharenorm.SoftTie(W_dec, W_encᵀ), λ = " +
        ", ".join(f"{s:g}" for s in FULL_STRENGTHS) + ", सबसे छोटे training set पर।"),
    configs=configs, run=run, analyze=analyze,
    requires=("TiedAutoencoder", "SoftTie", "count_parameters"))
