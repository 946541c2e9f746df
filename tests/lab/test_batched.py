"""K models stacked into one train exactly as K separate trainings (float64), and a diverging
member leaves the others untouched."""

from __future__ import annotations

import contextlib
import json
import math
import threading

import pytest
import torch

from sharenorm import LocallyConnected1d, LocallyConnected2d
from sharenorm.data import Dataset
from sharenorm.lab import runner
from sharenorm.lab.batched import (
    NotStackable,
    StackedLinear,
    StackedLocallyConnected,
    stack_inputs,
    stack_models,
)
from sharenorm.lab.jobs import run_together
from sharenorm.lab.train import TrainConfig, train_classifier, train_classifiers
from sharenorm.models import MLP, ConvNet, LocallyConnectedNet, RNNClassifier
from sharenorm.models.bn_rnn import BNRNNClassifier, GRUClassifier

NORMS = ["batch", "group", "instance", "layer", "none"]


def toy(shape=(2, 12), n_train=48, n_test=20, classes=4, dtype=torch.float64, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    return Dataset("toy", torch.randn(n_train, *shape, generator=g, dtype=dtype),
                   torch.randint(0, classes, (n_train,), generator=g),
                   torch.randn(n_test, *shape, generator=g, dtype=dtype),
                   torch.randint(0, classes, (n_test,), generator=g), classes)


def build(kind, norm, seed, ds):
    torch.manual_seed(seed)
    if kind == "bnrnn":
        return BNRNNClassifier(ds.sample_shape, ds.num_classes, hidden=5, chunk=3,
                               norm=norm).double()
    if kind in ("rnn_shared", "rnn_unshared"):
        # 4 time steps of 3 positions × 2 channels
        return RNNClassifier(ds.sample_shape, ds.num_classes, hidden=5, chunk=3,
                             shared=kind == "rnn_shared").double()
    if kind in ("conv", "lc"):
        cls = ConvNet if kind == "conv" else LocallyConnectedNet
        net = cls(ds.sample_shape, ds.num_classes, width=8, depth=3, norm=norm,
                  num_groups=2 if norm == "group" else None)
    else:
        net = MLP(ds.sample_shape, ds.num_classes, hidden=[8, 6], norm=norm)
    return net.double()


def close(a, b, tol=1e-9):
    """Metrics equal up to float64 rounding (None for NaN/inf on both sides)."""
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, float) and isinstance(y, float):
            assert math.isclose(x, y, rel_tol=tol, abs_tol=tol), (k, x, y)
        elif k == "curve":
            assert [s for s, _ in x] == [s for s, _ in y], k
            assert all(math.isclose(p, q, abs_tol=tol) for (_, p), (_, q) in zip(x, y, strict=True)), k
        else:
            assert x == y, (k, x, y)


def same_state(m1, m2, tol=1e-10):
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    for k in s1:
        assert torch.allclose(s1[k].double(), s2[k].double(), rtol=tol, atol=tol), k


CASES = [("conv", n) for n in NORMS] + [("mlp", n) for n in ("batch", "layer", "none")] + \
    [("rnn_shared", "none"), ("rnn_unshared", "none"), ("bnrnn", "batch"), ("bnrnn", "none")]


@pytest.mark.parametrize("kind, norm", CASES)
@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_stacked_training_equals_separate_trainings(kind, norm, opt):
    ds = toy((3, 5) if kind == "mlp" else (2, 12))
    seeds = [0, 1, 2]
    lrs = [0.05, 0.1, 0.02] if opt == "sgd" else [1e-3, 3e-3, 2e-3]
    # per-member learning rate, weight decay and steps: a grid is one stacked model
    # and its own schedule (the cosine one over its own steps)
    cfgs = [TrainConfig(steps=s, batch_size=4, lr=lr, optimizer=opt, eval_every=3,
                        weight_decay=wd, target_acc=0.0, schedule=sch)
            for s, lr, wd, sch in zip((7, 5, 7), lrs, (0.0, 1e-2, 1e-3),
                                      ("cosine", "cosine", "constant"), strict=True)]
    alone = [build(kind, norm, s, ds) for s in seeds]
    ref = [train_classifier(m, ds, c, s) for m, c, s in zip(alone, cfgs, seeds, strict=True)]
    together = [build(kind, norm, s, ds) for s in seeds]
    out = train_classifiers(together, ds, cfgs, seeds)
    for (m_ref, _), (m_out, t_out), a, b in zip(ref, out, alone, together, strict=True):
        assert t_out["stacked"] == 3  # it really went through the stacked model
        close(m_ref, m_out)
        same_state(a, b)  # parameters and BN running statistics (num_batches_tracked too)


