"""The N9 experiment's verdict rule on made-up results (no processes started), and its
registration; the training itself is the SyncBN/DDP machinery tested in tests/norm and
tests/sharing."""

from __future__ import annotations

import pytest

from sharenorm.lab.experiments import all_claims, distributed_bn, resolve
from sharenorm.lab.spec import MIXED, NOT_SUPPORTED, SUPPORTED


def _runs(**acc):
    cfg = distributed_bn.configs(quick=False)[0]
    return [{"config": cfg, "seed": s,
             "metrics": {"steps": 2000} | {k: v + 0.001 * s for k, v in acc.items()}}
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
    # the trained variants, then SyncBN and its one-process reference over the same steps
    assert len(result.tables[0].rows) == len(distributed_bn.TRAINED) + 2


def test_registered_with_its_claim():
    assert "N9" in all_claims() and [e.id for e in resolve(["N9"])] == ["distributed_bn"]
    quick = distributed_bn.configs(quick=True)[0]
    assert quick["world"] == 2 and distributed_bn.variant_steps(quick, 4000) <= 20
    full = distributed_bn.configs(quick=False)[0]
    assert distributed_bn.variant_steps(full, 4000) == 16 * 4000 // 8  # N6's epochs at batch 8
    # what a run's steps_total counts: four trained variants, SyncBN's W ranks and reference
    assert distributed_bn.planned_steps(full, 4000) == 4 * 8000 + 25 * 5


@pytest.mark.parametrize("variant", ["bn", "renorm", "gn"])
def test_one_process_training_is_what_the_ddp_ranks_compute(variant):
    # per-process BN and BatchRenorm trained in one pass over W chunks (PerRankBatchNorm), GN
    # on the whole batch, end where rank 0 of W real gloo processes under DDP ends
    # (parameters and running statistics, BatchRenorm's warm-up counter included)
    import torch

    from sharenorm import distributed as snd
    from sharenorm.data import Dataset

    g = torch.Generator().manual_seed(0)
    ds = Dataset("toy", torch.randn(64, 1, 16, generator=g), torch.randint(0, 4, (64,), generator=g),
                 torch.randn(8, 1, 16, generator=g), torch.randint(0, 4, (8,), generator=g), 4)
    data = (ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.num_classes)
    cfg = {"world": 2, "per_process_batch": 2, "schedule": "cosine"}  # the lab's schedule
    steps = 12  # BatchRenorm's corrections start at 10% of the steps: they are exercised
    model, metrics = distributed_bn.train_one_process(variant, cfg, 0, ds, steps)
    alone = model.state_dict()
    # the plateau check's checkpoints: every step_budget // 10 steps
    assert [s for s, _ in metrics["curve"]] == list(range(1, 13))
    ranks = snd.launch(distributed_bn._ddp_rank, 2, variant, cfg, 0, data, steps, timeout=120)[0]
    assert alone.keys() == ranks.keys()
    counters = [int(v) for k, v in ranks.items() if k.endswith("num_batches_tracked")]
    assert counters == ([] if variant == "gn" else [steps] * 3)  # a step each, not W
    for k, v in alone.items():
        assert torch.allclose(v.double(), ranks[k].double(), rtol=1e-4, atol=1e-5), k


def test_the_seeds_trained_as_one_stacked_model_end_where_each_alone_ends():
    # the lab's jobs run a configuration's seeds together: PerRankBatchNorm stacks, and the
    # stacked training equals each seed's own
    import torch

    from sharenorm.data import Dataset
    from sharenorm.lab.jobs import run_together

    g = torch.Generator().manual_seed(1)
    ds = Dataset("toy", torch.randn(64, 1, 16, generator=g), torch.randint(0, 4, (64,), generator=g),
                 torch.randn(8, 1, 16, generator=g), torch.randint(0, 4, (8,), generator=g), 4)
    cfg = {"world": 2, "per_process_batch": 2, "schedule": "cosine"}

    def train(seed):
        model, m = distributed_bn.train_one_process("renorm", cfg, seed, ds, 12)
        return model.state_dict(), m

    from sharenorm.lab.batched import can_stack

    models = [distributed_bn.train_one_process("renorm", cfg, s, ds, 1)[0] for s in (0, 1)]
    assert can_stack(models)  # else run_together trains them one by one, and this proves nothing
    together = run_together([lambda s=s: train(s) for s in (0, 1, 2)])
    for seed, (state, _) in zip((0, 1, 2), together, strict=True):
        alone, _ = train(seed)
        for k, v in alone.items():
            assert torch.allclose(v.double(), state[k].double(), rtol=1e-4, atol=1e-5), k


def test_the_seeds_syncbn_demonstrations_share_one_launch_and_equal_a_launch_each(monkeypatch):
    # a job's seeds meet at the demonstration: one launch of W processes trains every seed's
    # SyncBN in turn, and each seed's state is the one its own launch gives
    import torch

    from sharenorm import distributed as snd
    from sharenorm.lab.jobs import run_together

    g = torch.Generator().manual_seed(2)
    data = (torch.randn(32, 1, 16, generator=g), torch.randint(0, 4, (32,), generator=g),
            None, None, 4)
    cfg = {"world": 2, "per_process_batch": 2, "schedule": "cosine"}
    launches = []
    real = snd.launch

    def counted(*a, **kw):
        launches.append(a[4])  # the seeds it trains
        return real(*a, **kw)

    monkeypatch.setattr(snd, "launch", counted)
    items = [(cfg, s, data, 3) for s in (0, 1)]
    states = run_together([lambda it=it: distributed_bn.together(
        "syncbn_demo", distributed_bn._syncbn_demos, it) for it in items])
    assert launches == [[0, 1]]
    for it, state in zip(items, states, strict=True):
        (alone,) = distributed_bn._syncbn_demos([it])  # a launch of its own
        assert state.keys() == alone.keys()
        assert all(torch.equal(state[k], alone[k]) for k in alone)
    assert launches[1:] == [[0], [1]]
    assert not all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    with pytest.raises(ValueError, match="share config, data and steps"):
        distributed_bn._syncbn_demos([items[0], (cfg, 1, data, 4)])


def test_the_rank_loop_refuses_per_process_norms_in_one_process():
    cfg = {"world": 2, "per_process_batch": 2}
    with pytest.raises(ValueError, match="train_one_process"):
        distributed_bn._train_rank("bn", cfg, 0, (None,) * 5, 1, rank=None)


def test_syncbn_is_compared_seed_by_seed_with_its_one_process_run(tmp_path):
    # 100-step runs spread widely over seeds; SyncBN equals its own seed's one-process run:
    # the paired interval is [0, 0] (an unpaired one would straddle the 1-point margin)
    cfg = distributed_bn.configs(quick=False)[0]
    runs = [{"config": cfg, "seed": s, "metrics": {
        "steps": 2000, "bn_large": 0.86, "bn": 0.78, "renorm": 0.76, "gn": 0.85,
        "syncbn": 0.25 + 0.05 * s, "bn_large_sync_steps": 0.25 + 0.05 * s}} for s in range(5)]
    (result,) = distributed_bn.analyze(runs, tmp_path / "figures", "en")
    assert result.comparisons[0].holds is True and result.verdict == SUPPORTED


def test_n9_is_inconclusive_when_a_trained_contender_had_not_converged(tmp_path):
    from sharenorm.lab.spec import INCONCLUSIVE

    acc = dict(bn_large=0.80, bn=0.70, syncbn=0.80, renorm=0.72, gn=0.79)
    flat = [[s, 0.8] for s in range(200, 2001, 200)]
    rising = [[s, 0.6 + s / 10000] for s in range(200, 2001, 200)]  # +4 points per 400 steps
    for gn_curve, verdict in ((flat, SUPPORTED), (rising, INCONCLUSIVE)):
        runs = _runs(**acc)
        for r in runs:
            r["metrics"] |= {"bn_large_curve": flat, "bn_curve": flat, "renorm_curve": rising,
                             "gn_curve": gn_curve}
        (result,) = distributed_bn.analyze(runs, tmp_path / "figures", "en")
        # BatchRenorm is shown, not compared: its rising curve alone changes nothing
        assert result.verdict == verdict, gn_curve
        assert result.tables[0].rows[3][3] == ("+0.0 ✓" if gn_curve is flat else "+4.0")


def test_a_diverged_run_counts_as_0_not_dropped(tmp_path):
    # GN's fifth seed diverged (no accuracy): dropped, it would flatter GN into "holds"
    # (GN − BN −0.4 [−1.0, +0.2]); counted as 0 the comparison cannot tell
    from sharenorm.lab.spec import INCONCLUSIVE

    cfg = distributed_bn.configs(quick=False)[0]
    gn = [0.895, 0.90, 0.905, 0.90, None]
    runs = [{"config": cfg, "seed": s, "metrics": {
        "steps": 2000, "bn_large": 0.90, "bn": 0.80 + 0.001 * s, "renorm": 0.8, "gn": gn[s],
        "syncbn": 0.90, "bn_large_sync_steps": 0.90}} for s in range(5)]
    (result,) = distributed_bn.analyze(runs, tmp_path / "figures", "en")
    c_gn = next(c for c in result.comparisons if c.label.startswith("GN"))
    assert c_gn.holds is None and result.verdict == INCONCLUSIVE, str(c_gn)
    assert "72.0" in result.tables[0].rows[3][2]  # GN's mean over 5 seeds, one at 0


def test_syncbn_well_above_its_reference_is_not_within_a_point(tmp_path):
    # "within 1 point" is two-sided: 3 points above its own seed's one-process run means
    # SyncBN computes something else
    cfg = distributed_bn.configs(quick=False)[0]
    runs = [{"config": cfg, "seed": s, "metrics": {
        "steps": 2000, "bn_large": 0.86, "bn": 0.78, "renorm": 0.76, "gn": 0.85,
        "syncbn": 0.33 + 0.001 * s, "bn_large_sync_steps": 0.30}} for s in range(5)]
    (result,) = distributed_bn.analyze(runs, tmp_path / "figures", "en")
    assert [c.holds for c in result.comparisons[:2]] == [True, False]
    assert result.verdict == MIXED
