"""N9: small per-process batches on several processes — per-process BN vs SyncBN vs
BatchRenorm vs GN (the field's answers to BN's small-batch problem).

W gloo processes on this machine (started by :func:`sharenorm.distributed.launch`, on
``torch.multiprocessing.start_processes``, joined as torchrun's workers join) train the N6 ConvNet under DistributedDataParallel,
each on its b-sample slice of the same global batch of W·b samples. Only the norm
differs: per-process BatchNorm (statistics of b samples), SyncBatchNorm (statistics of
all W·b), BatchRenorm (per-process, corrected towards the running statistics) and
GroupNorm (per sample, so one process on the whole W·b batch computes what the W processes
would: it is trained so). The reference is one process with plain BN on the whole W·b
batch — the "large batch" SyncBN should recover (it computes the same thing).
"""

from __future__ import annotations

import torch
from torch import nn

from sharenorm.lab.claims import NORM_DOC, Claim
from sharenorm.lab.common import dataset, figure, pct, save_figure
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
from sharenorm.lab.stats import compare, mean_ci
from sharenorm.lab.train import evaluate
from sharenorm.models import ConvNet

VARIANTS = ["bn_large", "bn", "syncbn", "renorm", "gn"]
LABELS = {"bn_large": "BN, 1 process, batch W·b", "bn": "BN per process",
          "syncbn": "SyncBN", "renorm": "BatchRenorm per process",
          "gn": "GN (G=8; per sample: 1 process, batch W·b)"}
BASE_LR, BASE_BS = 0.05, 32  # N6's linear scaling rule, on the global batch W·b
# Trained by one process on the whole global batch: the large-batch reference, and GN, which
# normalizes each sample alone, so W processes under DDP (gradients averaged over the ranks:
# the gradient of the mean loss) compute exactly what one process does with the W·b samples,
# without W processes waiting on each other at every step.
ONE_PROCESS = ("bn_large", "gn")


def configs(quick: bool) -> list[dict]:
    if quick:
        return [{"world": 2, "per_process_batch": 2, "steps": 20}]
    return [{"world": 4, "per_process_batch": 2, "steps": 1000}]