@pytest.mark.parametrize("stacked", [False, True])
def test_the_cosine_schedule_is_applied(stacked):
    """The schedule changes the training, alone and stacked (a path that ignored it would
    still make stacked == separate hold)."""
    ds = toy((2, 12))
    out = {}
    for sch in ("constant", "cosine"):
        nets = [build("conv", "group", s, ds) for s in (0, 1)][: 2 if stacked else 1]
        cfg = TrainConfig(steps=4, batch_size=4, lr=0.1, schedule=sch)
        train_classifiers(nets, ds, cfg, [0, 1][:len(nets)])
        out[sch] = nets[0].state_dict()
    assert any(not torch.equal(out["constant"][k], out["cosine"][k]) for k in out["cosine"])
    with pytest.raises(ValueError, match="schedule must be one of"):
        train_classifiers([build("conv", "group", 0, ds)], ds,
                          TrainConfig(steps=2, batch_size=4, schedule="step"), [0])


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_members_with_their_own_data_stack_and_equal_separate_trainings(norm):
    # a validation split per seed gives each member its own training and evaluation data
    dss = [toy(seed=s, n_train=40 + 4 * s) for s in range(3)]
    cfgs = [TrainConfig(steps=6, batch_size=4, lr=lr, eval_every=2) for lr in (0.05, 0.1, 0.02)]
    alone = [build("conv", norm, s, d) for s, d in enumerate(dss)]
    ref = [train_classifier(m, d, c, s)[0] for s, (m, d, c) in enumerate(zip(alone, dss, cfgs,
                                                                              strict=True))]
    together = [build("conv", norm, s, d) for s, d in enumerate(dss)]
    out = train_classifiers(together, dss, cfgs, [0, 1, 2])
    assert [t["stacked"] for _, t in out] == [3, 3, 3]
    for r, (o, _), a, b in zip(ref, out, alone, together, strict=True):
        close(r, o)
        same_state(a, b)
    assert out[0][0]["test_acc"] != out[1][0]["test_acc"] or out[0][0] != out[1][0]


def test_members_whose_samples_differ_in_shape_train_alone():
    dss = [toy((2, 12)), toy((2, 10))]
    nets = [build("mlp", "none", 0, d) for d in dss]
    out = train_classifiers(nets, dss, TrainConfig(steps=3, batch_size=4), [0, 1])
    assert [t.get("stacked") for _, t in out] == [None, None]


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_residual_nets_stack_and_equal_separate_trainings(norm):
    # N8's deciding networks
    from sharenorm.models.resnet import ResNet

    ds = toy((2, 12))

    def net(seed):
        torch.manual_seed(seed)
        m = ResNet(ds.sample_shape, ds.num_classes, width=4, depth=7, norm=norm,
                   num_groups=2 if norm == "group" else None).double()
        for p in m.parameters():  # no zero γ: every layer's gradient is tested
            p.data.add_(0.1)
        return m

    cfgs = [TrainConfig(steps=5, batch_size=4, lr=lr, eval_every=2) for lr in (0.05, 0.02)]
    alone = [net(s) for s in (0, 1)]
    ref = [train_classifier(m, ds, c, s)[0] for s, (m, c) in enumerate(zip(alone, cfgs,
                                                                            strict=True))]
    together = [net(s) for s in (0, 1)]
    out = train_classifiers(together, ds, cfgs, [0, 1])
    assert [t["stacked"] for _, t in out] == [2, 2]
    for r, (o, _), a, b in zip(ref, out, alone, together, strict=True):
        close(r, o)
        same_state(a, b)


