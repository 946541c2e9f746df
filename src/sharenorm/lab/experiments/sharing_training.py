"""S2 (sharing trains faster) and S3 (sharing generalizes; on shuffled positions it should not);
also the mnist1d paper's logistic-regression row, measured beside its other rows."""

from __future__ import annotations

import math
import statistics

import torch
from torch import nn

from sharenorm.data import MNIST1D_PUBLISHED, Dataset
from sharenorm.lab.claims import SHARE_DOC
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
from sharenorm.lab.experiments.norm_training import step_times, time_ratio_range
from sharenorm.lab.experiments.sharing_cost import MODELS, build
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
from sharenorm.lab.stats import compare, fmt_ci, mean_ci
from sharenorm.lab.train import TrainConfig, train_classifier

LR = 2e-3  # quick profile (and the timing's Adam step)
# full profile: each network's Adam learning rate chosen per seed on a validation split
LR_GRID = [7e-4, 2e-3, 6e-3]
LOGISTIC = "logistic"  # the mnist1d paper's first row: a linear classifier, shown, not judged


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


STEPS, QUICK_STEPS = 2000, 100
# test-accuracy checkpoints: steps to the target, and ≥ 2 in each window of the plateau check
EVAL_EVERY, QUICK_EVAL_EVERY = 100, 10
TARGET, QUICK_TARGET = 0.8, 0.4
SHARE_MARGIN = 3.0  # S3: the CNN beats the locally connected network and the MLP by this many points
TIMING_ROUNDS, QUICK_TIMING_ROUNDS = 100, 10  # interleaved steps per model, per seed

S2 = Claim(
    "S2", SHARE_DOC, "Training Faster होती है।", "Sharing makes training faster.",
    Text(f"Seconds are steps to the target test accuracy ({STEPS_TO_TARGET_TEXT[0]}) times the median time per step of an interleaved timing (the three "
         "networks alternate step by step on one thread). Supported if the CNN reaches the "
         "target in fewer seconds than both the locally connected network and the MLP and its "
         "time per step is lower than the locally connected network's, each decided by the 95% "
         "Welch interval of the difference lying wholly below 0; mixed if it wins some of these; "
         "not supported if none; inconclusive when an interval straddles 0.",
         f"Seconds = target test accuracy तक के steps ({STEPS_TO_TARGET_TEXT[1]}) × "
         "interleaved timing का median time per step (तीनों networks एक thread पर step-by-step बारी-"
         "बारी)। Supported अगर CNN target तक locally connected network और MLP दोनों से कम seconds "
         "में पहुँचे और उसका time per step locally connected network से कम हो, हर शर्त difference "
         "के 95% Welch interval के पूरा 0 से नीचे होने से तय; कुछ शर्तें पूरी हों तो mixed; कोई "
         "नहीं तो not supported; कोई interval 0 के दोनों ओर हो तो inconclusive।"))
_UNCONVERGED = unconverged_text("test accuracy")
S3 = Claim(
    "S3", SHARE_DOC, "Generalization क्षमता बढ़ती है। / Overfitting को कम करता है",
    "Sharing improves generalization / reduces overfitting.",
    Text("Supported if on mnist1d the CNN's test accuracy beats the locally connected network's "
         f"and the MLP's by ≥ {SHARE_MARGIN:g} points (the 95% Welch interval of each difference "
         "wholly ≥ the margin), and on the spatially shuffled mnist1d the CNN's lead over the MLP "
         "shrinks (per seed, lead ordered − lead shuffled, interval wholly > 0: its advantage "
         "comes from translation structure); mixed if only the first part holds; not supported "
         "otherwise; inconclusive when an interval straddles its margin or a run has not "
         f"converged ({_UNCONVERGED[0]}).",
         "Supported अगर mnist1d पर CNN की test accuracy locally connected network और MLP से "
         f"≥ {SHARE_MARGIN:g} points ज़्यादा हो (हर difference का 95% Welch interval पूरा margin के ऊपर), "
         "और spatially shuffled mnist1d पर CNN की MLP पर बढ़त घटे (हर seed पर ordered बढ़त − "
         "shuffled बढ़त, interval पूरा > 0: फ़ायदा translation structure से आता है); केवल पहला भाग हो तो "
         "mixed; वरना not supported; कोई interval margin के दोनों ओर हो या कोई contender converge न हुआ हो "
         f"({_UNCONVERGED[1]}) तो inconclusive।"))


