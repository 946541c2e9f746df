"""What an experiment is: a small declarative spec the runner and the report understand.

An experiment lists its runs (configs × seeds), knows how to do one run, and turns all its
finished runs into :class:`ClaimResult` s — one per claim it serves — with a verdict decided
by a criterion that is written down in the spec, i.e. fixed before anything runs.

Each experiment owns its claims (:class:`Claim`: the document's words and the criterion, the
criterion's prose formatted from the named constants the analysis decides with), so a new
experiment is one file in ``experiments/``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Experiment", "RunContext", "ClaimResult", "Claim", "Text", "Table", "SUPPORTED",
           "NOT_SUPPORTED", "MIXED", "NOT_RUN", "INCONCLUSIVE", "UNDECIDABLE", "INFORMATIONAL",
           "group_runs", "all3", "any3", "decide", "claim_order"]

SUPPORTED, NOT_SUPPORTED, MIXED, NOT_RUN = "supported", "not supported", "mixed", "not run"
# A criterion compares the 95% interval of a difference with a margin: an interval that
# straddles the margin (or none at all, from one seed) cannot decide it, and the verdict says
# so instead of reading noise as a finding (:func:`sharenorm.lab.stats.compare`).
INCONCLUSIVE = "inconclusive"
UNDECIDABLE = INCONCLUSIVE  # the older name of the same outcome
# A comparison-table cell that shows a measured number no criterion judges (the document's
# "used in CNNs, RNNs" describes practice, not an effect): shown without ✅/❌.
INFORMATIONAL = "informational"


def all3(*conds: bool | None) -> bool | None:
    """Three-valued AND: False if any is False, else None if any is None (unknown), else True."""
    if any(c is False for c in conds):
        return False
    return None if any(c is None for c in conds) else True


def any3(*conds: bool | None) -> bool | None:
    """Three-valued OR: True if any is True, else None if any is None (unknown), else False."""
    if any(c is True for c in conds):
        return True
    return None if any(c is None for c in conds) else False


def decide(full: bool | None, partial: bool | None = False) -> str:
    """The verdict of a criterion "supported if ``full``; mixed if ``partial``; else not".

    A condition that is None could not be decided (the 95% interval of its difference
    straddles the margin, or there is no interval); the verdict is then :data:`INCONCLUSIVE`
    whenever the unknown could change it.

    Example:
        >>> decide(True), decide(False, True), decide(None, True), decide(False, False)
        ('supported', 'mixed', 'inconclusive', 'not supported')
    """
    if full is True:
        return SUPPORTED
    if full is None:
        return UNDECIDABLE
    if partial is True:
        return MIXED
    return UNDECIDABLE if partial is None else NOT_SUPPORTED


@dataclass(frozen=True)
class Text:
    """A text in English and Hindi (Hindi with English technical terms, like the seeds)."""

    en: str
    hi: str = ""

    def __call__(self, lang: str) -> str:
        return self.hi if lang == "hi" and self.hi else self.en


@dataclass(frozen=True)
class Claim:
    """A claim of the documents (or one an experiment adds) and the criterion that decides it.

    Args:
        id: "N6".
        doc: the document it comes from.
        statement_hi: the document's words (a short label; a table row in its own words).
        statement_en: translation.
        criterion: the criterion in both languages, formatted from the experiment's constants.
        demonstration: True when the claim holds by construction or arithmetic (parameter
            counts, a definition): the report shows it as a *demonstration*, not as evidence.
    """

    id: str
    doc: str
    statement_hi: str
    statement_en: str
    criterion: Text
    demonstration: bool = False


def claim_order(claim_id: str) -> tuple:
    """Sort key of claim ids: by letter, then by number ("N2" < "N10" < "S1").

    Example:
        >>> sorted(["S1", "N10", "N2", "T3", "X"], key=claim_order)
        ['N2', 'N10', 'S1', 'T3', 'X']
    """
    head, num = claim_id[:1], claim_id[1:]
    return (head, int(num) if num.isdigit() else float("inf"), claim_id)


@dataclass
class Table:
    """A result table: headers and rows of already formatted cells."""

    headers: list[str]
    rows: list[list[str]]


@dataclass
class ClaimResult:
    """What the report shows for one claim.

    Args:
        claim: claim id ("N6").
        verdict: SUPPORTED, NOT_SUPPORTED, MIXED, UNDECIDABLE or NOT_RUN.
        measured: one line with the decisive measured numbers.
        tables: result tables (mean ± 95% CI over seeds).
        figures: PNG paths (relative to the report folder).
        published: rows ``[source, setting, theirs, ours]`` where published numbers exist.
        notes: extra explanation (why it holds or not), per language.
        cells: measured values for the documents' comparison tables:
            ``{(table_id, row_id, column): (text, verdict)}``; the verdict of a cell that no
            criterion judges is :data:`INFORMATIONAL`, never a borrowed one.
        comparisons: the criterion's differences with their 95% intervals and margins
            (:class:`~sharenorm.lab.stats.Comparison`): the effect sizes shown beside the
            verdict.
    """

    claim: str
    verdict: str
    measured: str
    tables: list[Table] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    published: list[list[str]] = field(default_factory=list)
    notes: Text | None = None
    cells: dict = field(default_factory=dict)
    comparisons: list = field(default_factory=list)


@dataclass
class RunContext:
    """What a run may use: the profile, the user's data path, and a cache of loaded data."""

    quick: bool
    data_path: str | None = None


