"""One training run: seeded, single-threaded, with divergence detection and timed checkpoints.

Every lab experiment trains through :func:`train_classifier` (or uses its pieces), so the
protocol is the same everywhere and stated once: minibatch SGD with momentum 0.9 (or Adam),
cross-entropy, a fixed number of optimizer steps, batches drawn by a seeded permutation per
epoch, evaluation in ``eval()`` mode (BatchNorm then uses its running statistics, as at
inference time — which is exactly where small-batch BN suffers).
"""

from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sharenorm.lab.jobs import current_group

__all__ = ["TrainConfig", "train_classifier", "train_classifiers", "evaluate", "seed_everything",
           "batches", "count_steps", "counting_steps"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG (parameter init) and return a generator for data order."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed + 1_000_003)


def batches(n: int, batch_size: int, gen: torch.Generator):
    """Endless stream of index batches: a fresh permutation per epoch, last short batch dropped.

    Dropping the short batch matters for BN: a batch of 1 has zero variance.
    """
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training samples")
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i:i + batch_size]


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) in eval mode; restores the previous mode."""
    was = model.training
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size])
        loss += nn.functional.cross_entropy(out, y[i:i + batch_size], reduction="sum").item()
        correct += (out.argmax(1) == y[i:i + batch_size]).sum().item()
    model.train(was)
    n = max(len(x), 1)
    return correct / n, loss / n


@dataclass
class TrainConfig:
    """The protocol of one run (printed in the report).

    Args:
        steps: optimizer steps.
        batch_size: samples per step.
        lr: learning rate.
        optimizer: "sgd" (momentum 0.9, no weight decay) or "adam".
        eval_every: evaluate test accuracy every this many steps (0: only at the end).
        target_acc: record the first step/second at which test accuracy reaches this.
        eval_subset: evaluate checkpoints on at most this many test samples (final: all).
        weight_decay: L2 weight decay of the optimizer.
        record_steps: also return every step's training loss (``"step_losses"``) and total
            gradient norm ‖∂L/∂θ‖ (``"grad_norms"``) in the metrics (stacked members too,
            where gradient hooks on the member's parameters would never fire).
        schedule: ``"constant"`` (``lr`` at every step) or ``"cosine"`` (:func:`lr_at`: from
            ``lr`` down to 0 over ``steps``, no warm-up).
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    eval_every: int = 0
    target_acc: float | None = None
    eval_subset: int = 1000
    weight_decay: float = 0.0
    record_steps: bool = False
    schedule: str = "constant"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule must be one of {SCHEDULES}, got "
                             f"{self.schedule!r}")


SCHEDULES = ("constant", "cosine")


def lr_at(cfg: TrainConfig, step: int) -> float:
    r"""The learning rate of optimizer step ``step`` (1 … ``cfg.steps``) under ``cfg.schedule``.

    ``"cosine"`` (Loshchilov & Hutter 2017, without restarts or warm-up):

    .. math:: \eta_t = \eta \cdot \tfrac12\left(1 + \cos\frac{\pi (t-1)}{T}\right)

    so the first step takes the full ``lr`` and the last about :math:`\eta\pi^2/(4T^2)`: the
    end of the budget anneals instead of wandering at the peak rate, which is what lets a
    short budget reach a plateau.

    Example:
        >>> cfg = TrainConfig(steps=4, lr=1.0, schedule="cosine")
        >>> [round(lr_at(cfg, t), 4) for t in range(1, 5)]
        [1.0, 0.8536, 0.5, 0.1464]
    """
    if cfg.schedule == "cosine":
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (step - 1) / cfg.steps))
    return cfg.lr


def make_optimizer(params, kind: str, lr: float, weight_decay: float = 0.0
                   ) -> torch.optim.Optimizer:
    """The lab's optimizers: SGD with momentum 0.9 (``kind="sgd"``) or Adam (``"adam"``).

    torch's fused kernels (``fused=True``): the default formula, computed in one pass over the
    parameters instead of one per operation, which on these small models is most of the
    optimizer's cost.
    """
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay,
                               fused=True)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {kind!r}")


