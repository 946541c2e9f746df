"""S4: RNN weights shared across time steps versus separate weights per step."""

from __future__ import annotations

import torch

from sharenorm.data import MNIST1D_PUBLISHED
from sharenorm.lab.claims import SHARE_DOC
from sharenorm.lab.common import PCT_BOUNDS, accuracies, ci_band, dataset, figure, pct, save_figure
from sharenorm.lab.experiments._protocol import (
    GAIN_HEADER,
    SCHEDULE,
    SELECT_FRACTION,
    classifier_trial,
    converged,
    select_lr,
    selection_text,
    tail_gain_cell,
    unconverged_text,
)
from sharenorm.lab.spec import (
    INCONCLUSIVE,
    Claim,
    ClaimResult,
    Experiment,
    Table,
    Text,
    all3,
    decide,
    group_runs,
)
from sharenorm.lab.stats import compare, fmt_ci
from sharenorm.lab.train import TrainConfig, train_classifier
from sharenorm.models import RNNClassifier

HIDDEN, LR, CHUNK = 64, 3e-3, 4   # LR: the quick profile's
# Both RNNs reach a plateau at 12,000 Adam steps under the cosine schedule (mean tail gain over
# 5 seeds −0.2 shared, +0.3 separate points at lr 3e-3), not at 6,000 (+1.4 shared):
# benchmarks/schedule_pilot.py --model rnn. The seeds train as one stacked model.
STEPS, QUICK_STEPS = 12000, 50
# full profile: each RNN's Adam learning rate chosen per seed on a validation split
LR_GRID = [1e-3, 3e-3, 1e-2]


PARAM_RATIO = 5.0  # the shared RNN has at least this many times fewer parameters
NONINF_MARGIN = 1.0  # "at least as accurate": shared − separate ≥ −this many points


_UNCONVERGED = unconverged_text("test accuracy")
S4 = Claim(
    "S4", SHARE_DOC, "ये तकनीकें विशेष रूप से Convolutional Neural Networks (CNNs) और Recurrent "
    "Neural Networks (RNNs) में उपयोग की जाती हैं।",
    "Sharing is used in CNNs and RNNs (read as: an RNN's weights shared across time steps).",
    Text(f"Supported if the RNN with weights shared across time has ≥ {PARAM_RATIO:g}× fewer "
         "parameters than the one with separate weights per step and a test accuracy at least "
         f"as high, within {NONINF_MARGIN:g} point (the 95% Welch interval of shared − separate "
         f"wholly ≥ −{NONINF_MARGIN:g}); mixed if only the parameter part holds; inconclusive when "
         "the interval straddles the margin, or when a contender has not converged "
         f"({_UNCONVERGED[0]}).",
         f"Supported अगर time पर shared weights वाले RNN के parameters हर step के अलग weights वाले से "
         f"≥ {PARAM_RATIO:g}× कम हों और test accuracy कम से कम उतनी हो, {NONINF_MARGIN:g} point के भीतर "
         f"(shared − separate का 95% Welch interval पूरा ≥ −{NONINF_MARGIN:g}); केवल parameters वाली "
         "शर्त हो तो mixed; interval margin के दोनों ओर हो, या कोई contender converge न हुआ हो "
         f"({_UNCONVERGED[1]}), तो inconclusive।"))


