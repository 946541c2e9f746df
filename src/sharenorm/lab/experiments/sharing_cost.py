"""S1: sharing reduces complexity and memory — CNN vs locally connected vs MLP, counted."""

from __future__ import annotations

import torch
from torch import nn

from sharenorm.lab.claims import SHARE_DOC
from sharenorm.lab.common import data_label, dataset, figure, save_figure
from sharenorm.lab.spec import (
    MIXED,
    NOT_SUPPORTED,
    SUPPORTED,
    Claim,
    ClaimResult,
    Experiment,
    Table,
    Text,
)
from sharenorm.models import MLP, ConvNet, LocallyConnectedNet

MODELS = ["cnn", "locally_connected", "mlp"]


def build(model: str, ds) -> nn.Module:
    """The three networks of S1–S3: same depth, width and activations, different sharing.

    The MLP's hidden widths equal the CNN's flattened feature maps (C·L per layer), so it is
    the same network with neither sharing nor locality.
    """
    cnn = ConvNet(ds.sample_shape, ds.num_classes, norm="none")
    if model == "cnn":
        return cnn
    if model == "locally_connected":
        return LocallyConnectedNet(ds.sample_shape, ds.num_classes, norm="none")
    if model == "mlp":
        widths, x = [], torch.zeros(1, *ds.sample_shape)
        with torch.no_grad():
            for layer in cnn.features:
                x = layer(x)
                if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
                    widths.append(x[0].numel())
        return MLP(ds.sample_shape, ds.num_classes, hidden=widths)
    raise ValueError(f"model must be one of {MODELS}, got {model!r}")


def memory(model: nn.Module, x, loss_fn) -> dict:
    """Unique parameters and the bytes of parameters and optimizer state, measured by taking
    one real step of each optimizer on ``loss_fn(model(x))`` and summing the tensors it keeps."""
    import sharenorm as sn

    rep = sn.parameter_report(model)
    out = {"params": sn.count_parameters(model), "param_bytes": rep.unique_bytes}
    for name, opt in (("sgd_momentum", torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)),
                      ("adam", torch.optim.Adam(model.parameters(), lr=0.0))):
        opt.zero_grad()
        loss_fn(model(x)).backward()
        opt.step()
        out[f"{name}_state_bytes"] = sum(t.numel() * t.element_size() for st in opt.state.values()
                                         for t in st.values() if torch.is_tensor(t) and t.dim())
    out["param_plus_adam_bytes"] = out["param_bytes"] + out["adam_state_bytes"]
    return out


def classifier_memory(model: nn.Module, ds) -> dict:
    x, y = ds.x_train[:8], ds.y_train[:8]
    return memory(model, x, lambda out: nn.functional.cross_entropy(out, y))


FULL_FACTOR, PARTIAL_FACTOR = 5.0, 1.5  # CNN vs locally connected / MLP: fewer by this

S1 = Claim(
    "S1", SHARE_DOC, "Model की Complexity कम होती है। / Memory Efficient होता है।",
    "Sharing reduces model complexity and is memory efficient.",
    Text(f"Supported if the CNN has ≥ {FULL_FACTOR:g}× fewer parameters and parameter+Adam-state "
       "bytes than the same network with locally connected layers (and than the MLP); mixed if "
       f"≥ {PARTIAL_FACTOR:g}×; "
       "not supported otherwise.",
         "Supported अगर CNN के parameters और parameter+Adam-state bytes, locally connected layers "
       f"वाले उसी network (और MLP) से ≥ {FULL_FACTOR:g}× कम हों; ≥ {PARTIAL_FACTOR:g}× हो तो mixed; वरना not "
       "supported।"),
    demonstration=True)


def configs(quick: bool) -> list[dict]:
    return [{"model": m} for m in MODELS]


def run(cfg, seed, ctx):
    ds = dataset(ctx)
    torch.manual_seed(seed)
    # the factor depends on the input size: the report names the data (T3 uses mnist1d always)
    return dict(classifier_memory(build(cfg["model"], ds), ds), data=data_label(ctx, ds)), {}