def test_image_convnet_stacks_too():
    ds = toy((1, 6, 6))
    cfg = TrainConfig(steps=4, batch_size=6, lr=0.05)  # above ONEDNN_MIN_BATCH: oneDNN convs
    alone = [build("conv", "batch", s, ds) for s in (0, 1)]
    ref = [train_classifier(m, ds, cfg, s)[0] for m, s in zip(alone, (0, 1), strict=True)]
    together = [build("conv", "batch", s, ds) for s in (0, 1)]
    out = train_classifiers(together, ds, cfg, [0, 1])
    for r, (o, _), a, b in zip(ref, out, alone, together, strict=True):
        close(r, o)
        same_state(a, b)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("make, shape", [
    (lambda bias: LocallyConnected1d(2, 3, 11, 5, stride=2, padding=2, bias=bias), (2, 11)),
    (lambda bias: LocallyConnected2d(2, 3, (7, 6), (3, 2), stride=(2, 1), padding=(1, 0),
                                     dilation=(1, 2), bias=bias), (2, 7, 6)),
])
def test_stacked_locally_connected_layers_are_k_layers(make, shape, bias):
    torch.manual_seed(0)
    k, n = 3, 4
    lcs = [make(bias).double() for _ in range(k)]
    st = stack_models(lcs)
    assert isinstance(st, StackedLocallyConnected)
    xs = torch.randn(k, n, *shape, dtype=torch.float64, requires_grad=True)
    y = st(stack_inputs(xs))
    c_out, size_out = lcs[0].out_channels, lcs[0].output_size
    assert y.shape == (n, k * c_out, *size_out)
    w = torch.randn_like(y)  # a different upstream gradient for every output
    gx, *gp = torch.autograd.grad((y * w).sum(), [xs, *st.parameters()])
    wk = w.view(n, k, c_out, *size_out)
    for j, lc in enumerate(lcs):
        yj = lc(xs[j])
        torch.testing.assert_close(y.view(n, k, c_out, *size_out)[:, j], yj, rtol=0, atol=1e-12)
        gxj, *gpj = torch.autograd.grad((yj * wk[:, j]).sum(), [xs, *lc.parameters()])
        torch.testing.assert_close(gx[j], gxj[j], rtol=0, atol=1e-12)
        # member-major: row j of every stacked parameter (and its gradient) is member j's
        for s, g, p, gj in zip(st.parameters(), gp, lc.parameters(), gpj, strict=True):
            torch.testing.assert_close(s.view(k, -1)[j], p.reshape(-1), rtol=0, atol=0)
            torch.testing.assert_close(g.reshape(k, -1)[j], gj.reshape(-1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape, norm, opt", [
    ((2, 12), "none", "sgd"), ((2, 12), "none", "adam"), ((2, 12), "batch", "adam"),
    ((1, 6, 6), "group", "sgd"),
])
def test_stacked_locally_connected_nets_train_as_separate_ones(shape, norm, opt):
    ds = toy(shape)
    seeds = [0, 1, 2]
    lrs = [0.05, 0.1, 0.02] if opt == "sgd" else [1e-3, 3e-3, 2e-3]
    cfgs = [TrainConfig(steps=s, batch_size=4, lr=lr, optimizer=opt, eval_every=2,
                        weight_decay=wd) for s, lr, wd in zip((5, 4, 5), lrs, (0.0, 1e-2, 0.0),
                                                              strict=True)]
    alone = [build("lc", norm, s, ds) for s in seeds]
    ref = [train_classifier(m, ds, c, s)[0] for m, c, s in zip(alone, cfgs, seeds, strict=True)]
    together = [build("lc", norm, s, ds) for s in seeds]
    out = train_classifiers(together, ds, cfgs, seeds)
    assert [t["stacked"] for _, t in out] == [3, 3, 3]
    for r, (o, _), a, b in zip(ref, out, alone, together, strict=True):
        close(r, o)
        same_state(a, b)


@pytest.mark.parametrize("kind, norm", [("conv", "batch"), ("conv", "group"), ("lc", "batch"),
                                        ("rnn_unshared", "none"), ("bnrnn", "batch")])
