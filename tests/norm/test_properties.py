"""Property-based tests: random shapes and configurations against the float64 reference."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sharenorm as sn
from sharenorm.norm import reference


@st.composite
def group_configs(draw):
    groups = draw(st.integers(1, 6))
    per_group = draw(st.integers(1, 4))
    n = draw(st.integers(1, 5))
    spatial = draw(st.lists(st.integers(1, 5), min_size=0, max_size=3))
    if per_group * (1 if not spatial else int(torch.tensor(spatial).prod())) == 1:
        spatial = spatial + [2]  # a group of one element has zero variance by definition
    return (
        groups,
        (n, groups * per_group, *spatial),
        draw(st.floats(1e-6, 1e-1)),
        draw(st.booleans()),
    )


@settings(max_examples=40, deadline=None)
@given(group_configs())
def test_groupnorm_random_configs(cfg):
    groups, shape, eps, affine = cfg
    m = sn.GroupNorm(groups, shape[1], eps=eps, affine=affine).double()
    if affine:
        with torch.no_grad():
            m.weight.uniform_(0.5, 2.0)
            m.bias.normal_()
    x = torch.randn(shape, dtype=torch.float64) * 4 + 1
    expected = reference.group_norm(x, groups, m.weight, m.bias, eps)
    torch.testing.assert_close(m(x), expected, atol=1e-9, rtol=1e-9)


@st.composite
def batch_configs(draw):
    dims = draw(st.integers(0, 3))
    n = draw(st.integers(1, 6))
    spatial = draw(st.lists(st.integers(1, 4), min_size=dims, max_size=dims))
    if n * (int(torch.tensor(spatial).prod()) if spatial else 1) == 1:
        n = 2
    c = draw(st.integers(1, 7))
    momentum = draw(st.one_of(st.none(), st.floats(0.0, 1.0)))
    return (n, c, *spatial), momentum, draw(st.integers(1, 3))


@settings(max_examples=40, deadline=None)
@given(batch_configs())
def test_batchnorm_random_configs_and_running_stats(cfg):
    shape, momentum, steps = cfg
    cls = {2: sn.BatchNorm1d, 3: sn.BatchNorm1d, 4: sn.BatchNorm2d, 5: sn.BatchNorm3d}[len(shape)]
    m = cls(shape[1], momentum=momentum).double()
    rm = torch.zeros(shape[1], dtype=torch.float64)
    rv = torch.ones(shape[1], dtype=torch.float64)
    for step in range(1, steps + 1):
        x = torch.randn(shape, dtype=torch.float64) * step + step
        y = m(x)
        ry, mean, var = reference.batch_norm(x, m.weight, m.bias)
        rm = reference.update_running(rm, mean, momentum, step)
        rv = reference.update_running(rv, var, momentum, step)
        torch.testing.assert_close(y, ry, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(m.running_mean, rm, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(m.running_var, rv, atol=1e-9, rtol=1e-9)
    assert int(m.num_batches_tracked) == steps


# BatchNorm runs on ATen's BatchNorm kernel, whose float32 statistics lose ~2e-6·|μ|/σ
# (more channels-last): fuzzed only up to |μ|/σ = 10 (see the README's differences).
_MAX_LOG_RATIO = {"batch": 1.0, "instance": 4.0, "group": 4.0, "layer": 4.0}


@st.composite
def offset_cases(draw):
    kind = draw(st.sampled_from(sorted(_MAX_LOG_RATIO)))
    groups = {"batch": 1, "instance": 1, "layer": 1}.get(kind) or draw(st.integers(1, 4))
    c = groups * draw(st.integers(1, 3)) if kind == "group" else draw(st.integers(1, 6))
    # ≥ 8 elements per statistic: with two, x̂ = ±1 whatever x is, and the true dx is ~0
    # (a relative error of float32's rounding against it means nothing)
    n, h, w = draw(st.integers(1, 4)), draw(st.integers(2, 6)), draw(st.integers(4, 6))
    return {
        "kind": kind,
        "groups": groups,
        "shape": (n, c, h, w),
        "memory_efficient": draw(st.booleans()),
        "channels_last": draw(st.booleans()),
        "act": draw(st.sampled_from([None, "relu", "leaky_relu", "elu", "silu", "gelu",
                                     "tanh", "sigmoid"])),
        "ratio": draw(st.sampled_from([-1.0, 1.0])) * 10 ** draw(
            st.floats(-2.0, _MAX_LOG_RATIO[kind])),
        "std": 10 ** draw(st.floats(-2.0, 3.0)),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


def _layer_and_reference(case):
    kind, c, act, me = case["kind"], case["shape"][1], case["act"], case["memory_efficient"]
    kw = {"act": act, "memory_efficient": me}
    if kind == "batch":
        return sn.BatchNorm2d(c, **kw), lambda x, w, b: reference.batch_norm(x, w, b)[0]
    if kind == "instance":
        return sn.InstanceNorm2d(c, affine=True, **kw), \
            lambda x, w, b: reference.instance_norm(x, w, b)[0]
    g = case["groups"] if kind == "group" else 1
    return sn.GroupNorm(g, c, **kw), lambda x, w, b: reference.group_norm(x, g, w, b)


@settings(max_examples=150, deadline=None)
@given(offset_cases())
def test_every_norm_and_path_against_float64_reference(case):
    """BatchNorm, InstanceNorm, GroupNorm and LayerNorm, plain and memory_efficient, both
    layouts, every activation, float32 inputs with |μ|/σ up to 1e4 (BatchNorm: 10) and σ
    from 1e-2 to 1e3: output and input gradient within float32's usual tolerance of the
    float64 reference on the same (rounded) input."""
    gen = torch.Generator().manual_seed(case["seed"])
    shape = case["shape"]
    layer, ref = _layer_and_reference(case)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(shape[1], generator=gen) + 0.5)
        layer.bias.copy_(torch.randn(shape[1], generator=gen))
    std = case["std"]
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * std + case["ratio"] * std)
    x = x.float()
    if case["channels_last"]:
        x = x.to(memory_format=torch.channels_last)
    g = torch.randn(shape, generator=gen)
    xi = x.clone().requires_grad_(True)
    y = layer(xi)
    y.backward(g)
    xr = x.double().requires_grad_(True)
    w, b = layer.weight.detach().double(), layer.bias.detach().double()
    yr = reference.ACTIVATIONS[case["act"]](ref(xr, w, b), None)
    yr.backward(g.double())
    scale_y = max(1.0, float(yr.detach().abs().max()))
    scale_dx = float(xr.grad.abs().max()) + 1e-30
    err_y = float((y.detach().double() - yr.detach()).abs().max()) / scale_y
    err_dx = float((xi.grad.double() - xr.grad).abs().max()) / scale_dx
    assert err_y < 2e-5, f"output error {err_y:.2e}"
    assert err_dx < 1e-4, f"dx error {err_dx:.2e}"