def configs(quick: bool) -> list[dict]:
    steps, every, target = (QUICK_STEPS, QUICK_EVAL_EVERY, QUICK_TARGET) if quick else (
        STEPS, EVAL_EVERY, TARGET)
    lr = {"lr": LR} if quick else {"lr_grid": LR_GRID}
    return [{"model": m, "shuffled": s, "steps": steps, "eval_every": every, "target": target,
             "batch_size": 32, "schedule": SCHEDULE, **lr} for s in (False, True) for m in MODELS] + [
        {"part": "timing", "batch_size": 32,
         "rounds": QUICK_TIMING_ROUNDS if quick else TIMING_ROUNDS},
        {"model": LOGISTIC, "shuffled": False, "steps": steps, "eval_every": every,
         "target": target, "batch_size": 32, **lr}]


def planned_steps(cfg: dict, n_train: int) -> int:
    """Optimizer steps of a run: the final training and its learning-rate selection."""
    if cfg.get("part") == "timing":
        return 0
    grid = len(cfg.get("lr_grid", ()))
    return cfg["steps"] + grid * max(1, int(cfg["steps"] * SELECT_FRACTION))


def _build(model: str, ds: Dataset) -> nn.Module:
    if model == LOGISTIC:  # multinomial logistic regression on the raw positions
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(ds.sample_shape), ds.num_classes))
    return build(model, ds)


def _timing(cfg, seed, ctx):
    """Median seconds per Adam step of each network, timed interleaved (see _timing)."""
    ds = dataset(ctx)
    torch.manual_seed(seed)
    x, y = ds.x_train[:cfg["batch_size"]], ds.y_train[:cfg["batch_size"]]
    steps = {m: sgd_step(build(m, ds), x, y, "adam", LR) for m in MODELS}
    return {"part": "timing"}, {"step_s": interleaved_step_times(steps, cfg["rounds"])}


def run(cfg, seed, ctx):
    if cfg.get("part") == "timing":
        return _timing(cfg, seed, ctx)
    ds = dataset(ctx)
    if cfg["shuffled"]:
        ds = shuffle_positions(ds)
    chosen, lr = {}, cfg.get("lr")
    if "lr_grid" in cfg:
        trial = classifier_trial(lambda d: _build(cfg["model"], d), cfg["steps"],
                                 batch_size=cfg["batch_size"], optimizer="adam",
                                 schedule=cfg.get("schedule", "constant"))
        lr, scores = select_lr(trial, ds, cfg["lr_grid"], seed)
        chosen = {"lr_chosen": lr, "val_acc_by_lr": scores}
    torch.manual_seed(seed)
    model = _build(cfg["model"], ds)
    metrics, timing = train_classifier(model, ds, TrainConfig(
        steps=cfg["steps"], batch_size=cfg["batch_size"], lr=lr, optimizer="adam",
        schedule=cfg.get("schedule", "constant"), eval_every=cfg["eval_every"],
        target_acc=cfg["target"]), seed)
    metrics["n_train"] = len(ds.x_train)  # the epoch of "s / epoch" (4000 for mnist1d)
    return metrics | chosen, timing


