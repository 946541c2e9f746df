"""N1 (BN trains faster) and N4 (normalization generalizes better): one training per norm."""

from __future__ import annotations

from sharenorm.data import MNIST1D_PUBLISHED
from sharenorm.lab.common import PCT_BOUNDS, accuracies, ci_band, dataset, figure, pct, save_figure
from sharenorm.lab.spec import (
    INFORMATIONAL,
    ClaimResult,
    Experiment,
    Table,
    Text,
    all3,
    any3,
    decide,
    group_runs,
)
from sharenorm.lab.stats import fmt_ci, mean_ci, mean_or_inf, separated
from sharenorm.lab.train import TrainConfig, train_classifier
from sharenorm.models import ConvNet

NORMS = ["batch", "group", "instance", "layer", "none"]


def configs(quick: bool) -> list[dict]:
    steps, every, target = (100, 25, 0.6) if quick else (1500, 50, 0.85)
    return [{"norm": n, "steps": steps, "batch_size": 32, "lr": 0.05, "eval_every": every,
             "target": target} for n in NORMS]


def run(cfg: dict, seed: int, ctx):
    ds = dataset(ctx)
    import torch

    torch.manual_seed(seed)
    model = ConvNet(ds.sample_shape, ds.num_classes, norm=cfg["norm"], num_groups=8
                    if cfg["norm"] == "group" else None)
    return train_classifier(model, ds, TrainConfig(
        steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"],
        eval_every=cfg["eval_every"], target_acc=cfg["target"]), seed)


