"""torch's own test material for the functional API: every sample of
``torch.testing._internal.common_methods_invocations.op_db`` for
``torch.nn.functional.batch_norm``, ``instance_norm`` and ``group_norm`` runs through torch's
function and through :mod:`sharenorm.functional` (plain and ``memory_efficient=True``): the
outputs, the gradients of the input, γ and β, and the running statistics each updates in
place must agree (float64 and float32 to a tight tolerance; in bfloat16 and float16
sharenorm's error against a float64 run may not exceed torch's by more than a rounding). Every input torch refuses (the OpInfo's error inputs)
sharenorm refuses with an exception of torch's type (its shape errors are ValueErrors that are
RuntimeErrors too).

The samples sharenorm refuses on purpose (README, "Argument checks"): a negative ``momentum``
or ``eps``, which torch takes (extrapolating the running statistics, or a NaN), and the 1-d
empty input torch's batch_norm passes through (every other 1-d input it refuses).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from norm_testing import import_torch_test_material

import sharenorm.functional as SF

common_methods = import_torch_test_material("common_methods_invocations")

OURS = {
    "nn.functional.batch_norm": SF.batch_norm,
    "nn.functional.instance_norm": SF.instance_norm,
    "nn.functional.group_norm": SF.group_norm,
}
# (batch_norm's "without_cudnn" variant has no CPU dtypes: it tests cuDNN's absence)
OPS = [op for op in common_methods.op_db if op.name in OURS and op.supported_dtypes("cpu")]
IDS = [f"{op.name.rpartition('.')[2]}{'-' + op.variant_test_name if op.variant_test_name else ''}"
       for op in OPS]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def test_every_functional_has_torch_test_material():
    assert {op.name for op in OPS} == set(OURS)


def _clone(v):
    if isinstance(v, torch.Tensor):
        return v.detach().clone().requires_grad_(v.requires_grad)
    return copy.deepcopy(v)


def _refused_on_purpose(sample) -> bool:
    kw = sample.kwargs
    return (kw.get("momentum", 0.0) < 0 or kw.get("eps", 1.0) <= 0
            or (sample.input.dim() < 2))


def _run(fn, sample, dtype=None):
    """``(output, [∂/∂ tensors that require grad…], [tensors after the call…])``; ``dtype``
    casts every floating tensor first (the float64 judge of a 16-bit sample)."""
    def prep(v):
        v = _clone(v)
        if dtype is not None and isinstance(v, torch.Tensor) and v.is_floating_point():
            v = v.detach().to(dtype).requires_grad_(v.requires_grad)
        return v

    x, args = prep(sample.input), [prep(a) for a in sample.args]
    kwargs = {k: prep(v) for k, v in sample.kwargs.items()}
    out = fn(x, *args, **kwargs)
    tensors = [t for t in (x, *args, *kwargs.values()) if isinstance(t, torch.Tensor)]
    grads = []
    if out.requires_grad and out.numel():
        gen = torch.Generator().manual_seed(1)
        dy = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out.dtype)
        wrt = [t for t in tensors if t.requires_grad]
        grads = list(torch.autograd.grad(out, wrt, dy, allow_unused=True))
    return out, grads, tensors


def check_samples(op, dtype, device: str = "cpu", tight: bool = True, roundings: float = 2.0,
                  **ours_kw) -> None:
    """Every op_db sample of ``op`` in ``dtype`` through torch's function and through
    sharenorm's with ``ours_kw``: equal to :data:`TOL` where ``tight`` (float64, float32),
    else no further from a float64 run than torch's result plus ``roundings`` units of the
    dtype. Also used by test_kernels.py for the Triton path."""
    torch.manual_seed(0)  # the samples' tensors are drawn from torch's generator
    samples = list(op.sample_inputs(device, dtype, requires_grad=dtype in TOL))
    assert samples
    compared = 0
    for sample in samples:
        where = f"{op.name} {sample.summary() if hasattr(sample, 'summary') else sample} {dtype}"
        if _refused_on_purpose(sample):
            with pytest.raises(ValueError, match="momentum|eps|at least 2 dims"):
                _run(OURS[op.name], sample)
            continue
        ours_fn = functools.partial(OURS[op.name], **ours_kw)
        theirs, ours = _run(op.op, sample), _run(ours_fn, sample)
        pairs = [("output", theirs[0], ours[0])]
        pairs += [(f"grad {k}", a, b) for k, (a, b) in enumerate(zip(theirs[1], ours[1],
                                                                     strict=True))]
        # the tensors after the call: the running statistics are updated in place
        pairs += [(f"tensor {k}", a, b) for k, (a, b) in enumerate(zip(theirs[2], ours[2],
                                                                       strict=True))]
        if tight and dtype in TOL:
            for label, want, got in pairs:
                torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=TOL[dtype],
                                           equal_nan=True, msg=lambda m, lbl=label, w=where:
                                           f"{w} {lbl}: {m}")
        else:
            exact = _run(op.op, sample, torch.float64)
            judged = [exact[0], *exact[1], *exact[2]]
            eps = torch.finfo(dtype).eps
            for (label, want, got), ref in zip(pairs, judged, strict=True):
                if want is None:
                    assert got is None, f"{where} {label}"
                    continue
                ref, want, got = (t.detach().double() for t in (ref, want, got))
                if not ref.numel():
                    continue
                err_theirs = float((want - ref).abs().max())
                err_ours = float((got - ref).abs().max())
                scale = float(ref.abs().max())
                assert err_ours <= 2 * err_theirs + roundings * eps * scale, (
                    f"{where} {label}: error {err_ours:.3g} against float64, torch's "
                    f"{err_theirs:.3g}")
        compared += 1
    assert compared


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["plain", "memory_efficient"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f64", "f32", "bf16", "f16"])
@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_torch_op_db_samples_match(op, dtype, memory_efficient):
    check_samples(op, dtype, memory_efficient=memory_efficient)


@pytest.mark.parametrize("op", [op for op in OPS if op.error_inputs_func is not None],
                         ids=[i for op, i in zip(OPS, IDS, strict=True)
                              if op.error_inputs_func is not None])
def test_what_torch_refuses_sharenorm_refuses_with_its_exception_type(op):
    errors = list(op.error_inputs(torch.device("cpu")))
    assert errors
    for err in errors:
        s = err.sample_input
        with pytest.raises(err.error_type):
            OURS[op.name](s.input, *s.args, **s.kwargs)
