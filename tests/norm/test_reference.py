"""The float64 reference itself, checked against element-by-element loops written from
the seed's definitions (so the oracle is not trusted blindly)."""

from __future__ import annotations

import math

import torch

from sharenorm.norm import reference


def _loop_normalize(values, eps):
    m = sum(values) / len(values)
    v = sum((a - m) ** 2 for a in values) / len(values)  # biased
    return [(a - m) / math.sqrt(v + eps) for a in values]


def test_batch_norm_reference_against_loops():
    x = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    y, mean, var_unbiased = reference.batch_norm(x, eps=1e-3)
    for c in range(2):
        vals = [float(x[n, c, i, j]) for n in range(3) for i in range(2) for j in range(2)]
        expected = _loop_normalize(vals, 1e-3)
        got = [float(y[n, c, i, j]) for n in range(3) for i in range(2) for j in range(2)]
        assert max(abs(a - b) for a, b in zip(got, expected, strict=True)) < 1e-12
        m = sum(vals) / len(vals)
        assert abs(float(mean[c]) - m) < 1e-12
        assert (
            abs(float(var_unbiased[c]) - sum((a - m) ** 2 for a in vals) / (len(vals) - 1)) < 1e-12
        )


def test_instance_and_group_norm_reference_against_loops():
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    y_in, _, _ = reference.instance_norm(x)
    y_gn = reference.group_norm(x, 2)
    for n in range(2):
        for c in range(4):
            expected = _loop_normalize([float(v) for v in x[n, c]], 1e-5)
            assert torch.allclose(y_in[n, c], torch.tensor(expected, dtype=torch.float64))
        for g in range(2):
            vals = [float(x[n, c, i]) for c in (2 * g, 2 * g + 1) for i in range(3)]
            expected = torch.tensor(_loop_normalize(vals, 1e-5), dtype=torch.float64).reshape(2, 3)
            assert torch.allclose(y_gn[n, 2 * g : 2 * g + 2], expected)


def test_affine_and_running_update():
    x = torch.randn(4, 3, dtype=torch.float64)
    w, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 0.0, -1.0])
    y, _, _ = reference.batch_norm(x, w, b)
    plain, _, _ = reference.batch_norm(x)
    assert torch.allclose(y, plain * w.double() + b.double())
    r = reference.update_running(torch.zeros(1), torch.tensor([10.0]), 0.1, 1)
    assert float(r) == 1.0
    assert float(reference.update_running(torch.tensor([2.0]), torch.tensor([4.0]), None, 2)) == 3.0
