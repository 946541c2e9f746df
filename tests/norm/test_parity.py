"""Parity of sharenorm's BN/IN/GN with torch.nn and with the float64 reference:
outputs, input gradients, γ/β gradients and running statistics over a table of shapes
and every dtype sharenorm claims."""

from __future__ import annotations

import pytest
import torch
from norm_testing import DTYPES, assert_close, forward_backward, make_input, randomize_affine
from torch import nn

import sharenorm as sn
from sharenorm.norm import reference

# ----------------------------------------------------------------------------- shapes

BATCH_SHAPES = [
    # (sharenorm class, torch class, shape, channels_last)
    (sn.BatchNorm1d, nn.BatchNorm1d, (2, 3), False),  # (N, C) features, smallest batch
    (sn.BatchNorm1d, nn.BatchNorm1d, (64, 5), False),  # (N, C), batch 64
    (sn.BatchNorm1d, nn.BatchNorm1d, (3, 7, 11), False),  # (N, C, L), odd sizes
    (sn.BatchNorm1d, nn.BatchNorm1d, (1, 4, 9), False),  # batch of one with length
    (sn.BatchNorm2d, nn.BatchNorm2d, (8, 3, 1, 1), False),  # 1×1 spatial
    (sn.BatchNorm2d, nn.BatchNorm2d, (4, 5, 7, 9), False),  # odd channels and spatial
    (sn.BatchNorm2d, nn.BatchNorm2d, (4, 5, 7, 9), True),  # channels-last
    (sn.BatchNorm2d, nn.BatchNorm2d, (2, 3, 56, 56), False),  # 56×56
    (sn.BatchNorm3d, nn.BatchNorm3d, (2, 3, 4, 5, 6), False),  # 3-d
    (sn.BatchNorm3d, nn.BatchNorm3d, (2, 3, 4, 5, 6), True),  # 3-d channels-last
]

INSTANCE_SHAPES = [
    (sn.InstanceNorm1d, nn.InstanceNorm1d, (2, 3, 10), False),  # 1-d
    (sn.InstanceNorm1d, nn.InstanceNorm1d, (3, 10), False),  # no batch dim
    (sn.InstanceNorm2d, nn.InstanceNorm2d, (1, 4, 7, 7), False),  # batch of one
    (sn.InstanceNorm2d, nn.InstanceNorm2d, (5, 3, 6, 5), True),  # channels-last, odd
    (sn.InstanceNorm2d, nn.InstanceNorm2d, (3, 6, 5), False),  # no batch dim, 2-d
    (sn.InstanceNorm3d, nn.InstanceNorm3d, (3, 5, 2, 3, 4), False),  # 3-d
    (sn.InstanceNorm3d, nn.InstanceNorm3d, (2, 3, 2, 3, 4), True),  # 3-d channels-last
]

GROUP_SHAPES = [
    # (num_groups, shape, channels_last)
    (3, (2, 6, 5, 5), False),  # 2 channels per group
    (1, (1, 7, 9), False),  # one group (LayerNorm), odd C, batch of one
    (8, (3, 8, 4, 4), False),  # group == channel (InstanceNorm with affine)
    (4, (2, 12, 3, 4, 5), False),  # 3-d
    (2, (4, 6), False),  # (N, C) with no spatial dims
    (2, (2, 4, 56, 56), False),  # 56×56
    (5, (3, 15, 7, 3), True),  # channels-last, odd sizes
    (3, (2, 9, 2, 3, 4), True),  # 3-d channels-last
]


def _ids(table):
    return [f"{t[0].__name__}-{'x'.join(map(str, t[2]))}{'-cl' if t[3] else ''}" for t in table]


# ----------------------------------------------------------------------------- vs torch.nn


