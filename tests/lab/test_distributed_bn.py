"""The N9 experiment's verdict rule on made-up results (no processes started), and its
registration; the training itself is the SyncBN/DDP machinery tested in tests/norm and
tests/sharing."""

from __future__ import annotations

import pytest

from sharenorm.lab.experiments import all_claims, distributed_bn, resolve
from sharenorm.lab.spec import MIXED, NOT_SUPPORTED, SUPPORTED


def _runs(**acc):
    cfg = distributed_bn.configs(quick=False)[0]
    return [{"config": cfg, "seed": s, "metrics": {k: v + 0.001 * s for k, v in acc.items()}}
            for s in range(3)]


@pytest.mark.parametrize(
    "acc,verdict",
    [
        # SyncBN recovers the large batch, GN needs no sync: supported
        (dict(bn_large=0.80, bn=0.70, syncbn=0.80, renorm=0.72, gn=0.79), SUPPORTED),
        # GN far below the large batch: only (a)
        (dict(bn_large=0.80, bn=0.70, syncbn=0.80, renorm=0.72, gn=0.70), MIXED),
        # SyncBN no better than per-process BN, GN low: neither
        (dict(bn_large=0.80, bn=0.79, syncbn=0.79, renorm=0.72, gn=0.70), NOT_SUPPORTED),
    ],
)
def test_verdict_rule(tmp_path, acc, verdict):
    (result,) = distributed_bn.analyze(_runs(**acc), tmp_path / "figures", "en")
    assert result.claim == "N9" and result.verdict == verdict
    assert (tmp_path / "figures" / "n9_distributed_bn.png").exists()
    assert len(result.tables[0].rows) == len(distributed_bn.VARIANTS)


def test_registered_with_its_claim():
    assert "N9" in all_claims() and [e.id for e in resolve(["N9"])] == ["distributed_bn"]
    quick = distributed_bn.configs(quick=True)[0]
    assert quick["world"] == 2 and quick["steps"] <= 20