def analyze(runs, figdir, lang):
    timing = step_times(runs)
    timing_runs = [r for r in runs if r["config"].get("part") == "timing"]
    runs = [r for r in runs if r["config"].get("part") != "timing"]
    if not runs:
        return []
    t_med = {m: statistics.median(v) for m, v in timing.items()}
    g = group_runs(runs, "model", "shuffled")
    cfg = runs[0]["config"]
    n_train = runs[0]["metrics"].get("n_train")
    steps_per_epoch = n_train / cfg["batch_size"] if n_train else None
    budget = cfg["steps"]

    def steps_hit(ms):
        return steps_to_target(ms, budget)[0]

    rows = []
    for (model, shuf), ms in g.items():
        t = t_med.get(model) if not shuf else None
        rows.append([model, "shuffled" if shuf else "ordered",
                     f"{t * steps_per_epoch:.2f}" if t and steps_per_epoch else "—",
                     f"{mean_ci(steps_hit(ms))[0] * t:.2f}" if t else "—",
                     f"{sum(m['steps_to_target'] is not None for m in ms)}/{len(ms)}",
                     f"{sum(bool(m['diverged']) for m in ms)}/{len(ms)}",
                     pct(accuracies(ms)), pct(accuracies(ms, "train_acc")),
                     fmt_ci([m["gap"] for m in ms], 100),
                     tail_gain_cell(ms),
                     ", ".join(f"{m['lr_chosen']:g}" for m in ms) if "lr_chosen" in ms[0]
                     else f"{cfg.get('lr', '—')}"])
    table = Table(["model", "positions",
                   f"s / epoch ({n_train or '?'} samples; interleaved timing, median)",
                   f"s to {cfg['target']:.0%} (steps × s/step)", "reached", "diverged",
                   "test acc % (diverged = 0)", "train acc % (diverged = 0)",
                   "gap (points, runs that trained)", GAIN_HEADER,
                   "Adam lr (chosen on validation, per seed)"], rows)
    fig, axes = figure(1, 2, (11, 4))
    for ax, shuf in zip(axes, (False, True), strict=False):
        for model in MODELS + [LOGISTIC]:
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

    # S2: seconds = steps × median s/step, so "CNN faster than X" is the contrast
    # steps_CNN − (t_X / t_CNN)·steps_X ≤ 0
    comps2 = []
    if {"cnn", "locally_connected", "mlp"} <= set(t_med):
        for other in ("locally_connected", "mlp"):
            (sc, cc), (so, co) = (steps_to_target(g[(m, False)], budget)
                                  for m in ("cnn", other))
            # read at the checkpoints, and only a lower bound for a run that never got there
            comps2.append(compare(f"CNN seconds − {other} seconds (in CNN steps)", sc, so, 0,
                                  at_most=True, digits=0, strict=True,
                                  b_factor=t_med[other] / t_med["cnn"], lower_bounds=(cc, co),
                                  resolution=cfg["eval_every"],
                                  b_factor_range=time_ratio_range(timing_runs, other, "cnn")))
        comps2.append(compare("CNN − locally connected ms/step (interleaved)",
                              timing["cnn"], timing["locally_connected"], 0, scale=1e3,
                              unit=" ms", digits=3, at_most=True, strict=True))
        wins = [c.holds for c in comps2]
        v2 = decide(all3(*wins), any3(*wins))

        def sec(model):
            return mean_ci(steps_hit(g[(model, False)]))[0] * t_med[model]

        s2_txt = (f"seconds to {cfg['target']:.0%}: CNN {sec('cnn'):.2f}, locally connected "
                  f"{sec('locally_connected'):.2f}, MLP {sec('mlp'):.2f}; ms/step (interleaved) "
                  f"CNN {1e3 * t_med['cnn']:.2f}, LC {1e3 * t_med['locally_connected']:.2f}, "
                  f"MLP {1e3 * t_med['mlp']:.2f}"
                  + unreached_text({"CNN": g[("cnn", False)],
                                    "locally connected": g[("locally_connected", False)],
                                    "MLP": g[("mlp", False)]}))
    else:
        v2, s2_txt = INCONCLUSIVE, "no interleaved timing run"
    s2 = ClaimResult("S2", v2, s2_txt, [table], [fp], comparisons=comps2, notes=Text(
        "Times per step come from an interleaved timing (the three networks alternate step by "
        "step on one thread, median of many steps), not from the training runs' wall-clocks, "
        f"which depend on what else shared the CPU. As to the steps: {STEPS_TO_TARGET_TEXT[0]}.",
        "Time per step interleaved timing से है (तीनों networks एक thread पर step-by-step बारी-बारी, "
        "कई steps का median), training runs के wall-clock से नहीं, जो CPU पर साथ चल रहे काम पर "
        f"निर्भर हैं। Steps के बारे में: {STEPS_TO_TARGET_TEXT[1]}।"))
    # S3
    c, lc, mlp = acc("cnn", False), acc("locally_connected", False), acc("mlp", False)

    def unconverged(*keys):  # a comparison resting on these runs is inconclusive
        return converged(*(g[k] for k in keys)) is False

    c_lc = compare("CNN − locally connected test accuracy", c, lc, SHARE_MARGIN, scale=100,
                   unit=" points").resting_on_unconverged(
        unconverged(("cnn", False), ("locally_connected", False)))
    c_mlp = compare("CNN − MLP test accuracy", c, mlp, SHARE_MARGIN, scale=100, unit=" points"
                    ).resting_on_unconverged(unconverged(("cnn", False), ("mlp", False)))
    first = all3(c_lc.holds, c_mlp.holds)
    lead_o = mean_ci(c)[0] - mean_ci(mlp)[0]
    lead_s = mean_ci(acc("cnn", True))[0] - mean_ci(acc("mlp", True))[0]
    leads_o = [a - b for a, b in zip(c, mlp, strict=False)]
    leads_s = [a - b for a, b in zip(acc("cnn", True), acc("mlp", True), strict=False)]
    c_shrink = compare("CNN's lead over the MLP, ordered − shuffled", leads_o, leads_s, 0,
                       scale=100, unit=" points", strict=True).resting_on_unconverged(
        unconverged(*((k, s) for k in ("cnn", "mlp") for s in (False, True))))
    second = c_shrink.holds
    v3 = decide(all3(first, second), first)
    unconv = any(x.unconverged for x in (c_lc, c_mlp, c_shrink))
    if unconv:
        v3 = INCONCLUSIVE
    pub = [["MNIST-1D paper", "CNN test accuracy, ordered", f"{MNIST1D_PUBLISHED['cnn']:.0%}",
            pct(c) + " %"],
           ["MNIST-1D paper", "MLP test accuracy, ordered", f"{MNIST1D_PUBLISHED['mlp']:.0%}",
            pct(mlp) + " %"],
           ["MNIST-1D paper", "CNN test accuracy, shuffled",
            f"{MNIST1D_PUBLISHED['cnn_shuffled']:.0%}", pct(acc("cnn", True)) + " %"]]
    if (LOGISTIC, False) in g:  # the paper's first row, measured with the same protocol
        pub.insert(0, ["MNIST-1D paper", "logistic regression test accuracy, ordered",
                       f"{MNIST1D_PUBLISHED['logistic']:.0%}", pct(acc(LOGISTIC, False)) + " %"])
    gaps = {k: mean_ci([m["gap"] for m in g[(k, False)]])[0] for k in MODELS}
    cells = {("share", "reg", "sharing"): (
        f"test acc CNN {pct(c)} vs LC {pct(lc)} vs MLP {pct(mlp)} %", v3)}
    s3 = ClaimResult("S3", v3, f"ordered: CNN {pct(c)}, LC {pct(lc)}, MLP {pct(mlp)} %; CNN lead "
                     f"over MLP {100 * lead_o:+.1f} ordered vs {100 * lead_s:+.1f} shuffled; gap "
                     f"CNN {100 * gaps['cnn']:.1f}, LC {100 * gaps['locally_connected']:.1f}, MLP "
                     f"{100 * gaps['mlp']:.1f} points"
                     + ("; a contender had not converged (plateau): inconclusive"
                        if unconv else ""), [table], [fp], pub, cells=cells,
                     comparisons=[c_lc, c_mlp, c_shrink],
                     notes=Text(
                         f"The CNN's lead over the MLP is {100 * lead_o:+.1f} points on ordered "
                         f"positions and {100 * lead_s:+.1f} on shuffled ones: "
                         + {True: "the advantage comes from translation structure, which "
                                  "shuffling removes. ",
                            False: "shuffling did not remove the lead. ",
                            None: "whether shuffling removes it is not decided (see the "
                                  "comparisons). "}[second]
                         + "The locally connected network has the CNN's locality without its "
                         "sharing, so CNN vs locally connected isolates sharing itself "
                         f"({100 * (mean_ci(c)[0] - mean_ci(lc)[0]):+.1f} points here, decided "
                         "by the 95% Welch interval of the difference against the margin).",
                         f"MLP पर CNN की बढ़त ordered positions पर {100 * lead_o:+.1f} points और "
                         f"shuffled पर {100 * lead_s:+.1f} है: "
                         + {True: "फ़ायदा translation structure से आता है, जिसे shuffling हटा "
                                  "देता है। ",
                            False: "shuffling ने बढ़त नहीं हटाई। ",
                            None: "shuffling बढ़त हटाता है या नहीं, यह तय नहीं हुआ (comparisons "
                                  "देखें)। "}[second]
                         + "Locally connected network में CNN की locality है पर sharing नहीं, इसलिए "
                         "CNN vs locally connected केवल sharing का असर दिखाता है (यहाँ "
                         f"{100 * (mean_ci(c)[0] - mean_ci(lc)[0]):+.1f} points, difference के 95% "
                         "Welch interval की margin से तुलना से तय)।"))
    return [s2, s3]


