"""Where the lab's runs execute: a local process pool, or Ray tasks on a cluster.

An executor maps one top-level function over opaque, picklable work items and yields
``(item, outcome)`` as items finish; ``outcome`` is the return value or a :class:`Failure`
(the function raised, or its worker died). Leaving the ``with`` block early cancels what is
queued or running. :class:`LocalExecutor` (``--executor local``, the default) runs ``jobs``
single-threaded processes that die with the main process; :class:`RayExecutor`
(``--executor ray``) runs one task per item on a Ray cluster. Details:
docs/design/lab-runs.md.
"""

from __future__ import annotations

import os
import signal
import traceback as _tb
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Failure", "LocalExecutor", "RayExecutor", "RemoteTraceback", "make_executor",
           "check_executor", "pin_vector_isa", "EXECUTORS", "VECTOR_ISA_ENV"]

EXECUTORS = ("local", "ray")
RAY_EXTRA = 'pip install "sharenorm[ray]" (or, in a checkout, pip install -e ".[ray]")'


@dataclass(frozen=True)
class Failure:
    """An item whose function raised, or whose worker (process or node) died.

    ``exception`` is the error to re-raise in the caller: the function's own exception where it
    could be carried back (its remote traceback chained as ``__cause__``), else the executor's
    (``BrokenProcessPool``, Ray's ``WorkerCrashedError``/``NodeDiedError``).
    """

    exception: BaseException

    @property
    def message(self) -> str:
        return f"{type(self.exception).__name__}: {self.exception}"


class RemoteTraceback(Exception):
    """The traceback text of an exception raised in another process or on another node."""

    def __str__(self) -> str:
        return "\n" + str(self.args[0]) if self.args else ""


def check_executor(kind: str) -> None:
    """Raise :class:`~sharenorm.lab.store.LabError` (exit 2) for an unknown executor or a
    missing optional dependency — before anything runs."""
    from sharenorm.lab.store import LabError

    if kind not in EXECUTORS:
        raise LabError(f"--executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")
    if kind == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise LabError(f"--executor ray needs Ray, which is not installed: {RAY_EXTRA}") \
                from None


def make_executor(kind: str, *, jobs: int = 1, address: str | None = None):
    """The executor named ``kind`` ("local" or "ray"), not yet started (use it in ``with``)."""
    check_executor(kind)
    if kind == "ray":
        return RayExecutor(address=address)
    if address is not None:
        from sharenorm.lab.store import LabError

        raise LabError("--address is the Ray cluster's address: it needs --executor ray")
    return LocalExecutor(jobs=jobs)


# ----------------------------------------------------------------------------- local

