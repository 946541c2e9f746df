"""The results store: ``DIR/results.jsonl``, one JSON line per finished run, appended and flushed.

Lines are a ``header`` (lab version, profile, data: a folder of another lab is refused), one
``run`` per finished training (``metrics`` deterministic for the seed, ``time`` not) and one
``session`` per ``sharenorm lab`` call. Each line is one fsynced ``write``, so a kill loses no
finished run; a truncated last line is cut off and its run redone. Damaged or hand-edited
lines are skipped with a warning or refused with a :class:`LabError` that names the fix, and
one process at a time appends (a lock file). The line formats and every rule:
docs/design/lab-runs.md.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path

from sharenorm._checks import not_a_regular_file

__all__ = ["ResultsStore", "LabError", "run_key", "LAB_VERSION"]

# Bump when an experiment's protocol or metrics change: old results then no longer mix in.
# 3: mnist1d standardized with train statistics; S2 records n_train. 4: the models keep the
# conv/linear bias before GroupNorm with C/G > 1 and LayerNorm (which do not cancel it). 5: the
# seeds of a config train as one stacked model (other float rounding), a custom optimizer step.
# 6: S3, S4, T2 and N8 choose learning rates on a validation split (N8: fresh seeds for the
# final runs), N6/N8 runs record checkpoints, S3 adds the logistic-regression row.
# 7: torch's fused Adam/SGD kernels (solo and stacked), LocallyConnected nets stack, N10's GRU
# at lr 1e-2 with a head on every step, N9's GN on one process, plateau check on windows.
# 8: N9 trains per-process BN/BatchRenorm as the W ranks' chunks in one process (2000 steps),
# SyncBN on real gloo ranks for 100 steps beside one process with the whole batch.
# 9: a cosine learning-rate schedule for every accuracy comparison; N6 at 16 epochs on BN/GN/IN
# and batches 2, 8, 32; N1/N4 2000 steps; plateau decided per contender (mean over seeds);
# N8 at depths 3, 9, 17; SyncBN's demonstration 25 steps.
# 10: N9 trains its per-process norms in one pass over the W chunks (PerRankBatchNorm) and
# its seeds as one stacked model, for N6's 16 epochs at the global batch (8000 steps).
# 11: N10's tanh RNNs (with and without BN per time step) stacked, for 24,000 steps.
# 12: N8 at batch 32 for 16 epochs (1,600 steps), rates 0.01-0.3, tries of a quarter of the steps.
LAB_VERSION = "12"


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
        self.lines = 0  # non-blank lines read
        self._lock_key: str | None = None

    # ------------------------------------------------------------------ reading
    @classmethod
    def read(cls, folder: str | os.PathLike) -> ResultsStore:
        """Read an existing store without modifying it (for ``sharenorm report``).

        Raises:
            LabError: ``folder`` is a file (even ``results.jsonl`` itself), holds no results
                file, an empty one or one without a header line, or a conflict (see the module
                docstring); the message says what to pass or run.
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
            kind = _special(store.path)
            if kind:
                raise LabError(f"{store.path} is {kind}, not a results file: pass a folder "
                               "written by `sharenorm lab`")
            raise LabError(f"{store.path} does not exist: run `sharenorm lab --out {folder}` first")
        try:
            store._load(repair=False)
        except OSError as e:
            raise LabError(f"cannot read {store.path}: {e.strerror or e}") from None
        if store.header is None:
            if not store.lines:
                raise LabError(f"{store.path} is empty: no lab has stored anything there yet. "
                               f"Run `sharenorm lab --out {folder}` first")
            raise LabError(f"{store.path} has no header line (the first line `sharenorm lab` "
                           "writes), so it cannot be told which lab its results come from. Pass "
                           "a folder written by `sharenorm lab`, or rerun the lab there")
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
        kind = _special(store.path)
        if kind:  # never opened: appending to a FIFO would block until someone reads it
            raise LabError(f"{store.path} is {kind}, not a results file. {_FIX}")
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
        kind = not_a_regular_file(os.fstat(fd).st_mode)
        if kind:
            os.close(fd)
            raise LabError(f"{path} is {kind}, not the lab's lock file. {_FIX}")
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
        header_line = 0
        run_line: dict[str, int] = {}
        for i, raw in enumerate(pieces, 1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            self.lines += 1
            try:
                rec = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
            except _NonFinite as e:
                self._skip(i, f"holds {e.args[0]}, a number the lab never writes (it writes null "
                              "where a run has no number)")
                continue
            except (ValueError, RecursionError):
                if i == len(pieces):
                    # the last line of a killed process: cut exactly those bytes, redo the run
                    self.repaired = len(raw)
                    self.lines -= 1
                    if repair:
                        with open(self.path, "r+b") as f:
                            f.truncate(start)
                    continue
                self._skip(i, "is not valid JSON")
                continue
            if i == len(pieces) and not raw.endswith(b"\n") and repair:
                with open(self.path, "ab") as f:  # complete record, newline lost: add it
                    f.write(b"\n")
            problem = _problem(rec)
            if problem:
                self._skip(i, problem)
                continue
            kind = rec["kind"]
            if kind == "header":
                header = {k: v for k, v in rec.items() if k != "kind"}
                if self.header is None:
                    self.header, header_line = header, i
                elif header != self.header:
                    raise LabError(
                        f"{self.path}: line {i} is a second header that differs from the one on "
                        f"line {header_line} ({_diff(self.header, header)}): results of two "
                        "different lab configurations were mixed into one file. Results are never "
                        f"mixed: move lines {i}.. into a results.jsonl of their own folder, or "
                        "delete them")
            elif kind == "run":
                key = rec["key"]
                first = self.runs.get(key)
                if first is None:
                    self.runs[key], run_line[key] = rec, i
                elif _canonical(first["metrics"]) != _canonical(rec["metrics"]):
                    raise LabError(
                        f"{self.path}: lines {run_line[key]} and {i} hold the same run ({key}) "
                        f"with different metrics ({_diff(first['metrics'], rec['metrics'])}), "
                        "and the lab cannot tell which is right. Delete the wrong line, or both "
                        f"and rerun `sharenorm lab --out {self.folder}` to redo that run")
            else:
                self.sessions.append(rec)

    def _skip(self, line: int, problem: str) -> None:
        self.skipped_lines.append(line)
        warnings.warn(f"{self.path}: line {line} {problem}; it is ignored, and the run it held "
                      "(if any) is redone by `sharenorm lab` (delete the line to silence this)",
                      stacklevel=4)

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


def _special(path: Path) -> str | None:
    """What ``path`` is when it exists and is not a regular file ("a FIFO (named pipe)", …)."""
    try:
        return not_a_regular_file(os.stat(path).st_mode)
    except OSError:  # absent, or a dangling link: the caller creates or reports it
        return None


class _NonFinite(Exception):
    """A ``NaN``/``Infinity`` token in a line (Python's json reads them; the lab never writes
    them)."""


def _refuse_constant(token: str):
    raise _NonFinite(token)


def _finite_float(token: str) -> float:
    """A JSON number as a float; a literal beyond float's range (``1e400``) overflows to
    infinity, which the lab never writes: refused like the ``Infinity`` token."""
    v = float(token)
    if math.isinf(v):
        raise _NonFinite(token[:40])
    return v


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# summed or formatted as numbers by the report; other fields are free
_RUN_TIMES = ("run_s", "cpu_s", "cpu_children_s")


def _problem(rec) -> str | None:
    """Why a parsed line cannot be used as it stands (None: it can)."""
    if not isinstance(rec, dict):
        return f"is a JSON {type(rec).__name__}, not an object"
    kind = rec.get("kind")
    if kind == "header":
        return None
    if kind == "run":
        missing = [f for f in ("key", "experiment", "config", "seed", "metrics") if f not in rec]
        if missing:
            return f"is a run without {', '.join(repr(f) for f in missing)}"
        for field, ok, what in (("key", isinstance(rec["key"], str), "a string"),
                                ("experiment", isinstance(rec["experiment"], str), "a string"),
                                ("config", isinstance(rec["config"], dict), "an object"),
                                ("seed", isinstance(rec["seed"], int)
                                 and not isinstance(rec["seed"], bool), "an integer"),
                                ("metrics", isinstance(rec["metrics"], dict), "an object"),
                                ("time", isinstance(rec.get("time", {}), dict), "an object")):
            if not ok:
                return f"is a run whose {field!r} is not {what}"
        bad = [k for k in _RUN_TIMES if k in rec.get("time", {}) and not _number(rec["time"][k])]
        if bad:
            return f"is a run whose time {bad[0]!r} is not a number"
        if rec["key"] != run_key(rec["experiment"], rec["config"], rec["seed"]):
            return ("is a run whose 'key' does not match its experiment, config and seed "
                    "(edited by hand?)")
        return None
    if kind == "session":
        if "wall_s" in rec and not _number(rec["wall_s"]):
            return "is a session whose 'wall_s' is not a number"
        env = rec.get("env", {})
        if not isinstance(env, dict) or ("cpu_count" in env and env["cpu_count"] is not None
                                         and not _number(env["cpu_count"])):
            return "is a session whose 'env' is not an object with a numeric cpu_count"
        load = rec.get("load")
        if load is not None and not (isinstance(load, list) and len(load) == 2
                                     and all(_number(v) for v in load)):
            return "is a session whose 'load' is not two numbers"
        return None
    return f"has an unknown kind {kind!r}"


def _canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _diff(a: dict, b: dict) -> str:
    """The first few fields in which two records differ, as ``name: A vs B``."""
    keys = [k for k in sorted(set(a) | set(b), key=str)
            if _canonical(a.get(k)) != _canonical(b.get(k))]
    shown = [f"{k}: {_canonical(a.get(k))[:40]} vs {_canonical(b.get(k))[:40]}" for k in keys[:3]]
    return "; ".join(shown) + (f"; and {len(keys) - 3} more" if len(keys) > 3 else "")
