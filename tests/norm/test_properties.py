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