# Inherited by the workers: torch.set_num_threads(1) alone leaves the OpenMP team that starts
# with the process spinning beside the other workers (measurement: docs/design/lab-runs.md).
_ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# One vector instruction set for ATen's and oneDNN's kernels: their AVX-512 kernels round
# differently from their AVX2 ones, so without this the same command gives other numbers on an
# AVX-512 machine (measured: lab v12's full run on an AVX2 and an AVX-512 EPYC differed in every
# trained metric, and N2's verdict flipped; pinned, the AVX-512 one gave the AVX2 one's bits).
# The lab's models are too small for AVX-512 to gain anything (N2 + N6 on the AVX-512 machine:
# 145.1 s native, 146.6 s pinned). MKL is left to its own dispatch: its reproducible mode
# (MKL_CBWR) changes the bits on AMD as well, and its vendor-neutral branch is SSE2.
VECTOR_ISA_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def pin_vector_isa() -> dict[str, str]:
    """Set :data:`VECTOR_ISA_ENV` in this process's environment, where the user has not set
    the variable, on x86-64 machines (the variables mean nothing elsewhere); returns what is
    in force. Call it before the first torch operation: each library reads its variable once,
    at its first kernel, and this process's workers inherit it.

    Example:
        >>> from sharenorm.lab.executors import pin_vector_isa
        >>> sorted(pin_vector_isa())  # doctest: +SKIP
        ['ATEN_CPU_CAPABILITY', 'ONEDNN_MAX_CPU_ISA']
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    for k, v in VECTOR_ISA_ENV.items():
        os.environ.setdefault(k, v)
    return {k: os.environ[k] for k in VECTOR_ISA_ENV}


def _init_worker() -> None:
    import warnings

    from sharenorm.distributed import die_with_parent

    # Also for the processes this worker starts (N9's ranks), and once the spawn wrapper's
    # death signal is gone (a worker started without it, on another platform).
    die_with_parent()

    # Ctrl-C reaches the whole process group: let the main process handle it (it stores what
    # finished and terminates the workers) instead of every worker printing a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)


class LocalExecutor:
    """``jobs`` spawned worker processes on this machine (a ``ProcessPoolExecutor``).

    At most ``2 × jobs`` items are submitted ahead, so an interrupt has little queued work to
    drop. Spawn, not fork: forking a process that already ran torch ops can deadlock in OpenMP.

    Example:
        >>> import operator
        >>> from functools import partial
        >>> from sharenorm.lab.executors import LocalExecutor
        >>> with LocalExecutor(jobs=2) as ex:  # doctest: +SKIP
        ...     sorted(out for _, out in ex.imap_unordered(partial(operator.mul, 10), [1, 2, 3]))
        [10, 20, 30]
    """

    def __init__(self, jobs: int) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be ≥ 1, got {jobs}")
        self.jobs = jobs
        self._pool = None
        self._pending: dict = {}
        self._saved_env: dict = {}
        self._guard = None

    def __enter__(self) -> LocalExecutor:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        from sharenorm.distributed import children_die_with_this_process

        # Kept for the pool's whole life: it may spawn workers late.
        self._saved_env = {k: os.environ.get(k) for k in _ONE_THREAD_ENV}
        os.environ.update(_ONE_THREAD_ENV)
        self._guard = children_die_with_this_process()
        self._guard.__enter__()
        self._pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=mp.get_context("spawn"),
                                         initializer=_init_worker)
        return self

    def imap_unordered(self, fn: Callable[[Any], Any],
                       items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        from concurrent.futures import FIRST_COMPLETED, wait

        queue = iter(items)
        exhausted = False
        while True:
            while not exhausted and len(self._pending) < 2 * self.jobs:
                try:
                    item = next(queue)
                except StopIteration:
                    exhausted = True
                    break
                self._pending[self._pool.submit(fn, item)] = item
            if not self._pending:
                return
            done, _ = wait(self._pending, return_when=FIRST_COMPLETED)
            for fut in done:
                item = self._pending.pop(fut)
                exc = fut.exception()
                if exhausted and not self._pending:
                    # the last result: let the workers exit (torch's teardown, ~0.5 s) while
                    # the caller still works on it, instead of after, in __exit__'s join
                    self._pool.shutdown(wait=False)
                yield item, (Failure(exc) if exc is not None else fut.result())

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and not self._pending:
                self._pool.shutdown()
            else:
                # stop at once: the items in flight are dropped (the caller redoes them)
                for fut in self._pending:
                    fut.cancel()
                for proc in list((getattr(self._pool, "_processes", None) or {}).values()):
                    proc.terminate()
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pending.clear()
        finally:
            self._guard.__exit__(None, None, None)
            for k, v in self._saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


# ----------------------------------------------------------------------------- Ray

# A task whose worker process or node died is run again this many times (a node lost to a
# cluster's autoscaler or a preemption is no bug), then reported as a Failure. An exception
# raised by the function itself is never retried: it is a bug, as locally.
RAY_MAX_RETRIES = 1


def _call(fn: Callable[[Any], Any], item: Any) -> Any:
    """What a Ray task runs: one item, one thread (the runs are small; results then do not
    depend on the node's core count)."""
    import torch

    torch.set_num_threads(1)
    return fn(item)


class RayExecutor:
    """One Ray task per item (``num_cpus=1``) on the cluster at ``address``; with no address,
    ``ray.init()`` connects to ``RAY_ADDRESS`` or a cluster started on this machine with
    ``ray start``, else starts a local one (and stops it on exit).

    At most ``2 ×`` the cluster's CPUs are submitted ahead. Leaving the ``with`` block early
    cancels the tasks still queued or running (``ray.cancel(force=True)``).
    """

    def __init__(self, address: str | None = None) -> None:
        self.address = address
        self._pending: dict = {}
        self._ray = None
        self._window = 2

    def __enter__(self) -> RayExecutor:
        import ray

        import sharenorm

        self._ray = ray
        # ray.init installs its own SIGTERM (and SIGINT) handlers in the main thread; the lab's
        # handlers (a clean stop that records the session) must stay in charge.
        saved = _signal_handlers()
        try:
            ray.init(address=self.address, include_dashboard=False, logging_level="WARNING",
                     runtime_env={"py_modules": [os.path.dirname(sharenorm.__file__)],
                                  "env_vars": dict(_ONE_THREAD_ENV, **{
                                      k: os.environ[k] for k in VECTOR_ISA_ENV
                                      if k in os.environ})})
        except ConnectionError as e:
            from sharenorm.lab.store import LabError

            # Ray ≥ 2.5x: a cluster with token authentication (`ray start` says "Token
            # authentication is enabled") refuses a driver that does not send the token, and
            # ray.init then says only "Failed to connect"
            auth = ("; if the cluster uses token authentication, set RAY_AUTH_MODE=token (the "
                    "token in ~/.ray/auth_token or RAY_AUTH_TOKEN)"
                    if os.environ.get("RAY_AUTH_MODE") != "token" else "")
            raise LabError(f"--executor ray: cannot connect to the Ray cluster at "
                           f"{self.address or 'RAY_ADDRESS or the local one'}: {e}. Start "
                           f"one with `ray start --head` or give its --address HOST:PORT{auth}"
                           ) from None
        finally:
            _restore_signal_handlers(saved)
        self._window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        return self

    def imap_unordered(self, fn: Callable[[Any], Any],
                       items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        ray = self._ray
        task = ray.remote(num_cpus=1, max_retries=RAY_MAX_RETRIES, retry_exceptions=False)(_call)
        fn_ref = ray.put(fn)  # shipped once, not with every task
        queue = iter(items)
        exhausted = False
        while True:
            while not exhausted and len(self._pending) < self._window:
                try:
                    item = next(queue)
                except StopIteration:
                    exhausted = True
                    break
                self._pending[task.remote(fn_ref, item)] = item
            if not self._pending:
                return
            # a bounded wait: Ctrl-C must get through to the main thread between waits
            done, _ = ray.wait(list(self._pending), num_returns=1, timeout=1.0)
            for ref in done:
                item = self._pending.pop(ref)
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayError as e:
                    out = _ray_failure(e)
                yield item, out

    def __exit__(self, exc_type, exc, tb) -> None:
        ray = self._ray
        try:
            for ref in self._pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - a task that just finished cannot be cancelled
                    pass
            self._pending.clear()
        finally:
            ray.shutdown()


def _ray_failure(e: BaseException) -> Failure:
    """The task's own exception (with its remote traceback as cause) where Ray carried it
    back, else Ray's error (a worker or node that died, a cancelled task)."""
    import ray

    if isinstance(e, ray.exceptions.RayTaskError):
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException):
            cause.__cause__ = RemoteTraceback(getattr(e, "traceback_str", "") or str(e))
            return Failure(cause)
    return Failure(e)


def _signal_handlers() -> dict:
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}


def _restore_signal_handlers(saved: dict) -> None:
    for s, h in saved.items():
        try:
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        except (ValueError, TypeError):
            _tb.print_exc()
