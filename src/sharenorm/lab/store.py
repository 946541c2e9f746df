"""The results store: ``DIR/results.jsonl``, one JSON line per finished run, appended and flushed.

Line kinds:

- ``{"kind": "header", "lab_version": ..., "profile": "quick"|"full", "data": ...}`` — first
  line; a folder whose header differs is refused (results of different labs are never mixed).
- ``{"kind": "run", "key": ..., "experiment": ..., "config": {...}, "seed": s, "metrics": {...},
  "time": {...}}`` — one finished training/measurement. ``metrics`` is deterministic for the
  seed; ``time`` (wall-clock seconds) is not.
- ``{"kind": "session", ...}`` — one per ``sharenorm lab`` invocation: environment, jobs,
  wall time (the report's "total time").

A killed process can leave a truncated last line; :meth:`ResultsStore.open` detects it, cuts it
off (only those bytes) and the run is redone (a file that holds only a truncated header is
started afresh). Each line is written with one ``write`` call and flushed + fsynced, so a
finished run is never lost.

One process at a time appends to a folder: :meth:`ResultsStore.open` takes an exclusive
lock (``flock``; ``msvcrt.locking`` on Windows) on ``DIR/results.lock`` (released by :meth:`ResultsStore.close` or when the
process ends, however it ends) and a second ``sharenorm lab`` on the same ``--out`` is refused
with the other process's pid. The folder is checked up front: an ``--out`` that is a file, cannot
be created or is not writable is a :class:`LabError` that names the fix, before any training.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

__all__ = ["ResultsStore", "LabError", "run_key", "LAB_VERSION"]

# Bump when an experiment's protocol or metrics change: old results then no longer mix in.
# 3: mnist1d standardized with train statistics; S2 records n_train. 4: the models keep the
# conv/linear bias before GroupNorm with C/G > 1 and LayerNorm (which do not cancel it). 5: the
# seeds of a config train as one stacked model (other float rounding), a custom optimizer step.
LAB_VERSION = "5"


class LabError(RuntimeError):
    """A user-facing lab error (bad arguments, an output folder that cannot be used).

    ``exit_code`` is what the ``sharenorm`` command exits with: 2 (bad input), 130
    (interrupted by Ctrl-C), 143 (terminated by SIGTERM).
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# folders this process holds the lock of: {resolved path: [fd, open stores]}; a second store
# of the same folder in the same process shares the lock (the lock is against other processes)
_LOCKS: dict[str, list[int]] = {}


_FIX = "Choose another --out folder (one you can write to), e.g. --out ./lab-results"


def prepare_folder(folder: str | os.PathLike, what: str = "--out") -> Path:
    """Make sure ``folder`` is (or can be created as) a directory this process can write to.

    Raises:
        LabError: it is a file, cannot be created (missing parent that cannot be made, a file
            in the path, no permission) or is not writable; the message names the fix.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LabError(f"{what} {folder} is a file, not a folder. {_FIX}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LabError(f"{what} {folder} cannot be created: {e.strerror or e}. "
                       f"{_FIX}") from None
    probe = folder / f".sharenorm-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise LabError(f"{what} {folder} is not writable: {e.strerror or e}. "
                       f"{_FIX}") from None
    return folder


def run_key(experiment: str, config: dict, seed: int) -> str:
    """The key of one run: experiment, canonical JSON of its config, seed."""
    return f"{experiment}|{json.dumps(config, sort_keys=True, separators=(',', ':'))}|{seed}"


def _try_lock(fd: int) -> bool:
    """Take the exclusive, non-blocking lock of an open file; False if another process holds
    it. ``flock`` on POSIX, ``msvcrt.locking`` of its first byte on Windows; both end with
    the process, so a killed lab never leaves its folder locked."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _unlock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