@dataclass
class Experiment:
    """A declarative experiment.

    Args:
        id: short name used on the command line ("batch_size"); the module's name.
        claims: the claims it measures: :class:`Claim` s it defines (the experiment owns its
            claims) or ids of claims defined elsewhere; stored as ids, the definitions in
            ``new_claims``.
        title: one line.
        protocol: the protocol as printed in the report (model, data, steps, lr rule, ...).
        configs: ``configs(quick) -> list[dict]`` (JSON-serialisable, small).
        run: ``run(config, seed, ctx) -> (metrics, timing)``; metrics must be deterministic.
        analyze: ``analyze(runs, figdir, lang) -> list[ClaimResult]``; ``runs`` are the
            finished records of this experiment.
        seeded: False when a run does not depend on the seed (one run is enough).
        batched: True (default) when the seeds of a config may train together as one stacked
            model (:mod:`sharenorm.lab.jobs`); False for an experiment whose analysis
            compares wall-clock times (a stacked member's time is the stack's divided by K).
        stack_over: config keys whose values may differ within one stacked job (``("lr",)``:
            a learning-rate grid's runs train as one model with the seeds); the configs that
            agree on every other key form one job.
        uses_data: True when ``--data`` replaces its default dataset.
        requires: names that must exist in ``sharenorm`` (else the experiment is skipped).
        min_train: ``min_train(config) -> int``, the training samples one run of ``config``
            needs on ``--data`` (for one optimizer step); by default its ``batch_size``
            (32, :class:`~sharenorm.lab.train.TrainConfig`'s default, where it names none).
            The runner refuses a smaller ``--data`` training split before any run.
        min_positions: the positions (spatial elements) one ``--data`` sample needs: 2 where
            a model normalizes each sample's channels on their own (InstanceNorm); the
            runner refuses smaller samples before any run.
        new_claims: :class:`Claim` s this experiment defines (filled from ``claims``).
        compares_intervals: True when a criterion compares 95% intervals, so that one seed
            cannot decide it (the runner warns about ``--seeds 1`` for these).
    """

    id: str
    claims: tuple[str, ...]
    title: Text
    protocol: Text
    configs: Callable[[bool], list[dict]]
    run: Callable[[dict, int, RunContext], tuple[dict, dict]]
    analyze: Callable[[list[dict], Path, str], list[ClaimResult]]
    seeded: bool = True
    batched: bool = True
    stack_over: tuple[str, ...] = ()
    uses_data: bool = False
    requires: tuple[str, ...] = ()
    new_claims: tuple = ()
    min_train: Callable[[dict], int] | None = None
    min_positions: int = 1
    compares_intervals: bool = True

    def __post_init__(self):
        defs = tuple(c for c in self.claims if isinstance(c, Claim))
        self.new_claims = tuple(self.new_claims) + tuple(
            c for c in defs if c.id not in {n.id for n in self.new_claims})
        self.claims = tuple(c.id if isinstance(c, Claim) else c for c in self.claims)

    def train_samples_needed(self, quick: bool) -> int:
        """The most training samples any run of the profile needs (see ``min_train``)."""
        need = self.min_train or (lambda cfg: cfg.get("batch_size", 32))
        return max((need(cfg) for cfg in self.configs(quick)), default=0)

    def in_plan_order(self, runs: list[dict], quick: bool) -> list[dict]:
        """``runs`` sorted as the runner plans them: by config, in the order ``configs(quick)``
        lists them, then by seed; configs it does not list go last, by their JSON.

        The store keeps runs in the order they finished, which depends on ``--jobs``;
        analyses follow the order of their runs (:func:`group_runs`, dicts of models), so
        they get this order and the report is the same whatever the parallelism.
        """
        rank = {_canonical(c): i for i, c in enumerate(self.configs(quick))}

        def key(r):
            c = _canonical(r["config"])
            return (rank.get(c, len(rank)), c, r["seed"])

        return sorted(runs, key=key)

    def missing(self) -> list[str]:
        """The required ``sharenorm`` names this build lacks."""
        import sharenorm as sn

        return [n for n in self.requires if not hasattr(sn, n)]


def _canonical(config: dict) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def group_runs(runs: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    """Group run records by config values: ``{(v1, v2): [metrics, ...]}`` in first-seen order
    (the runner and the report pass runs in plan order: :meth:`Experiment.in_plan_order`)."""
    out: dict[tuple, list[dict]] = {}
    for r in runs:
        k = tuple(r["config"].get(key) for key in keys)
        out.setdefault(k, []).append(r["metrics"] | {"_time": r.get("time", {})})
    return out


def finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]