def train_classifier(model: nn.Module, ds, cfg: TrainConfig, seed: int,
                     penalty=None) -> tuple[dict, dict]:
    """Train ``model`` on ``ds`` and return ``(metrics, timing)``.

    ``metrics`` is deterministic for a seed (accuracies, losses, curves in steps,
    divergence); ``timing`` holds wall-clock seconds, which are not.

    A run *diverges* when the training loss becomes non-finite or exceeds 1e4; training stops
    there and the run reports chance-level metrics as measured.

    Inside :func:`sharenorm.lab.jobs.run_together` (the runner's jobs: the seeds of one
    configuration), the call is trained together with the other members' calls, as one
    stacked model where they stack (:func:`train_classifiers`); without ``penalty`` only.

    Raises:
        ValueError: ``cfg.steps`` < 1, or a batch larger than the training set.
    """
    member = current_group()
    if member is not None and penalty is None:
        out = member.train(train_classifiers, model, ds, cfg, seed)
    else:
        out = _train_alone(model, ds, cfg, seed, penalty)
    count_steps(out[0]["steps_done"])
    return out


_COUNTER = threading.local()


def count_steps(n: int) -> None:
    """Add ``n`` optimizer steps to the count of :func:`counting_steps` in this thread (if
    one is open): every training of a lab run, its learning-rate selection tries included."""
    if getattr(_COUNTER, "n", None) is not None:
        _COUNTER.n += n


@contextmanager
def counting_steps():
    """Count the optimizer steps taken in this thread inside the block (:func:`count_steps`);
    yields a callable that returns the count so far.

    Example:
        >>> with counting_steps() as steps:
        ...     count_steps(3); count_steps(4)
        >>> steps()
        7
    """
    outer = getattr(_COUNTER, "n", None)
    _COUNTER.n = 0
    final: list[int] = []  # the count at the block's end, once it has ended
    try:
        yield lambda: final[0] if final else _COUNTER.n
    finally:
        final.append(_COUNTER.n)
        _COUNTER.n = None if outer is None else outer + final[0]  # nested blocks add up


