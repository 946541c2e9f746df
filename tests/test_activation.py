"""The activation table: every entry's in-place form, derivative and inverse agree with
torch's function, and its Triton code and C loops exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from sharenorm.activation import ACTIVATION_NAMES, ACTIVATIONS, spec
from sharenorm.norm import cpu
from sharenorm.norm.fused import _cpu_kernel_kind


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_entry_agrees_with_torch(name):
    a = ACTIVATIONS[name]
    p = a.default
    z = torch.linspace(-3, 3, 41, dtype=torch.float64)
    y = a.fn(z, p, False)
    torch.testing.assert_close(a.fn_(z.clone(), p), y)
    zz = z.clone().requires_grad_(True)
    dy = torch.rand_like(z) + 0.5
    (expected,) = torch.autograd.grad(a.fn(zz, p, False), zz, dy)
    torch.testing.assert_close(a.grad(dy, z.clone(), p), expected)
    if a.inverse is None:
        assert a.grad_from_output is None
        assert not a.invertible(p, torch.float32)
        return
    assert a.invertible(p, torch.float32)
    torch.testing.assert_close(a.inverse(y.clone(), p), z)
    torch.testing.assert_close(a.grad_from_output(dy, y, p), expected)


def test_codes_are_distinct_and_none_is_identity():
    assert spec(None) is ACTIVATIONS["identity"]
    codes = [a.triton for a in ACTIVATIONS.values()]
    assert sorted(codes) == list(range(len(codes)))
    assert len({a.c_name for a in ACTIVATIONS.values()}) == len(ACTIVATIONS)


def test_every_c_kind_of_the_table_is_in_backward_c():
    source = (Path(cpu.__file__).with_name("backward.c")).read_text()
    defined = set(re.findall(r"\b(ident|(?:rec|inv)_[a-z]+)\b", source))
    for name, a in ACTIVATIONS.items():
        kinds = {_cpu_kernel_kind(name, False)}
        if a.inverse is not None:
            kinds.add(_cpu_kernel_kind(name, True))
        assert kinds <= defined, (name, kinds - defined)
        assert kinds <= set(cpu._KINDS) | set(cpu._FLOAT32_KINDS)
