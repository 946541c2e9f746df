"""Helpers for the normalization tests: tolerances per dtype and a routine that
runs a sharenorm layer and a reference side by side through forward and backward."""

from __future__ import annotations

import pytest
import torch

# (dtype, atol, rtol) for comparing against the float64 reference. 16-bit inputs are
# compared after rounding the *input* to that dtype, so the tolerance covers only the
# output rounding and the kernel's reduced-precision arithmetic.
DTYPES = [
    pytest.param(torch.float64, 1e-10, 1e-10, id="float64"),
    pytest.param(torch.float32, 2e-5, 1e-4, id="float32"),
    pytest.param(torch.bfloat16, 6e-2, 2e-2, id="bfloat16"),
    pytest.param(torch.float16, 1e-2, 5e-3, id="float16"),
]


def make_input(shape, dtype=torch.float32, channels_last=False, scale=3.0, shift=1.5):
    """A test input with non-zero mean and non-unit variance, optionally channels-last."""
    x = (torch.randn(shape, dtype=torch.float64) * scale + shift).to(dtype)
    if channels_last:
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        x = x.to(memory_format=fmt)
    return x


def randomize_affine(*modules):
    """Give every module the same random γ, β (so a wrong broadcast shows)."""
    c = modules[0].weight.shape[0]
    w, b = torch.rand(c, dtype=torch.float64) + 0.5, torch.randn(c, dtype=torch.float64)
    with torch.no_grad():
        for m in modules:
            m.weight.copy_(w.to(m.weight.dtype))
            if m.bias is not None:
                m.bias.copy_(b.to(m.bias.dtype))


def forward_backward(module, x, grad_out):
    """Output, input grad and (γ grad, β grad) of ``module`` on a fresh copy of ``x``."""
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    y.backward(grad_out.to(y.dtype))
    w = getattr(module, "weight", None)
    b = getattr(module, "bias", None)
    return y.detach(), x.grad, (None if w is None else w.grad, None if b is None else b.grad)


def assert_close(actual, expected, atol, rtol, what):
    torch.testing.assert_close(
        actual.double(), expected.double(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}"
    )


def import_torch_test_material(name: str):
    """``torch.testing._internal.<name>`` (torch's own test material: ``common_modules``,
    ``common_methods_invocations``), or a skip without the test extra. Importing it freezes
    ``torch.backends`` flags for the whole process (``common_utils`` calls
    ``torch.backends.disable_global_flags()``): every later ``torch.backends.mkldnn.enabled =
    ...`` would raise, as the lab's stacked training does. Unfrozen again here, so the rest of
    the suite runs as without these files."""
    pytest.importorskip("expecttest", reason="torch's test helpers need expecttest (the test extra)")
    frozen = torch.backends.flags_frozen()
    module = pytest.importorskip(f"torch.testing._internal.{name}")
    if not frozen:
        torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
    assert torch.backends.flags_frozen() == frozen
    return module