def _train_alone(model: nn.Module, ds, cfg: TrainConfig, seed: int, penalty=None):
    if cfg.steps < 1:
        # no step, no loss to report: an experiment that derives steps from the data size
        # must refuse too small a training set before it gets here
        raise ValueError(f"TrainConfig.steps must be ≥ 1, got {cfg.steps}; give more steps "
                         "(or, where steps follow from epochs, more training samples)")
    gen = seed_everything(seed)
    opt = make_optimizer(model.parameters(), cfg.optimizer, cfg.lr, cfg.weight_decay)
    scheduled = cfg.schedule != "constant"
    x, y = ds.x_train, ds.y_train
    xt, yt = ds.x_test[:cfg.eval_subset], ds.y_test[:cfg.eval_subset]
    model.train()
    curve, diverged, step_hit, sec_hit = [], False, None, None
    losses: list[float] = []
    grad_norms: list[float] = []
    t_train = 0.0
    it = batches(len(x), cfg.batch_size, gen)
    for step in range(1, cfg.steps + 1):
        idx = next(it)
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        if penalty is not None:
            loss = loss + penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.record_steps:
            grad_norms.append(math.sqrt(sum(float(p.grad.double().pow(2).sum())
                                            for p in model.parameters() if p.grad is not None)))
        if scheduled:
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, step)
        opt.step()
        t_train += time.perf_counter() - t0
        lv = loss.item()
        losses.append(lv)
        if not math.isfinite(lv) or lv > 1e4:
            diverged = True
            break
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            acc, _ = evaluate(model, xt, yt)
            curve.append([step, round(acc, 6)])
            if cfg.target_acc is not None and step_hit is None and acc >= cfg.target_acc:
                step_hit, sec_hit = step, t_train
    if diverged:
        tr_acc = te_acc = float("nan")
        tr_loss = te_loss = float("inf")
    else:
        tr_acc, tr_loss = evaluate(model, x, y)
        te_acc, te_loss = evaluate(model, ds.x_test, ds.y_test)
    tail = losses[-max(1, len(losses) // 10):]
    metrics = {
        "train_acc": tr_acc, "test_acc": te_acc, "train_loss": tr_loss, "test_loss": te_loss,
        "gap": tr_acc - te_acc, "diverged": diverged, "steps_done": len(losses),
        "final_train_loss": sum(tail) / len(tail), "curve": curve, "steps_to_target": step_hit,
    }
    if cfg.record_steps:
        metrics.update(step_losses=losses, grad_norms=grad_norms)
    timing = {"train_s": t_train, "s_per_step": t_train / max(len(losses), 1),
              "s_to_target": sec_hit}
    return _clean(metrics), timing


def train_classifiers(models: list[nn.Module], ds, cfgs, seeds: list[int]) -> list[tuple[dict, dict]]:
    """Train K models at once, each exactly as :func:`train_classifier` would train it alone.

    ``models[k]`` is trained on ``ds`` (one dataset for all, or one each: a validation split
    per seed) with ``cfgs[k]`` (one :class:`TrainConfig` for all, or one each) and the data
    order of ``seeds[k]``; the result is ``[(metrics, timing)]`` in that order, and every model
    ends with its own trained parameters and buffers. When the models can be stacked
    (:func:`sharenorm.lab.batched.can_stack`: ConvNet, LocallyConnectedNet, ResNet and MLP
    of one architecture), their samples have one shape and dtype, and the configs agree on
    ``batch_size``, ``optimizer``, ``eval_every`` and ``eval_subset``, the K models train as
    one stacked model
    (:mod:`sharenorm.lab.batched`): learning rate, weight decay, steps and ``target_acc`` may
    differ per member (a learning-rate grid is one call), and so may the data. Otherwise each
    trains alone, in turn. A member that diverges stops there, as alone, and the others go on
    untouched.

    ``timing`` of a stacked member gives the stacked model's wall time divided by K (what the
    member cost) and ``"stacked": K``.

    Example:
        >>> from sharenorm.data import load_digits
        >>> from sharenorm.models import MLP
        >>> ds = load_digits()
        >>> nets = [MLP(ds.sample_shape, ds.num_classes, hidden=16) for _ in range(2)]
        >>> out = train_classifiers(nets, ds, [TrainConfig(steps=5, lr=lr) for lr in (0.01, 0.1)],
        ...                         seeds=[0, 0])
        >>> [m["steps_done"] for m, _ in out], [t["stacked"] for _, t in out]
        ([5, 5], [2, 2])
    """
    from sharenorm.lab.batched import can_stack

    k = len(models)
    cfgs = list(cfgs) if isinstance(cfgs, (list, tuple)) else [cfgs] * k
    dss = list(ds) if isinstance(ds, (list, tuple)) else [ds] * k
    if len(cfgs) != k or len(seeds) != k or len(dss) != k:
        raise ValueError(f"train_classifiers: {k} models need {k} configs, seeds and datasets "
                         f"(or one), got {len(cfgs)}, {len(seeds)} and {len(dss)}")
    shared = {(c.batch_size, c.optimizer, c.eval_every, c.eval_subset) for c in cfgs}
    samples = {(tuple(d.x_train.shape[1:]), d.x_train.dtype) for d in dss}
    if (k == 1 or len(shared) > 1 or len(samples) > 1 or any(c.extra for c in cfgs)
            or not can_stack(models)):
        return [_train_alone(m, d, c, s) for m, d, c, s in zip(models, dss, cfgs, seeds,
                                                                  strict=True)]
    return _train_stacked(models, dss, cfgs, seeds)


ONEDNN_MIN_BATCH = 4  # stacked training uses ATen's convolution at batches up to this


def _train_stacked(models, dss, cfgs, seeds):
    from sharenorm.lab.batched import StackedOptimizer, stack_models, unstack_into

    k, c0 = len(models), cfgs[0]
    for c in cfgs:
        if c.steps < 1:
            raise ValueError(f"TrainConfig.steps must be ≥ 1, got {c.steps}; give more steps "
                             "(or, where steps follow from epochs, more training samples)")
    scheduled = [j for j, c in enumerate(cfgs) if c.schedule != "constant"]
    gens = [torch.Generator().manual_seed(s + 1_000_003) for s in seeds]  # as seed_everything
    stacked = stack_models(models)
    stacked.train()
    opt = StackedOptimizer(list(stacked.parameters()), k, c0.optimizer, [c.lr for c in cfgs],
                           [c.weight_decay for c in cfgs])
    bs, shape = c0.batch_size, tuple(dss[0].x_train.shape[1:])
    its = [batches(len(d.x_train), bs, g) for d, g in zip(dss, gens, strict=True)]
    one = all(d is dss[0] for d in dss)  # one dataset: one gather per step
    x, y = dss[0].x_train, dss[0].y_train
    active = list(range(k))
    losses: list[list[float]] = [[] for _ in range(k)]
    grad_norms: list[list[float]] = [[] for _ in range(k)]
    recording = any(c.record_steps for c in cfgs)
    params = list(stacked.parameters())
    curves: list[list] = [[] for _ in range(k)]
    diverged, hit = [False] * k, [None] * k
    t_train = 0.0
    t_member = [0.0] * k
    last = max(c.steps for c in cfgs)
    # oneDNN's grouped convolution costs more than ATen's own at a few samples per batch
    # (and less at many: docs/design/lab-batching.md). Set through torch._C, what the
    # torch.backends.mkldnn.enabled setter calls: the setter raises once torch's own test
    # helpers froze the backend flags (torch.backends.disable_global_flags()), and the
    # flags() context manager would reset the other oneDNN flags too.
    onednn_before = torch.backends.mkldnn.enabled
    onednn = onednn_before and bs > ONEDNN_MIN_BATCH
    set_onednn = torch._C._set_mkldnn_enabled
    try:
        for step in range(1, last + 1):
            idxs = [next(it) for it in its]
            set_onednn(onednn)
            t0 = time.perf_counter()
            if one:
                idx = torch.cat(idxs)
                xk, yk = x[idx], y[idx]
            else:
                xk = torch.cat([d.x_train[i] for d, i in zip(dss, idxs, strict=True)])
                yk = torch.cat([d.y_train[i] for d, i in zip(dss, idxs, strict=True)])
            xb = xk.view(k, bs, *shape).transpose(0, 1).reshape(bs, k * shape[0], *shape[1:])
            out = stacked(xb).view(bs, k, -1)
            # (N, classes, K) against (N, K): every member's own mean cross-entropy
            per = nn.functional.cross_entropy(out.transpose(1, 2), yk.view(k, bs).T,
                                              reduction="none").mean(0)
            # only the active members' losses: a frozen one's gradient is exactly 0
            loss = per.sum() if len(active) == k else per[active].sum()
            opt.zero_grad()
            loss.backward()
            if recording:
                # member-major stacked tensors: row j of view(K, -1) is member j's gradient
                sq = sum(p.grad.detach().double().view(k, -1).pow(2).sum(1)
                         for p in params if p.grad is not None)
                gn = sq.sqrt().tolist()
            for j in scheduled:
                opt.lrs[j] = lr_at(cfgs[j], step)
            opt.step()
            t_train += time.perf_counter() - t0
            lv = per.tolist()
            stop = []
            for j in active:
                losses[j].append(lv[j])
                if recording:
                    grad_norms[j].append(gn[j])
                t_member[j] = t_train
                if not math.isfinite(lv[j]) or lv[j] > 1e4:
                    diverged[j] = True
                    stop.append(j)
                elif step == cfgs[j].steps:
                    stop.append(j)
            set_onednn(onednn_before)
            every = c0.eval_every
            if every:
                due = [j for j in active if not diverged[j]
                       and (step % every == 0 or step == cfgs[j].steps)]
                if due:
                    # each member alone: at evaluation's large batch K separate models cost
                    # less than the grouped ones, and it is the very evaluation of a solo run
                    unstack_into(stacked, models, due)
                    for j in due:
                        sub = c0.eval_subset
                        acc, _ = evaluate(models[j], dss[j].x_test[:sub], dss[j].y_test[:sub])
                        curves[j].append([step, round(acc, 6)])
                        if cfgs[j].target_acc is not None and hit[j] is None and \
                                acc >= cfgs[j].target_acc:
                            hit[j] = (step, t_train / k)
            if stop:
                unstack_into(stacked, models, stop)  # the member's final state, as trained alone
                for j in stop:
                    opt.freeze(j)
                    active.remove(j)
            if not active:
                break
    finally:
        set_onednn(onednn_before)
    results = []
    for m in models:
        m.train()
    for j in range(k):
        if diverged[j]:
            tr_acc = te_acc = float("nan")
            tr_loss = te_loss = float("inf")
        else:
            tr_acc, tr_loss = evaluate(models[j], dss[j].x_train, dss[j].y_train)
            te_acc, te_loss = evaluate(models[j], dss[j].x_test, dss[j].y_test)
        tail = losses[j][-max(1, len(losses[j]) // 10):]
        metrics = {
            "train_acc": tr_acc, "test_acc": te_acc, "train_loss": tr_loss,
            "test_loss": te_loss, "gap": tr_acc - te_acc, "diverged": diverged[j],
            "steps_done": len(losses[j]), "final_train_loss": sum(tail) / len(tail),
            "curve": curves[j], "steps_to_target": hit[j][0] if hit[j] else None,
        }
        if cfgs[j].record_steps:
            metrics.update(step_losses=losses[j], grad_norms=grad_norms[j])
        train_s = t_member[j] / k
        timing = {"train_s": train_s, "s_per_step": train_s / max(len(losses[j]), 1),
                  "s_to_target": hit[j][1] if hit[j] else None, "stacked": k}
        results.append((_clean(metrics), timing))
    return results


def _clean(d):
    """Round floats to 8 significant digits (short, stable JSON; tiny values such as vanishing
    gradients keep their magnitude) and map NaN/inf to None so every line is valid JSON."""
    if isinstance(d, dict):
        return {k: _clean(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_clean(v) for v in d]
    if isinstance(d, float):
        return float(f"{d:.8g}") if math.isfinite(d) else None
    return d
