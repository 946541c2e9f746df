"""The lab: experiments on real data that measure every claim of the two seed documents.

Entry points: :func:`run_lab` (``sharenorm lab``) and :func:`write_report`
(``sharenorm report DIR``). One job per module: ``spec`` (what an experiment and a verdict
are), ``claims`` (the documents' words), ``experiments/`` (one module per experiment),
``train``, ``batched`` and ``jobs`` (training, stacked), ``runner``, ``executors`` and
``store`` (plan, run, keep), ``stats`` and ``report``.
"""

from sharenorm.lab.report import write_report
from sharenorm.lab.runner import run_lab

__all__ = ["run_lab", "write_report"]