def analyze(runs, figdir, lang):
    if not runs:
        return []
    g = group_runs(runs, "norm")
    cfg = runs[0]["config"]
    budget = cfg["steps"]

    def steps_hit(ms):
        return [m["steps_to_target"] if m["steps_to_target"] is not None else budget for m in ms]

    rows = []
    for (norm,), ms in g.items():
        secs = [m["_time"].get("s_to_target") for m in ms]
        rows.append([norm, fmt_ci(steps_hit(ms), digits=0),
                     f"{sum(m['steps_to_target'] is not None for m in ms)}/{len(ms)}",
                     fmt_ci(secs, digits=2), fmt_ci([m["_time"]["s_per_step"] for m in ms], 1e3, 2),
                     f"{sum(bool(m['diverged']) for m in ms)}/{len(ms)}",
                     pct(accuracies(ms)), pct(accuracies(ms, "train_acc")),
                     fmt_ci([m["gap"] for m in ms], 100)])
    table = Table(["norm", f"steps to {cfg['target']:.0%}", "reached", "seconds to target",
                   "ms/step", "diverged", "test acc % (diverged = 0)",
                   "train acc % (diverged = 0)", "gap (points, runs that trained)"], rows)

    fig, (a1, a2) = figure(1, 2, (10, 4))
    for (norm,), ms in g.items():
        by_step: dict = {}
        for m in ms:
            for s, acc in m["curve"]:
                by_step.setdefault(s, []).append(acc)
        xs, mu, lo, hi = ci_band(by_step, 100, PCT_BOUNDS)
        a1.plot(xs, mu, label=norm)
        a1.fill_between(xs, lo, hi, alpha=0.2)
        sps = mean_ci([m["_time"]["s_per_step"] for m in ms])[0]
        a2.plot([x * sps for x in xs], mu, label=norm)
    for a, xl in ((a1, "optimizer steps"), (a2, "training seconds (mean s/step × steps)")):
        a.axhline(cfg["target"] * 100, color="grey", ls=":", lw=1)
        a.set_xlabel(xl)
        a.set_ylabel("test accuracy %")
        a.legend()
    a1.set_title("N1: test accuracy during training (mean, 95% band)")
    fig_path = save_figure(fig, figdir, "n1_training_curves")

    bn, none = g.get(("batch",), []), g.get(("none",), [])
    out = []
    if bn and none:
        sb, sn_ = steps_hit(bn), steps_hit(none)
        mb, mn = mean_ci(sb)[0], mean_ci(sn_)[0]
        tb = mean_or_inf([m["_time"].get("s_to_target") for m in bn])
        tn = mean_or_inf([m["_time"].get("s_to_target") for m in none])
        ratio = mb / mn if mn else float("nan")
        v = decide(all3(ratio <= 2 / 3, separated(sb, sn_), tb <= tn), ratio < 1)
        out.append(ClaimResult(
            "N1", v, f"steps to {cfg['target']:.0%}: BN {mb:.0f} vs none {mn:.0f} "
            f"(ratio {ratio:.2f}); seconds BN {tb:.2f} vs none {tn:.2f}; ms/step BN {1e3 * mean_ci([m['_time']['s_per_step'] for m in bn])[0]:.2f}"
            f" vs none {1e3 * mean_ci([m['_time']['s_per_step'] for m in none])[0]:.2f}",
            [table], [fig_path],
            # "used in CNNs, RNNs" is a statement about practice that no criterion judges: the
            # cell shows that BN trains N1's CNN, with no verdict (N1's is about speed)
            cells={("norm", "use", "batch"): (
                f"CNNs: BN trains the N1 ConvNet to {pct(accuracies(bn))} % test accuracy; "
                "RNNs: not measured", INFORMATIONAL)},
            notes=Text("One learning rate (0.05, SGD momentum 0.9) for every norm; N2 shows how "
                       "the answer depends on it. Seconds include the norm's own cost per step.",
                       "हर norm के लिए एक ही learning rate (0.05, SGD momentum 0.9); N2 दिखाता है कि "
                       "जवाब उस पर कैसे निर्भर है। Seconds में norm की अपनी per-step cost शामिल है।")))
        ab, an = accuracies(bn), accuracies(none)  # a diverged run counts as 0, never dropped
        gb, gn = mean_ci([m["gap"] for m in bn])[0], mean_ci([m["gap"] for m in none])[0]
        better = all3(mean_ci(ab)[0] - mean_ci(an)[0] >= 0.01, separated(ab, an))
        gap_ok = gb <= gn  # NaN (every run diverged) compares False: not "not larger"
        v4 = decide(all3(better, gap_ok), any3(better, gap_ok))
        pub = [["MNIST-1D paper (Greydanus & Kobak)", "mnist1d, CNN without norm, test accuracy",
                f"{MNIST1D_PUBLISHED['cnn']:.0%}", pct(an) + " % (none), " + pct(ab) + " % (BN)"]]
        out.append(ClaimResult(
            "N4", v4, f"test acc BN {pct(ab)} % vs none {pct(an)} % (diverged runs count as 0: "
            f"BN {sum(bool(m['diverged']) for m in bn)}/{len(bn)}, none "
            f"{sum(bool(m['diverged']) for m in none)}/{len(none)}); gap BN {100 * gb:.1f} vs "
            f"none {100 * gn:.1f} points", [table], [fig_path], pub))
    return out


EXPERIMENT = Experiment(
    id="norm_training",
    claims=("N1", "N4"),
    title=Text("Training speed and generalization with each norm",
               "हर norm के साथ training speed और generalization"),
    protocol=Text(
        "mnist1d (4000 train / 1000 test; or --data). ConvNet: 3 blocks conv(k=5, stride 2) → norm "
        "→ ReLU, width 32, then linear. Norms from sharenorm.make_norm: batch, group (G=8), "
        "instance, layer, none. SGD momentum 0.9, lr 0.05, batch 32, 1500 steps (quick: 100), "
        "test accuracy every 50 steps (quick: 25) in eval mode; target accuracy 85% (quick 60%).",
        "mnist1d (4000 train / 1000 test; या --data)। ConvNet: 3 blocks conv(k=5, stride 2) → norm "
        "→ ReLU, width 32, फिर linear। Norms sharenorm.make_norm से: batch, group (G=8), instance, "
        "layer, none। SGD momentum 0.9, lr 0.05, batch 32, 1500 steps (quick: 100), हर 50 steps "
        "(quick: 25) पर eval mode में test accuracy; target accuracy 85% (quick 60%)।"),
    configs=configs, run=run, analyze=analyze, uses_data=True,
    batched=False)  # N4 compares seconds per step: one model at a time
