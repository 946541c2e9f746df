"""N8: GN is more stable for deep networks — a depth sweep, residual (the GN paper's setting)
and plain networks, over a learning-rate grid per depth, with budgets that converge."""

from __future__ import annotations

import torch

from sharenorm.lab.claims import NORM_DOC
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
from sharenorm.lab.experiments._protocol import (
    CHECKPOINTS,
    GAIN_HEADER,
    SCHEDULE,
    SELECT_SEED,
    VAL_FRACTION,
    checkpoint_every,
    classifier_trial,
    converged,
    select_lr,
    tail_gain_cell,
    unconverged_text,
    validation_split,
)
from sharenorm.lab.spec import (
    INCONCLUSIVE,
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
from sharenorm.lab.stats import PLATEAU_TAIL, compare
from sharenorm.lab.train import TrainConfig, evaluate, train_classifier
from sharenorm.models import ConvNet
from sharenorm.models.resnet import ResNet

NORMS = ["batch", "group"]
ARCHS = ["residual", "plain"]
DECIDING_ARCH = "residual"  # the GN paper's setting decides; plain nets are shown beside
# conv layers (3 + 2·residual blocks); three depths: the full lab's 25 minutes hold no more
FULL_DEPTHS, QUICK_DEPTHS = [3, 9, 17], [3, 5]
# ×3 grid around N6's linearly scaled 0.05 at batch 32; 0.3 diverges at depth 17 (GN) and
# shows the top of the stable range
FULL_LRS, QUICK_LRS = [0.01, 0.03, 0.1, 0.3], [0.05]
# Batch 32 and N6's 16 epochs: a budget that converges (1,600 steps). At batch 4 the same 16
# epochs take 12,800 steps a run, which the full lab's 25 minutes do not hold, and one epoch
# there left every net at 40-47% and still gaining. Small batches are N6's and N9's subject;
# here depth is the one variable.
BATCH, WIDTH, GROUPS = 32, 16, 4
EPOCHS, QUICK_EPOCHS = 16, 0.25
# the learning-rate tries take a quarter of the final run's steps (4 epochs), not the lab's
# usual half: at batch 32 a stacked step costs arithmetic, not per-op overhead, and tries of
# half the steps were two thirds of N8's time
TRY_FRACTION = 0.25
STABLE_ACC = 0.5   # a rate is stable when every seed's selection try reaches this val. accuracy
DEPTH_MARGIN = 2.0  # (a) GN beats BN at the largest depth by at least this many points


_UNCONVERGED = unconverged_text("validation accuracy")
N8 = Claim(
    "N8", NORM_DOC, "Deep Neural Networks के लिए अधिक स्थिर। (GN)",
    "GN is more stable for deep neural networks.",
    Text(f"Depth sweep at batch {BATCH}, residual networks (the GN paper's setting; plain ones "
         "shown beside), each norm, depth and seed at the learning rate of a ×3 grid with the "
         f"best validation accuracy (tries of {TRY_FRACTION:g}× the steps on a validation split of the "
         "training data, other seeds), then a final run with the seed. Supported if (a) at the largest depth GN's "
         f"test accuracy beats BN's by ≥ {DEPTH_MARGIN:g} points and (b) GN loses less accuracy "
         "than BN from the smallest to the largest depth (per seed; BN's loss − GN's loss > 0), "
         "each decided by the 95% Welch interval of the difference lying wholly beyond its "
         "margin; mixed if one holds; not supported if neither; inconclusive when an interval "
         f"straddles its margin, or when a contender it rests on has not converged ({_UNCONVERGED[0]}; "
         f"{CHECKPOINTS} checkpoints per run). The stable learning-rate range per depth (every seed's try reaches "
         f"≥ {STABLE_ACC:.0%} validation accuracy in {TRY_FRACTION:g}× the steps) is shown beside.",
         f"Batch {BATCH} पर depth sweep, residual networks (GN paper की setting; plain साथ में), हर "
         "norm, depth और seed अपनी सबसे अच्छी learning rate (×3 grid) पर, training data के validation "
         f"split पर {TRY_FRACTION:g}× steps की tries से (दूसरे seeds) चुनी गई, फिर seed के साथ final "
         f"run। Supported अगर (a) सबसे बड़ी depth पर GN की test accuracy BN से ≥ {DEPTH_MARGIN:g} "
         "points ज़्यादा हो और (b) सबसे छोटी से सबसे बड़ी depth तक GN की accuracy BN से कम गिरे (हर "
         "seed पर; BN की गिरावट − GN की गिरावट > 0), दोनों difference के 95% Welch interval के पूरा "
         "margin के पार होने से तय; एक शर्त हो तो mixed; कोई नहीं तो not supported; कोई interval "
         "margin के दोनों ओर हो, या जिस contender पर यह टिका है वह converge न हुआ हो "
         f"({_UNCONVERGED[1]}; हर run के {CHECKPOINTS} checkpoints), तो inconclusive। "
         f"हर depth पर stable learning-rate range (हर seed की try {TRY_FRACTION:g}× steps में "
         f"≥ {STABLE_ACC:.0%} validation accuracy) साथ में दिखाई गई है।"))


def configs(quick: bool) -> list[dict]:
    depths, lrs, epochs = (QUICK_DEPTHS, QUICK_LRS, QUICK_EPOCHS) if quick else (
        FULL_DEPTHS, FULL_LRS, EPOCHS)
    archs = [DECIDING_ARCH] if quick else ARCHS  # quick: a smoke test of the deciding nets
    return [{"arch": a, "norm": n, "depth": d, "lr_grid": lrs, "batch_size": BATCH,
             "epochs": epochs, "schedule": SCHEDULE} for a in archs for n in NORMS for d in depths]


def _model(cfg, ds):
    kw = {"num_groups": GROUPS} if cfg["norm"] == "group" else {}
    if cfg.get("arch", "plain") == "residual":
        return ResNet(ds.sample_shape, ds.num_classes, width=WIDTH, depth=cfg["depth"],
                      norm=cfg["norm"], **kw)
    return ConvNet(ds.sample_shape, ds.num_classes, norm=cfg["norm"], width=WIDTH,
                   depth=cfg["depth"], **kw)


def run(cfg, seed, ctx):
    """Choose the rate (tries of TRY_FRACTION of the steps with seed + SELECT_SEED on their own
    validation split), then train with ``seed`` on the training set minus a validation split;
    report the validation accuracy (checkpoints: the plateau check) and the test accuracy
    (which the criterion compares)."""
    full = dataset(ctx)
    ds = validation_split(full, seed=seed)
    steps = epoch_steps(cfg["epochs"], len(ds.x_train), cfg["batch_size"])
    lr, chosen = cfg.get("lr"), {}
    if "lr_grid" in cfg:
        trial = classifier_trial(lambda d: _model(cfg, d), steps, TRY_FRACTION,
                                 batch_size=cfg["batch_size"],
                                 schedule=cfg.get("schedule", "constant"))
        lr, scores = select_lr(trial, full, cfg["lr_grid"], seed)
        chosen = {"lr_chosen": lr, "val_acc_by_lr": scores}
    torch.manual_seed(seed)
    model = _model(cfg, ds)
    # validation-accuracy checkpoints: whether the run converged (plateau)
    metrics, timing = train_classifier(model, ds, TrainConfig(
        steps=steps, batch_size=cfg["batch_size"], lr=lr,
        schedule=cfg.get("schedule", "constant"), eval_every=checkpoint_every(steps)), seed)
    metrics |= chosen
    metrics["val_acc"] = metrics.pop("test_acc")
    metrics["test_acc"] = None if metrics["diverged"] else round(
        evaluate(model, full.x_test, full.y_test)[0], 6)
    return metrics, timing


def planned_steps(cfg: dict, n_train: int) -> int:
    """Optimizer steps of a run: its epochs of the training set minus the validation split,
    and the learning-rate tries (TRY_FRACTION as many steps each)."""
    steps = epoch_steps(cfg["epochs"], n_train - max(1, round(VAL_FRACTION * n_train)),
                        cfg["batch_size"])
    return steps + len(cfg.get("lr_grid", ())) * max(1, int(steps * TRY_FRACTION))


def min_train(cfg) -> int:
    """The fewest training samples whose :func:`validation_split` leaves enough to train on
    for one optimizer step of ``epochs`` at ``batch_size``."""
    need, n = samples_for_one_step(cfg["epochs"], cfg["batch_size"]), 1
    while n - max(1, round(VAL_FRACTION * n)) < need:
        n += 1
    return n


def _gain_note(ms) -> str:
    """", last 20% +0.4 ✓" (:func:`~sharenorm.lab.experiments._protocol.tail_gain_cell`), or ""
    for runs without checkpoints."""
    cell = tail_gain_cell(ms)
    return "" if cell == "—" else f", last {PLATEAU_TAIL:.0%} {cell}"


def stable_range(ms) -> str:
    """``"[0.002, 0.02]"``: the rates at which every seed's selection try reached
    :data:`STABLE_ACC` validation accuracy (a diverged try scores 0), or ``"none"``."""
    tries = [m.get("val_acc_by_lr") or {} for m in ms]
    rates = sorted({float(k) for t in tries for k in t})
    st = [lr for lr in rates if all((t.get(f"{lr:g}") or 0) >= STABLE_ACC for t in tries)]
    return f"[{st[0]:g}, {st[-1]:g}]" if st else "none"


def _rates(ms) -> str:
    chosen = [m.get("lr_chosen") for m in ms]
    return ", ".join("—" if lr is None else f"{lr:g}" for lr in chosen)


def analyze(runs, figdir, lang):
    if not runs:
        return []
    # runs stored before the residual nets were added are plain
    runs = [r | {"config": {"arch": "plain"} | r["config"]} for r in runs]
    g = group_runs(runs, "arch", "norm", "depth")
    archs = [a for a in ARCHS if any(k[0] == a for k in g)]
    depths = sorted({k[2] for k in g})
    lrs = sorted({float(k) for ms in g.values() for m in ms for k in m.get("val_acc_by_lr") or {}})

    def at_best(a, n, d):  # the final runs, each at its seed's chosen rate
        return accuracies(g[(a, n, d)]) if (a, n, d) in g else []

    rows, srows = [], []
    for a in archs:
        for n in NORMS:
            rows.append([a, n] + [f"{pct(at_best(a, n, d))} (lr {_rates(g[(a, n, d)])})"
                                  + _gain_note(g[(a, n, d)])
                                  if (a, n, d) in g else "—" for d in depths])
            srows.append([a, n] + [stable_range(g[(a, n, d)]) if (a, n, d) in g else "—"
                                   for d in depths])
    tables = [Table([f"test acc % at the chosen lr (per seed); {GAIN_HEADER}: arch",
                     "norm"] + [f"depth {d}" for d in depths], rows),
              Table([f"stable lr range (tries of {TRY_FRACTION:g}× the steps): arch", "norm"]
                    + [f"depth {d}" for d in depths], srows)]
    fig, axes = figure(1, len(archs), (5.5 * len(archs), 4))
    axes = [axes] if len(archs) == 1 else list(axes)
    for ax, a in zip(axes, archs, strict=True):
        for i, n in enumerate(NORMS):
            xs, mu, lo, hi = ci_band({d: at_best(a, n, d) for d in depths if at_best(a, n, d)},
                                     100, PCT_BOUNDS)
            label = {"batch": "BN", "group": "GN"}[n]
            ax.plot(xs, mu, marker="o", color=f"C{i}", label=label)
            ax.fill_between(xs, lo, hi, alpha=0.2, color=f"C{i}", label=f"{label}, 95% CI")
        ax.set_xscale("log", base=2)
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.set_xlabel("conv layers (depth)")
        ax.set_ylabel("test accuracy % at the best lr")
        ax.set_title(f"N8: {a} nets, batch {BATCH}")
        ax.legend(fontsize=8)
    fp = save_figure(fig, figdir, "n8_depth")
    lo_d, hi_d = min(depths), max(depths)

    def comparisons(a):
        gn, bn = at_best(a, "group", hi_d), at_best(a, "batch", hi_d)
        if not gn or not bn or not at_best(a, "group", lo_d) or not at_best(a, "batch", lo_d):
            return None

        def losses(n):  # per seed: accuracy at the smallest depth − at the largest
            return [x - y for x, y in zip(at_best(a, n, lo_d), at_best(a, n, hi_d), strict=False)]

        # both rest on the same runs: both norms at their best rates, smallest and largest
        # depth; shown as inconclusive where one of them had not converged
        unconverged = converged(*(g.get((a, n, d), []) for n in NORMS
                                  for d in (lo_d, hi_d))) is False
        return tuple(c.resting_on_unconverged(unconverged) for c in (
            compare(f"{a}: GN − BN at depth {hi_d}", gn, bn, DEPTH_MARGIN, scale=100,
                    unit=" points"),
            compare(f"{a}: BN's loss − GN's loss, depth {lo_d}→{hi_d}", losses("batch"),
                    losses("group"), 0, scale=100, unit=" points", strict=True)))

    decide_on = DECIDING_ARCH if DECIDING_ARCH in archs else archs[0]
    main = comparisons(decide_on)
    if main is None:
        return []
    c_a, c_b = main
    v = decide(all3(c_a.holds, c_b.holds), any3(c_a.holds, c_b.holds))
    conv = not c_a.unconverged
    if not conv:
        v = INCONCLUSIVE
    shown = [c for a in archs if a != decide_on for c in (comparisons(a) or ())]
    gn, bn = at_best(decide_on, "group", hi_d), at_best(decide_on, "batch", hi_d)
    return [ClaimResult("N8", v, f"{decide_on} nets, depth {hi_d}: GN {pct(gn)} % vs BN "
                        f"{pct(bn)} % at their chosen rates"
                        + ("; a contender had not converged (plateau), so the comparison is "
                           "inconclusive" if not conv else ""), tables, [fp],
                        comparisons=[c_a, c_b] + shown, notes=Text(
                            f"The verdict comes from the {decide_on} networks (the GN paper "
                            "trains ResNets); the comparisons of the other architecture are "
                            "listed after the deciding two and do not enter the verdict. Each "
                            "seed's learning rate is chosen from "
                            f"{', '.join(f'{x:g}' for x in lrs)} by tries of {TRY_FRACTION:g}× the steps "
                            f"with seed + {SELECT_SEED} on their own validation split; the final "
                            "run uses the seed itself.",
                            f"Verdict {decide_on} networks से है (GN paper ResNets train करता है); "
                            "दूसरी architecture के comparisons पहले दो के बाद दिखाए गए हैं और verdict "
                            "में नहीं गिने जाते। हर seed की learning rate "
                            f"{', '.join(f'{x:g}' for x in lrs)} में से seed + {SELECT_SEED} वाली, "
                            f"अपने validation split पर {TRY_FRACTION:g}× steps की tries से चुनी गई; "
                            "final run "
                            "seed से ही।"))]


EXPERIMENT = Experiment(
    id="depth",
    claims=(N8,),
    title=Text(f"Depth sweep at batch {BATCH}, residual and plain",
               f"Batch {BATCH} पर depth sweep, residual और plain"),
    protocol=Text(
        f"mnist1d (or --data), width {WIDTH}; residual nets (sharenorm.models.resnet.ResNet: the "
        "ConvNet's 3 downsampling conv layers, then residual blocks of two convs whose second "
        "norm's γ starts at 0) and plain ConvNets, " + ", ".join(map(str, FULL_DEPTHS)) +
        " conv layers (quick: " + ", ".join(map(str, QUICK_DEPTHS)) + f"); BN or GN (G={GROUPS}); "
        f"batch {BATCH} (small batches are N6's and N9's subject; here depth is the one "
        f"variable), SGD momentum 0.9 with the rate decayed to 0 by a {SCHEDULE} schedule, "
        f"{EPOCHS} epochs (quick: {QUICK_EPOCHS}) of 80% of the "
        "training set (the other 20%: validation accuracy at "
        f"{CHECKPOINTS} checkpoints, the plateau check), test accuracy in eval mode; the "
        "learning rate per seed from " + ", ".join(f"{x:g}" for x in FULL_LRS)
        + f" (quick: {QUICK_LRS[0]:g}) by the validation accuracy of tries of {TRY_FRACTION:g}× "
        f"the steps on another split with seed + {SELECT_SEED}.",
        f"mnist1d (या --data), width {WIDTH}; residual nets (ConvNet की 3 downsampling conv layers, फिर "
        "दो convs के residual blocks, दूसरे norm का γ 0 से) और plain ConvNets, "
        + ", ".join(map(str, FULL_DEPTHS)) + " conv layers (quick: "
        + ", ".join(map(str, QUICK_DEPTHS)) + f"); BN या GN (G={GROUPS}); batch {BATCH} (छोटे "
        "batches N6 और N9 का विषय हैं; यहाँ सिर्फ़ depth बदलती है), "
        f"SGD momentum 0.9 ({SCHEDULE} schedule से 0 तक घटती rate), training set के 80% पर {EPOCHS} epochs (quick: {QUICK_EPOCHS}) (बाकी 20%: {CHECKPOINTS} "
        "checkpoints पर validation accuracy, plateau check), test accuracy eval mode में; हर seed की "
        "learning rate " + ", ".join(f"{x:g}" for x in FULL_LRS) + f" (quick: {QUICK_LRS[0]:g}) "
        "में से, दूसरे split पर "
        f"seed + {SELECT_SEED} वाली {TRY_FRACTION:g}× steps की tries की validation accuracy से।"),
    configs=configs, run=run, analyze=analyze, uses_data=True,
    min_train=min_train)