def analyze(runs, figdir, lang):
    if not runs:
        return []
    m = {r["config"]["model"]: r["metrics"] for r in runs}
    rows = [[k, f"{v['params']:,}", f"{v['param_bytes'] / 1024:.1f}",
             f"{v['adam_state_bytes'] / 1024:.1f}", f"{v['param_plus_adam_bytes'] / 1024:.1f}",
             f"{v['params'] / m['cnn']['params']:.1f}×" if "cnn" in m else "—"]
            for k, v in m.items()]
    table = Table(["model", "parameters", "param KiB", "Adam state KiB", "param+Adam KiB",
                   "× CNN"], rows)
    fig, ax = figure()
    ax.bar(list(m), [v["params"] for v in m.values()], color=["C0", "C1", "C2"][:len(m)])
    ax.set_yscale("log")
    ax.set_ylabel("unique parameters (log scale)")
    ax.set_title("S1: parameters with and without sharing")
    for i, v in enumerate(m.values()):
        ax.text(i, v["params"], f"{v['params']:,}", ha="center", va="bottom")
    fp = save_figure(fig, figdir, "s1_parameters")
    if not {"cnn", "locally_connected", "mlp"} <= set(m):
        return []
    f_lc = m["locally_connected"]["param_plus_adam_bytes"] / m["cnn"]["param_plus_adam_bytes"]
    f_mlp = m["mlp"]["param_plus_adam_bytes"] / m["cnn"]["param_plus_adam_bytes"]
    p_lc = m["locally_connected"]["params"] / m["cnn"]["params"]
    p_mlp = m["mlp"]["params"] / m["cnn"]["params"]
    worst = min(f_lc, f_mlp, p_lc, p_mlp)
    v = SUPPORTED if worst >= FULL_FACTOR else MIXED if worst >= PARTIAL_FACTOR else NOT_SUPPORTED
    # results stored before the data was recorded say nothing rather than guess
    on = f" (on {m['cnn']['data']})" if m["cnn"].get("data") else ""
    cells = {("share", "example", "sharing"): (
        f"CNN {m['cnn']['params']:,} vs locally connected {m['locally_connected']['params']:,} "
        f"params{on}", v),
        ("share", "purpose", "sharing"): (
        f"one filter per layer serves every position: {p_lc:.1f}× fewer parameters than a "
        f"filter per position{on}", v)}
    return [ClaimResult("S1", v, f"locally connected / CNN: {p_lc:.1f}× parameters, {f_lc:.1f}× "
                        f"param+Adam bytes; MLP / CNN: {p_mlp:.1f}×, {f_mlp:.1f}×{on}",
                        [table], [fp],
                        cells=cells, notes=Text(
                            "Sharing divides the weights of a layer by its number of output "
                            "positions; the linear head is not shared in any of the three, which "
                            "is why the factor is below the per-layer factor.",
                            "Sharing किसी layer के weights को उसकी output positions की संख्या से भाग "
                            "देता है; linear head तीनों में shared नहीं है, इसलिए कुल factor per-"
                            "layer factor से कम है।"))]




EXPERIMENT = Experiment(
    id="sharing_cost",
    claims=(S1,),
    title=Text("Parameters and memory with and without sharing",
               "Sharing के साथ और बिना parameters और memory"),
    protocol=Text(
        "For mnist1d's (1, 40) input (or --data): the N1 ConvNet without norm (3 conv layers, "
        "k=5, stride 2, width 32, linear head); the same network with sharenorm.LocallyConnected1d"
        "/2d in place of every convolution (a separate filter at every output position); and an "
        "MLP whose hidden widths equal the CNN's flattened feature maps. Parameters counted with "
        "sharenorm.count_parameters; optimizer bytes measured from the state tensors after one "
        "real SGD-momentum / Adam step. Not seed-dependent: one run.",
        "mnist1d के (1, 40) input के लिए (या --data): N1 वाला ConvNet बिना norm (3 conv layers, k=5, "
        "stride 2, width 32, linear head); वही network जिसमें हर convolution की जगह sharenorm."
        "LocallyConnected1d/2d है (हर output position का अलग filter); और एक MLP जिसकी hidden widths "
        "CNN के flattened feature maps जितनी हैं। Parameters sharenorm.count_parameters से; optimizer "
        "bytes एक असली SGD-momentum / Adam step के बाद state tensors से। Seed पर निर्भर नहीं: एक run।"),
    compares_intervals=False,
    configs=configs, run=run, analyze=analyze, seeded=False, uses_data=True,
    requires=("LocallyConnected1d", "LocallyConnected2d", "count_parameters"),
    min_train=lambda cfg: 1)  # its one step (at lr 0) takes what there is, up to 8