class ResultsStore:
    """Append-only JSONL store of finished runs (see the module docstring for the format)."""

    FILE = "results.jsonl"

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / self.FILE
        self.header: dict | None = None
        self.runs: dict[str, dict] = {}
        self.sessions: list[dict] = []
        self.repaired = 0  # bytes cut from a truncated last line
        self.skipped_lines: list[int] = []
        self._lock_key: str | None = None

    # ------------------------------------------------------------------ reading
    @classmethod
    def read(cls, folder: str | os.PathLike) -> ResultsStore:
        """Read an existing store without modifying it (for ``sharenorm report``).

        Raises:
            LabError: ``folder`` is a file (even ``results.jsonl`` itself) or holds no
                results; the message says what to pass or run.
        """
        store = cls(folder)
        if store.folder.is_file():
            # `sharenorm report lab-results/results.jsonl`: "run lab --out <that file>" would
            # fail as well; the folder is what to pass
            hint = (f"here `sharenorm report {store.folder.parent}`"
                    if store.folder.name == cls.FILE else "the --out folder of `sharenorm lab`")
            raise LabError(f"{folder} is a file, not a results folder: pass the folder that "
                           f"holds {cls.FILE}, {hint}")
        if not store.path.is_file():
            raise LabError(f"{store.path} does not exist: run `sharenorm lab --out {folder}` first")
        try:
            store._load(repair=False)
        except OSError as e:
            raise LabError(f"cannot read {store.path}: {e.strerror or e}") from None
        return store

    @classmethod
    def open(cls, folder: str | os.PathLike, header: dict) -> ResultsStore:
        """Open (or create) the store for appending under ``header``.

        Raises:
            LabError: the folder holds results of another lab version or configuration, is
                not a writable folder, or another process is writing to it.
        """
        store = cls(prepare_folder(folder))
        store._lock()
        try:
            store._open(header)
        except OSError as e:
            store.close()
            raise LabError(f"cannot use {store.path}: {e.strerror or e}. "
                           f"{_FIX}") from None
        except BaseException:
            store.close()
            raise
        return store

    def _open(self, header: dict) -> None:
        store = self
        if store.path.is_file() and store.path.stat().st_size > 0:
            store._load(repair=True)
            if (store.header is None and store.repaired and not store.runs
                    and not store.sessions and store.path.stat().st_size == 0):
                # only a header cut short by a killed process: nothing was lost, start afresh
                store.repaired = 0
                store.header = dict(header)
                store._append({"kind": "header", **header})
                return
            if store.header is None:
                raise LabError(f"{store.path} has no header line; it was not written by "
                               "`sharenorm lab`. Choose another --out folder.")
            mine = {k: store.header.get(k) for k in header}
            if mine != header:
                diff = ", ".join(f"{k}: {mine[k]!r} there vs {header[k]!r} now"
                                 for k in header if mine[k] != header[k])
                raise LabError(
                    f"{store.path} holds results from a different lab configuration ({diff}). "
                    "Results are never mixed: use another --out folder, or delete that one.")
            with open(store.path, "ab"):  # fail here (not after a training) if not writable
                pass
        else:
            store.header = dict(header)
            store._append({"kind": "header", **header})

    # ------------------------------------------------------------------ locking
    def _lock(self) -> None:
        key = str(self.folder.resolve())
        if key in _LOCKS:
            _LOCKS[key][1] += 1
            self._lock_key = key
            return
        path = self.folder / "results.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise LabError(f"cannot create {path}: {e.strerror or e}. {_FIX}") \
                from None
        if not _try_lock(fd):
            try:
                other = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise LabError(
                f"another sharenorm lab is writing to {self.folder} (pid {other}). Wait for it "
                "to finish (or stop it), or use another --out folder; two runs into one folder "
                "would do every run twice.") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} ({' '.join(sys.argv)[:150]})\n".encode())
        _LOCKS[key] = [fd, 1]
        self._lock_key = key

    def close(self) -> None:
        """Release this store's hold on the folder lock (the last store of the folder in this
        process unlocks it). Reading stays possible; appending needs :meth:`open` again."""
        key, self._lock_key = self._lock_key, None
        if key is None or key not in _LOCKS:
            return
        _LOCKS[key][1] -= 1
        if _LOCKS[key][1] <= 0:
            fd = _LOCKS.pop(key)[0]
            _unlock(fd)
            os.close(fd)

    def _load(self, repair: bool) -> None:
        pieces = self.path.read_bytes().splitlines(keepends=True)
        offset = 0
        for i, raw in enumerate(pieces, 1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError:
                if i == len(pieces):
                    # the last line of a killed process: cut exactly those bytes, redo the run
                    self.repaired = len(raw)
                    if repair:
                        with open(self.path, "r+b") as f:
                            f.truncate(start)
                    continue
                self.skipped_lines.append(i)
                warnings.warn(f"{self.path}: line {i} is not valid JSON and is ignored; the run "
                              "it held (if any) will be redone", stacklevel=2)
                continue
            if i == len(pieces) and not raw.endswith(b"\n") and repair:
                with open(self.path, "ab") as f:  # complete record, newline lost: add it
                    f.write(b"\n")
            if not isinstance(rec, dict):
                self.skipped_lines.append(i)
                continue
            kind = rec.get("kind")
            if kind == "header" and self.header is None:
                self.header = {k: v for k, v in rec.items() if k != "kind"}
            elif kind == "run" and "key" in rec:
                self.runs[rec["key"]] = rec
            elif kind == "session":
                self.sessions.append(rec)

    # ------------------------------------------------------------------ writing
    def _append(self, rec: dict) -> None:
        line = json.dumps(rec, sort_keys=True, allow_nan=False) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise LabError(f"cannot write {self.path}: {e.strerror or e} (finished runs before "
                           "this one are saved; free space or fix permissions and rerun to "
                           "resume)") from None

    def add_run(self, rec: dict) -> None:
        """Append one finished run (``kind``/``key`` are filled in)."""
        rec = {"kind": "run", "key": run_key(rec["experiment"], rec["config"], rec["seed"]), **rec}
        self._append(rec)
        self.runs[rec["key"]] = rec

    def add_session(self, info: dict) -> None:
        rec = {"kind": "session", **info}
        self._append(rec)
        self.sessions.append(rec)

    def done(self, key: str) -> bool:
        return key in self.runs

    def runs_of(self, experiment: str) -> list[dict]:
        return [r for r in self.runs.values() if r["experiment"] == experiment]
