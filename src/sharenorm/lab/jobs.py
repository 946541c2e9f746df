"""Run the seeds of one configuration together: their trainings become one stacked model.

:func:`run_together` runs K calls of an experiment's ``run`` as coroutines: each runs alone,
in turn, until it calls ``train_classifier``; the pending trainings then train as one
(:func:`~sharenorm.lab.train.train_classifiers`), and each call resumes with its own result
and the global RNG where a solo run leaves it. One call runs at a time (a baton is passed),
so results do not depend on thread scheduling. The protocol step by step:
docs/design/lab-batching.md.

:func:`together` is the same meeting point for any other work that costs less done once for
all members than once each (N9's SyncBN demonstration: one launch of W processes for all
seeds instead of one per seed).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["run_together", "current_group", "together"]

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

    def meet(self, key: str, many: Callable[[list], list], item: Any,
             resume: Callable[[], None]) -> Any:
        """Hand ``item`` to the group and wait: the members waiting at the same ``key`` get
        ``many(items)`` in member order; ``resume()`` then restores the global RNG as the
        solo call would leave it."""
        g = self.group
        g.pending[self.index] = (key, many, item, resume)
        g.baton.release()
        self.go.acquire()
        if g.aborted:
            raise _Aborted()
        return g.done.pop(self.index)

    def train(self, train_many, model, ds, cfg, seed):
        """Hand the training to the group, wait for its result (called by train_classifier,
        which passes ``train_many``, the function that trains several such calls as one).
        A solo training leaves the global RNG seeded with ``seed`` (``seed_everything``)."""
        import torch

        return self.meet("train_classifier", lambda reqs: _train(train_many, reqs),
                         (model, ds, cfg, seed), lambda: torch.manual_seed(seed))


class _Group:
    def __init__(self, n: int) -> None:
        self.baton = threading.Semaphore(0)
        # member index → (key, many, item, resume), then → its result
        self.pending: dict[int, tuple] = {}
        self.done: dict[int, Any] = {}
        self.aborted = False
        self.members = [_Member(self, i) for i in range(n)]


def together(key: str, many: Callable[[list], list], item: Any) -> Any:
    """``many([item])[0]``; inside :func:`run_together`, ``many`` runs once for the items of all
    members that reach this call with the same ``key``, and each gets its own result.

    ``many`` must give each item the result it gives that item alone, and must not use the
    calling process's global RNG (each member resumes with the RNG state it had here).

    Example:
        >>> def squares(xs):
        ...     print("one call for", xs)
        ...     return [x * x for x in xs]
        >>> run_together([lambda i=i: together("sq", squares, i) for i in range(3)])
        one call for [0, 1, 2]
        [0, 1, 4]
    """
    import torch

    member = current_group()
    if member is None:
        return many([item])[0]
    state = torch.get_rng_state()
    return member.meet(key, many, item, lambda: torch.set_rng_state(state))


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
    resume: dict[int, Callable[[], None]] = {}
    try:
        while alive:
            for i in list(alive):
                if i in resume:
                    resume.pop(i)()  # the global RNG where the solo call leaves it
                group.members[i].go.release()
                group.baton.acquire()
                if errors[i] is not None:
                    raise errors[i]
                if done[i]:
                    alive.remove(i)
            if group.pending:
                # one call per key, in member order (members of one job reach the same
                # calls; a member that took another branch waits at its own key)
                by_key: dict[str, list[int]] = {}
                for i in sorted(group.pending):
                    by_key.setdefault(group.pending[i][0], []).append(i)
                pending = dict(group.pending)
                group.pending.clear()
                for idx in by_key.values():
                    many = pending[idx[0]][1]
                    outs = many([pending[i][2] for i in idx])
                    for i, out in zip(idx, outs, strict=True):
                        group.done[i] = out
                        resume[i] = pending[i][3]
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
