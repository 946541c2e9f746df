"""N8: GN is more stable for deep networks — a depth sweep at a small batch."""

from __future__ import annotations

import torch

from sharenorm.lab.common import (
    PCT_BOUNDS,
    accuracies,
    ci_band,
    dataset,
    epoch_steps,
    figure,
    pct,
    samples_for_one_step,
    save_figure,
)
from sharenorm.lab.spec import (
    ClaimResult,
    Experiment,
    Table,
    Text,
    all3,
    any3,
    decide,
    group_runs,
)
from sharenorm.lab.stats import mean_ci, separated
from sharenorm.lab.train import TrainConfig, train_classifier
from sharenorm.models import ConvNet

NORMS = ["batch", "group", "none"]
FULL_DEPTHS, QUICK_DEPTHS = [2, 4, 8, 16], [2, 6]
BATCH, WIDTH = 4, 16


def configs(quick: bool) -> list[dict]:
    depths, epochs = (QUICK_DEPTHS, 0.1) if quick else (FULL_DEPTHS, 1)
    return [{"norm": n, "depth": d, "batch_size": BATCH, "epochs": epochs,
             "lr": 0.05 * BATCH / 32} for n in NORMS for d in depths]


def run(cfg, seed, ctx):
    ds = dataset(ctx)
    torch.manual_seed(seed)
    model = ConvNet(ds.sample_shape, ds.num_classes, norm=cfg["norm"], width=WIDTH,
                    depth=cfg["depth"], num_groups=4 if cfg["norm"] == "group" else None)
    steps = epoch_steps(cfg["epochs"], len(ds.x_train), cfg["batch_size"])
    metrics, timing = train_classifier(model, ds, TrainConfig(
        steps=steps, batch_size=cfg["batch_size"], lr=cfg["lr"]), seed)
    metrics.pop("curve", None)
    return metrics, timing


def min_train(cfg) -> int:
    """A fixed number of epochs: too few samples would give 0 optimizer steps."""
    return samples_for_one_step(cfg["epochs"], cfg["batch_size"])


def analyze(runs, figdir, lang):
    if not runs:
        return []
    g = group_runs(runs, "norm", "depth")
    depths = sorted({d for _, d in g})
    norms = [n for n in NORMS if any(k[0] == n for k in g)]
    table = Table(["test acc %: norm \\ depth"] + [str(d) for d in depths],
                  [[n] + [pct(accuracies(g[(n, d)])) if (n, d) in g else "—" for d in depths]
                   for n in norms])
    fig, ax = figure()
    for n in norms:
        xs, mu, lo, hi = ci_band({d: accuracies(g[(n, d)]) for d in depths if (n, d) in g}, 100,
                                 PCT_BOUNDS)
        ax.plot(xs, mu, marker="o", label={"batch": "BN", "group": "GN", "none": "no norm"}[n])
        ax.fill_between(xs, lo, hi, alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xticks(depths, [str(d) for d in depths])
    ax.set_xlabel("conv blocks (depth)")
    ax.set_ylabel("test accuracy %")
    ax.set_title(f"N8: depth sweep at batch {BATCH}")
    ax.legend()
    fp = save_figure(fig, figdir, "n8_depth")
    lo_d, hi_d = min(depths), max(depths)
    gn, bn = accuracies(g.get(("group", hi_d), [])), accuracies(g.get(("batch", hi_d), []))
    if not gn or not bn:
        return []
    a = all3(100 * (mean_ci(gn)[0] - mean_ci(bn)[0]) >= 2, separated(gn, bn))

    def loss(n):
        return mean_ci(accuracies(g[(n, lo_d)]))[0] - mean_ci(accuracies(g[(n, hi_d)]))[0]

    b = loss("group") < loss("batch")
    v = decide(all3(a, b), any3(a, b))
    return [ClaimResult("N8", v, f"depth {hi_d}: GN {pct(gn)} % vs BN {pct(bn)} %; accuracy "
                        f"lost from depth {lo_d} to {hi_d}: GN {100 * loss('group'):.1f}, BN "
                        f"{100 * loss('batch'):.1f} points", [table], [fp], notes=Text(
                            "Plain (non-residual) networks at batch 4 with the linearly scaled "
                            f"learning rate 0.05·{BATCH}/32 for a fixed budget: a deep network "
                            "that stays near 10% (chance) has not started to learn within the "
                            "budget. The claim is about stability at depth, so the comparison is "
                            "between norms at the same depth, budget and learning rate.",
                            "Batch 4 पर plain (non-residual) networks, linearly scaled learning "
                            f"rate 0.05·{BATCH}/32, fixed budget: जो deep network लगभग 10% (chance) "
                            "पर रहता है वह budget में सीखना शुरू नहीं कर पाया। Claim depth पर "
                            "stability का है, इसलिए तुलना एक ही depth, budget और learning rate पर "
                            "norms के बीच है।"))]


EXPERIMENT = Experiment(
    id="depth",
    claims=("N8",),
    title=Text("Depth sweep at a small batch", "छोटे batch पर depth sweep"),
    protocol=Text(
        f"mnist1d (or --data), plain ConvNet (no residual connections) of width {WIDTH} with "
        "depth " + ", ".join(map(str, FULL_DEPTHS)) + " conv blocks (quick: " +
        ", ".join(map(str, QUICK_DEPTHS)) + "; the first 3 downsample), BN, GN (G=4) or no norm; "
        f"batch {BATCH}, SGD momentum 0.9, lr 0.05·{BATCH}/32, 1 epoch (quick: 0.1). Test "
        "accuracy in eval mode.",
        f"mnist1d (या --data), width {WIDTH} का plain ConvNet (residual connections नहीं), depth "
        + ", ".join(map(str, FULL_DEPTHS)) + " conv blocks (पहले 3 downsample), BN, GN (G=4) या "
        f"बिना norm; batch {BATCH}, SGD momentum 0.9, lr 0.05·{BATCH}/32, 1 epoch (quick: 0.1)। "
        "Test accuracy eval mode में।"),
    configs=configs, run=run, analyze=analyze, uses_data=True,
    min_train=min_train)
