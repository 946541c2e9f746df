"""The thin parts of multi-process training that torch lacks: ask whether a process group
is active, wrap a model in DDP with the flags sharenorm's tied and shared models need, make
child processes die with their parent, and run a function on a few local processes and get
its return values back (:func:`launch`, for tests, benchmarks and the lab's N9; real jobs
start with ``torchrun``: the README's "Running on a cluster").

Example:
    >>> import sharenorm.distributed as snd
    >>> snd.world_size(), snd.is_distributed()   # no process group in this process
    (1, False)
"""

from __future__ import annotations

import contextlib
import datetime
import gc
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
_wrappers: dict[int, str] = {}  # pid → its wrapper (a forked child writes its own)


def _spawn_wrapper() -> str:
    """This process's spawn wrapper, written once and kept until it exits: a child execs
    ``/bin/sh`` on it, and the shell opens it only after ``exec`` returned to the parent."""
    import atexit
    import shlex
    import shutil
    import sys
    import tempfile

    pid = os.getpid()
    if pid not in _wrappers:
        _remove_stale_wrappers(tempfile.gettempdir())
        folder = tempfile.mkdtemp(prefix=f"sharenorm-spawn-{pid}-")
        path = os.path.join(folder, "python")
        with open(path, "w") as f:
            f.write(_SPAWN_WRAPPER.format(pid=pid, python=shlex.quote(sys.executable)))
        os.chmod(path, 0o700)
        _wrappers[pid] = path
        atexit.register(lambda: os.getpid() == pid and shutil.rmtree(folder, ignore_errors=True))
    return _wrappers[pid]


