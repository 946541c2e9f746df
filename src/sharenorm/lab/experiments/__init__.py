"""The experiment registry: one module per experiment, each defining ``EXPERIMENT``.

To add an experiment, write ``sharenorm/lab/experiments/<name>.py`` with an
:class:`~sharenorm.lab.spec.Experiment` named ``EXPERIMENT`` whose ``id`` is ``<name>``, and add
``<name>`` to the list below (a module outside this package is added by its full dotted path;
its id is then the last component). A claim beyond the documents' list is declared by the
experiment itself in ``Experiment.new_claims``.
"""

from __future__ import annotations

import difflib
import importlib

from sharenorm.lab.claims import CLAIMS, Claim
from sharenorm.lab.spec import Experiment
from sharenorm.lab.store import LabError

__all__ = ["EXPERIMENT_MODULES", "all_experiments", "all_claims", "get_experiment", "resolve"]

# Order = order in the report and on the command line.
EXPERIMENT_MODULES = [
    "norm_training",     # N1, N4
    "lr_sweep",          # N2
    "vanishing",         # N3
    "batch_dependence",  # N5
    "batch_size",        # N6
    "style",             # N7
    "depth",             # N8
    "distributed_bn",    # N9 (SyncBN / BatchRenorm / GN across processes)
    "sharing_cost",      # S1
    "sharing_training",  # S2, S3
    "rnn_sharing",       # S4
    "tying_cost",        # T1, T3
    "tying_reg",         # T2
]


def _modules() -> dict[str, str]:
    """``{experiment id: importable module path}`` in registry order."""
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
    """``{id: Experiment}`` in report order."""
    return {exp_id: get_experiment(exp_id) for exp_id in _modules()}


def all_claims() -> dict[str, Claim]:
    """The documents' claims, then those experiments declare themselves, in report order."""
    out = dict(CLAIMS)
    for e in all_experiments().values():
        for c in e.new_claims:
            out.setdefault(c.id, c)
    return out


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
