"""Run the seeds of one configuration together: their trainings become one stacked model.

:func:`run_together` runs K calls of an experiment's ``run`` as coroutines: each runs alone,
in turn, until it calls ``train_classifier``; the pending trainings then train as one
(:func:`~sharenorm.lab.train.train_classifiers`), and each call resumes with its own result
and the global RNG where a solo run leaves it. One call runs at a time (a baton is passed),
so results do not depend on thread scheduling. The protocol step by step:
docs/design/lab-batching.md.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["run_together", "current_group"]

_LOCAL = threading.local()


def current_group():
    """The group the calling thread is a member of (set by :func:`run_together`), or None."""
    return getattr(_LOCAL, "member", None)


class _Aborted(BaseException):
    """Raised in a member thread when the group stops early (another member failed)."""


class _Member:
    def __init__(self, group: _Group, index: int) -> None:
        self.group, self.index = group, index
        self.go = threading.Semaphore(0)

    def train(self, train_many, model, ds, cfg, seed):
        """Hand the training to the group, wait for its result (called by train_classifier,
        which passes ``train_many``, the function that trains several such calls as one)."""
        g = self.group
        g.train_many = train_many
        g.pending[self.index] = (model, ds, cfg, seed)
        g.baton.release()
        self.go.acquire()
        if g.aborted:
            raise _Aborted()
        return g.trained.pop(self.index)


class _Group:
    def __init__(self, n: int) -> None:
        self.baton = threading.Semaphore(0)
        self.pending: dict[int, tuple] = {}
        self.trained: dict[int, tuple] = {}
        self.train_many: Callable | None = None
        self.aborted = False
        self.members = [_Member(self, i) for i in range(n)]


def run_together(calls: list[Callable[[], Any]]) -> list[Any]:
    """``[c() for c in calls]``, with the ``train_classifier`` calls they make trained together.

    Raises whatever a call raises (the other calls are stopped).

    Example:
        >>> from sharenorm.lab.train import TrainConfig, train_classifier
        >>> from sharenorm.data import load_digits
        >>> from sharenorm.models import MLP
        >>> import torch
        >>> ds = load_digits()
        >>> def run(seed):
        ...     torch.manual_seed(seed)
        ...     net = MLP(ds.sample_shape, ds.num_classes, hidden=16)
        ...     metrics, timing = train_classifier(net, ds, TrainConfig(steps=5), seed)
        ...     return metrics["steps_done"], timing.get("stacked")
        >>> run_together([lambda s=s: run(s) for s in range(3)])
        [(5, 3), (5, 3), (5, 3)]
    """
    import torch

    n = len(calls)
    group = _Group(n)
    results: list[Any] = [None] * n
    errors: list[BaseException | None] = [None] * n
    done = [False] * n

    def body(i: int) -> None:
        m = group.members[i]
        _LOCAL.member = m
        m.go.acquire()
        try:
            if not group.aborted:
                results[i] = calls[i]()
        except _Aborted:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            errors[i] = e
        finally:
            done[i] = True
            _LOCAL.member = None
            group.baton.release()

    threads = [threading.Thread(target=body, args=(i,), daemon=True, name=f"lab-member-{i}")
               for i in range(n)]
    for t in threads:
        t.start()
    alive = list(range(n))
    resume_seed: dict[int, int] = {}
    try:
        while alive:
            for i in list(alive):
                if i in resume_seed:
                    # where a solo train_classifier leaves the global RNG (seed_everything)
                    torch.manual_seed(resume_seed.pop(i))
                group.members[i].go.release()
                group.baton.acquire()
                if errors[i] is not None:
                    raise errors[i]
                if done[i]:
                    alive.remove(i)
            if group.pending:
                order = sorted(group.pending)
                reqs = [group.pending[i] for i in order]
                group.pending.clear()
                for i, res in zip(order, _train(group.train_many, reqs), strict=True):
                    group.trained[i] = res
                    resume_seed[i] = reqs[order.index(i)][3]
    finally:
        if any(not d for d in done):
            group.aborted = True
            for i in range(n):
                if not done[i]:
                    group.members[i].go.release()
        for t in threads:
            t.join()
    return results


def _train(train_many, reqs: list[tuple]) -> list[tuple]:
    """Train requests ``(model, ds, cfg, seed)`` as one call: each member keeps its own
    dataset (a validation split per seed), and equal datasets are passed as one object so
    that the stacked step gathers its batch once."""
    datasets: list = []
    for _, ds, _, _ in reqs:
        datasets.append(next((d for d in datasets if _same_data(d, ds)), ds))
    return train_many([r[0] for r in reqs], datasets, [r[2] for r in reqs], [r[3] for r in reqs])


def _same_data(a, b) -> bool:
    import torch

    if a is b:
        return True
    names = ("x_train", "y_train", "x_test", "y_test")
    return all(getattr(a, k).shape == getattr(b, k).shape and torch.equal(getattr(a, k),
                                                                           getattr(b, k))
               for k in names)
