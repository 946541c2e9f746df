"""N9: small per-process batches on several processes — per-process BN vs SyncBN vs
BatchRenorm vs GN (the field's answers to BN's small-batch problem).

W DDP processes, each with a b-sample slice of the same global batch of W·b; only the norm
differs. SyncBN runs on W real gloo processes (:func:`sharenorm.distributed.launch`); the
others are trained in one process as exactly what the W ranks compute
(:func:`train_one_process`; :func:`_ddp_rank` trains any variant on real ranks, and the
tests check the two agree). The reference is one process with BN on the whole W·b batch.
"""

from __future__ import annotations

import torch
from torch import nn

from sharenorm.lab.claims import NORM_DOC, Claim
from sharenorm.lab.common import (
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
from sharenorm.lab.experiments.batch_size import lr_for
from sharenorm.lab.jobs import together
from sharenorm.lab.per_rank import per_rank_norms
from sharenorm.lab.spec import (
    INCONCLUSIVE,
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
from sharenorm.lab.train import (
    TrainConfig,
    batches,
    count_steps,
    evaluate,
    lr_at,
    make_optimizer,
    seed_everything,
    train_classifier,
)
from sharenorm.models import ConvNet

VARIANTS = ["bn_large", "bn", "syncbn", "renorm", "gn"]
LABELS = {"bn_large": "BN, 1 process, batch W·b", "bn": "BN per process (W chunks of b)",
          "syncbn": "SyncBN, W gloo processes", "renorm": "BatchRenorm per process (W chunks of b)",
          "gn": "GN (G=8; per sample)"}
# Trained in one process, the seeds of the configuration as one stacked model: the
# large-batch reference and GN (per sample, so W processes under DDP compute the same) on
# the whole global batch; per-process BN and BatchRenorm as the W chunks of b that W DDP
# ranks compute (sharenorm.lab.per_rank). On a few cores W gloo ranks wait on each other at
# every collective (a SyncBN step at W = 4 costs ~0.1 s on 2 cores), so only SyncBN, whose
# point is the communication, runs on real processes, for SYNC_STEPS.
TRAINED = ("bn_large", "bn", "renorm", "gn")
PER_PROCESS = ("bn", "renorm")
# N6's budget: every norm reaches a plateau at batch 8 in 16 epochs under the cosine
# schedule; at 4 epochs every contender is still rising
EPOCHS, QUICK_EPOCHS = 16, 0.02
# a demonstration (equal parameters, max |Δθ|) needs few steps, and the W gloo ranks spinning
# on 2 cores cost ~20 CPU-s per seed per 100 steps
SYNC_STEPS, QUICK_SYNC_STEPS = 25, 10


def configs(quick: bool) -> list[dict]:
    if quick:
        return [{"world": 2, "per_process_batch": 2, "epochs": QUICK_EPOCHS,
                 "sync_steps": QUICK_SYNC_STEPS, "schedule": SCHEDULE}]
    return [{"world": 4, "per_process_batch": 2, "epochs": EPOCHS, "sync_steps": SYNC_STEPS,
             "schedule": SCHEDULE}]


def variant_steps(cfg: dict, n_train: int) -> int:
    """Optimizer steps of each trained variant: ``epochs`` over the data at batch W·b."""
    return epoch_steps(cfg["epochs"], n_train, cfg["world"] * cfg["per_process_batch"])


def planned_steps(cfg: dict, n_train: int) -> int:
    """Optimizer steps of a run: the trained variants, then SyncBN's demonstration on W
    ranks beside its one-process reference."""
    return len(TRAINED) * variant_steps(cfg, n_train) + cfg["sync_steps"] * (1 + cfg["world"])


def min_train(cfg: dict) -> int:
    """One global batch, and at least one step in ``epochs``."""
    return samples_for_one_step(cfg["epochs"], cfg["world"] * cfg["per_process_batch"])


def _model(variant: str, ds_shape, num_classes: int, steps: int, world: int | None = None
           ) -> nn.Module:
    """``variant``'s ConvNet; with ``world``, per-process BN and BatchRenorm as the W ranks
    compute them in one process (:func:`sharenorm.lab.per_rank.per_rank_norms`)."""
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
    if world is not None and variant in PER_PROCESS:
        per_rank_norms(model, world)
    return model


def _train_config(cfg: dict, steps: int) -> TrainConfig:
    """Every variant's protocol: SGD on the global batch of W·b, lr scaled linearly from
    N6's 0.05 at 32 and decayed by the schedule, :data:`CHECKPOINTS` test checkpoints."""
    gb = cfg["world"] * cfg["per_process_batch"]
    return TrainConfig(steps=steps, batch_size=gb, lr=lr_for(gb),
                       schedule=cfg.get("schedule", "constant"),
                       eval_every=checkpoint_every(steps))


def train_one_process(variant: str, cfg: dict, seed: int, ds, steps: int
                      ) -> tuple[nn.Module, dict]:
    """Train ``variant`` in this process (the same weights and batches for every variant):
    BN on the whole batch and GN as one batch, per-process BN and BatchRenorm as what the W
    DDP ranks compute (:class:`~sharenorm.lab.per_rank.PerRankBatchNorm`). Inside the
    runner's jobs the seeds train as one stacked model. Returns the model and the run's
    metrics (``curve``: test accuracy at the checkpoints, for the plateau check)."""
    torch.manual_seed(seed)
    model = _model(variant, ds.sample_shape, ds.num_classes, steps, world=cfg["world"])
    metrics, _ = train_classifier(model, ds, _train_config(cfg, steps), seed)
    return model, metrics


def _train_rank(variant: str, cfg: dict, seed: int, data: tuple, steps: int,
                rank: int | None) -> nn.Module:
    """Train ``variant`` as DDP rank ``rank`` of W real processes on its b samples of each
    global batch, or (``rank=None``) on the whole batch in this process: the loop of
    :func:`sharenorm.lab.train.train_classifier` (its weights, batches and learning rates),
    written out because each rank takes its own slice of the batch.

    Under DDP the gradients are averaged (the gradient of the mean of the W per-rank losses)
    and before every forward rank 0's buffers are broadcast, so rank 0's model is the one
    evaluated.
    """
    from sharenorm import distributed as snd

    x, y = data[0], data[1]
    if rank is None and variant in PER_PROCESS:
        raise ValueError("per-process norms in one process: use train_one_process")
    b = cfg["per_process_batch"]
    rate = _train_config(cfg, steps)
    gen = seed_everything(seed)
    model = _model(variant, tuple(x.shape[1:]), data[4], steps)
    net = model if rank is None else snd.ddp(model)
    opt = make_optimizer(model.parameters(), "sgd", rate.lr)
    model.train()
    it = batches(len(x), rate.batch_size, gen)
    for step in range(1, steps + 1):
        idx = next(it)
        if rank is not None:
            idx = idx[rank * b:(rank + 1) * b]
        loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = lr_at(rate, step)
        opt.step()
    return model


def _ddp_rank(rank: int, world: int, variant: str, cfg: dict, seed: int | list[int],
              data: tuple, steps: int):
    """:func:`_train_rank` as rank ``rank`` of a :func:`sharenorm.distributed.launch` group
    (``world`` = ``cfg["world"]``); rank 0 returns its trained parameters and buffers. A list
    of seeds trains one model per seed in turn, in the same group, and rank 0 returns their
    states in that order."""
    if isinstance(seed, list):
        return [_ddp_rank(rank, world, variant, cfg, s, data, steps) for s in seed]
    model = _train_rank(variant, cfg, seed, data, steps, rank=rank)
    return {k: v.clone() for k, v in model.state_dict().items()} if rank == 0 else None


def _syncbn_demos(items: list[tuple]) -> list[dict]:
    """SyncBN trained on ``cfg["world"]`` real gloo processes for each ``(cfg, seed, data,
    steps)`` of ``items`` (one config): one launch for all seeds, not one each, since starting
    W processes costs more than their 25 steps. Rank 0's state per seed, as a launch per
    seed gives it (every seed starts from its own ``seed_everything``)."""
    from sharenorm import distributed as snd

    cfg, _, data, steps = items[0]

    def same(d: tuple) -> bool:  # each member's own tuple, of equal tensors
        return len(d) == len(data) and all(
            torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
            for a, b in zip(d, data, strict=True))

    if any(c != cfg or st != steps or not same(d) for c, _, d, st in items):
        raise ValueError("_syncbn_demos: the items of one call share config, data and steps")
    return snd.launch(_ddp_rank, cfg["world"], "syncbn", cfg, [it[1] for it in items], data,
                      steps, timeout=3600)[0]


def run(cfg, seed, ctx):
    import time

    ds = dataset(ctx)
    data = (ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.num_classes)
    steps = variant_steps(cfg, len(ds.x_train))
    t0 = time.perf_counter()
    metrics = {"steps": steps}
    for variant in TRAINED:
        _, m = train_one_process(variant, cfg, seed, ds, steps)
        metrics[variant] = m["test_acc"]
        metrics[f"{variant}_curve"] = m["curve"]
    # SyncBN computes BN's statistics over all W·b samples: shown on real processes against
    # one process with the whole batch, over the same steps, seed and batches
    demo = cfg["sync_steps"]
    ref = _train_rank("bn_large", cfg, seed, data, demo, rank=None)
    # the seeds of a job meet here: one launch of W processes for all of them
    state = together("syncbn_demo", _syncbn_demos, (cfg, seed, data, demo))
    sync = _model("syncbn", tuple(ds.x_train.shape[1:]), ds.num_classes, demo)
    sync.load_state_dict(state)
    metrics["syncbn"] = round(evaluate(sync, ds.x_test, ds.y_test)[0], 6)
    metrics["bn_large_sync_steps"] = round(evaluate(ref, ds.x_test, ds.y_test)[0], 6)
    ref_state = ref.state_dict()
    metrics["sync_max_param_diff"] = float(max(
        (state[k].double() - ref_state[k].double()).abs().max() for k in ref_state
        if ref_state[k].is_floating_point()))
    count_steps(demo * (1 + cfg["world"]))  # train_classifier counts the trained variants'
    return metrics, {"train_s": time.perf_counter() - t0}


def analyze(runs, figdir, lang):
    if not runs:
        return []
    cfg = runs[0]["config"]
    w, b = cfg["world"], cfg["per_process_batch"]
    g = group_runs(runs, "world")[(w,)]
    steps, sync_steps = g[0]["steps"], cfg["sync_steps"]
    # a trained variant that diverged has no accuracy (None): it counts as 0, as everywhere
    # in the lab (common.accuracies); dropped, it would flatter its contender
    accs = {v: [0.0 if m.get(v) is None else m[v] for m in g] for v in VARIANTS}
    # runs without a reference of SyncBN's own length (SyncBN trained as long as the rest)
    # compare with the full-length one
    sync_ref = [m.get("bn_large_sync_steps", m["bn_large"]) for m in g]
    mean = {v: 100 * mean_ci(a)[0] for v, a in accs.items()}
    diffs = [m["sync_max_param_diff"] for m in g if m.get("sync_max_param_diff") is not None]
    runs_of = {v: [{"curve": m.get(f"{v}_curve"), "steps_done": steps} for m in g]
               for v in TRAINED}  # each variant's runs, as the plateau check reads them
    rows = [[LABELS[v].replace("W·b", str(w * b)), str(steps), pct(accs[v]),
             tail_gain_cell(runs_of[v])] for v in TRAINED]
    rows += [[LABELS["syncbn"].replace("W", str(w)), str(sync_steps), pct(accs["syncbn"]), "—"],
             [LABELS["bn_large"].replace("W·b", str(w * b)), str(sync_steps), pct(sync_ref),
              "—"]]
    if diffs:
        rows.append([f"max |θ_SyncBN − θ_1 process| after {sync_steps} steps", str(sync_steps),
                     f"{max(diffs):.1e}", "—"])
    table = Table(["norm", "steps", f"test acc % (W={w} × b={b})", GAIN_HEADER], rows)
    fig, ax = figure()
    shown = list(TRAINED)
    xs = list(range(len(shown)))
    cis = [100 * mean_ci(accs[v])[1] for v in shown]
    ax.bar(xs, [mean[v] for v in shown], yerr=cis, capsize=4,
           color=["#777777", "#d62728", "#9467bd", "#2ca02c"])
    ax.set_xticks(xs, ["BN, batch W·b\n(= SyncBN)", "BN\nper process", "BatchRenorm\nper process",
                       "GN"])
    ax.set_ylabel("test accuracy %")
    ax.set_title(f"N9: {w} processes × {b} samples each (global batch {w * b}), {steps} steps")
    lo = min(mean[v] for v in shown) - 10
    ax.set_ylim(max(0, lo), 100)
    fp = save_figure(fig, figdir, "n9_distributed_bn")
    # seed by seed: the two runs share weights, batches and steps, so their difference is
    # what SyncBN adds (the seeds' own spread would swamp an unpaired interval)
    # "within 1 point": on both sides (SyncBN 3 points above its reference computes
    # something else too)
    paired = [s - r for s, r in zip(accs["syncbn"], sync_ref, strict=True)]
    label = (f"SyncBN on {w} processes − 1 process with the whole batch, same seed "
             f"({sync_steps} steps)")
    c_sync, c_sync_above = (
        compare(label, paired, [0.0] * len(paired), -SYNC_MARGIN, scale=100, unit=" points"),
        compare(label, paired, [0.0] * len(paired), SYNC_MARGIN, scale=100, unit=" points",
                at_most=True))

    def unconverged(*variants):  # a comparison resting on these runs is inconclusive
        return converged(*(runs_of[v] for v in variants)) is False

    # the trained runs (the 25-step SyncBN check is a same-seed equality, not a training)
    c_gain = compare("whole-batch BN (SyncBN's statistics) − per-process BN", accs["bn_large"],
                     accs["bn"], GAIN_MARGIN, scale=100, unit=" points"
                     ).resting_on_unconverged(unconverged("bn_large", "bn"))
    c_gn = compare("GN − large-batch BN", accs["gn"], accs["bn_large"], -GN_MARGIN, scale=100,
                   unit=" points").resting_on_unconverged(unconverged("gn", "bn_large"))
    a, c = all3(c_sync.holds, c_sync_above.holds, c_gain.holds), c_gn.holds
    verdict = decide(all3(a, c), any3(a, c))
    conv = not (c_gain.unconverged or c_gn.unconverged)
    if not conv:
        verdict = INCONCLUSIVE
    measured = (f"test acc % after {steps} steps: BN large-batch {mean['bn_large']:.1f}, BN "
                f"per process {mean['bn']:.1f}, BatchRenorm {mean['renorm']:.1f}, GN "
                f"{mean['gn']:.1f}; after {sync_steps} steps: SyncBN on {w} processes "
                f"{mean['syncbn']:.1f} vs 1 process {100 * mean_ci(sync_ref)[0]:.1f}"
                + ("; a contender had not converged (plateau), so the comparison is "
                   "inconclusive" if not conv else ""))
    return [ClaimResult("N9", verdict, measured, [table], [fp],
                        comparisons=[c_sync, c_sync_above, c_gain, c_gn], notes=Text(
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
GN_MARGIN = 2.0    # (b) per-process GN at most this many points below the large-batch BN

_UNCONVERGED = unconverged_text("test accuracy")
N9 = Claim(
    "N9", NORM_DOC, "Group Normalization: जब Small Batch Size के साथ Training करनी हो।",
    "Group Normalization: for when training has to use small batches.",
    Text(
        "W processes with b = 2 samples each (DDP): supported if (a) SyncBN on W real processes "
        f"ends within {SYNC_MARGIN:g} point of one process with BN on the whole W·b batch (the "
        "same seed, batches and steps, compared seed by seed: a demonstration that it computes "
        f"the whole batch's statistics) and those whole-batch statistics beat per-process BN by ≥ {GAIN_MARGIN:g} "
        f"points, and (b) per-process GN is at most {GN_MARGIN:g} points below the whole-batch "
        "BN, "
        "each decided by the 95% Welch interval of the difference over seeds lying wholly beyond "
        "its margin; mixed if one of (a), (b) holds; not supported if neither; inconclusive when "
        "an interval straddles its margin, or when a trained contender it rests on (BN whole-"
        f"batch, BN per process, GN) has not converged ({_UNCONVERGED[0]}; {CHECKPOINTS} "
        "checkpoints per run).",
        "W processes, हर एक में b = 2 samples (DDP): supported अगर (a) W असली processes पर SyncBN "
        f"पूरे W·b batch पर BN वाले एक process से {SYNC_MARGIN:g} point के भीतर रहे (वही seed, batches "
        "और steps, seed-दर-seed तुलना: यह दिखाने के लिए कि वह पूरे batch की statistics compute करता है) और पूरे batch की "
        f"statistics per-process BN से ≥ {GAIN_MARGIN:g} points आगे हों, और (b) per-process GN पूरे-batch "
        f"BN से अधिक से अधिक {GN_MARGIN:g} points नीचे हो, हर शर्त seeds पर difference के 95% Welch interval के "
        "पूरा margin के पार होने से तय; (a), (b) में से एक हो तो mixed; कोई नहीं तो not supported; "
        "कोई interval margin के दोनों ओर हो, या जिस trained contender पर यह टिका है (पूरे-batch BN, "
        f"per-process BN, GN) वह converge न हुआ हो ({_UNCONVERGED[1]}; हर run के {CHECKPOINTS} "
        "checkpoints), तो inconclusive।"),
)

EXPERIMENT = Experiment(
    id="distributed_bn",
    claims=(N9,),
    title=Text("Small per-process batches: per-process BN, SyncBN, BatchRenorm, GN",
               "छोटे per-process batches: per-process BN, SyncBN, BatchRenorm, GN"),
    protocol=Text(
        "mnist1d (or --data), the N6 ConvNet; W = 4 processes (quick: 2), each with b = 2 "
        "samples of the same global batch of W·b, under DistributedDataParallel "
        f"(sharenorm.distributed.ddp); SGD momentum 0.9, lr = 0.05·(W·b)/32 at the first step, "
        f"decayed to 0 by a {SCHEDULE} schedule, {EPOCHS:g} epochs (N6's budget; quick: "
        f"{QUICK_EPOCHS:g}); the same initial weights and batches for every norm. "
        "BatchRenorm: r_max 1→3 and d_max 0→5 from 10% to 50%/30% of the steps. Reference: one "
        "process with BN on the whole global batch. Per-process BN and BatchRenorm are trained "
        "as what the W ranks compute — each chunk of b normalized alone from rank 0's "
        "step-start buffers (DDP broadcasts them), the gradients averaged, rank 0's statistics "
        "kept — in one process, in one pass over the W chunks (sharenorm.lab.per_rank), the "
        "seeds stacked as one model: on 2 cores W gloo ranks cost more in waiting on each "
        "other than in training (the tests check that one process ends where rank 0 of W "
        "gloo processes ends). GN "
        "normalizes each sample alone, so it is trained on the global batch. SyncBN, whose "
        f"point is the communication, runs on W real gloo processes for {SYNC_STEPS} steps "
        f"(quick: {QUICK_SYNC_STEPS}) beside one process with the whole batch for as many. Test "
        f"accuracy in eval mode (rank 0's model), also at {CHECKPOINTS} checkpoints (1000 test "
        "samples) of each trained variant for the plateau check.",
        "mnist1d (या --data), N6 वाला ConvNet; W = 4 processes (quick: 2), हर एक के पास W·b के उसी "
        "global batch के b = 2 samples, DistributedDataParallel (sharenorm.distributed.ddp) में; SGD "
        f"momentum 0.9, lr = 0.05·(W·b)/32 पहले step पर, {SCHEDULE} schedule से 0 तक घटती, "
        f"{EPOCHS:g} epochs (N6 वाला budget; quick: {QUICK_EPOCHS:g}); हर norm के लिए वही "
        "initial weights और batches। BatchRenorm: r_max 1→3, d_max 0→5, steps के 10% से 50%/30% तक। "
        "Reference: पूरे global batch पर BN वाला एक process। Per-process BN और BatchRenorm को वैसे "
        "train किया जाता है जैसे W ranks compute करते हैं — b का हर chunk rank 0 के step की शुरुआत "
        "वाले buffers से अलग normalize (DDP उन्हें broadcast करता है), gradients का औसत, rank 0 की "
        "statistics रखी जाती हैं — एक process में, W chunks पर एक ही pass में (sharenorm.lab.per_rank), "
        "seeds एक stacked model की तरह: 2 cores पर W gloo ranks training से ज़्यादा एक-दूसरे के इंतज़ार "
        "में खर्च होते हैं (tests जाँचते हैं कि एक process वहीं पहुँचता है जहाँ W gloo processes का rank 0)। "
        "GN हर sample "
        "को अलग normalize करता है, इसलिए global batch पर train होता है। SyncBN, जिसका मुद्दा "
        f"communication है, {SYNC_STEPS} steps (quick: {QUICK_SYNC_STEPS}) के लिए W असली gloo processes "
        "पर चलता है, उतने ही steps पूरे batch वाले एक process के साथ। Test accuracy eval mode में (rank "
        f"0 का model), plateau check के लिए हर trained variant के {CHECKPOINTS} checkpoints पर भी "
        "(1000 test samples)।"),
    configs=configs, run=run, analyze=analyze, uses_data=True,
    requires=("SyncBatchNorm", "BatchRenorm1d", "convert_sync_batchnorm"),
    min_train=min_train)
