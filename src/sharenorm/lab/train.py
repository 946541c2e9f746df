"""One training run: seeded, single-threaded, with divergence detection and timed checkpoints.

Every lab experiment trains through :func:`train_classifier` (or uses its pieces), so the
protocol is the same everywhere and stated once: minibatch SGD with momentum 0.9 (or Adam),
cross-entropy, a fixed number of optimizer steps, batches drawn by a seeded permutation per
epoch, evaluation in ``eval()`` mode (BatchNorm then uses its running statistics, as at
inference time — which is exactly where small-batch BN suffers).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

__all__ = ["TrainConfig", "train_classifier", "evaluate", "seed_everything", "batches"]


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
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    eval_every: int = 0
    target_acc: float | None = None
    eval_subset: int = 1000
    weight_decay: float = 0.0
    extra: dict = field(default_factory=dict)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {cfg.optimizer!r}")


def train_classifier(model: nn.Module, ds, cfg: TrainConfig, seed: int,
                     penalty=None) -> tuple[dict, dict]:
    """Train ``model`` on ``ds`` and return ``(metrics, timing)``.

    ``metrics`` is deterministic for a seed (accuracies, losses, curves in steps,
    divergence); ``timing`` holds wall-clock seconds, which are not.

    A run *diverges* when the training loss becomes non-finite or exceeds 1e4; training stops
    there and the run reports chance-level metrics as measured.

    Raises:
        ValueError: ``cfg.steps`` < 1, or a batch larger than the training set.
    """
    if cfg.steps < 1:
        # no step, no loss to report: an experiment that derives steps from the data size
        # must refuse too small a training set before it gets here
        raise ValueError(f"TrainConfig.steps must be ≥ 1, got {cfg.steps}; give more steps "
                         "(or, where steps follow from epochs, more training samples)")
    gen = seed_everything(seed)
    opt = make_optimizer(model, cfg)
    x, y = ds.x_train, ds.y_train
    xt, yt = ds.x_test[:cfg.eval_subset], ds.y_test[:cfg.eval_subset]
    model.train()
    curve, diverged, step_hit, sec_hit = [], False, None, None
    losses: list[float] = []
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
    timing = {"train_s": t_train, "s_per_step": t_train / max(len(losses), 1),
              "s_to_target": sec_hit}
    return _clean(metrics), timing


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
