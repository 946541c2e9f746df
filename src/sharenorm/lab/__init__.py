"""The lab: experiments on real data that measure every claim of the two seed documents.

Layout (one job per module):

- ``claims.py``       the claims (the documents' words) and the criteria fixed before any run
- ``spec.py``         :class:`Experiment` (configs, run, analyze) and :class:`ClaimResult`
- ``experiments/``    one module per experiment, registered by one line in its ``__init__``
- ``train.py``        the one training loop (seeded, single-threaded, divergence detection)
- ``store.py``        ``results.jsonl``: append-only, resumable, never mixes two labs
- ``runner.py``       plans runs, skips finished ones, runs the rest in parallel processes
- ``stats.py``        mean ± 95% t-interval over seeds
- ``report.py``       ``report.md`` + self-contained ``report.html`` + ``figures/``

Entry points: :func:`run_lab` (``sharenorm lab``) and :func:`write_report`
(``sharenorm report DIR``).
"""

from sharenorm.lab.report import write_report
from sharenorm.lab.runner import run_lab

__all__ = ["run_lab", "write_report"]