def _compare_with_torch(ours, theirs, x, atol, rtol, steps=3):
    """Same weights, same inputs: outputs, grads and buffers must agree after each step."""
    for step in range(steps):
        xs = x * (1 + 0.5 * step) - step  # different statistics each step
        g = torch.randn_like(xs, dtype=torch.float64)
        y1, dx1, (dw1, db1) = forward_backward(ours, xs, g)
        y2, dx2, (dw2, db2) = forward_backward(theirs, xs, g)
        assert_close(y1, y2, atol, rtol, f"output step {step}")
        assert_close(dx1, dx2, atol, rtol, f"input grad step {step}")
        for a, b, name in ((dw1, dw2, "weight grad"), (db1, db2, "bias grad")):
            if b is not None:
                assert_close(a, b, atol * 10, rtol, f"{name} step {step}")
        for p in (ours, theirs):
            p.zero_grad()
        for name in ("running_mean", "running_var"):
            b1, b2 = getattr(ours, name, None), getattr(theirs, name, None)
            if b2 is not None:
                assert_close(b1, b2, atol, rtol, f"{name} step {step}")


@pytest.mark.parametrize("momentum", [0.1, 0.7, None, 0.0, 1.0])
@pytest.mark.parametrize("cls,tcls,shape,cl", BATCH_SHAPES, ids=_ids(BATCH_SHAPES))
def test_batchnorm_matches_torch(cls, tcls, shape, cl, momentum):
    ours, theirs = cls(shape[1], momentum=momentum), tcls(shape[1], momentum=momentum)
    randomize_affine(ours, theirs)
    x = make_input(shape, torch.float32, cl)
    _compare_with_torch(ours, theirs, x, 1e-5, 1e-5)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 3
    ours.eval(), theirs.eval()
    assert_close(ours(x), theirs(x), 1e-5, 1e-5, "eval output")


@pytest.mark.parametrize("cls,tcls,shape,cl", INSTANCE_SHAPES, ids=_ids(INSTANCE_SHAPES))
@pytest.mark.parametrize("affine,track", [(False, False), (True, False), (True, True)])
def test_instancenorm_matches_torch(cls, tcls, shape, cl, affine, track):
    channels = shape[1] if len(shape) == cls._spatial_dims + 2 else shape[0]
    ours = cls(channels, affine=affine, track_running_stats=track)
    theirs = tcls(ours.num_features, affine=affine, track_running_stats=track)
    if affine:
        randomize_affine(ours, theirs)
    x = make_input(shape, torch.float32, cl)
    _compare_with_torch(ours, theirs, x, 2e-5, 1e-4)
    ours.eval(), theirs.eval()
    assert_close(ours(x), theirs(x), 2e-5, 1e-4, "eval output")


@pytest.mark.parametrize("groups,shape,cl", GROUP_SHAPES)
def test_groupnorm_matches_torch(groups, shape, cl):
    ours, theirs = sn.GroupNorm(groups, shape[1]), nn.GroupNorm(groups, shape[1])
    randomize_affine(ours, theirs)
    x = make_input(shape, torch.float32, cl)
    _compare_with_torch(ours, theirs, x, 2e-5, 1e-4, steps=1)


@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (2, 6, 3, 5, 7)])
@pytest.mark.parametrize("kind", ["batch", "instance", "group", "layer"])
@pytest.mark.parametrize("training", [True, False])
def test_channels_last_in_gives_channels_last_out(kind, shape, training):
    dim = len(shape) - 2
    m = sn.make_norm(kind, 6, dim=dim, act="relu").train(training)
    fmt = torch.channels_last if dim == 2 else torch.channels_last_3d
    x = make_input(shape, channels_last=True)
    y = m(x)
    assert y.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(y, m(x.contiguous()))


# ----------------------------------------------------------------------------- vs float64 reference


def _reference_grads(fn, x, weight, bias, g):
    """Output and gradients of a float64 reference function via autograd."""
    x64 = x.detach().double().requires_grad_(True)
    w64 = weight.detach().double().requires_grad_(True)
    b64 = bias.detach().double().requires_grad_(True)
    y = fn(x64, w64, b64)
    y.backward(g.double())
    return y.detach(), x64.grad, w64.grad, b64.grad


