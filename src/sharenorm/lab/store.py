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
off (only those bytes) and the run is redone. Each line is written with one ``write`` call and
flushed + fsynced, so a finished run is never lost.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

__all__ = ["ResultsStore", "LabError", "run_key", "LAB_VERSION"]

# Bump when an experiment's protocol or metrics change: old results then no longer mix in.
LAB_VERSION = "2"


class LabError(RuntimeError):
    """A user-facing lab error (bad arguments, an output folder that cannot be used)."""


def run_key(experiment: str, config: dict, seed: int) -> str:
    """The key of one run: experiment, canonical JSON of its config, seed."""
    return f"{experiment}|{json.dumps(config, sort_keys=True, separators=(',', ':'))}|{seed}"


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

    # ------------------------------------------------------------------ reading
    @classmethod
    def read(cls, folder: str | os.PathLike) -> ResultsStore:
        """Read an existing store without modifying it (for ``sharenorm report``)."""
        store = cls(folder)
        if not store.path.is_file():
            raise LabError(f"{store.path} does not exist: run `sharenorm lab --out {folder}` first")
        store._load(repair=False)
        return store

    @classmethod
    def open(cls, folder: str | os.PathLike, header: dict) -> ResultsStore:
        """Open (or create) the store for appending under ``header``.

        Raises:
            LabError: the folder holds results of another lab version or configuration.
        """
        store = cls(folder)
        if store.path.is_file() and store.path.stat().st_size > 0:
            store._load(repair=True)
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
        else:
            store.folder.mkdir(parents=True, exist_ok=True)
            store.header = dict(header)
            store._append({"kind": "header", **header})
        return store

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
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

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
