"""Small helpers for ``torch.distributed`` on one machine: launch a function on several
gloo processes with timeouts that turn a failure into a clear error instead of a hang,
ask whether a process group is active, and wrap a model in DDP with the flags sharenorm's
tied and shared models need.

:func:`launch` is what the tests and the lab use to run SyncBatchNorm and DDP across
processes on a laptop: every process joins one gloo group on ``127.0.0.1`` (a free
port), runs ``fn(rank, world_size, *args)``, and sends back what ``fn`` returns. If one
rank raises, the others (blocked in a collective) are stopped at once and the error
names the rank and carries its traceback; if the whole run takes longer than
``timeout`` seconds, every process is stopped and a :class:`TimeoutError` says which
ranks did not finish.

Example:
    >>> import sharenorm.distributed as snd
    >>> snd.world_size(), snd.is_distributed()   # no process group in this process
    (1, False)
"""

from __future__ import annotations

import contextlib
import datetime
import io
import multiprocessing as mp
import os
import queue as queue_mod
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistributedError",
    "launch",
    "free_port",
    "is_initialized",
    "world_size",
    "is_distributed",
    "require_initialized",
    "ddp",
    "die_with_parent",
    "children_die_with_this_process",
]


class DistributedError(RuntimeError):
    """A rank of a :func:`launch` run raised, or exited without a result."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_initialized() -> bool:
    """Whether this process has a default ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


def world_size(group: Any = None) -> int:
    """The number of processes in ``group`` (the default group for None); 1 when no
    process group is initialised."""
    if not is_initialized():
        return 1
    return dist.get_world_size(group)


def is_distributed(group: Any = None) -> bool:
    """True when a process group is initialised and has more than one process."""
    return world_size(group) > 1


def require_initialized(what: str) -> None:
    """Raise a clear error when ``what`` needs a process group and none exists."""
    if not is_initialized():
        raise RuntimeError(
            f"{what} needs an initialised torch.distributed process group, and this process "
            "has none. Call torch.distributed.init_process_group('gloo' or 'nccl', ...) first "
            "(torchrun sets the environment for init_method='env://'), or run the function on "
            "several local processes with sharenorm.distributed.launch(fn, world_size)."
        )


def ddp(model: nn.Module, **kwargs: Any) -> nn.Module:
    """Wrap ``model`` in :class:`~torch.nn.parallel.DistributedDataParallel` with the
    defaults sharenorm's tied and shared models need.

    DDP reduces the gradient of each *unique* parameter once per backward, so a tied
    parameter (one ``nn.Parameter`` reached through several names, or one block's
    weights reused ``depth`` times in a :class:`~sharenorm.SharedStack`) is safe with
    plain DDP: autograd sums its uses' gradients before DDP's hook fires. What is set
    here, and why:

    - ``static_graph=True`` unless given. A parameter reused several times in one
      forward is fine with plain DDP, but with (reentrant) activation checkpointing of a
      shared block the shared weights' gradient hooks fire once per recomputed
      repetition, and plain DDP then reduces a *partial* gradient without any error —
      the parameters silently drift from single-process training
      (``tests/sharing/test_ddp.py`` shows it on torch 2.13). With a static graph DDP
      waits for all of a parameter's gradient. It assumes every forward uses the same
      parameters, as sharenorm's models do.
    - ``broadcast_buffers=True`` (DDP's default) keeps BN running statistics equal on
      every rank; with :class:`~sharenorm.SyncBatchNorm` they are equal anyway.

    Ties must be made *before* wrapping (DDP registers the parameters it sees at
    construction) and on every rank the same way.

    Args:
        model: the module, on this rank's device.
        **kwargs: passed to DistributedDataParallel (override the defaults above).

    Raises:
        RuntimeError: when no process group is initialised.
    """
    require_initialized("sharenorm.distributed.ddp")
    kwargs.setdefault("static_graph", True)
    return nn.parallel.DistributedDataParallel(model, **kwargs)


# ----------------------------------------------------------------------------- launch


