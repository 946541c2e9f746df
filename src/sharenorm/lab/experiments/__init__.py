"""The experiment registry: every module of this package defines one ``EXPERIMENT``.

To add an experiment, write ``sharenorm/lab/experiments/<name>.py`` with an
:class:`~sharenorm.lab.spec.Experiment` named ``EXPERIMENT`` whose ``id`` is ``<name>`` and
whose ``claims`` are the :class:`~sharenorm.lab.spec.Claim` s it defines: the module is found
by itself (modules whose name starts with ``_`` are helpers, not experiments). A module outside
the package is added by appending its full dotted path to :data:`EXPERIMENT_MODULES` (its id is
then the last component). The report and the command line list experiments in the order of
their first claim (N1 < N2 < ... < S1 < T1).

:func:`analyze_stored` is the one way to turn stored runs into verdicts: the runner's
per-experiment summary line and the report both use it.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import json
import pkgutil
import traceback
from pathlib import Path

from sharenorm.lab.spec import NOT_RUN, Claim, ClaimResult, Experiment, Text, claim_order
from sharenorm.lab.store import LabError

__all__ = ["EXPERIMENT_MODULES", "all_experiments", "all_claims", "get_experiment", "resolve",
           "analyze_stored", "interval_claims", "failed_text"]

# what the report says in place of a verdict when an experiment's analysis raises
ANALYSIS_FAILED = Text("The analysis failed: {err}", "Analysis fail हुआ: {err}")

# The experiment modules: every module of this package (found, not listed), plus any dotted
# path appended here.
EXPERIMENT_MODULES = sorted(m.name for m in pkgutil.iter_modules(__path__)
                            if not m.name.startswith("_"))


def _modules() -> dict[str, str]:
    """``{experiment id: importable module path}``."""
    return {name.rsplit(".", 1)[-1]: name if "." in name else f"{__name__}.{name}"
            for name in EXPERIMENT_MODULES}


def get_experiment(exp_id: str) -> Experiment:
    """One experiment by id (its module name), importing only that module."""
    modules = _modules()
    if exp_id not in modules:
        raise LabError(f"unknown experiment {exp_id!r}")
    exp = importlib.import_module(modules[exp_id]).EXPERIMENT
    if exp.id != exp_id:
        raise RuntimeError(f"experiment module {exp_id} defines id {exp.id!r}; they must match")
    return exp


def all_experiments() -> dict[str, Experiment]:
    """``{id: Experiment}`` in report order: by the first claim each measures."""
    exps = [get_experiment(exp_id) for exp_id in _modules()]
    exps.sort(key=lambda e: claim_order(e.claims[0]) if e.claims else ("~",))
    return {e.id: e for e in exps}


def all_claims() -> dict[str, Claim]:
    """Every claim the experiments define, in claim order (N1, N2, ..., S1, ..., T3)."""
    out: dict[str, Claim] = {}
    for e in all_experiments().values():
        for c in e.new_claims:
            out.setdefault(c.id, c)
    return {k: out[k] for k in sorted(out, key=claim_order)}


def interval_claims() -> list[str]:
    """The claims whose criteria compare 95% intervals (one seed cannot decide them)."""
    return sorted((c for e in all_experiments().values() if e.compares_intervals
                   for c in e.claims), key=claim_order)


def analyze_stored(exp: Experiment, runs: list[dict], figdir: Path, lang: str,
                   quick: bool) -> list[ClaimResult]:
    """``exp``'s verdicts from its stored runs (any order: they are put in plan order first,
    so the result does not depend on ``--jobs``). A failing analysis gives a :data:`NOT_RUN`
    result per claim that names the error, so one broken analysis never hides the others.
    The same runs analyzed again in this process (the console's line, then the report) give
    the results of the first time, figures already written."""
    runs = exp.in_plan_order(runs, quick)
    if not runs:
        return []
    key = (exp.id, str(figdir), lang, quick)
    digest = hashlib.sha256(json.dumps(runs, sort_keys=True, default=repr).encode()).digest()
    done = _ANALYZED.get(key)
    if done is not None and done[0] == digest:
        return list(done[1])
    from sharenorm.lab.fonts import use_in_matplotlib

    use_in_matplotlib()  # figure labels in Hindi (and the documents' words) render
    try:
        results = list(exp.analyze(runs, figdir, lang))
    except Exception as err:  # noqa: BLE001 - one broken analysis must not hide the rest
        tb = traceback.format_exception_only(type(err), err)[-1].strip()
        return [ClaimResult(c, NOT_RUN, failed_text(tb, lang)) for c in exp.claims]
    _ANALYZED[key] = (digest, results)
    return list(results)


# (experiment, figdir, lang, quick) -> (digest of the runs, their results)
_ANALYZED: dict[tuple, tuple[bytes, list[ClaimResult]]] = {}


def failed_text(err: str, lang: str) -> str:
    """What the report says for an analysis that raised ``err``."""
    return ANALYSIS_FAILED(lang).format(err=err)


def resolve(names: list[str]) -> list[Experiment]:
    """Experiments for names that are claim ids ("N6") or experiment ids ("batch_size").

    Raises:
        LabError: an unknown name, with the closest valid names.
    """
    exps = all_experiments()
    if not names:
        return list(exps.values())
    by_claim: dict[str, list[str]] = {}
    for e in exps.values():
        for c in e.claims:
            by_claim.setdefault(c.upper(), []).append(e.id)
    chosen: list[str] = []
    for n in names:
        key = n.strip()
        ids = by_claim.get(key.upper()) or ([key] if key in exps else None)
        if ids is None:
            valid = sorted(all_claims()) + list(exps)
            close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5) or \
                difflib.get_close_matches(key.upper(), valid, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise LabError(f"unknown experiment or claim {n!r}.{hint} "
                           "`sharenorm lab --list` shows all of them.")
        chosen += [i for i in ids if i not in chosen]
    return [exps[i] for i in exps if i in chosen]
