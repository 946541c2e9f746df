"""Interleaved timing of training steps: the contenders alternate, so load from other
processes falls on all of them alike, and the median of many steps is reported.

A timing claim (N1's and S2's seconds) must not come from run wall-clocks taken while other
runs share the cores: a contender that happens to run on a quieter machine looks faster. Here
every round times one step of every contender, in an order that rotates each round (no
contender is always first after a pause), on one thread (the runner's), and the per-step
medians are compared.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from sharenorm.lab.train import make_optimizer

__all__ = ["interleaved_step_times"]


def interleaved_step_times(steps: dict[str, Callable[[], None]], rounds: int,
                           warmup: int = 5) -> dict[str, float]:
    """Median seconds of one call of each ``steps[name]`` over ``rounds`` interleaved rounds.

    Each ``steps`` value does one complete training step (forward, backward, optimizer) of
    its contender on a fixed batch. ``warmup`` untimed rounds come first (allocator, caches).

    Example:
        >>> t = interleaved_step_times({"a": lambda: None, "b": lambda: sum(range(1000))}, 20)
        >>> sorted(t), t["a"] < t["b"]
        (['a', 'b'], True)
    """
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for r in range(warmup + rounds):
            k = r % len(names)
            for n in names[k:] + names[:k]:  # rotate the order each round
                t0 = time.perf_counter()
                steps[n]()
                dt = time.perf_counter() - t0
                if r >= warmup:
                    times[n].append(dt)
    finally:
        torch.set_num_threads(threads)
    return {n: statistics.median(v) for n, v in times.items()}


def sgd_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
             optimizer: str = "sgd", lr: float = 0.01) -> Callable[[], None]:
    """One training step of ``model`` on the fixed batch ``(x, y)`` as a callable (the
    optimizer the lab trains it with: SGD momentum 0.9 or Adam)."""
    opt = make_optimizer(model.parameters(), optimizer, lr)
    model.train()

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step