def die_with_parent(parent_pid: int | None = None) -> None:
    """Make this (child) process end when its parent process dies, however the parent dies.

    A parent killed by SIGKILL or SIGTERM runs no clean-up, so without this its children
    (the lab's pool workers, :func:`launch`'s ranks) would run on, orphaned, forever.

    * On Linux, when the parent to watch is the OS parent, the kernel sends this process
      SIGTERM when it dies (``prctl(PR_SET_PDEATHSIG)``). The kernel ties this to the parent
      *thread* that started the child: start children from a thread that lives as long as
      they should (the main thread, or the pool's own threads, as here).
    * Otherwise, for a multiprocessing child, a daemon thread waits on the parent's sentinel
      (``multiprocessing.parent_process().join()``, on every platform; also right under a
      ``forkserver``, whose children's OS parent is the fork server), then exits;
    * else a daemon thread checks every second whether ``os.getppid()`` changed (POSIX
      re-parents orphans; Windows does not, so there this last case cannot tell).

    Args:
        parent_pid: the pid of the parent to watch; default: the multiprocessing parent, else
            ``os.getppid()``. If it is already gone, this process exits at once.
    """
    import signal
    import sys
    import threading

    parent = mp.parent_process()
    if parent_pid is None:
        parent_pid = parent.pid if parent is not None and parent.pid else os.getppid()
    if sys.platform.startswith("linux") and os.getppid() == parent_pid:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, int(signal.SIGTERM), 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
                if os.getppid() != parent_pid:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    if parent is not None and parent.pid == parent_pid:
        def watch() -> None:
            parent.join()  # returns when the parent's sentinel closes: it has died
            os._exit(1)
    else:
        def watch() -> None:
            while True:
                time.sleep(1.0)
                if os.getppid() != parent_pid:
                    os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


_SPAWN_WRAPPER = """#!/bin/sh
# Written by sharenorm for process {pid}: the Python processes it spawns get SIGTERM when it dies
# (PR_SET_PDEATHSIG survives exec), from their first instruction on, before any import.
exec {python} -S -c 'import ctypes, os, sys
if ctypes.CDLL(None).prctl(1, 15, 0, 0, 0) == 0 and os.getppid() != {pid}:
    os._exit(1)  # the parent died before the death signal was set
os.execv(sys.executable, [sys.executable] + sys.argv[1:])' "$@"
"""

_guard_lock = threading.Lock()
_guard_depth = 0
_guard_saved: Any = None
_guard_dir: str | None = None


@contextlib.contextmanager
def children_die_with_this_process() -> Iterator[None]:
    """Within this block, the Python processes that ``multiprocessing``'s *spawn* start
    method starts (a process pool's workers, :func:`launch`'s ranks) die when this process
    dies, however it dies, from their very start.

    :func:`die_with_parent` protects a child once its own code runs; a spawned child first
    re-imports the parent's main module and unpickles its target, which imports torch: seconds
    in which a parent killed by SIGKILL would leave it running. On Linux the spawn executable
    is, for the block, a small ``/bin/sh`` wrapper that sets ``PR_SET_PDEATHSIG`` (SIGTERM) and
    then execs the same Python (a death signal survives ``exec``). Elsewhere this does nothing.
    The spawn executable is process-wide: blocks may nest; the outermost one puts it back.

    Example:
        >>> import sharenorm.distributed as snd
        >>> with snd.children_die_with_this_process():
        ...     pass  # start spawn processes here
    """
    global _guard_depth, _guard_saved, _guard_dir
    import sys

    if not sys.platform.startswith("linux") or getattr(sys, "frozen", False):
        yield
        return
    import multiprocessing.spawn as mp_spawn
    import shlex
    import shutil
    import tempfile

    with _guard_lock:
        if _guard_depth == 0:
            _guard_dir = tempfile.mkdtemp(prefix="sharenorm-spawn-")
            path = os.path.join(_guard_dir, "python")
            with open(path, "w") as f:
                f.write(_SPAWN_WRAPPER.format(pid=os.getpid(),
                                              python=shlex.quote(sys.executable)))
            os.chmod(path, 0o700)
            _guard_saved = mp_spawn.get_executable()
            mp_spawn.set_executable(path)
        _guard_depth += 1
    try:
        yield
    finally:
        with _guard_lock:
            _guard_depth -= 1
            if _guard_depth == 0:
                mp_spawn.set_executable(_guard_saved)
                shutil.rmtree(_guard_dir, ignore_errors=True)
                _guard_dir = None


def _to_bytes(obj: Any) -> bytes:
    # torch.save pickles tensors by value: nothing shared between processes that could
    # vanish when the sender exits.
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _from_bytes(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=False)