def _remove_stale_wrappers(tmp: str) -> None:
    """Remove the wrappers of this user's processes that were killed (no ``atexit`` ran)."""
    import glob
    import shutil

    for folder in glob.glob(os.path.join(tmp, "sharenorm-spawn-*-*")):
        try:
            owner = os.lstat(folder).st_uid
            pid = int(os.path.basename(folder).split("-")[2])
        except (OSError, ValueError, IndexError):
            continue
        if owner != os.getuid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass


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
    global _guard_depth, _guard_saved
    import sys

    if not sys.platform.startswith("linux") or getattr(sys, "frozen", False):
        yield
        return
    import multiprocessing.spawn as mp_spawn

    with _guard_lock:
        if _guard_depth == 0:
            _guard_saved = mp_spawn.get_executable()
            mp_spawn.set_executable(_spawn_wrapper())
        _guard_depth += 1
    try:
        yield
    finally:
        with _guard_lock:
            _guard_depth -= 1
            if _guard_depth == 0:
                mp_spawn.set_executable(_guard_saved)


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
    """One rank of :func:`launch`, run by torch's spawn wrapper: join the group the way
    ``torchrun`` workers do (``env://``), run ``fn``, report, leave."""

    def report(message: tuple) -> None:
        # Flush the report *before* leaving the group: the other ranks fail as soon as
        # this one disconnects, and the root cause must reach the parent first.
        results.put(message)
        results.close()
        results.join_thread()

    # torch's wrapper asks for SIGINT when the parent dies; a rank blocked in a collective (in
    # C++) cannot act on it, so SIGTERM, whose default action ends it at once.
    die_with_parent()
    torch.set_num_threads(1)  # the processes share the machine's cores
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    try:
        dist.init_process_group(backend, init_method="env://",
                                timeout=datetime.timedelta(seconds=timeout))
    except BaseException as exc:
        report((rank, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        raise  # torch's wrapper records it too, and its join then stops the other ranks
    try:
        report((rank, "ok", _to_bytes(fn(rank, world, *args))))
    except BaseException as exc:
        report((rank, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        raise
    else:
        # Leave cleanly (outside the try: the report is sent and its queue closed): free what
        # fn left holding the group (a DDP wrapper sits in a reference cycle; freed later by
        # the cyclic GC, after the group is gone, it can abort the process with
        # std::terminate: tests/distributed_scripts/syncbn_tied_ddp.py), and let every rank
        # finish its last collective before any leaves.
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


# seconds the other ranks get to end by themselves once one rank failed, before SIGTERM
_GRACE_S = 1.0


def launch(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    backend: str = "gloo",
    timeout: float = 60.0,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` fresh local processes that
    share one process group, and return what each rank returned, by rank.

    The processes are started and watched by ``torch.multiprocessing.start_processes``
    (spawn); each joins the group as ``torchrun``'s workers do (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``/``MASTER_PORT`` on 127.0.0.1, ``init_method="env://"``), so code written
    for one runs under the other. What this adds to torch: the return values (sent back with
    ``torch.save``: tensors, numbers, dicts, lists), the *first* failing rank named with its
    traceback (not a peer's "connection reset"), a deadline for the whole run, and ranks
    that die with the calling process however it dies. Each process runs one thread.
    ``fn`` must be importable by name (a module-level function), as spawn requires.

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
    import torch.multiprocessing as tmp

    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    results = mp.get_context("spawn").Queue()
    # The children inherit the environment: OMP_NUM_THREADS=1 for them only.
    omp = os.environ.get("OMP_NUM_THREADS")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        with children_die_with_this_process():
            pc = tmp.start_processes(
                _entry, args=(world_size, free_port(), backend, timeout, fn, args, results),
                nprocs=world_size, join=False, start_method="spawn")
    finally:
        if omp is None:
            del os.environ["OMP_NUM_THREADS"]
    out: dict[int, Any] = {}
    errors: list[tuple[int, str]] = []

    def drain(wait_s: float = 0.0) -> None:
        try:
            while True:
                rank, status, payload = results.get(timeout=wait_s) if wait_s else \
                    results.get_nowait()
                if status == "ok":
                    out[rank] = _from_bytes(payload)
                else:
                    errors.append((rank, payload))
        except queue_mod.Empty:
            pass

    deadline = time.monotonic() + timeout
    try:
        while True:
            drain()
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(world_size)) - set(out))
                raise TimeoutError(
                    f"launch: rank(s) {missing} of {world_size} did not finish within "
                    f"{timeout} s (a rank waiting in a collective that another rank never "
                    "joined, or a slow function); every process was stopped"
                )
            try:
                if pc.join(timeout=min(left, 0.2), grace_period=_GRACE_S):
                    break
            except (tmp.ProcessRaisedException, tmp.ProcessExitedException):
                drain(1.0)  # the reports still in the pipe
                raise DistributedError(_root_cause(pc.processes, world_size, out, errors)) \
                    from None
        drain(1.0)
        if len(out) < world_size:  # every process ended well, and yet a result is missing
            raise DistributedError(_root_cause(pc.processes, world_size, out, errors))
    finally:
        for p in pc.processes:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5.0)
                if p.is_alive():
                    p.kill()
                    p.join()
        results.close()
    return [out[r] for r in range(world_size)]


def _root_cause(procs: list, world: int, out: dict, errors: list) -> str:
    """The message of a failed :func:`launch`: a rank that died without a word (killed,
    ``os._exit``, a native crash) first — its peers' errors are only its echo — else the
    first rank that reported an error (it reported before leaving the group), with its
    traceback; later errors in one line each."""
    import signal

    reported = set(out) | {r for r, _ in errors}
    # exit codes other than 0 and torch's own SIGTERM (how it stops the other ranks)
    silent = [r for r, p in enumerate(procs)
              if r not in reported and p.exitcode not in (None, 0, -signal.SIGTERM)]
    also = "".join(f"\n(then rank {r}: {tb.splitlines()[0][:200]})" for r, tb in errors[1:])
    if silent:
        r = silent[0]
        then = f"; then rank {errors[0][0]} raised {errors[0][1]}" if errors else ""
        return (f"launch: rank {r} of {world} exited with code {procs[r].exitcode} without a "
                f"result (killed, os._exit, a crash in native code, or it could not start: "
                f"spawn re-imports the main script, so run from a file or `python -m` and keep "
                f"the launching code under `if __name__ == '__main__':`){then}{also}")
    if errors:
        return f"launch: rank {errors[0][0]} of {world} raised {errors[0][1]}{also}"
    codes = {r: p.exitcode for r, p in enumerate(procs) if r not in out}
    return f"launch: rank(s) {sorted(codes)} of {world} ended without a result (exit codes {codes})"


def _example_rank(rank: int, world: int) -> int:
    """The function of :func:`launch`'s example: every rank returns its rank."""
    t = torch.tensor([float(rank)])
    dist.all_reduce(t)
    assert t.item() == world * (world - 1) / 2
    return rank
