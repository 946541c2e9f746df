"""N2: BN stabilises gradient descent — the range of learning rates that train, with and without BN."""

from __future__ import annotations

import math

from sharenorm.lab.claims import NORM_DOC
from sharenorm.lab.common import PCT_BOUNDS, accuracies, ci_band, dataset, figure, pct, save_figure
from sharenorm.lab.spec import (
    INCONCLUSIVE,
    MIXED,
    NOT_SUPPORTED,
    SUPPORTED,
    Claim,
    ClaimResult,
    Experiment,
    Table,
    Text,
    group_runs,
)
from sharenorm.lab.stats import fmt_ci, mean_ci
from sharenorm.lab.train import TrainConfig, train_classifier
from sharenorm.models import ConvNet

FULL_LRS = [0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
QUICK_LRS = [0.01, 0.3, 10.0]
STABLE_ACC = 0.5


SPIKE = 10.0  # a gradient-norm spike: a step whose norm exceeds this × the run's median
# a training-loss spike: a step whose loss exceeds LOSS_SPIKE × the median of the previous
# LOSS_WINDOW steps' losses (fewer at the start, but at least LOSS_HISTORY). Local, because the
# loss falls during training; 3× because the batch-to-batch noise of a healthy run at batch 32
# stays under ~2.4× (mnist1d, 500 steps, lr 0.01–0.1, BN and none).
LOSS_SPIKE, LOSS_WINDOW, LOSS_HISTORY = 3.0, 20, 5


N2 = Claim(
    "N2", NORM_DOC, "Gradient Descent को Stable करता है।",
    "BN stabilises gradient descent.",
    Text("Learning rates on a ×3 grid; a learning rate is stable when no seed diverges and the "
         "95% t interval of the mean test accuracy over the seeds lies wholly at or above "
         f"{STABLE_ACC:.0%}; unstable when a seed diverges or the interval lies wholly below; "
         "undecided when it straddles the bar. The claim is about "
         "stability, so it is decided by the upper end of the stable range: supported if BN's "
         "largest stable learning rate is at least one grid step (×3) above no-norm's; mixed if "
         "they are equal; not supported if it is lower, or if BN has no stable learning rate at "
         "all; inconclusive when an undecided learning rate could change the verdict. Beside "
         "it, per learning rate: gradient-norm spikes (steps above "
         f"{SPIKE:g}× the run's median), the coefficient of variation of the gradient norm "
         "over the second half of training, and training-loss spikes (steps whose loss exceeds "
         f"{LOSS_SPIKE:g}× the median of the previous {LOSS_WINDOW} steps' losses; from step "
         f"{LOSS_HISTORY + 1} on, over the steps before it), summed over the seeds.",
         "×3 grid पर learning rates; एक learning rate stable है जब कोई seed diverge न हो और seeds की "
         f"mean test accuracy का 95% t interval पूरा {STABLE_ACC:.0%} या उससे ऊपर हो; unstable जब कोई "
         "seed diverge हो या interval पूरा नीचे हो; undecided जब interval bar के दोनों ओर हो। Claim "
         "stability का है, इसलिए फ़ैसला stable range के ऊपरी सिरे से: "
         "supported अगर BN की सबसे बड़ी stable learning rate no-norm की से कम से कम एक grid step (×3) "
         "ऊपर हो; बराबर हो तो mixed; नीचे हो, या BN की कोई stable learning rate न हो, तो not "
         "supported; कोई undecided learning rate verdict बदल सके तो inconclusive। साथ में, हर "
         f"learning rate पर: gradient-norm spikes (run के median के {SPIKE:g}× से "
         "ऊपर वाले steps), training के दूसरे आधे में gradient norm का coefficient of variation, और "
         f"training-loss spikes (वे steps जिनका loss पिछले {LOSS_WINDOW} steps के losses के median के "
         f"{LOSS_SPIKE:g}× से ज़्यादा हो; step {LOSS_HISTORY + 1} से, उससे पहले के steps पर), सभी seeds "
         "का जोड़।"))


def configs(quick: bool) -> list[dict]:
    lrs, steps = (QUICK_LRS, 100) if quick else (FULL_LRS, 500)
    return [{"norm": n, "lr": lr, "steps": steps, "batch_size": 32}
            for n in ("batch", "none") for lr in lrs]


def run(cfg, seed, ctx):
    import torch

    ds = dataset(ctx)
    torch.manual_seed(seed)
    model = ConvNet(ds.sample_shape, ds.num_classes, norm=cfg["norm"])
    metrics, timing = train_classifier(model, ds, TrainConfig(
        steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"], record_steps=True), seed)
    grads, losses = metrics.pop("grad_norms"), metrics.pop("step_losses")
    return metrics | grad_summary(grads) | {"loss_spikes": loss_spikes(losses)}, timing


def grad_summary(norms: list) -> dict:
    """Of a run's per-step gradient norms ‖∂L/∂θ‖: the spikes (steps above SPIKE × the
    median) and the coefficient of variation over the second half of training; None where
    the run took fewer than two finite steps.

    Example:
        >>> grad_summary([1.0, 1.0, 50.0, 1.0])
        {'grad_spikes': 1, 'grad_cv': 0.960784}
    """
    import statistics

    xs = [x for x in norms if x is not None and x == x and x != float("inf")]
    if len(xs) < 2:
        return {"grad_spikes": None, "grad_cv": None}
    med = statistics.median(xs)
    late = xs[len(xs) // 2:]
    mean = statistics.fmean(late)
    cv = statistics.pstdev(late) / mean if mean > 0 else None
    return {"grad_spikes": sum(x > SPIKE * med for x in xs),
            "grad_cv": round(cv, 6) if cv is not None else None}


def loss_spikes(losses: list) -> int | None:
    r"""Training-loss spikes of a run: the steps :math:`i` (from the :data:`LOSS_HISTORY`-th
    on, 0-based) whose loss exceeds :data:`LOSS_SPIKE` × the median of the previous
    :data:`LOSS_WINDOW` steps' losses (all of them while there are fewer),

    .. math::
        \#\{\, i \ge h : \ell_i > K\cdot \operatorname{median}(\ell_{\max(0,\,i-W)},\dots,
        \ell_{i-1}) \,\}

    Only finite losses count: the non-finite step of a diverged run is its divergence,
    reported as such. None for a run with no more than :data:`LOSS_HISTORY` finite losses.

    Example:
        >>> loss_spikes([2.3, 2.2, 2.1, 2.0, 2.0, 1.9, 7.5, 1.8, 60.0, float("inf")])
        2
        >>> loss_spikes([2.3, 2.2])
    """
    import statistics

    xs = [x for x in losses if x is not None and math.isfinite(x)]
    if len(xs) <= LOSS_HISTORY:
        return None
    return sum(xs[i] > LOSS_SPIKE * statistics.median(xs[max(0, i - LOSS_WINDOW):i])
               for i in range(LOSS_HISTORY, len(xs)))


def stability(ms) -> bool | None:
    """Whether a learning rate is stable for one norm, from its seeds' runs: False when a
    run diverged (or there is none); else from the 95% t interval of the mean test accuracy
    over the seeds against :data:`STABLE_ACC`: True when it lies wholly at or above it, False
    when wholly below, None (undecided) when it straddles it or there is one seed.

    Why an interval and not "every seed above the bar": the lowest of five seeds is the
    noisiest statistic there is. Lab v12's no-norm runs at lr 0.1 reached 47.1% in one seed on
    an AVX2 machine and ≥ 67% in all five on an AVX-512 one (the same code: only the
    kernels' rounding differed), which flipped N2 between supported and mixed.

    Example:
        >>> ok = lambda a: {"diverged": False, "test_acc": a}
        >>> stability([ok(0.9), ok(0.91)]), stability([ok(0.2), ok(0.21)])
        (True, False)
        >>> stability([ok(0.3), ok(0.6), ok(0.45)]), stability([ok(0.9), {"diverged": True}])
        (None, False)
    """
    if not ms or any(m["diverged"] for m in ms):
        return False
    mean, half, _ = mean_ci([m["test_acc"] or 0.0 for m in ms])
    if not math.isfinite(half):
        return None
    if mean - half >= STABLE_ACC:
        return True
    return False if mean + half < STABLE_ACC else None


def _total(ms, key: str) -> str:
    """The sum over the seeds of a per-run count, ``"3 (n=2 of 3)"`` when some runs lack it
    (runs stored before it was recorded), ``"—"`` when none has it."""
    vals = [m.get(key) for m in ms if m.get(key) is not None]
    if not vals:
        return "—"
    return f"{sum(vals)}" + (f" (n={len(vals)} of {len(ms)})" if len(vals) < len(ms) else "")


def analyze(runs, figdir, lang):
    if not runs:
        return []
    g = group_runs(runs, "norm", "lr")
    lrs = sorted({lr for _, lr in g})
    state = {(n, lr): stability(g.get((n, lr), [])) for n in ("batch", "none") for lr in lrs}
    undecided = {n: [lr for lr in lrs if state[(n, lr)] is None] for n in ("batch", "none")}
    # the decided stable rates, and what they would be if every undecided one were stable
    stable = {n: [lr for lr in lrs if state[(n, lr)]] for n in ("batch", "none")}
    at_most = {n: [lr for lr in lrs if state[(n, lr)] is not False] for n in ("batch", "none")}
    rows = []
    for lr in lrs:
        row = [f"{lr:g}"]
        for n in ("batch", "none"):
            ms = g.get((n, lr), [])
            accs = accuracies(ms)
            row += [pct(accs), f"{sum(m['diverged'] for m in ms)}/{len(ms)}",
                    {True: "yes", False: "no", None: "undecided"}[state[(n, lr)]],
                    _total(ms, "grad_spikes"),
                    fmt_ci([m.get("grad_cv") for m in ms], digits=2), _total(ms, "loss_spikes")]
        rows.append(row)
    table = Table(["lr", "BN test acc %", "BN diverged", "BN stable", "BN grad spikes",
                   "BN grad-norm CV", f"BN loss spikes (> {LOSS_SPIKE:g}× median of {LOSS_WINDOW})",
                   "none test acc %", "none diverged", "none stable", "none grad spikes",
                   "none grad-norm CV",
                   f"none loss spikes (> {LOSS_SPIKE:g}× median of {LOSS_WINDOW})"], rows)
    fig, ax = figure()
    for n in ("batch", "none"):
        by = {lr: accuracies(g[(n, lr)])
              for lr in lrs if (n, lr) in g}
        xs, mu, lo, hi = ci_band(by, 100, PCT_BOUNDS)
        ax.plot(xs, mu, marker="o", label="BN" if n == "batch" else "no norm")
        ax.fill_between(xs, lo, hi, alpha=0.2)
    ax.axhline(STABLE_ACC * 100, color="grey", ls=":", lw=1, label="stability threshold")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (SGD, momentum 0.9)")
    ax.set_ylabel("test accuracy % (diverged = 0)")
    ax.set_title("N2: learning-rate sweep")
    ax.legend()
    fp = save_figure(fig, figdir, "n2_lr_sweep")

    def span(v):  # "none" is the no-norm contender's name: an empty range is said in words
        if not v:
            return "no stable rate"
        return f"[{v[0]:g}, {v[-1]:g}] ({width(v)} grid point{'s' if width(v) > 1 else ''} wide)"

    def width(v):  # the range [min, max] of stable lrs in grid steps (a hole inside counts)
        return lrs.index(v[-1]) - lrs.index(v[0]) + 1 if v else 0

    def verdict(b, n):
        if not b:  # BN has no stable learning rate at all: it stabilises nothing here
            return NOT_SUPPORTED
        if not n or lrs.index(b[-1]) >= lrs.index(n[-1]) + 1:
            return SUPPORTED
        return MIXED if b[-1] == n[-1] else NOT_SUPPORTED

    # inconclusive when an undecided rate could change the verdict: the two extremes differ
    b, n = stable["batch"], stable["none"]
    v = verdict(b, n)
    if v != verdict(at_most["batch"], n) or v != verdict(b, at_most["none"]):
        v = INCONCLUSIVE
    decades = {k: f"{math.log10(max(x) / min(x)):.2f}" if x else "—" for k, x in stable.items()}
    names = {"batch": "BN", "none": "no norm"}
    largest = ", ".join(f"{names[k]} {f'{x[-1]:g}' if x else 'no stable rate'}"
                        for k, x in (("batch", b), ("none", n)))
    open_ = "; ".join(f"{names[k]} at {', '.join(f'{x:g}' for x in undecided[k])}"
                      for k in names if undecided[k])
    return [ClaimResult("N2", v, f"largest stable lr: {largest}; stable lr range: BN "
                        f"{span(stable['batch'])}, no norm {span(stable['none'])}; width BN "
                        f"{decades['batch']} vs no norm {decades['none']} decades"
                        + (f"; undecided (the interval of the mean accuracy straddles "
                           f"{STABLE_ACC:.0%}): {open_}" if open_ else ""), [table], [fp])]


EXPERIMENT = Experiment(
    id="lr_sweep",
    claims=(N2,),
    title=Text("Learning-rate sweep with and without BN", "BN के साथ और बिना learning-rate sweep"),
    protocol=Text(
        "mnist1d (or --data), the N1 ConvNet with BN or without a norm, SGD momentum 0.9, batch "
        "32, 500 steps (quick: 100), learning rates " + ", ".join(f"{x:g}" for x in FULL_LRS) +
        " (quick: " + ", ".join(f"{x:g}" for x in QUICK_LRS) + "). A run diverges when its loss "
        "is non-finite or > 1e4; a learning rate is stable when no seed diverges and the 95% "
        f"interval of the seeds' mean test accuracy lies wholly ≥ {STABLE_ACC:.0%}.",
        "mnist1d (या --data), N1 वाला ConvNet BN के साथ या बिना norm, SGD momentum 0.9, batch 32, "
        "500 steps (quick: 100), learning rates " + ", ".join(f"{x:g}" for x in FULL_LRS) +
        " (quick: " + ", ".join(f"{x:g}" for x in QUICK_LRS) + ")। Run diverge माना जाता है जब loss non-finite या > 1e4 हो; learning rate stable है जब कोई "
        f"seed diverge न हो और seeds की mean test accuracy का 95% interval पूरा ≥ {STABLE_ACC:.0%} हो।"),
    compares_intervals=False, stack_over=("lr",),  # the rate grid and seeds train as one
    configs=configs, run=run, analyze=analyze, uses_data=True)