def _entry(
    rank: int,
    world: int,
    port: int,
    backend: str,
    timeout: float,
    fn: Callable[..., Any],
    args: tuple,
    results: Any,
) -> None:
    """One process of :func:`launch`: join the group, run ``fn``, report, leave."""

    def report(message: tuple) -> None:
        # Flush the report *before* leaving the group: the other ranks fail as soon as
        # this one disconnects, and the root cause must reach the parent first.
        results.put(message)
        results.close()
        results.join_thread()

    try:
        # A rank must not outlive the process that launched it (killed by a signal, that
        # process runs no clean-up): it would block in a collective, orphaned, forever.
        die_with_parent()
        # One thread per process: the processes share the machine's cores.
        torch.set_num_threads(1)
        dist.init_process_group(
            backend,
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout),
        )
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the parent
        report((rank, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        return
    try:
        report((rank, "ok", _to_bytes(fn(rank, world, *args))))
    except BaseException as exc:  # noqa: BLE001
        report((rank, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        dist.destroy_process_group()


def launch(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    backend: str = "gloo",
    timeout: float = 60.0,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` fresh local processes that
    share one gloo process group, and return what each rank returned, by rank.

    ``fn`` must be importable by name (a module-level function), as
    ``multiprocessing``'s spawn start method requires; its return value is sent back
    with ``torch.save`` (tensors, numbers, dicts, lists). Each process runs with one
    thread.

    Args:
        fn: the per-rank function.
        world_size: number of processes (≥ 1).
        *args: extra arguments for ``fn`` (picklable).
        backend: the process-group backend; "gloo" for CPU tensors.
        timeout: seconds for the whole run; also the process group's collective
            timeout, so a rank stuck in a collective errors out instead of hanging.

    Raises:
        DistributedError: a rank raised (its exception and traceback are in the
            message) or died without a result; the other ranks are stopped.
        TimeoutError: not every rank finished within ``timeout`` seconds.

    Example:
        >>> import sharenorm.distributed as snd
        >>> snd.launch(snd._example_rank, 2)  # doctest: +SKIP
        [0, 1]
    """
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_entry,
            args=(rank, world_size, port, backend, timeout, fn, args, results),
            daemon=True,
        )
        for rank in range(world_size)
    ]
    # The child processes inherit the environment; the spawn method re-imports the
    # parent's __main__ and sys.path, so ``fn`` from a test module is found.
    # OMP_NUM_THREADS=1 for them only: the caller's own environment is put back.
    omp = os.environ.get("OMP_NUM_THREADS")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        for p in procs:
            p.start()
    finally:
        if omp is None:
            del os.environ["OMP_NUM_THREADS"]
    out: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(out) < world_size:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(world_size)) - set(out))
                raise TimeoutError(
                    f"launch: rank(s) {missing} of {world_size} did not finish within "
                    f"{timeout} s (a rank waiting in a collective that another rank never "
                    "joined, or a slow function); every process was stopped"
                )
            try:
                rank, status, payload = results.get(timeout=min(left, 0.5))
            except queue_mod.Empty:
                dead = [
                    r for r, p in enumerate(procs)
                    if r not in out and p.exitcode is not None and p.exitcode != 0
                ]
                if dead:
                    # Give a result that is still in the pipe a last chance.
                    try:
                        rank, status, payload = results.get(timeout=1.0)
                    except queue_mod.Empty:
                        raise DistributedError(
                            f"launch: rank {dead[0]} of {world_size} exited with code "
                            f"{procs[dead[0]].exitcode} without a result: killed, crashed in "
                            "native code, or could not start (the spawn start method re-imports "
                            "the main script: run from a file or `python -m`, not from stdin, "
                            "and keep the launching code under `if __name__ == '__main__':`)"
                        ) from None
                else:
                    continue
            if status == "error":
                # The first report is the root cause; others that follow within a moment
                # are usually its echo (a peer that disconnected), named in one line each.
                echoes = []
                try:
                    while True:
                        r2, s2, p2 = results.get(timeout=1.0)
                        if s2 == "error":
                            echoes.append(f"rank {r2}: {p2.splitlines()[0][:200]}")
                except queue_mod.Empty:
                    pass
                also = "".join(f"\n(then {e})" for e in echoes)
                # A rank that died without a word (killed, os._exit, a native crash) is the
                # root cause of its peers' "connection reset": name it first.
                time.sleep(0.2)
                reported = {rank} | {int(e.split(":")[0].split()[1]) for e in echoes}
                dead = [
                    r for r, p in enumerate(procs)
                    if r not in out and r not in reported and p.exitcode not in (None, 0)
                ]
                if dead:
                    raise DistributedError(
                        f"launch: rank {dead[0]} of {world_size} exited with code "
                        f"{procs[dead[0]].exitcode} without a result (killed, os._exit or a "
                        f"crash in native code); then rank {rank} raised {payload}{also}"
                    )
                raise DistributedError(
                    f"launch: rank {rank} of {world_size} raised {payload}{also}"
                )
            out[rank] = _from_bytes(payload)
    finally:
        for p in procs:
            p.join(timeout=5.0 if len(out) == world_size else 0.1)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5.0)
                if p.is_alive():
                    p.kill()
                    p.join()
        results.close()
    return [out[r] for r in range(world_size)]


def _example_rank(rank: int, world: int) -> int:
    """The function of :func:`launch`'s example: every rank returns its rank."""
    t = torch.tensor([float(rank)])
    dist.all_reduce(t)
    assert t.item() == world * (world - 1) / 2
    return rank
