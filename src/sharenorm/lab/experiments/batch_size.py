"""N6: small batches — BN degrades, GN and IN stay high (the GN paper's batch-size sweep)."""

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
    checkpoint_every,
    converged,
    tail_gain_cell,
    unconverged_text,
)
from sharenorm.lab.spec import (
    INCONCLUSIVE,
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
from sharenorm.lab.stats import compare, mean_ci
from sharenorm.lab.train import TrainConfig, train_classifier
from sharenorm.models import ConvNet

# The claim's three norms and three batch sizes, not the GN paper's five: at EPOCHS epochs
# batch 2 takes 32,000 steps a run, and the whole lab has to fit 25 minutes on 2 cores.
NORMS = ["batch", "group", "instance"]
FULL_BS, QUICK_BS = [2, 8, 32], [2, 32]
# Every norm at batch 32 reaches a plateau (mean tail gain over seeds < 1 point) at 16
# epochs under the cosine schedule, not at 12 (benchmarks/schedule_pilot.py).
EPOCHS, QUICK_EPOCHS = 16, 0.125
BASE_LR, BASE_BS = 0.05, 32
HIGH_ACC = 0.5  # "उच्च" (high) needs this test accuracy at the small batch: 5× chance on mnist1d
# Wu & He, "Group Normalization" (ECCV 2018), Figure 1 / Table 2: ResNet-50 on ImageNet,
# top-1 validation error (%) by images per GPU.
GN_PAPER = {"batch": {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
            "group": {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1}}


_LABEL = {"batch": "BN", "group": "GN", "instance": "IN", "layer": "LN", "none": "no norm"}


def lr_for(bs: int) -> float:
    """Linear scaling rule (Goyal et al. 2017): lr = 0.05 · batch / 32, no floor."""
    return BASE_LR * bs / BASE_BS


DROP_MARGIN = 5.0  # (a) BN loses at least this many points from the large to the small batch
LEAD_MARGIN = 5.0  # (b) GN leads BN at the small batch by at least this many points
KEEP_MARGIN = 2.0  # IN/GN "stay high": they lose at most this many points


_UNCONVERGED = unconverged_text("test accuracy")
N6 = Claim(
    "N6", NORM_DOC, "Small Batch Sizes पर कार्यक्षमता: BN कम, IN उच्च, GN उच्च",
    "Performance at small batch sizes: BN low, IN high, GN high.",
    Text("Same epochs at every batch size, linearly scaled learning rate. Supported if (a) BN "
         f"loses ≥ {DROP_MARGIN:g} points of test accuracy from batch 32 to batch 2 and (b) GN at "
         f"batch 2 beats BN at batch 2 by ≥ {LEAD_MARGIN:g} points, each decided by the 95% Welch "
         "interval of the difference lying wholly beyond its margin; mixed if one of (a), (b) "
         "holds; not supported if neither; inconclusive when an interval straddles its margin, "
         f"or when a contender it rests on has not converged ({_UNCONVERGED[0]}; {CHECKPOINTS} "
         "checkpoints per run). IN and GN \"stay high\" "
         f"(the table's cells) if they lose ≤ {KEEP_MARGIN:g} points from 32 "
         f"to 2 (interval wholly below) and reach ≥ {HIGH_ACC:.0%} test accuracy at batch 2 "
         "(5× chance on mnist1d's 10 classes: a norm that learned nothing at either size must not "
         "count as high).",
         "हर batch size पर उतने ही epochs, learning rate linearly scaled। Supported अगर (a) BN की test "
         f"accuracy batch 32 से batch 2 तक ≥ {DROP_MARGIN:g} points गिरे और (b) batch 2 पर GN, BN से "
         f"≥ {LEAD_MARGIN:g} points आगे हो, दोनों difference के 95% Welch interval के पूरा margin के पार "
         "होने से तय; mixed अगर (a), (b) में से एक हो; दोनों न हों तो not supported; कोई interval "
         "margin के दोनों ओर हो, या जिस contender पर यह टिका है वह converge न हुआ हो "
         f"({_UNCONVERGED[1]}; हर run के {CHECKPOINTS} checkpoints), तो inconclusive। IN और "
         "GN \"high रहते हैं\" (table के cells) अगर 32 से "
         f"2 तक ≤ {KEEP_MARGIN:g} points गिरें (interval पूरा नीचे) और batch 2 पर ≥ {HIGH_ACC:.0%} test "
         "accuracy हो (mnist1d की 10 classes पर chance का 5×: जो norm किसी भी size पर कुछ न सीखे वह "
         "high नहीं गिना जाए)।"))


EQUAL_STEPS_NORMS = ["batch", "group"]  # the second protocol's contenders


def configs(quick: bool) -> list[dict]:
    """The GN paper's protocol (the same epochs at every batch size, linearly scaled lr), and
    in the full profile BN and GN again with equal optimizer steps (as many as batch 32 takes
    in those epochs), so that small batches do not win by taking more steps."""
    bss, epochs = (QUICK_BS, QUICK_EPOCHS) if quick else (FULL_BS, EPOCHS)
    cfgs = [{"norm": n, "batch_size": b, "epochs": epochs, "lr": lr_for(b), "schedule": SCHEDULE}
            for n in NORMS for b in bss]
    if not quick:
        cfgs += [{"norm": n, "batch_size": b, "epochs": epochs, "lr": lr_for(b),
                  "schedule": SCHEDULE, "budget": "equal_steps"}
                 for n in EQUAL_STEPS_NORMS for b in bss]
    return cfgs


def budget_steps(cfg: dict, n_train: int) -> int:
    """Optimizer steps of a run: its epochs at its batch size, or with ``budget:
    equal_steps`` the steps batch 32 takes in those epochs."""
    bs = BASE_BS if cfg.get("budget") == "equal_steps" else cfg["batch_size"]
    return epoch_steps(cfg["epochs"], n_train, bs)


def run(cfg, seed, ctx):
    ds = dataset(ctx)
    torch.manual_seed(seed)
    model = ConvNet(ds.sample_shape, ds.num_classes, norm=cfg["norm"],
                    num_groups=8 if cfg["norm"] == "group" else None)
    steps = budget_steps(cfg, len(ds.x_train))
    # a few test-accuracy checkpoints: whether the run converged (plateau), nothing is chosen
    metrics, timing = train_classifier(model, ds, TrainConfig(
        steps=steps, batch_size=cfg["batch_size"], lr=cfg["lr"],
        schedule=cfg.get("schedule", "constant"), eval_every=checkpoint_every(steps)), seed)
    return metrics, timing


def planned_steps(cfg: dict, n_train: int) -> int:
    """Optimizer steps of a run (:func:`budget_steps`)."""
    return budget_steps(cfg, n_train)


def min_train(cfg) -> int:
    """A fixed number of epochs: too few samples would give 0 optimizer steps."""
    if cfg.get("budget") == "equal_steps":
        return max(samples_for_one_step(cfg["epochs"], BASE_BS), cfg["batch_size"])
    return samples_for_one_step(cfg["epochs"], cfg["batch_size"])


def analyze(runs, figdir, lang):
    eq = group_runs([r for r in runs if r["config"].get("budget") == "equal_steps"], "norm",
                    "batch_size")
    runs = [r for r in runs if r["config"].get("budget") != "equal_steps"]
    if not runs:
        return []
    g = group_runs(runs, "norm", "batch_size")
    bss = sorted({b for _, b in g})
    norms = [n for n in NORMS if any(k[0] == n for k in g)]
    rows = [[n] + [pct(accuracies(g[(n, b)])) if (n, b) in g else "—" for b in bss] for n in norms]
    table = Table(["test acc %: norm \\ batch (same epochs)"] + [str(b) for b in bss], rows)
    tables = [table]
    if eq:
        tables.append(Table(["test acc %: norm \\ batch (equal steps: batch 32's)"]
                            + [str(b) for b in bss],
                            [[n] + [pct(accuracies(eq[(n, b)])) if (n, b) in eq else "—"
                                    for b in bss] for n in EQUAL_STEPS_NORMS
                             if any(k[0] == n for k in eq)]))
    if any(converged(ms) is not None for ms in g.values()):  # checkpoints
        tables.append(Table([f"{GAIN_HEADER}: norm \\ batch (same epochs)"]
                            + [str(b) for b in bss],
                            [[n] + [tail_gain_cell(g[(n, b)]) if (n, b) in g else "—"
                                    for b in bss] for n in norms]))
    # small multiples: one panel per norm (five overlapping bands hide each other), one y
    # axis; the GN paper's ResNet-50 curves in the BN and GN panels
    hi = lang == "hi"
    fig, axes = figure(1, len(norms), (3.0 * len(norms), 3.6))
    axes = [axes] if len(norms) == 1 else list(axes)
    for i, (ax, n) in enumerate(zip(axes, norms, strict=True)):
        xs, mu, lo, hi_ = ci_band({b: [100 * (1 - a) for a in accuracies(g[(n, b)])]
                                   for b in bss if (n, b) in g}, bounds=PCT_BOUNDS)
        ax.plot(xs, mu, marker="o", color=f"C{i}", label="mnist1d (हमारा)" if hi else
                "ours, mnist1d")
        ax.fill_between(xs, lo, hi_, alpha=0.2, color=f"C{i}", label="95% CI")
        if n in GN_PAPER:
            pb = sorted(GN_PAPER[n])
            ax.plot(pb, [GN_PAPER[n][b] for b in pb], ls="--", marker="s", ms=3, color="grey",
                    label="Wu & He 2018, ResNet-50 ImageNet")
        ax.set_xscale("log", base=2)
        ticks = sorted(set(bss) | set(GN_PAPER["batch"]))
        ax.set_xticks(ticks, [str(b) for b in ticks])
        ax.invert_xaxis()  # the GN paper's Figure 1 runs from large to small batches
        ax.set_title(_LABEL[n])
        ax.set_xlabel("batch size (प्रति step images)" if hi else "batch size (images per step)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("test error %")
    top = max(max(ax.get_ylim()[1] for ax in axes), 1)
    for ax in axes:
        ax.set_ylim(0, top)
    fig.suptitle("N6: batch size के साथ test error (GN paper की तरह)" if hi else
                 "N6: test error vs batch size (GN paper style)")
    fp = save_figure(fig, figdir, "n6_batch_size")
    small, big = min(bss), 32 if 32 in bss else max(bss)

    def drop(n):
        if (n, small) not in g or (n, big) not in g:
            return float("nan")
        return 100 * (mean_ci(accuracies(g[(n, big)]))[0] - mean_ci(accuracies(g[(n, small)]))[0])

    def drop_cmp(n, margin, at_most=False):
        return compare(f"{n} accuracy at batch {big} − at {small}",
                       accuracies(g.get((n, big), [])), accuracies(g.get((n, small), [])),
                       margin, scale=100, unit=" points", at_most=at_most)

    gn_s, bn_s = accuracies(g.get(("group", small), [])), accuracies(g.get(("batch", small), []))

    def unconverged(*keys):  # a comparison resting on these runs is inconclusive
        return converged(*(g.get(k, []) for k in keys)) is False

    c_a = drop_cmp("batch", DROP_MARGIN).resting_on_unconverged(
        unconverged(("batch", big), ("batch", small)))
    c_b = compare(f"GN − BN at batch {small}", gn_s, bn_s, LEAD_MARGIN, scale=100,
                  unit=" points").resting_on_unconverged(
        unconverged(("group", small), ("batch", small)))
    a, b = c_a.holds, c_b.holds
    v = decide(all3(a, b), any3(a, b))
    # the runs the verdict rests on: BN at both sizes, GN at the small one
    conv = not (c_a.unconverged or c_b.unconverged)
    if not conv:
        v = INCONCLUSIVE
    pub = []
    for n, label in (("batch", "BN"), ("group", "GN")):
        if (n, small) in g and (n, big) in g and small == 2 and big == 32:
            e32 = 100 - 100 * mean_ci(accuracies(g[(n, 32)]))[0]
            e2 = 100 - 100 * mean_ci(accuracies(g[(n, 2)]))[0]
            pub.append(["Wu & He 2018, ResNet-50 ImageNet", f"{label} top-1 error, batch 32 → 2",
                        f"{GN_PAPER[n][32]} → {GN_PAPER[n][2]} % "
                        f"(+{GN_PAPER[n][2] - GN_PAPER[n][32]:.1f})",
                        f"{e32:.1f} → {e2:.1f} % ({e2 - e32:+.1f})"])
    for b in sorted(GN_PAPER["batch"], reverse=True):  # the paper's whole table, row by row
        ours = [f"{100 - 100 * mean_ci(accuracies(g[(n, b)]))[0]:.1f} %"
                if (n, b) in g else "—" for n in ("batch", "group")]
        pub.append(["Wu & He 2018, ResNet-50 ImageNet", f"top-1 error BN / GN at batch {b}",
                    f"{GN_PAPER['batch'][b]} / {GN_PAPER['group'][b]} %", " / ".join(ours)])
    cells = {}
    for col, n, want_drop in (("batch", "batch", True), ("instance", "instance", False),
                              ("group", "group", False)):
        d = drop(n)
        if d == d:
            acc_small = mean_ci(accuracies(g[(n, small)]))[0]
            # "high" = kept its accuracy *and* has one: losing nothing from chance is not high
            good = (drop_cmp(n, DROP_MARGIN).holds if want_drop else
                    all3(drop_cmp(n, KEEP_MARGIN, at_most=True).holds, acc_small >= HIGH_ACC))
            if converged(g[(n, small)], g[(n, big)]) is False:
                good = None
            cells[("norm", "small", col)] = (
                f"{big}→{small}: {-d:+.1f} points, {100 * acc_small:.1f}% at {small}",
                {True: SUPPORTED, False: NOT_SUPPORTED, None: INCONCLUSIVE}[good])
    measured = (f"accuracy change batch {big}→{small}: " +
                ", ".join(f"{n} {-drop(n):+.1f}" for n in norms) +
                f" points; GN−BN at batch {small}: "
                f"{100 * (mean_ci(gn_s)[0] - mean_ci(bn_s)[0]):+.1f} points")
    if not conv:
        measured += ("; a contender had not converged (plateau), so the comparison is "
                     "inconclusive")
    if a is True:
        why_en = (f"BN lost {drop('batch'):.1f} points from batch {big} to {small}: its running "
                  "statistics, estimated from tiny batches, no longer match the batch statistics "
                  "it trained with. ")
        why_hi = (f"BN ने batch {big} से {small} तक {drop('batch'):.1f} points खोए: छोटे batches से "
                  "estimate हुई running statistics, training की batch statistics से मेल नहीं खातीं। ")
    else:
        # GN does not look at the batch: its change under the same protocol is what the
        # protocol itself (more, smaller steps) does; BN's change beyond it is the batch's
        d_bn, d_gn = drop("batch"), drop("group")
        paper = GN_PAPER["batch"][2] - GN_PAPER["batch"][32] - (
            GN_PAPER["group"][2] - GN_PAPER["group"][32])
        why_en = (f"BN's accuracy changed by {-d_bn:+.1f} points from batch {big} to {small} here "
                  f"(not a loss shown to be ≥ {DROP_MARGIN:g}). GN, which does not look at the "
                  f"batch, changed by {-d_gn:+.1f} under the same protocol, so what the small "
                  f"batch's statistics cost BN here is about {d_bn - d_gn:.1f} points (the GN "
                  f"paper, ResNet-50 on ImageNet: {paper:.1f}). ")
        why_hi = (f"यहाँ batch {big} से {small} तक BN की accuracy {-d_bn:+.1f} points बदली "
                  f"(≥ {DROP_MARGIN:g} की गिरावट साबित नहीं)। GN, जो batch को देखता ही नहीं, उसी "
                  f"protocol में {-d_gn:+.1f} बदला, इसलिए छोटे batch की statistics की BN को यहाँ "
                  f"क़ीमत लगभग {d_bn - d_gn:.1f} points है (GN paper, ImageNet पर ResNet-50: "
                  f"{paper:.1f})। ")
    if eq:
        def eq_drop(n):
            if (n, small) not in eq or (n, big) not in eq:
                return float("nan")
            return 100 * (mean_ci(accuracies(eq[(n, big)]))[0]
                          - mean_ci(accuracies(eq[(n, small)]))[0])

        measured += (f"; with equal steps, change {big}→{small}: BN {-eq_drop('batch'):+.1f}, "
                     f"GN {-eq_drop('group'):+.1f} points (shown, not part of the verdict)")
    return [ClaimResult("N6", v, measured, tables, [fp], pub, cells=cells,
                        comparisons=[c_a, c_b], notes=Text(
        why_en + "Evaluation uses eval mode, so BN predicts with running statistics accumulated from "
        "batches of the training size; that is where small-batch BN loses (as in the GN paper). "
        "Our network is far smaller than ResNet-50 and our data is mnist1d, so compare the "
        "direction and size of the changes, not the absolute errors.",
        why_hi + "Evaluation eval mode में है, इसलिए BN training batch size के batches से जमा हुई running "
        "statistics से predict करता है; small-batch BN वहीं हारता है (GN paper की तरह)। हमारा network "
        "ResNet-50 से बहुत छोटा है और data mnist1d है, इसलिए absolute errors नहीं, बदलाव की दिशा "
        "और आकार की तुलना करें।"))]


EXPERIMENT = Experiment(
    id="batch_size",
    claims=(N6,),
    title=Text("Batch-size sweep: BN, GN, IN", "Batch-size sweep: BN, GN, IN"),
    protocol=Text(
        "mnist1d (or --data), the N1 ConvNet (GN with G=8 groups of 4 channels), batch sizes "
        + ", ".join(map(str, FULL_BS)) + " (quick: " + ", ".join(map(str, QUICK_BS)) + "), the "
        f"same number of epochs at every batch size: {EPOCHS} (quick: {QUICK_EPOCHS}), so smaller "
        f"batches take more steps; SGD momentum 0.9 with the linear scaling rule lr = {BASE_LR}·"
        f"batch/{BASE_BS} (no floor) at the first step, decayed to 0 by a cosine schedule; the "
        "last short batch of an epoch is dropped. Test accuracy in eval mode, also at "
        f"{CHECKPOINTS} checkpoints of each run for the plateau check. Full "
        "profile only: BN and GN again with equal optimizer steps at every batch size (the "
        "steps batch 32 takes in those epochs), shown beside the verdict.",
        "mnist1d (या --data), N1 वाला ConvNet (GN: 4 channels के G=8 groups), batch sizes "
        + ", ".join(map(str, FULL_BS)) + " (quick: " + ", ".join(map(str, QUICK_BS)) + f"); हर "
        f"batch size पर उतने ही epochs: {EPOCHS} (quick: {QUICK_EPOCHS}), इसलिए छोटे batches "
        f"ज़्यादा steps लेते हैं; SGD momentum 0.9, linear scaling rule lr = {BASE_LR}·batch/"
        f"{BASE_BS} (कोई floor नहीं) पहले step पर, cosine schedule से 0 तक घटती; epoch का आख़िरी "
        "छोटा batch छोड़ दिया जाता है। Test accuracy eval mode में, plateau check के लिए हर run के "
        f"{CHECKPOINTS} checkpoints पर भी। केवल full profile: BN और GN फिर से, हर batch size पर "
        "बराबर optimizer steps के साथ (उन epochs में batch 32 जितने steps लेता है), verdict के "
        "साथ दिखाए गए।"),
    configs=configs, run=run, analyze=analyze, uses_data=True, min_positions=2,
    min_train=min_train)
