"""S2 (sharing trains faster) and S3 (sharing generalizes; on shuffled positions it should not)."""

from __future__ import annotations

import torch

from sharenorm.data import MNIST1D_PUBLISHED, Dataset
from sharenorm.lab.common import PCT_BOUNDS, accuracies, ci_band, dataset, figure, pct, save_figure
from sharenorm.lab.experiments.sharing_cost import MODELS, build
from sharenorm.lab.spec import (
    MIXED,
    NOT_SUPPORTED,
    SUPPORTED,
    ClaimResult,
    Experiment,
    Table,
    Text,
    all3,
    decide,
    group_runs,
)
from sharenorm.lab.stats import fmt_ci, mean_ci, mean_or_inf, separated
from sharenorm.lab.train import TrainConfig, train_classifier

LR = 2e-3


def shuffle_positions(ds: Dataset, seed: int = 0) -> Dataset:
    """The same data with one fixed random permutation of the spatial positions (all samples).

    For mnist1d this is the paper's ``shuffle_seq=True``: the information is unchanged, the
    neighbourhood (translation) structure a convolution exploits is gone.
    """
    shape = ds.x_train.shape[2:]
    n = shape.numel()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))

    def apply(x):
        return x.flatten(2)[:, :, perm].reshape(x.shape)

    return Dataset(ds.name + "-shuffled", apply(ds.x_train), ds.y_train, apply(ds.x_test),
                   ds.y_test, ds.num_classes, ds.source + " (positions shuffled)")


def configs(quick: bool) -> list[dict]:
    steps, every, target = (100, 50, 0.4) if quick else (2000, 100, 0.8)
    return [{"model": m, "shuffled": s, "steps": steps, "eval_every": every, "target": target,
             "batch_size": 32, "lr": LR} for s in (False, True) for m in MODELS]


def run(cfg, seed, ctx):
    ds = dataset(ctx)
    if cfg["shuffled"]:
        ds = shuffle_positions(ds)
    torch.manual_seed(seed)
    model = build(cfg["model"], ds)
    metrics, timing = train_classifier(model, ds, TrainConfig(
        steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"], optimizer="adam",
        eval_every=cfg["eval_every"], target_acc=cfg["target"]), seed)
    metrics["n_train"] = len(ds.x_train)  # the epoch of "s / epoch" (4000 for mnist1d)
    return metrics, timing