def configs(quick: bool) -> list[dict]:
    steps, every = (QUICK_STEPS, 25) if quick else (STEPS, STEPS // 15)
    lr = {"lr": LR} if quick else {"lr_grid": LR_GRID}
    return [{"shared": s, "hidden": HIDDEN, "chunk": CHUNK, "steps": steps, "eval_every": every,
             "schedule": SCHEDULE, **lr} for s in (True, False)]


def planned_steps(cfg: dict, n_train: int) -> int:
    """Optimizer steps of a run: the final training and its learning-rate selection."""
    return cfg["steps"] + len(cfg.get("lr_grid", ())) * max(1, int(cfg["steps"] * SELECT_FRACTION))


def _model(cfg, ds):
    return RNNClassifier(ds.sample_shape, ds.num_classes, hidden=cfg["hidden"],
                         shared=cfg["shared"], chunk=cfg["chunk"])


def run(cfg, seed, ctx):
    import sharenorm as sn

    ds = dataset(ctx, allow_user=False)
    chosen, lr = {}, cfg.get("lr", LR)
    if "lr_grid" in cfg:
        trial = classifier_trial(lambda d: _model(cfg, d), cfg["steps"], batch_size=32,
                                 optimizer="adam", schedule=cfg.get("schedule", "constant"))
        lr, scores = select_lr(trial, ds, cfg["lr_grid"], seed)
        chosen = {"lr_chosen": lr, "val_acc_by_lr": scores}
    torch.manual_seed(seed)
    model = _model(cfg, ds)
    metrics, timing = train_classifier(model, ds, TrainConfig(
        steps=cfg["steps"], batch_size=32, lr=lr, optimizer="adam",
        schedule=cfg.get("schedule", "constant"), eval_every=cfg["eval_every"]), seed)
    metrics["params"] = sn.count_parameters(model)
    metrics["recurrent_params"] = sn.count_parameters(model.rnn)
    return metrics | chosen, timing


def analyze(runs, figdir, lang):
    if not runs:
        return []
    g = group_runs(runs, "shared")
    rows = []
    fig, ax = figure()
    for (shared,), ms in g.items():
        name = "shared in time" if shared else "separate per step"
        rows.append([name, f"{ms[0]['params']:,}", f"{ms[0]['recurrent_params']:,}",
                     f"{sum(bool(m['diverged']) for m in ms)}/{len(ms)}",
                     pct(accuracies(ms)), pct(accuracies(ms, "train_acc")),
                     fmt_ci([m["gap"] for m in ms], 100),
                     fmt_ci([m["_time"]["s_per_step"] for m in ms], 1e3, 2), tail_gain_cell(ms),
                     ", ".join(f"{m['lr_chosen']:g}" for m in ms) if "lr_chosen" in ms[0]
                     else f"{runs[0]['config'].get('lr', LR):g}"])
        by: dict = {}
        for m in ms:
            for s, a in m["curve"]:
                by.setdefault(s, []).append(a)
        xs, mu, lo, hi = ci_band(by, 100, PCT_BOUNDS)
        ax.plot(xs, mu, label=name)
        ax.fill_between(xs, lo, hi, alpha=0.2)
    ax.set_xlabel("Adam steps")
    ax.set_ylabel("test accuracy %")
    ax.set_title("S4: tanh RNN on mnist1d, weights shared across time or not")
    ax.legend()
    fp = save_figure(fig, figdir, "s4_rnn")
    table = Table(["RNN", "parameters", "recurrent parameters", "diverged",
                   "test acc % (diverged = 0)", "train acc % (diverged = 0)",
                   "gap (points, runs that trained)", "ms/step", GAIN_HEADER,
                   "Adam lr (chosen on validation, per seed)"], rows)
    if (True,) not in g or (False,) not in g:
        return []
    sh, un = g[(True,)], g[(False,)]
    ratio = un[0]["params"] / sh[0]["params"]
    a_sh, a_un = accuracies(sh), accuracies(un)  # a diverged run counts as 0, never dropped
    c_acc = compare("shared − separate test accuracy", a_sh, a_un, -NONINF_MARGIN, scale=100,
                    unit=" points")
    conv = converged(sh, un)
    c_acc = c_acc.resting_on_unconverged(conv is False)
    v = decide(all3(ratio >= PARAM_RATIO, c_acc.holds), ratio >= PARAM_RATIO)
    if conv is False:
        v = INCONCLUSIVE
    pub = [["MNIST-1D paper", "GRU test accuracy (ours: plain tanh RNN)",
            f"{MNIST1D_PUBLISHED['gru']:.0%}", pct(a_sh) + " %"]]
    return [ClaimResult("S4", v, f"parameters separate/shared {ratio:.1f}×; test acc shared "
                        f"{pct(a_sh)} % vs separate {pct(a_un)} %"
                        + ("; a contender had not converged (plateau), so the comparison is "
                           "inconclusive" if conv is False else ""), [table], [fp], pub,
                        comparisons=[c_acc])]


_SELECTION = selection_text(LR_GRID, LR)
EXPERIMENT = Experiment(
    id="rnn_sharing",
    claims=(S4,),
    title=Text("RNN weights shared across time vs separate per step",
               "RNN weights time पर shared बनाम हर step के अलग"),
    protocol=Text(
        f"mnist1d read {CHUNK} positions per time step ({40 // CHUNK} steps of {CHUNK} inputs; one "
        "position per step, 40 steps, did not train at all for a plain tanh RNN in a pilot run, "
        f"torch.nn.RNN alike) by a tanh Elman RNN "
        f"with {HIDDEN} hidden units (sharenorm.SharedRNN) or the same recurrence with separate "
        "weights per step (sharenorm.UnsharedRNN), linear head on the last hidden state. Adam, "
        f"batch 32, {STEPS} steps (quick: {QUICK_STEPS}), the rate decayed to 0 by a {SCHEDULE} schedule; the "
        f"first step's learning rate per RNN and seed {_SELECTION[0]}. --data is not used (needs sequences).",
        f"mnist1d को {CHUNK} positions प्रति time step पढ़ा गया ({40 // CHUNK} steps, {CHUNK} inputs; एक "
        f"position प्रति step (40 steps) पर plain tanh RNN pilot run में train नहीं हुआ), {HIDDEN} hidden "
        "units वाले tanh Elman RNN से (sharenorm.SharedRNN) या हर step के अलग weights वाली उसी "
        "recurrence से (sharenorm.UnsharedRNN), आख़िरी hidden state पर linear head। Adam, batch 32, "
        f"{STEPS} steps (quick: {QUICK_STEPS}), rate {SCHEDULE} schedule से 0 तक घटती; हर RNN और seed की (पहले "
        f"step की) learning rate {_SELECTION[1]}। --data "
        "इस्तेमाल नहीं होता।"),
    configs=configs, run=run, analyze=analyze,
    requires=("SharedRNN", "UnsharedRNN", "count_parameters"))
