"""N1 (BN trains faster) and N4 (normalization generalizes better): one training per norm."""

from __future__ import annotations

import math
import statistics

import torch

from sharenorm.data import MNIST1D_PUBLISHED
from sharenorm.lab.claims import NORM_DOC
from sharenorm.lab.common import PCT_BOUNDS, accuracies, ci_band, dataset, figure, pct, save_figure
from sharenorm.lab.experiments._protocol import (
    GAIN_HEADER,
    SCHEDULE,
    SELECT_FRACTION,
    STEPS_TO_TARGET_TEXT,
    classifier_trial,
    converged,
    select_lr,
    selection_text,
    steps_to_target,
    tail_gain_cell,
    unconverged_text,
    unreached_text,
)
from sharenorm.lab.experiments._timing import interleaved_step_times, sgd_step
from sharenorm.lab.spec import (
    INCONCLUSIVE,
    INFORMATIONAL,
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
from sharenorm.lab.train import TrainConfig, train_classifier
from sharenorm.models import ConvNet

NORMS = ["batch", "group", "instance", "layer", "none"]
STEPS, QUICK_STEPS = 2000, 100  # every norm at a plateau: benchmarks/schedule_pilot.py
# test-accuracy checkpoints: steps to the target, and ≥ 2 in each window of the plateau check
EVAL_EVERY, QUICK_EVAL_EVERY = 50, 10
# quick: a target that BN reaches within the 100 steps and the net without a norm does not
# (54% vs 29% at the end), so the quick lab's N1 decides with one side censored
TARGET, QUICK_TARGET = 0.85, 0.45
STEP_RATIO = 2 / 3   # N1: BN needs at most this fraction of no-norm's steps to the target
ACC_MARGIN = 1.0     # N4: BN's test accuracy at least this many points above no-norm's
GAP_MARGIN = 1.0     # N4: BN's train–test gap at most this many points above no-norm's
TIMING_ROUNDS, QUICK_TIMING_ROUNDS = 200, 20  # interleaved steps per contender, per seed
# full profile: each norm's learning rate chosen per seed on a validation split (see _protocol)
LR_GRID = [0.02, 0.05, 0.1]
QUICK_LR = 0.05

N1 = Claim(
    "N1", NORM_DOC, "Training को तेज़ करता है।", "BN makes training faster.",
    Text(f"Supported if BN reaches the target test accuracy in ≤ {STEP_RATIO:.2f}× the steps "
         "no-norm needs — the 95% Welch interval of mean(BN steps) − "
         f"{STEP_RATIO:.2f}·mean(no-norm steps) lies wholly at or below 0 "
         f"({STEPS_TO_TARGET_TEXT[0]}) — and in no more seconds (steps × the median time per step "
         "from an interleaved timing of both, one thread); mixed if BN "
         "needs fewer steps (the interval of the difference wholly ≤ 0) but not by that "
         "margin or not in seconds; not supported otherwise; inconclusive when an interval "
         "straddles its margin.",
         f"Supported अगर BN target test accuracy तक no-norm के ≤ {STEP_RATIO:.2f}× steps में पहुँचे — "
         f"mean(BN steps) − {STEP_RATIO:.2f}·mean(no-norm steps) का 95% Welch interval पूरा 0 या उससे "
         f"नीचे हो ({STEPS_TO_TARGET_TEXT[1]}) — और ज़्यादा seconds में नहीं "
         "(steps × दोनों की interleaved timing से median time per step, एक thread); mixed अगर BN कम "
         "steps ले (difference का interval पूरा ≤ 0) पर इतना नहीं, या seconds में नहीं; वरना not "
         "supported; कोई interval अपने margin के दोनों ओर हो तो inconclusive।"))
_UNCONVERGED = unconverged_text("test accuracy")
N4 = Claim(
    "N4", NORM_DOC, "Model को बेहतर Generalization करने में मदद करता है।",
    "BN helps the model generalize better.",
    Text(f"Supported if BN's test accuracy exceeds no-norm's by ≥ {ACC_MARGIN:g} point (the 95% "
         "Welch interval of the difference wholly ≥ the margin) and its train–test gap is not "
         f"larger by more than {GAP_MARGIN:g} point (that interval wholly ≤ the margin); mixed if "
         "only one of the two holds; not supported if neither; inconclusive when an interval "
         f"straddles its margin, or when a contender has not converged ({_UNCONVERGED[0]}).",
         f"Supported अगर BN की test accuracy no-norm से ≥ {ACC_MARGIN:g} point ज़्यादा हो (difference का "
         "95% Welch interval पूरा margin के ऊपर) और उसका train–test gap "
         f"{GAP_MARGIN:g} point से ज़्यादा बड़ा न हो (वह interval पूरा margin के नीचे); एक ही शर्त हो तो "
         "mixed; कोई नहीं तो not supported; कोई interval margin के दोनों ओर हो, या कोई contender converge न "
         f"हुआ हो ({_UNCONVERGED[1]}), तो inconclusive।"))


def configs(quick: bool) -> list[dict]:
    steps, every, target = (QUICK_STEPS, QUICK_EVAL_EVERY, QUICK_TARGET) if quick else (
        STEPS, EVAL_EVERY, TARGET)
    lr = {"lr": QUICK_LR} if quick else {"lr_grid": LR_GRID}
    return [{"norm": n, "steps": steps, "batch_size": 32, **lr, "eval_every": every,
             "target": target, "schedule": SCHEDULE} for n in NORMS] + [
        {"part": "timing", "batch_size": 32,
         "rounds": QUICK_TIMING_ROUNDS if quick else TIMING_ROUNDS}]


def planned_steps(cfg: dict, n_train: int) -> int:
    """Optimizer steps of a run: the final training and its learning-rate selection (the
    interleaved timing's steps are not counted: a few hundred, untrained)."""
    if cfg.get("part") == "timing":
        return 0
    return cfg["steps"] + len(cfg.get("lr_grid", ())) * max(1, int(cfg["steps"] * SELECT_FRACTION))


def _model(ds, norm):
    return ConvNet(ds.sample_shape, ds.num_classes, norm=norm,
                   num_groups=8 if norm == "group" else None)


def _timing(cfg, seed, ctx):
    """Median seconds per training step of every norm, timed interleaved (see _timing)."""
    import torch

    ds = dataset(ctx)
    torch.manual_seed(seed)
    x, y = ds.x_train[:cfg["batch_size"]], ds.y_train[:cfg["batch_size"]]
    steps = {n: sgd_step(_model(ds, n), x, y) for n in NORMS}
    return {"part": "timing"}, {"step_s": interleaved_step_times(steps, cfg["rounds"])}


def run(cfg: dict, seed: int, ctx):
    if cfg.get("part") == "timing":
        return _timing(cfg, seed, ctx)
    ds = dataset(ctx)

    chosen = {}
    lr = cfg.get("lr")
    if "lr_grid" in cfg:
        trial = classifier_trial(lambda d: _model(d, cfg["norm"]), cfg["steps"],
                                 batch_size=cfg["batch_size"],
                                 schedule=cfg.get("schedule", "constant"))
        lr, scores = select_lr(trial, ds, cfg["lr_grid"], seed)
        chosen = {"lr_chosen": lr, "val_acc_by_lr": scores}
    torch.manual_seed(seed)
    model = _model(ds, cfg["norm"])
    metrics, timing = train_classifier(model, ds, TrainConfig(
        steps=cfg["steps"], batch_size=cfg["batch_size"], lr=lr,
        schedule=cfg.get("schedule", "constant"), eval_every=cfg["eval_every"],
        target_acc=cfg["target"]), seed)
    return metrics | chosen, timing


def step_times(runs) -> dict[str, list[float]]:
    """Per norm, the median seconds per step of each interleaved timing run (one per seed)."""
    out: dict[str, list[float]] = {}
    for r in runs:
        if r["config"].get("part") == "timing":
            for n, t in r.get("time", {}).get("step_s", {}).items():
                out.setdefault(n, []).append(t)
    return out


def time_ratio_range(runs, num: str, den: str) -> tuple[float, float] | None:
    """The 95% interval of the mean over seeds of ``num``'s time per step over ``den``'s, each
    seed's ratio from its own interleaved timing run (paired); None below two seeds.

    Example:
        >>> runs = [{"config": {"part": "timing"}, "time": {"step_s": {"a": 2.0 + s, "b": 1.0}}}
        ...         for s in (-0.1, 0.0, 0.1)]
        >>> [round(x, 3) for x in time_ratio_range(runs, "a", "b")]
        [1.752, 2.248]
    """
    pairs = [(r["time"]["step_s"][num], r["time"]["step_s"][den]) for r in runs
             if r["config"].get("part") == "timing"
             and {num, den} <= set(r.get("time", {}).get("step_s", {}))]
    m, h, n = mean_ci([a / b for a, b in pairs if b > 0])
    return (m - h, m + h) if n >= 2 and math.isfinite(h) else None


def analyze(runs, figdir, lang):
    timing = step_times(runs)
    timing_runs = [r for r in runs if r["config"].get("part") == "timing"]
    runs = [r for r in runs if r["config"].get("part") != "timing"]
    if not runs:
        return []
    g = group_runs(runs, "norm")
    cfg = runs[0]["config"]
    budget = cfg["steps"]
    t_med = {n: statistics.median(v) for n, v in timing.items()}

    def steps_hit(ms):
        return steps_to_target(ms, budget)[0]

    rows = []
    for (norm,), ms in g.items():
        t = t_med.get(norm)
        rows.append([norm, fmt_ci(steps_hit(ms), digits=0),
                     f"{sum(m['steps_to_target'] is not None for m in ms)}/{len(ms)}",
                     f"{1e3 * t:.2f}" if t else "—",
                     f"{mean_ci(steps_hit(ms))[0] * t:.2f}" if t else "—",
                     f"{sum(bool(m['diverged']) for m in ms)}/{len(ms)}",
                     pct(accuracies(ms)), pct(accuracies(ms, "train_acc")),
                     fmt_ci([m["gap"] for m in ms], 100),
                     tail_gain_cell(ms),
                     ", ".join(f"{m['lr_chosen']:g}" for m in ms) if "lr_chosen" in ms[0]
                     else f"{cfg.get('lr', '—')}"])
    table = Table(["norm", f"steps to {cfg['target']:.0%}", "reached",
                   "ms/step (interleaved timing, median)", "seconds to target (steps × s/step)",
                   "diverged", "test acc % (diverged = 0)", "train acc % (diverged = 0)",
                   "gap (points, runs that trained)", GAIN_HEADER,
                   "lr (chosen on validation, per seed)"], rows)

    fig, (a1, a2) = figure(1, 2, (10, 4))
    for i, ((norm,), ms) in enumerate(g.items()):
        by_step: dict = {}
        for m in ms:
            for s, acc in m["curve"]:
                by_step.setdefault(s, []).append(acc)
        xs, mu, lo, hi = ci_band(by_step, 100, PCT_BOUNDS)
        a1.plot(xs, mu, label=norm, color=f"C{i}")
        a1.fill_between(xs, lo, hi, alpha=0.2, color=f"C{i}")
        if norm in t_med:
            a2.plot([x * t_med[norm] for x in xs], mu, label=norm, color=f"C{i}")
    for a, xl in ((a1, "optimizer steps"), (a2, "seconds (steps × interleaved median s/step)")):
        a.axhline(cfg["target"] * 100, color="grey", ls=":", lw=1)
        a.set_xlabel(xl)
        a.set_ylabel("test accuracy %")
        if a.get_legend_handles_labels()[0]:
            a.legend()
    a1.set_title("N1: test accuracy during training (mean, 95% band)")
    fig_path = save_figure(fig, figdir, "n1_training_curves")

    bn, none = g.get(("batch",), []), g.get(("none",), [])
    out = []
    if bn and none:
        (sb, cb), (sn_, cn) = steps_to_target(bn, budget), steps_to_target(none, budget)
        # read at the checkpoints, and only a lower bound for a run that never got there
        grid = {"resolution": cfg["eval_every"], "lower_bounds": (cb, cn)}
        mb, mn = mean_ci(sb)[0], mean_ci(sn_)[0]
        ratio = mb / mn if mn else float("nan")
        c_ratio = compare(f"BN steps − {STEP_RATIO:.2f}·no-norm steps", sb, sn_, 0,
                          at_most=True, digits=0, b_factor=STEP_RATIO, **grid)
        c_fewer = compare("BN steps − no-norm steps", sb, sn_, 0, at_most=True, digits=0,
                          strict=True, **grid)
        comps = [c_ratio, c_fewer]
        if "batch" in t_med and "none" in t_med:
            # seconds = steps × median s/step: BN no slower ⟺ steps_BN − (t_none/t_BN)·steps_none ≤ 0
            c_sec = compare("BN seconds − no-norm seconds (in BN steps)", sb, sn_, 0,
                            at_most=True, digits=0, b_factor=t_med["none"] / t_med["batch"],
                            b_factor_range=time_ratio_range(timing_runs, "none", "batch"), **grid)
            comps.append(c_sec)
            secs = c_sec.holds
            sec_txt = (f"; seconds BN {mb * t_med['batch']:.2f} vs none {mn * t_med['none']:.2f} "
                       f"(ms/step, interleaved: BN {1e3 * t_med['batch']:.2f}, none "
                       f"{1e3 * t_med['none']:.2f})")
        else:
            secs, sec_txt = None, "; no interleaved timing run"
        v = decide(all3(c_ratio.holds, secs), c_fewer.holds)
        out.append(ClaimResult(
            "N1", v, f"steps to {cfg['target']:.0%}: BN {mb:.0f} vs none {mn:.0f} "
            f"(ratio {ratio:.2f}){sec_txt}{unreached_text({'BN': bn, 'none': none})}",
            [table], [fig_path], comparisons=comps,
            published=[["Ioffe & Szegedy 2015 (Inception, ImageNet)",
                        "steps to the baseline's accuracy, BN vs none", "14× fewer",
                        f"{1 / ratio:.1f}× fewer" if ratio == ratio and ratio > 0 else "—"]],
            # "used in CNNs, RNNs" is a statement about practice that no criterion judges: the
            # cell shows that BN trains N1's CNN, with no verdict (N1's is about speed); N10
            # adds the RNN half
            cells={("norm", "use", "batch"): (
                f"CNNs: BN trains the N1 ConvNet to {pct(accuracies(bn))} % test accuracy",
                INFORMATIONAL)},
            notes=Text("Full profile: each norm's learning rate is chosen per seed from "
                       f"{', '.join(f'{x:g}' for x in LR_GRID)} on a validation split of the "
                       "training data with other seeds (see the table); quick: 0.05 for every "
                       "norm (SGD momentum 0.9). Seconds are steps times the median time per "
                       "step of an interleaved timing (the norms alternate step by step on one "
                       "thread), not run wall-clocks, which depend on what else shared the CPU. "
                       "Ioffe & Szegedy's 14× is for Inception on ImageNet with a raised learning "
                       "rate and other changes; here every norm trains at one rate.",
                       "Full profile: हर norm की learning rate हर seed के लिए "
                       f"{', '.join(f'{x:g}' for x in LR_GRID)} में से training data के validation "
                       "split पर दूसरे seeds से चुनी गई (table देखें); quick: हर norm के लिए 0.05। "
                       "Seconds = steps × interleaved timing का median time "
                       "per step (norms एक thread पर step-by-step बारी-बारी चलते हैं), run wall-clock "
                       "नहीं। Ioffe & Szegedy का 14× ImageNet पर Inception के लिए है, बढ़ी हुई "
                       "learning rate और दूसरे बदलावों के साथ; यहाँ हर norm एक ही rate पर train होता है।")))
        ab, an = accuracies(bn), accuracies(none)  # a diverged run counts as 0, never dropped
        gb, gn = mean_ci([m["gap"] for m in bn])[0], mean_ci([m["gap"] for m in none])[0]
        c_acc = compare("BN − no-norm test accuracy", ab, an, ACC_MARGIN, scale=100,
                        unit=" points")
        c_gap = compare("BN − no-norm train–test gap", [m["gap"] for m in bn],
                        [m["gap"] for m in none], GAP_MARGIN, scale=100, unit=" points",
                        at_most=True)
        conv = converged(bn, none)
        c_acc, c_gap = (c.resting_on_unconverged(conv is False) for c in (c_acc, c_gap))
        v4 = decide(all3(c_acc.holds, c_gap.holds), any3(c_acc.holds, c_gap.holds))
        if conv is False:
            v4 = INCONCLUSIVE
        pub = [["MNIST-1D paper (Greydanus & Kobak)", "mnist1d, CNN without norm, test accuracy",
                f"{MNIST1D_PUBLISHED['cnn']:.0%}", pct(an) + " % (none), " + pct(ab) + " % (BN)"]]
        out.append(ClaimResult(
            "N4", v4, f"test acc BN {pct(ab)} % vs none {pct(an)} % (diverged runs count as 0: "
            f"BN {sum(bool(m['diverged']) for m in bn)}/{len(bn)}, none "
            f"{sum(bool(m['diverged']) for m in none)}/{len(none)}); gap BN {100 * gb:.1f} vs "
            f"none {100 * gn:.1f} points"
            + ("; a contender had not converged (plateau), so the comparison is inconclusive"
               if conv is False else ""), [table], [fig_path], pub, comparisons=[c_acc, c_gap]))
    return out


_SELECTION = selection_text(LR_GRID, QUICK_LR)
EXPERIMENT = Experiment(
    id="norm_training",
    claims=(N1, N4),
    title=Text("Training speed and generalization with each norm",
               "हर norm के साथ training speed और generalization"),
    protocol=Text(
        "mnist1d (4000 train / 1000 test; or --data). ConvNet: 3 blocks conv(k=5, stride 2) → norm "
        "→ ReLU, width 32, then linear. Norms from sharenorm.make_norm: batch, group (G=8), "
        f"instance, layer, none. SGD momentum 0.9, batch 32, {STEPS} steps (quick: {QUICK_STEPS}), "
        f"the rate decayed to 0 by a {SCHEDULE} schedule; lr (the first step's) per norm "
        f"and seed {_SELECTION[0]}, the final run on the whole training set with the seed; "
        f"test accuracy every {EVAL_EVERY} steps (quick: {QUICK_EVAL_EVERY}) in eval mode; "
        f"target accuracy {TARGET:.0%} (quick {QUICK_TARGET:.0%}). "
        f"Timing: one more run per seed alternates one training step of every norm, "
        f"{TIMING_ROUNDS} rounds (quick: {QUICK_TIMING_ROUNDS}), on one thread; the median step "
        "time gives the seconds.",
        "mnist1d (4000 train / 1000 test; या --data)। ConvNet: 3 blocks conv(k=5, stride 2) → norm "
        "→ ReLU, width 32, फिर linear। Norms sharenorm.make_norm से: batch, group (G=8), instance, "
        f"layer, none। SGD momentum 0.9, batch 32, {STEPS} steps (quick: {QUICK_STEPS}), rate "
        f"{SCHEDULE} schedule से 0 तक घटती; हर norm और seed की (पहले step की) lr "
        f"{_SELECTION[1]}, final run पूरे training set पर उसी seed से; हर {EVAL_EVERY} steps (quick: {QUICK_EVAL_EVERY}) पर eval mode में test "
        f"accuracy; target accuracy {TARGET:.0%} (quick {QUICK_TARGET:.0%})। Timing: हर seed "
        f"का एक और run हर norm का एक training step बारी-बारी चलाता है, {TIMING_ROUNDS} rounds (quick: "
        f"{QUICK_TIMING_ROUNDS}), एक thread पर; median step time से seconds।"),
    configs=configs, run=run, analyze=analyze, uses_data=True, min_positions=2,
)  # seconds come from the interleaved timing runs, so the seeds may stack