def test_a_diverging_member_leaves_the_others_untouched(kind, norm):
    """Member 1 meets an inf (RNN: NaN) weight: NaN everywhere in its channels from the first forward
    (BN's running statistics included). The others end as they would alone."""
    ds = toy()
    cfg = TrainConfig(steps=6, batch_size=4, lr=0.05, eval_every=2)
    seeds = [0, 1, 2]

    def models():
        ms = [build(kind, norm, s, ds) for s in seeds]
        with torch.no_grad():
            if "rnn" in kind:  # tanh saturates an inf: a NaN weight instead
                w = ms[1].wx.weight if kind == "bnrnn" else ms[1].rnn.weight_ih
                w.view(-1)[0] = float("nan")
            else:
                ms[1].features[0].weight[0, 0, 0] = float("inf")
        return ms

    # BatchNorm says that it kept its running statistics from the NaN batch
    def warns():
        return (pytest.warns(RuntimeWarning, match="statistics are not finite")
                if norm == "batch" else contextlib.nullcontext())

    alone = models()
    with warns():
        ref = [train_classifier(m, ds, cfg, s)[0] for m, s in zip(alone, seeds, strict=True)]
    together = models()
    with warns():
        out = [m for m, _ in train_classifiers(together, ds, cfg, seeds)]
    assert ref[1]["diverged"] and out[1]["diverged"] and out[1]["steps_done"] == 1
    for j in (0, 2):
        assert not out[j]["diverged"]
        close(ref[j], out[j], tol=1e-12)
        same_state(alone[j], together[j], tol=1e-12)
    if norm == "batch":  # the diverged member's running statistics were not updated by NaN
        bn = together[1].bn_x[0] if kind == "bnrnn" else together[1].features[1]
        assert torch.isfinite(bn.running_var).all() and int(bn.num_batches_tracked) == 0


def test_divergence_by_a_large_learning_rate_in_a_grid():
    ds = toy()
    seeds = [0, 0, 0]
    cfgs = [TrainConfig(steps=20, batch_size=4, lr=lr) for lr in (0.01, 1e6, 0.05)]
    alone = [build("conv", "none", s, ds) for s in seeds]
    ref = [train_classifier(m, ds, c, s)[0] for m, c, s in zip(alone, cfgs, seeds, strict=True)]
    together = [build("conv", "none", s, ds) for s in seeds]
    out = [m for m, _ in train_classifiers(together, ds, cfgs, seeds)]
    assert ref[1]["diverged"] and out[1]["diverged"]
    assert out[1]["steps_done"] == ref[1]["steps_done"] < 20
    for j in (0, 2):
        close(ref[j], out[j], tol=1e-12)
        same_state(alone[j], together[j], tol=1e-12)


def test_stacked_linear_is_k_linears():
    torch.manual_seed(0)
    lins = [torch.nn.Linear(5, 3) for _ in range(4)]
    st = stack_models(lins)
    assert isinstance(st, StackedLinear)
    x = torch.randn(2, 4, 5)
    y = st(x.reshape(2, 20)).view(2, 4, 3)
    for k, lin in enumerate(lins):
        torch.testing.assert_close(y[:, k], lin(x[:, k]))


def test_stack_inputs_puts_member_k_in_its_channels():
    xs = torch.arange(2 * 3 * 2 * 4.).view(2, 3, 2, 4)  # (K, N, C, L)
    s = stack_inputs(xs)
    assert s.shape == (3, 4, 4)
    torch.testing.assert_close(s[:, 2:4], xs[1])


def _cumulative_bn(net):
    for m in net.modules():
        if hasattr(m, "momentum"):
            m.momentum = None
    return net


@pytest.mark.parametrize("make", [
    lambda: LocallyConnectedNet((1, 12), 3, width=4, norm="renorm"),
    lambda: GRUClassifier((1, 12), 3, hidden=4, chunk=4),
    lambda: _cumulative_bn(BNRNNClassifier((1, 12), 3, hidden=4, chunk=4)),
    lambda: _cumulative_bn(ConvNet((1, 12), 3, width=4, norm="batch")),
])
def test_what_does_not_stack_is_refused_and_trains_alone(make):
    ds = toy((1, 12), classes=3, dtype=torch.float32)
    torch.manual_seed(0)
    ms = [make(), make()]
    with pytest.raises(NotStackable, match="train it alone"):
        stack_models(ms)
    torch.manual_seed(0)
    ref_ms = [make(), make()]
    cfg = TrainConfig(steps=3, batch_size=4)
    ref = [train_classifier(m, ds, cfg, s) for m, s in zip(ref_ms, (0, 1), strict=True)]
    out = train_classifiers(ms, ds, cfg, [0, 1])
    assert [m for m, _ in out] == [m for m, _ in ref]  # the same code: bit-identical
    assert all("stacked" not in t for _, t in out)


