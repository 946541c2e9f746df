"""N5: BN depends on the batch, IN and GN do not — measured exactly, no training needed."""

from __future__ import annotations

import torch

from sharenorm.lab.claims import NORM_DOC
from sharenorm.lab.common import dataset, figure, save_figure
from sharenorm.lab.spec import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    Claim,
    ClaimResult,
    Experiment,
    Table,
    Text,
    group_runs,
)
from sharenorm.lab.stats import mean_ci
from sharenorm.lab.train import seed_everything
from sharenorm.models import ConvNet

NORMS = ["batch", "instance", "group", "layer", "none"]
BATCH = 16
THRESH_DEP, THRESH_INDEP = 1e-3, 1e-6
SCOPE_C, SCOPE_G = 8, 2  # the scope probe: 8 channels, GN with 2 groups of 4
# what the document's row "Normalization किस पर लागू होता है?" expects each norm's statistics
# to span: (other samples change?, other channels of the same sample that change)
SCOPE_DOC = {"batch": (True, 0), "instance": (False, 0), "group": (False, SCOPE_C // SCOPE_G - 1)}


@torch.no_grad()
def scope(norm: str, gen: torch.Generator) -> dict:
    """Which outputs share statistics with one element: perturb sample 0, channel 0 of a
    (4, 8, 16) input of the norm layer alone (training mode) and count what else changes."""
    import sharenorm as sn

    kw = {"num_groups": SCOPE_G} if norm == "group" else {}
    layer = sn.make_norm(norm, SCOPE_C, dim=1, **kw).train()
    x = torch.randn(4, SCOPE_C, 16, generator=gen)
    x2 = x.clone()
    x2[0, 0] = 3 * x2[0, 0] + 1
    d = (layer(x2) - layer(x)).abs().flatten(2).amax(-1)  # (sample, channel)
    return {"scope_other_samples": bool((d[1:] > 1e-6).any()),
            "scope_other_channels": int((d[0, 1:] > 1e-6).sum())}


N5 = Claim(
    "N5", NORM_DOC, "Batch Size पर निर्भरता: BN Yes, IN No, GN No",
    "Dependence on the batch: BN yes, IN no, GN no.",
    Text("In training mode, change of one sample's output when the other samples of its batch are "
       "replaced (max |Δ| relative to max |y|): supported if BN's is > "
       f"{THRESH_DEP:g} and IN's, GN's and "
       f"LN's are ≤ {THRESH_INDEP:g}, in every seed; not supported otherwise. The row \"Normalization किस पर "
       "लागू होता है?\": one element of the norm layer's input is changed; a cell is supported if "
       "what changes with it is what the cell names, in every seed: other samples for Batch; "
       "nothing else for Single Instance; exactly the other channels of its group for Group of "
       "Channels.",
         "Training mode में, batch के बाकी samples बदलने पर एक sample के output का बदलाव (max |Δ| / "
       f"max |y|): supported अगर हर seed में BN का > {THRESH_DEP:g} और IN, GN, LN का ≤ "
       f"{THRESH_INDEP:g} हो; वरना not supported। Row \"Normalization किस पर लागू होता है?\": norm "
       "layer के input का एक element बदला जाता है; cell supported है अगर हर seed में उसके साथ वही "
       "बदले जो cell कहता है: Batch के लिए दूसरे samples; Single Instance के लिए और कुछ नहीं; Group of "
       "Channels के लिए ठीक उसके group के दूसरे channels।"),
    demonstration=True)


def configs(quick: bool) -> list[dict]:
    return [{"norm": n, "batch": BATCH} for n in NORMS]


@torch.no_grad()
def run(cfg, seed, ctx):
    ds = dataset(ctx)
    gen = seed_everything(seed)
    model = ConvNet(ds.sample_shape, ds.num_classes, norm=cfg["norm"],
                    num_groups=8 if cfg["norm"] == "group" else None)
    perm = torch.randperm(len(ds.x_train), generator=gen)
    b = cfg["batch"]
    s0 = ds.x_train[perm[:1]]
    batch_a = torch.cat([s0, ds.x_train[perm[1:b]]])
    batch_b = torch.cat([s0, ds.x_train[perm[b:2 * b - 1]]])
    out = {}
    for mode in ("train", "eval"):
        model.train(mode == "train")
        ya, yb = model(batch_a)[0], model(batch_b)[0]
        out[f"delta_{mode}"] = ((ya - yb).abs().max() / ya.abs().max()).item()
    if cfg["norm"] != "none":
        out.update(scope(cfg["norm"], gen))
    return out, {}


def analyze(runs, figdir, lang):
    if not runs:
        return []
    g = group_runs(runs, "norm")
    rows, means = [], {}
    for (norm,), ms in g.items():
        dt = [m["delta_train"] for m in ms]
        de = [m["delta_eval"] for m in ms]
        means[norm] = mean_ci(dt)[0]
        rows.append([norm, f"{max(dt):.3e}", f"{max(de):.3e}", "yes" if max(dt) > THRESH_DEP
                     else "no" if max(dt) <= THRESH_INDEP else "unclear"])
    table = Table(["norm", "max relative Δ, training mode", "max relative Δ, eval mode",
                   "depends on the batch?"], rows)
    fig, ax = figure()
    names = list(means)
    ax.bar(names, [max(means[n], 1e-12) for n in names])
    ax.set_yscale("log")
    ax.axhline(THRESH_DEP, color="red", ls=":", lw=1, label="dependence threshold 1e-3")
    ax.axhline(THRESH_INDEP, color="green", ls=":", lw=1, label="independence threshold 1e-6")
    ax.set_ylabel("relative change of sample 0's output (0 drawn at 1e-12)")
    ax.set_title("N5: replacing the other samples of the batch (training mode)")
    ax.legend()
    fp = save_figure(fig, figdir, "n5_batch_dependence")
    mx = {n: max(m["delta_train"] for m in ms) for (n,), ms in g.items()}
    mn = {n: min(m["delta_train"] for m in ms) for (n,), ms in g.items()}
    # in every seed: BN's smallest change beyond the dependence threshold, the others'
    # largest within the independence one; a contender without runs leaves it open
    contenders = ("batch", "instance", "group", "layer")
    ok = all(n in mx for n in contenders) and mn["batch"] > THRESH_DEP and all(
        mx[n] <= THRESH_INDEP for n in contenders[1:])
    cells = {}
    for col, norm, dependent in (("batch", "batch", True), ("instance", "instance", False),
                                 ("group", "group", False)):
        if norm in mx:
            good = mx[norm] > THRESH_DEP if dependent else mx[norm] <= THRESH_INDEP
            cells[("norm", "depend", col)] = (f"Δ = {mx[norm]:.1e}",
                                              SUPPORTED if good else NOT_SUPPORTED)
        ms = g.get((norm,), [])
        if ms and all("scope_other_samples" in m for m in ms):
            seen = {(m["scope_other_samples"], m["scope_other_channels"]) for m in ms}
            other, chans = next(iter(seen))
            cells[("norm", "applies", col)] = (
                f"one element changed: other samples {'change' if other else 'unchanged'}, "
                f"{chans} of {SCOPE_C - 1} other channels of its sample change",
                SUPPORTED if seen == {SCOPE_DOC[norm]} else NOT_SUPPORTED)
    return [ClaimResult(
        "N5", (SUPPORTED if ok else NOT_SUPPORTED) if all(n in mx for n in contenders)
        else INCONCLUSIVE,
        "max relative Δ in training mode: " + ", ".join(f"{n} {v:.1e}" for n, v in mx.items()),
        [table], [fp], cells=cells,
        notes=Text("In eval mode BN uses its running statistics, so it no longer depends on the "
                   "batch: the dependence is a training-time property (and the root of N6).",
                   "Eval mode में BN running statistics इस्तेमाल करता है, इसलिए तब batch पर निर्भर "
                   "नहीं रहता: यह निर्भरता training के समय की property है (और N6 की जड़)।"))]


EXPERIMENT = Experiment(
    id="batch_dependence",
    claims=(N5,),
    title=Text("Does one sample's output depend on the rest of its batch?",
               "क्या एक sample का output उसके batch के बाकी samples पर निर्भर है?"),
    protocol=Text(
        f"The N1 ConvNet (random initialisation per seed) on mnist1d (or --data). Two batches of "
        f"{BATCH} share sample 0; the other {BATCH - 1} samples differ. Measured: max |y_A[0] − "
        "y_B[0]| / max |y_A[0]| of the logits, in training mode and in eval mode (fresh running "
        f"statistics). Scope: the norm layer alone on a (4, {SCOPE_C}, 16) input in training "
        f"mode (GN: {SCOPE_G} groups); one sample's channel 0 is rescaled and shifted; which "
        "other samples and which other channels of that sample change.",
        f"N1 वाला ConvNet (हर seed पर random initialisation), mnist1d (या --data) पर। {BATCH} के दो "
        f"batches में sample 0 समान है; बाकी {BATCH - 1} samples अलग। Measured: logits का max |y_A[0] − "
        "y_B[0]| / max |y_A[0]|, training mode और eval mode में (नई running statistics)। Scope: केवल norm layer, "
        f"(4, {SCOPE_C}, 16) input, training mode (GN: {SCOPE_G} groups); एक sample का channel 0 "
        "scale और shift किया; कौन से दूसरे samples और उसी sample के कौन से channels बदलते हैं।"),
    compares_intervals=False,
    configs=configs, run=run, analyze=analyze, uses_data=True, min_positions=2,
    min_train=lambda cfg: 2 * cfg["batch"] - 1)  # two batches that share one sample