def _check_against_reference(module, fn, x, atol, rtol):
    g = torch.randn(x.shape, dtype=torch.float64)
    y, dx, (dw, db) = forward_backward(module, x, g)
    ry, rdx, rdw, rdb = _reference_grads(fn, x, module.weight, module.bias, g.to(x.dtype))
    assert_close(y, ry, atol, rtol, "output vs reference")
    # The input gradient is a difference of sums over the whole set: scale the tolerance.
    assert_close(dx, rdx, atol * 4, rtol * 4, "input grad vs reference")
    n = x.numel() // x.shape[1]
    assert_close(dw, rdw, atol * n**0.5 * 2, rtol * 4, "weight grad vs reference")
    assert_close(db, rdb, atol * n**0.5 * 2, rtol * 4, "bias grad vs reference")
    assert y.dtype == x.dtype


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize(
    "cls,tcls,shape,cl",
    BATCH_SHAPES[:-3] + BATCH_SHAPES[-2:],
    ids=_ids(BATCH_SHAPES[:-3] + BATCH_SHAPES[-2:]),
)
def test_batchnorm_matches_reference(cls, tcls, shape, cl, dtype, atol, rtol):
    m = cls(shape[1]).to(dtype)
    randomize_affine(m)
    x = make_input(shape, dtype, cl)
    _check_against_reference(m, lambda x, w, b: reference.batch_norm(x, w, b)[0], x, atol, rtol)
    # running statistics after one step: the seed's formula with the unbiased variance
    _, mean, var_unbiased = reference.batch_norm(x)
    assert_close(
        m.running_mean,
        reference.update_running(torch.zeros(shape[1]), mean, 0.1, 1),
        atol,
        rtol,
        "running_mean",
    )
    assert_close(
        m.running_var,
        reference.update_running(torch.ones(shape[1]), var_unbiased, 0.1, 1),
        atol * 10,
        rtol,
        "running_var",
    )


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("groups,shape,cl", GROUP_SHAPES)
def test_groupnorm_matches_reference(groups, shape, cl, dtype, atol, rtol):
    m = sn.GroupNorm(groups, shape[1]).to(dtype)
    randomize_affine(m)
    x = make_input(shape, dtype, cl)
    _check_against_reference(
        m, lambda x, w, b: reference.group_norm(x, groups, w, b), x, atol, rtol
    )


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize(
    "shape,cl", [((2, 3, 10), False), ((4, 5, 6, 7), True), ((2, 3, 2, 3, 4), False)]
)
def test_instancenorm_matches_reference(shape, cl, dtype, atol, rtol):
    cls = {3: sn.InstanceNorm1d, 4: sn.InstanceNorm2d, 5: sn.InstanceNorm3d}[len(shape)]
    m = cls(shape[1], affine=True).to(dtype)
    randomize_affine(m)
    x = make_input(shape, dtype, cl)
    _check_against_reference(m, lambda x, w, b: reference.instance_norm(x, w, b)[0], x, atol, rtol)


def test_instancenorm_running_stats_and_cumulative_momentum():
    """IN's running statistics follow the reference, and momentum=None is a true
    cumulative average (torch's InstanceNorm silently treats None as 0)."""
    m = sn.InstanceNorm2d(3, track_running_stats=True, momentum=None).double()
    means, vars_ = [], []
    for step in range(4):
        x = make_input((5, 3, 4, 6), torch.float64) * (step + 1)
        m(x)
        _, mean, var = reference.instance_norm(x)
        means.append(mean)
        vars_.append(var)
    assert int(m.num_batches_tracked) == 4
    assert_close(m.running_mean, torch.stack(means).mean(0), 1e-10, 1e-10, "cumulative mean")
    assert_close(m.running_var, torch.stack(vars_).mean(0), 1e-10, 1e-10, "cumulative var")


def test_batchnorm_cumulative_momentum_matches_reference():
    m = sn.BatchNorm2d(4, momentum=None).double()
    batches = [make_input((3, 4, 5, 5), torch.float64) * (i + 1) for i in range(5)]
    for x in batches:
        m(x)
    stats = [reference.batch_norm(x) for x in batches]
    assert_close(m.running_mean, torch.stack([s[1] for s in stats]).mean(0), 1e-10, 1e-10, "mean")
    assert_close(m.running_var, torch.stack([s[2] for s in stats]).mean(0), 1e-10, 1e-10, "var")