@pytest.mark.parametrize("hook", ["grad", "forward"])
def test_a_model_with_hooks_trains_alone_so_its_hooks_fire(hook):
    ds = toy()
    nets = [build("conv", "batch", s, ds) for s in (0, 1)]
    fired = []
    for n in nets:
        if hook == "grad":
            n.head.weight.register_hook(lambda g: fired.append(1))
        else:
            n.register_forward_hook(lambda *a: fired.append(1))
    out = train_classifiers(nets, ds, TrainConfig(steps=3, batch_size=4), [0, 1])
    assert [t.get("stacked") for _, t in out] == [None, None] and len(fired) >= 6


def test_stacked_training_runs_where_torch_froze_the_backend_flags():
    """torch's own test helpers (torch.testing._internal, imported for its module_db) call
    torch.backends.disable_global_flags(), after which a bare `mkldnn.enabled = ...` raises:
    stacked training, which switches oneDNN per step, must still run and restore it."""
    ds = toy()
    nets = [build("conv", "batch", seed, ds) for seed in (0, 1)]
    before = torch.backends.mkldnn.enabled
    torch.backends.disable_global_flags()
    try:
        out = train_classifiers(nets, ds, TrainConfig(steps=3, batch_size=4), [0, 1])
    finally:  # unfrozen, as torch's helpers never do
        torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
    assert [t["stacked"] for _, t in out] == [2, 2]
    assert torch.backends.mkldnn.enabled == before


def test_different_architectures_do_not_stack():
    ds = toy()
    with pytest.raises(NotStackable, match="differ in architecture"):
        stack_models([build("conv", "batch", 0, ds), build("conv", "group", 0, ds)])


def test_run_together_trains_the_members_calls_as_one_and_resumes_them():
    ds = toy(dtype=torch.float32)
    seen = []

    def run(seed):
        torch.manual_seed(seed)
        net = ConvNet(ds.sample_shape, ds.num_classes, width=4)
        w0 = net.head.weight.detach().clone()
        m, t = train_classifier(net, ds, TrainConfig(steps=3, batch_size=4), seed)
        seen.append((seed, torch.rand(1).item()))  # the global RNG as a solo run leaves it
        return m, t, not torch.equal(w0, net.head.weight)

    out = run_together([lambda s=s: run(s) for s in (0, 1, 2)])
    assert [t["stacked"] for _, t, _ in out] == [3, 3, 3]
    assert all(m["steps_done"] == 3 for m, _, _ in out)
    assert all(changed for _, _, changed in out)  # each model came back trained
    assert [s for s, _ in seen] == [0, 1, 2]  # resumed in order
    for seed, r in seen:
        torch.manual_seed(seed)
        assert r == torch.rand(1).item()
    assert not any(t.name.startswith("lab-member") for t in threading.enumerate())


def test_run_together_passes_an_error_on_and_stops_the_others():
    def ok():
        return train_classifier(ConvNet((2, 12), 4, width=4), toy(dtype=torch.float32),
                                TrainConfig(steps=2, batch_size=4), 0)

    def bad():
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError, match="boom"):
        run_together([ok, bad, ok])
    assert not any(t.name.startswith("lab-member") for t in threading.enumerate())


def test_jobs_are_configs_with_all_their_seeds():
    tasks = runner.plan([runner.get_experiment("batch_size")], True, 3)
    jobs = runner.jobs_of(tasks)
    assert len(jobs) == len(tasks) // 3
    assert all([t.seed for t in j] == [0, 1, 2] and len({str(t.config) for t in j}) == 1
               for j in jobs)


def test_a_grid_declared_in_stack_over_is_one_job_with_its_seeds(monkeypatch):
    exp = runner.get_experiment("lr_sweep")
    monkeypatch.setattr(exp, "stack_over", ("lr",))
    tasks = runner.plan([exp], True, 2)
    jobs = runner.jobs_of(tasks)
    lrs = {t.config["lr"] for t in tasks}
    assert len(lrs) > 1 and len(jobs) == len(tasks) // (2 * len(lrs))
    for j in jobs:
        assert {t.config["lr"] for t in j} == lrs and len({t.config["norm"] for t in j}) == 1
    out = runner.execute_job("lr_sweep", [(t.config, t.seed) for t in jobs[0]], True, None)
    assert all(t["stacked"] == len(jobs[0]) for _, t in out)
    alone = [runner.execute("lr_sweep", t.config, t.seed, True, None)[0] for t in jobs[0]]
    for t, (m, _), a in zip(jobs[0], out, alone, strict=True):
        if t.config["lr"] < 1:  # above, float32 rounding decides which run blows up first
            close(m, a, tol=1e-4)