def analyze(runs, figdir, lang):
    if not runs:
        return []
    g = group_runs(runs, "model", "shuffled")
    cfg = runs[0]["config"]
    n_train = runs[0]["metrics"].get("n_train")
    steps_per_epoch = n_train / cfg["batch_size"] if n_train else None
    rows = []
    for (model, shuf), ms in g.items():
        sps = [m["_time"]["s_per_step"] for m in ms]
        rows.append([model, "shuffled" if shuf else "ordered",
                     fmt_ci([s * steps_per_epoch for s in sps], digits=2)
                     if steps_per_epoch else "—",
                     fmt_ci([m["_time"].get("s_to_target") for m in ms], digits=2),
                     f"{sum(m['steps_to_target'] is not None for m in ms)}/{len(ms)}",
                     f"{sum(bool(m['diverged']) for m in ms)}/{len(ms)}",
                     pct(accuracies(ms)), pct(accuracies(ms, "train_acc")),
                     fmt_ci([m["gap"] for m in ms], 100)])
    table = Table(["model", "positions", f"s / epoch ({n_train or '?'} samples)",
                   f"s to {cfg['target']:.0%}", "reached", "diverged",
                   "test acc % (diverged = 0)", "train acc % (diverged = 0)",
                   "gap (points, runs that trained)"], rows)
    fig, axes = figure(1, 2, (11, 4))
    for ax, shuf in zip(axes, (False, True), strict=False):
        for model in MODELS:
            ms = g.get((model, shuf), [])
            if not ms:
                continue
            by: dict = {}
            for m in ms:
                for s, a in m["curve"]:
                    by.setdefault(s, []).append(a)
            xs, mu, lo, hi = ci_band(by, 100, PCT_BOUNDS)
            ax.plot(xs, mu, label=model)
            ax.fill_between(xs, lo, hi, alpha=0.2)
        ax.set_title(f"S3: mnist1d, {'shuffled' if shuf else 'ordered'} positions")
        ax.set_xlabel("Adam steps")
        ax.set_ylabel("test accuracy %")
        ax.legend()
    fp = save_figure(fig, figdir, "s3_sharing_training")
    need = {(m, s) for m in MODELS for s in (False, True)}
    if not need <= set(g):
        return []

    def acc(model, shuf):  # a diverged run counts as 0, never dropped
        return accuracies(g[(model, shuf)])

    def sec(model):
        return mean_or_inf([m["_time"].get("s_to_target") for m in g[(model, False)]])

    def per_step(model):
        return mean_ci([m["_time"]["s_per_step"] for m in g[(model, False)]])[0]

    # S2
    cnn_reaches = any(m["steps_to_target"] is not None for m in g[("cnn", False)])
    wins = [cnn_reaches and sec("cnn") < sec("locally_connected"),
            cnn_reaches and sec("cnn") < sec("mlp"), per_step("cnn") < per_step("locally_connected")]
    v2 = SUPPORTED if all(wins) else MIXED if any(wins) else NOT_SUPPORTED
    s2 = ClaimResult("S2", v2, f"seconds to {cfg['target']:.0%}: CNN {sec('cnn'):.2f}, locally "
                     f"connected {sec('locally_connected'):.2f}, MLP {sec('mlp'):.2f}; ms/step "
                     f"CNN {1e3 * per_step('cnn'):.2f}, LC {1e3 * per_step('locally_connected'):.2f}"
                     f", MLP {1e3 * per_step('mlp'):.2f}", [table], [fp], notes=Text(
                         "Wall-clock time on a shared 2-core CPU, one thread per run, runs in "
                         "parallel: compare within this table only. 'inf' = never reached.",
                         "Shared 2-core CPU पर wall-clock time, हर run एक thread, runs parallel: "
                         "केवल इसी table के भीतर तुलना करें। 'inf' = कभी नहीं पहुँचा।"))
    # S3
    c, lc, mlp = acc("cnn", False), acc("locally_connected", False), acc("mlp", False)
    first = all3(*(all3(100 * (mean_ci(c)[0] - mean_ci(o)[0]) >= 3, separated(c, o))
                   for o in (lc, mlp)))
    lead_o = mean_ci(c)[0] - mean_ci(mlp)[0]
    lead_s = mean_ci(acc("cnn", True))[0] - mean_ci(acc("mlp", True))[0]
    second = lead_s < lead_o
    v3 = decide(all3(first, second), first)
    pub = [["MNIST-1D paper", "CNN test accuracy, ordered", f"{MNIST1D_PUBLISHED['cnn']:.0%}",
            pct(c) + " %"],
           ["MNIST-1D paper", "MLP test accuracy, ordered", f"{MNIST1D_PUBLISHED['mlp']:.0%}",
            pct(mlp) + " %"],
           ["MNIST-1D paper", "CNN test accuracy, shuffled",
            f"{MNIST1D_PUBLISHED['cnn_shuffled']:.0%}", pct(acc("cnn", True)) + " %"]]
    gaps = {k: mean_ci([m["gap"] for m in g[(k, False)]])[0] for k in MODELS}
    cells = {("share", "reg", "sharing"): (
        f"test acc CNN {pct(c)} vs LC {pct(lc)} vs MLP {pct(mlp)} %", v3)}
    s3 = ClaimResult("S3", v3, f"ordered: CNN {pct(c)}, LC {pct(lc)}, MLP {pct(mlp)} %; CNN lead "
                     f"over MLP {100 * lead_o:+.1f} ordered vs {100 * lead_s:+.1f} shuffled; gap "
                     f"CNN {100 * gaps['cnn']:.1f}, LC {100 * gaps['locally_connected']:.1f}, MLP "
                     f"{100 * gaps['mlp']:.1f} points", [table], [fp], pub, cells=cells,
                     notes=Text(
                         f"The CNN's lead over the MLP is {100 * lead_o:+.1f} points on ordered "
                         f"positions and {100 * lead_s:+.1f} on shuffled ones: "
                         + ("the advantage comes from translation structure, which shuffling "
                            "removes. " if second else "shuffling did not remove the lead. ")
                         + "The locally connected network has the CNN's locality without its "
                         "sharing, so CNN vs locally connected isolates sharing itself "
                         f"({100 * (mean_ci(c)[0] - mean_ci(lc)[0]):+.1f} points here; with 3 "
                         "seeds the 95% intervals must not overlap to count).",
                         f"MLP पर CNN की बढ़त ordered positions पर {100 * lead_o:+.1f} points और "
                         f"shuffled पर {100 * lead_s:+.1f} है: "
                         + ("फ़ायदा translation structure से आता है, जिसे shuffling हटा देता है। "
                            if second else "shuffling ने बढ़त नहीं हटाई। ")
                         + "Locally connected network में CNN की locality है पर sharing नहीं, इसलिए "
                         "CNN vs locally connected केवल sharing का असर दिखाता है (यहाँ "
                         f"{100 * (mean_ci(c)[0] - mean_ci(lc)[0]):+.1f} points; 3 seeds के साथ 95% "
                         "intervals का overlap न होना ज़रूरी है)।"))
    return [s2, s3]


EXPERIMENT = Experiment(
    id="sharing_training",
    claims=("S2", "S3"),
    title=Text("Training CNN vs locally connected vs MLP, ordered and shuffled positions",
               "CNN vs locally connected vs MLP की training, ordered और shuffled positions"),
    protocol=Text(
        "The three S1 networks (no norm) on mnist1d (or --data) and on the same data with one "
        f"fixed random permutation of the positions. Adam lr {LR}, batch 32, 2000 steps (quick: "
        "100), test accuracy every 100 steps (quick: 50), target 80% (quick: 40%). Seconds are "
        "training time only (evaluation excluded).",
        "तीनों S1 networks (बिना norm) mnist1d (या --data) पर, और उसी data पर positions की एक fixed "
        f"random permutation के साथ। Adam lr {LR}, batch 32, 2000 steps (quick: 100), हर 100 steps "
        "(quick: 50) पर test accuracy, target 80% (quick: 40%)। Seconds केवल training time हैं।"),
    configs=configs, run=run, analyze=analyze, uses_data=True,
    requires=("LocallyConnected1d", "LocallyConnected2d", "count_parameters"),
    batched=False)  # S2 compares seconds per step: one model at a time