def test_batchnorm_eval_uses_running_stats_reference():
    m = sn.BatchNorm2d(3).double()
    randomize_affine(m)
    with torch.no_grad():
        m.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        m.running_var.copy_(torch.tensor([0.25, 4.0, 1.5]))
    m.eval()
    x = make_input((2, 3, 4, 4), torch.float64)
    expected = reference.batch_norm_eval(x, m.running_mean, m.running_var, m.weight, m.bias)
    assert_close(m(x), expected, 1e-12, 1e-12, "eval output")


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "elu", "silu", "gelu", "tanh", "sigmoid"])
@pytest.mark.parametrize("kind", ["batch", "instance", "group"])
def test_activation_matches_reference(kind, act):
    m = sn.make_norm(kind, 6, act=act, **({"affine": True} if kind == "instance" else {}))
    m = m.double()
    randomize_affine(m)
    x = make_input((3, 6, 4, 5), torch.float64)
    ref_norm = {
        "batch": lambda x, w, b: reference.batch_norm(x, w, b)[0],
        "instance": lambda x, w, b: reference.instance_norm(x, w, b)[0],
        "group": lambda x, w, b: reference.group_norm(
            x, m.num_groups if kind == "group" else 1, w, b
        ),
    }[kind]
    _check_against_reference(
        m, lambda x, w, b: reference.ACTIVATIONS[act](ref_norm(x, w, b), None), x, 1e-10, 1e-10
    )


# ----------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, w, b: sn.functional.batch_norm(
            x,
            torch.zeros(3, dtype=x.dtype),
            torch.ones(3, dtype=x.dtype),
            w,
            b,
            training=True,
            act="silu",
        ),
        lambda x, w, b: sn.functional.instance_norm(x, weight=w, bias=b, act="tanh"),
        lambda x, w, b: sn.functional.group_norm(x, 3, w, b, act="gelu"),
        lambda x, w, b: sn.functional.group_norm(x, 1, w, b),
    ],
    ids=["batch+silu", "instance+tanh", "group+gelu", "layer"],
)
def test_gradcheck_float64(fn):
    x = torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("memory_efficient", [False, True])
@pytest.mark.parametrize("act", [None, "silu", "leaky_relu"])
@pytest.mark.parametrize("op", ["group", "layer", "instance", "instance_tracked", "batch"])
@pytest.mark.parametrize("view", ["column", "every_other"])
def test_strided_affine_views_match_torch(op, view, act, memory_efficient):
    """γ and β as strided views of one table (``table[:, 0]``, ``w[::2]``), the functional
    form's common use: ATen's group-norm kernel read them as dense arrays (wrong values by
    ~1.6, silently) where torch.group_norm makes them dense first."""
    import torch.nn.functional as F

    import sharenorm.functional as SF

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 5, 3, generator=gen, dtype=torch.float64)
    table = torch.randn(6, 2, generator=gen, dtype=torch.float64) if view == "column" else \
        torch.randn(12, generator=gen, dtype=torch.float64)
    rm, rv = torch.randn(6, dtype=torch.float64), torch.rand(6, dtype=torch.float64) + 0.5
    calls = {
        "group": lambda f, w, b, **k: f.group_norm(x_, 3, w, b, **k),
        "layer": lambda f, w, b, **k: f.group_norm(x_, 1, w, b, **k),
        "instance": lambda f, w, b, **k: f.instance_norm(x_, weight=w, bias=b, **k),
        "instance_tracked": lambda f, w, b, **k: f.instance_norm(
            x_, rm.clone(), rv.clone(), w, b, **k),
        "batch": lambda f, w, b, **k: f.batch_norm(x_, rm.clone(), rv.clone(), w, b, True,
                                                   **k),
    }[op]
    results = []
    for f, kw in ((F, {}), (SF, {"act": act, "memory_efficient": memory_efficient})):
        x_ = x.clone().requires_grad_(True)
        t = table.clone().requires_grad_(True)
        w, b = (t[:, 0], t[:, 1]) if view == "column" else (t[::2], t[1::2])
        assert not w.is_contiguous()
        y = calls(f, w, b, **kw)
        if f is F and act is not None:
            y = getattr(F, act)(y)
        y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y))
        results.append((y.detach(), x_.grad, t.grad))
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want)