_SELECTION = selection_text(LR_GRID, LR)
EXPERIMENT = Experiment(
    id="sharing_training",
    claims=(S2, S3),
    title=Text("Training CNN vs locally connected vs MLP, ordered and shuffled positions",
               "CNN vs locally connected vs MLP की training, ordered और shuffled positions"),
    protocol=Text(
        "The three S1 networks (no norm) on mnist1d (or --data) and on the same data with one "
        "fixed random permutation of the positions; a logistic regression (one linear layer) on "
        "the ordered positions beside the mnist1d paper's 32%. Adam, batch 32, the rate decayed "
        f"to 0 by a {SCHEDULE} schedule, {STEPS} steps (quick: {QUICK_STEPS}); the learning rate "
        f"per network and seed {_SELECTION[0]}; test accuracy every {EVAL_EVERY} steps (quick: "
        f"{QUICK_EVAL_EVERY}), target {TARGET:.0%} (quick: {QUICK_TARGET:.0%}). Seconds are training time only (evaluation excluded).",
        "तीनों S1 networks (बिना norm) mnist1d (या --data) पर, और उसी data पर positions की एक fixed "
        "random permutation के साथ; ordered positions पर एक logistic regression (एक linear layer), "
        f"mnist1d paper के 32% के साथ। Adam, batch 32, rate {SCHEDULE} schedule से 0 तक घटती, "
        f"{STEPS} steps (quick: {QUICK_STEPS}); हर network और seed की learning rate "
        f"{_SELECTION[1]}; हर {EVAL_EVERY} steps (quick: {QUICK_EVAL_EVERY}) पर test accuracy, "
        f"target {TARGET:.0%} (quick: {QUICK_TARGET:.0%})। Seconds "
        "केवल training time हैं।"),
    configs=configs, run=run, analyze=analyze, uses_data=True,
    requires=("LocallyConnected1d", "LocallyConnected2d", "count_parameters"),
)  # seconds come from the interleaved timing runs, so the seeds may stack