def test_execute_job_gives_each_seed_its_stacked_run():
    cfg = {"norm": "batch", "lr": 0.1, "steps": 8, "batch_size": 16}
    out = runner.execute_job("lr_sweep", [(cfg, 0), (cfg, 1)], True, None)
    again = runner.execute_job("lr_sweep", [(cfg, 0), (cfg, 1)], True, None)
    assert [m for m, _ in out] == [m for m, _ in again]  # deterministic
    assert out[0][0] != out[1][0]
    assert all(t["stacked"] == 2 and t["job_runs"] == 2 and m["steps_done"] == 8
               for m, t in out)


def test_a_runs_steps_total_counts_its_selection_tries_stacked_or_alone(monkeypatch):
    # a run that tries a learning rate on a validation split (5 steps) before its final
    # training (8 steps) took 13 optimizer steps: the session's steps/s counts all of them
    from sharenorm.lab.experiments import get_experiment
    from sharenorm.lab.experiments._protocol import validation_split

    ds = toy()

    def run(cfg, seed, ctx):
        for steps in (5, 8):
            d = validation_split(ds, seed=seed) if steps == 5 else ds
            net = build("conv", "batch", seed, d)
            metrics, timing = train_classifier(net, d, TrainConfig(steps=steps, batch_size=4),
                                               seed)
        return metrics, timing

    monkeypatch.setattr(get_experiment("lr_sweep"), "run", run)
    stacked = runner.execute_job("lr_sweep", [({}, 0), ({}, 1)], True, None)
    alone = runner.execute_job("lr_sweep", [({}, 0)], True, None)
    for m, t in stacked + alone:
        assert m["steps_done"] == 8 and t["steps_total"] == 13
    assert all(t["stacked"] == 2 for _, t in stacked)


def _records(out):
    recs = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]
    runs = {r["key"]: r["metrics"] for r in recs if r.get("kind") == "run"}
    return runs, [r for r in recs if r.get("kind") == "session"]


def test_lab_results_do_not_depend_on_jobs_or_resuming_and_sessions_count_steps(tmp_path,
                                                                                monkeypatch):
    monkeypatch.setattr(runner, "_summary", lambda *a: None)  # the analysis is not under test
    kw = dict(quick=True, seeds=2, progress=False, report=False, echo=lambda s: None)
    runner.run_lab(["N3"], jobs=1, out=tmp_path / "a", **kw)
    runs, sessions = _records(tmp_path / "a")
    assert len(runs) == 8  # 4 configs × 2 seeds, trained as 4 stacked pairs
    # N3 trains each run once (no selection tries): its steps are the final runs' steps
    assert sessions[-1]["steps_done"] == sum(m["steps_done"] for m in runs.values()) > 0
    assert sessions[-1]["steps_per_s"] > 0
    # resume with one run of a pair missing: the pair is trained again together, and only
    # the missing run is stored, identical to the first time
    p = tmp_path / "a" / "results.jsonl"
    lines = p.read_text().splitlines(keepends=True)
    first_run = next(i for i, ln in enumerate(lines) if '"kind": "run"' in ln)
    p.write_text("".join(lines[:first_run] + lines[first_run + 1:]))
    runner.run_lab(["N3"], jobs=1, out=tmp_path / "a", **kw)
    again, sessions = _records(tmp_path / "a")
    assert again == runs and sessions[-1]["runs_done"] == 1
    runner.run_lab(["N3"], jobs=2, out=tmp_path / "b", **kw)
    assert _records(tmp_path / "b")[0] == runs  # bit-identical whatever --jobs


def test_together_runs_once_per_key_and_each_member_resumes_with_its_own_rng():
    from sharenorm.lab.jobs import run_together, together

    calls = []

    def many(items):
        calls.append(list(items))
        return [10 * x for x in items]

    def member(i):
        torch.manual_seed(100 + i)
        torch.rand(3)
        out = together("even" if i % 2 == 0 else "odd", many, i)
        return out, torch.rand(2)  # the RNG as this member left it, not as another did

    got = run_together([lambda i=i: member(i) for i in range(3)])
    assert calls == [[0, 2], [1]]  # one call per key, in member order
    for i, (out, after) in enumerate(got):
        calls.clear()
        alone = member(i)  # outside a group: many([item])[0]
        assert calls == [[i]] and out == alone[0] == 10 * i and torch.equal(after, alone[1])
