"""N3: BN reduces vanishing gradients — gradient norm per layer in a deep sigmoid/tanh MLP."""

from __future__ import annotations

import torch
from torch import nn

from sharenorm.lab.claims import NORM_DOC
from sharenorm.lab.common import accuracies, dataset, figure, pct, save_figure
from sharenorm.lab.spec import (
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
from sharenorm.lab.train import TrainConfig, seed_everything, train_classifier
from sharenorm.models import MLP

DEPTH, WIDTH, PROBE = 20, 64, 256
VANISH = 0.01  # without a norm, first/last gradient ratio below this: gradients vanish
GAIN = 10.0    # with BN the ratio is at least this many times larger


N3 = Claim(
    "N3", NORM_DOC, "Vanishing Gradient Problem को कम करता है।",
    "BN reduces the vanishing-gradient problem.",
    Text(f"In a {DEPTH}-layer sigmoid MLP at initialisation: supported if the first/last layer "
       f"gradient-norm ratio is < {VANISH:g} without a norm (gradients vanish) and ≥ {GAIN:g}× larger "
       f"with BN, in every seed; mixed if only the {GAIN:g}× holds; not supported otherwise.",
         f"{DEPTH}-layer sigmoid MLP में initialisation पर: supported अगर first/last layer gradient-norm "
       f"ratio बिना norm के < {VANISH:g} हो (gradients vanish) और BN के साथ ≥ {GAIN:g}× बड़ा हो, हर seed "
       f"में; mixed अगर केवल {GAIN:g}× वाली शर्त पूरी हो; वरना not supported।"))


def configs(quick: bool) -> list[dict]:
    return [{"act": a, "norm": n, "depth": DEPTH, "steps": 50 if quick else 400}
            for a in ("sigmoid", "tanh") for n in ("batch", "none")]


def grad_norms(model: MLP, x, y) -> list[float]:
    """‖∂L/∂W_l‖ (Frobenius) of every hidden linear layer, first to last, on one batch."""
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    return [lin.weight.grad.norm().item() for lin in model.linears]


def run(cfg, seed, ctx):
    ds = dataset(ctx)
    gen = seed_everything(seed)
    model = MLP(ds.sample_shape, ds.num_classes, hidden=WIDTH, depth=cfg["depth"],
                norm=cfg["norm"], act=cfg["act"])
    idx = torch.randperm(len(ds.x_train), generator=gen)[:PROBE]
    x, y = ds.x_train[idx], ds.y_train[idx]
    model.train()
    g0 = grad_norms(model, x, y)
    metrics, timing = train_classifier(model, ds, TrainConfig(steps=cfg["steps"], batch_size=32,
                                                              lr=0.05), seed)
    g1 = grad_norms(model, x, y) if not metrics["diverged"] else []
    metrics.update(grad_init=[float(f"{v:.6g}") for v in g0],
                   grad_trained=[float(f"{v:.6g}") for v in g1],
                   ratio_init=g0[0] / g0[-1] if g0[-1] else None)
    metrics.pop("curve", None)
    return metrics, timing


def analyze(runs, figdir, lang):
    if not runs:
        return []
    g = group_runs(runs, "act", "norm")
    fig, axes = figure(1, 2, (10, 4))
    rows = []
    for ax, act in zip(axes, ("sigmoid", "tanh"), strict=False):
        for norm in ("batch", "none"):
            ms = g.get((act, norm), [])
            if not ms:
                continue
            layers = list(range(1, len(ms[0]["grad_init"]) + 1))
            mean = [mean_ci([m["grad_init"][i] for m in ms])[0] for i in range(len(layers))]
            ax.plot(layers, mean, marker="o", ms=3, label=f"{'BN' if norm == 'batch' else 'no norm'}")
            rows.append([act, norm, fmt_ci([m["grad_init"][0] for m in ms], digits=6),
                         fmt_ci([m["grad_init"][-1] for m in ms], digits=6),
                         fmt_ci([m["ratio_init"] for m in ms], digits=5),
                         pct(accuracies(ms))])
        ax.set_yscale("log")
        ax.set_xlabel("hidden layer (1 = nearest the input)")
        ax.set_ylabel("‖∂L/∂W‖ at initialisation")
        ax.set_title(f"N3: {DEPTH}-layer {act} MLP")
        ax.legend()
    fp = save_figure(fig, figdir, "n3_gradient_norms")
    table = Table(["activation", "norm", "‖grad‖ layer 1", f"‖grad‖ layer {DEPTH}",
                   "ratio first/last", "test acc % after training (diverged = 0)"], rows)
    bn, none = g.get(("sigmoid", "batch"), []), g.get(("sigmoid", "none"), [])
    if not (bn and none):
        return []
    rb = [m["ratio_init"] for m in bn]
    rn = [m["ratio_init"] for m in none]
    vanish = all(r < VANISH for r in rn)
    tenx = min(rb) >= GAIN * max(rn)
    v = SUPPORTED if vanish and tenx else MIXED if tenx else NOT_SUPPORTED
    return [ClaimResult("N3", v, f"sigmoid, first/last layer gradient ratio: none "
                        f"{mean_ci(rn)[0]:.2e}, BN {mean_ci(rb)[0]:.2e}", [table], [fp])]


EXPERIMENT = Experiment(
    id="vanishing",
    claims=(N3,),
    title=Text("Gradient norm per layer in a deep sigmoid/tanh network",
               "Deep sigmoid/tanh network में हर layer का gradient norm"),
    protocol=Text(
        f"mnist1d (or --data) flattened into an MLP of {DEPTH} hidden layers of width {WIDTH} with "
        "sigmoid or tanh, with BatchNorm1d before every activation or without a norm (PyTorch's "
        f"default Linear initialisation). Gradient norms ‖∂L/∂W_l‖ on a fixed batch of {PROBE} "
        "training samples at initialisation (training mode); then 400 SGD steps (quick: 50), lr "
        "0.05, batch 32, for the test accuracy.",
        f"mnist1d (या --data) को flatten करके {DEPTH} hidden layers (width {WIDTH}) का MLP, sigmoid या "
        "tanh के साथ, हर activation से पहले BatchNorm1d या बिना norm (PyTorch का default Linear "
        f"initialisation)। Initialisation पर {PROBE} training samples के fixed batch पर gradient "
        "norms ‖∂L/∂W_l‖ (training mode); फिर test accuracy के लिए 400 SGD steps (quick: 50), "
        "lr 0.05, batch 32।"),
    compares_intervals=False,
    configs=configs, run=run, analyze=analyze, uses_data=True)