def _model(variant: str, ds_shape, num_classes: int, steps: int) -> nn.Module:
    import sharenorm as sn

    norm = "group" if variant == "gn" else "batch"
    model = ConvNet(ds_shape, num_classes, norm=norm, num_groups=8 if norm == "group" else None)
    if variant == "syncbn":
        sn.convert_sync_batchnorm(model)
    elif variant == "renorm":
        # The paper's schedule (r_max 1→3, d_max 0→5) compressed to this run's length:
        # plain BN for the first 10% of the steps, full clips at 50% (r) and 30% (d).
        sn.convert_norm(model, "renorm", dim=model.dim, r_max=3.0, d_max=5.0,
                        r_warmup=(steps // 10, steps // 2), d_warmup=(steps // 10, 3 * steps // 10))
    return model


def _rank(rank: int, world: int, cfg: dict, seed: int, data: tuple) -> dict | None:
    """Train every variant on this rank; rank 0 evaluates and reports."""
    from sharenorm import distributed as snd

    x, y, xt, yt, num_classes = data
    b, steps = cfg["per_process_batch"], cfg["steps"]
    gb = world * b
    out = {}
    # The one-process variants last: rank 0 trains them alone while the others have left.
    for variant in [v for v in VARIANTS if v not in ONE_PROCESS] + list(ONE_PROCESS):
        alone = variant in ONE_PROCESS
        if alone and rank != 0:
            continue
        torch.manual_seed(seed)  # the same initial weights on every rank
        model = _model(variant, tuple(x.shape[1:]), num_classes, steps)
        net = model if alone else snd.ddp(model)
        opt = torch.optim.SGD(model.parameters(), lr=BASE_LR * gb / BASE_BS, momentum=0.9)
        gen = torch.Generator().manual_seed(seed + 1_000_003)  # the same batches everywhere
        perm, pos = torch.randperm(len(x), generator=gen), 0
        model.train()
        for _ in range(steps):
            if pos + gb > len(x):
                perm, pos = torch.randperm(len(x), generator=gen), 0
            idx = perm[pos:pos + gb]
            pos += gb
            if not alone:
                idx = idx[rank * b:(rank + 1) * b]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if rank == 0:
            acc, _ = evaluate(model, xt, yt)
            out[variant] = {"test_acc": acc, "final_loss": loss.item()}
    return out if rank == 0 else None


def run(cfg, seed, ctx):
    import time

    from sharenorm import distributed as snd

    ds = dataset(ctx)
    data = (ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.num_classes)
    t0 = time.perf_counter()
    results = snd.launch(_rank, cfg["world"], cfg, seed, data, timeout=3600)
    metrics = {v: round(results[0][v]["test_acc"], 6) for v in VARIANTS}
    return metrics, {"train_s": time.perf_counter() - t0}


def analyze(runs, figdir, lang):
    if not runs:
        return []
    cfg = runs[0]["config"]
    w, b = cfg["world"], cfg["per_process_batch"]
    g = group_runs(runs, "world")[(w,)]
    accs = {v: [m[v] for m in g] for v in VARIANTS}
    mean = {v: 100 * mean_ci(a)[0] for v, a in accs.items()}
    table = Table(["norm", f"test acc % (W={w} processes × b={b})"],
                  [[LABELS[v].replace("W·b", str(w * b)), pct(accs[v])] for v in VARIANTS])
    fig, ax = figure()
    xs = list(range(len(VARIANTS)))
    cis = [100 * mean_ci(accs[v])[1] for v in VARIANTS]
    ax.bar(xs, [mean[v] for v in VARIANTS], yerr=cis, capsize=4,
           color=["#777777", "#d62728", "#1f77b4", "#9467bd", "#2ca02c"])
    ax.set_xticks(xs, ["BN large\n(1 proc)", "BN\nper proc", "SyncBN", "BatchRenorm", "GN"])
    ax.set_ylabel("test accuracy %")
    ax.set_title(f"N9: {w} processes × {b} samples each (global batch {w * b})")
    lo = min(mean.values()) - 10
    ax.set_ylim(max(0, lo), 100)
    fp = save_figure(fig, figdir, "n9_distributed_bn")
    c_sync = compare("SyncBN − large-batch BN", accs["syncbn"], accs["bn_large"], -SYNC_MARGIN,
                     scale=100, unit=" points")
    c_gain = compare("SyncBN − per-process BN", accs["syncbn"], accs["bn"], GAIN_MARGIN,
                     scale=100, unit=" points")
    c_gn = compare("GN − large-batch BN", accs["gn"], accs["bn_large"], -GN_MARGIN, scale=100,
                   unit=" points")
    a, c = all3(c_sync.holds, c_gain.holds), c_gn.holds
    verdict = decide(all3(a, c), any3(a, c))
    measured = (f"test acc %: BN large-batch {mean['bn_large']:.1f}, BN per process "
                f"{mean['bn']:.1f}, SyncBN {mean['syncbn']:.1f}, BatchRenorm "
                f"{mean['renorm']:.1f}, GN {mean['gn']:.1f}")
    return [ClaimResult("N9", verdict, measured, [table], [fp],
                        comparisons=[c_sync, c_gain, c_gn], notes=Text(
        "SyncBN computes exactly what one process with the whole global batch computes (its "
        "tests check this to 1e-10), so its accuracy matches the large-batch reference up to "
        "floating-point order; per-process BN normalizes with the statistics of b samples and "
        "evaluates with running statistics collected from such small batches. BatchRenorm "
        "corrects the small-batch statistics towards the running ones after its warm-up; GN "
        "does not look at the batch at all, so it needs no synchronisation.",
        "SyncBN ठीक वही compute करता है जो पूरा global batch लेकर एक process करता (tests 1e-10 तक "
        "जाँचते हैं), इसलिए उसकी accuracy large-batch reference जैसी है; per-process BN b samples की "
        "statistics से normalize करता है और ऐसे छोटे batches से जमा running statistics से evaluate "
        "होता है। BatchRenorm warm-up के बाद छोटे batch की statistics को running statistics की ओर "
        "सुधारता है; GN batch को देखता ही नहीं, इसलिए उसे synchronisation की ज़रूरत नहीं।"))]


# The document's use case for GN, measured against the field's other answers to small
# per-process batches (SyncBN, BatchRenorm).
SYNC_MARGIN = 1.0  # (a) SyncBN within this many points of one process with the whole batch
GAIN_MARGIN = 2.0  # (a) ... and at least this many points above per-process BN
GN_MARGIN = 2.0    # (b) per-process GN within this many points of the large-batch BN

N9 = Claim(
    "N9", NORM_DOC, "Group Normalization: जब Small Batch Size के साथ Training करनी हो।",
    "Group Normalization: for when training has to use small batches.",
    Text(
        "W processes with b = 2 samples each (DDP): supported if (a) SyncBN's test accuracy is "
        f"within {SYNC_MARGIN:g} point of one process with BN on the whole W·b batch and "
        f"≥ {GAIN_MARGIN:g} points above per-process BN, and (b) per-process GN is within "
        f"{GN_MARGIN:g} points of that large-batch BN, each decided by the 95% Welch interval of "
        "the difference over seeds lying wholly beyond its margin; mixed if one of (a), (b) "
        "holds; not supported if neither; inconclusive when an interval straddles its margin.",
        "W processes, हर एक में b = 2 samples (DDP): supported अगर (a) SyncBN की test accuracy पूरे "
        f"W·b batch पर BN वाले एक process से {SYNC_MARGIN:g} point के भीतर हो और per-process BN से "
        f"≥ {GAIN_MARGIN:g} points ज़्यादा हो, और (b) per-process GN उस large-batch BN से {GN_MARGIN:g} "
        "points के भीतर हो, हर शर्त seeds पर difference के 95% Welch interval के पूरा margin के पार "
        "होने से तय; (a), (b) में से एक हो तो mixed; कोई नहीं तो not supported; कोई interval margin "
        "के दोनों ओर हो तो inconclusive।"),
)

EXPERIMENT = Experiment(
    id="distributed_bn",
    claims=(N9,),
    title=Text("Small per-process batches: per-process BN, SyncBN, BatchRenorm, GN",
               "छोटे per-process batches: per-process BN, SyncBN, BatchRenorm, GN"),
    protocol=Text(
        "mnist1d (or --data), the N6 ConvNet; W = 4 gloo processes on this machine (quick: 2), "
        "each with b = 2 samples of the same global batch of W·b, DistributedDataParallel "
        "(sharenorm.distributed.ddp), SGD momentum 0.9, lr = 0.05·(W·b)/32, 1000 steps "
        "(quick: 20); the same initial weights and batches for every norm. BatchRenorm: r_max "
        "1→3 and d_max 0→5 from 10% to 50%/30% of the steps. Reference: one process with BN "
        "on the whole global batch. GN normalizes each sample alone, so W processes under DDP "
        "compute what one process does on the global batch: it is trained so. Test accuracy "
        "in eval mode (rank 0).",
        "mnist1d (या --data), N6 वाला ConvNet; इस machine पर W = 4 gloo processes (quick: 2), हर "
        "एक के पास W·b के उसी global batch के b = 2 samples, DistributedDataParallel "
        "(sharenorm.distributed.ddp), SGD momentum 0.9, lr = 0.05·(W·b)/32, 1000 steps (quick: "
        "20); हर norm के लिए वही initial weights और batches। BatchRenorm: r_max 1→3, d_max 0→5, "
        "steps के 10% से 50%/30% तक। Reference: पूरे global batch पर BN वाला एक process। GN हर "
        "sample को अलग normalize करता है, इसलिए DDP में W processes वही compute करते हैं जो एक "
        "process global batch पर करता है: उसे ऐसे ही train किया जाता है। Test accuracy eval mode "
        "में (rank 0)।"),
    configs=configs, run=run, analyze=analyze, uses_data=True,
    requires=("SyncBatchNorm", "BatchRenorm1d", "convert_sync_batchnorm"),
    min_train=lambda cfg: cfg["world"] * cfg["per_process_batch"])  # one global batch
