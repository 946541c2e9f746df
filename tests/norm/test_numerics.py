"""Numerics of the GroupNorm-kernel norms (GroupNorm, InstanceNorm, LayerNorm as one
group) against the float64 reference where ATen's kernel is weak, and the channels-last
backward that crashes without dx, run in a subprocess so that a segfault fails a test
instead of ending the session."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import sharenorm as sn
from sharenorm.norm import reference

F32_ATOL, F32_RTOL = 2e-5, 1e-4  # norm_testing's float32 tolerance

# ----------------------------------------------------------------------------- the crash

# Every way into ATen's channels-last GroupNorm backward with only γ/β needing gradients:
# a trainable norm after a frozen layer. Each builds a layer (or a call) and an input.
CRASH_CASES = {
    "instance2d": "sn.InstanceNorm2d(8, affine=True), (2, 8, 32, 32)",
    "instance3d": "sn.InstanceNorm3d(8, affine=True), (2, 8, 8, 8, 16)",
    "instance2d-few-positions": "sn.InstanceNorm2d(8, affine=True), (2, 8, 8, 8)",
    "group": "sn.GroupNorm(2, 8), (2, 8, 32, 32)",
    "group3d": "sn.GroupNorm(2, 8), (2, 8, 4, 8, 8)",
    "layer": "sn.GroupNorm(1, 8), (2, 8, 32, 32)",
    "group-act": "sn.GroupNorm(2, 8, act='silu'), (2, 8, 32, 32)",
    "me-group": "sn.GroupNorm(2, 8, memory_efficient=True, act='relu'), (2, 8, 32, 32)",
    "me-group-bf16": "sn.GroupNorm(2, 8, memory_efficient=True).bfloat16(), (2, 8, 32, 32)",
    "me-instance": "sn.InstanceNorm2d(8, affine=True, memory_efficient=True), (2, 8, 32, 32)",
    "me-layer-f64": "sn.GroupNorm(1, 8, memory_efficient=True).double(), (2, 8, 32, 32)",
    "functional-group": "lambda x: SF.group_norm(x, 2, W, B), (2, 8, 32, 32)",
    "functional-instance": "lambda x: SF.instance_norm(x, weight=W, bias=B), (2, 8, 32, 32)",
    # strides that suit both layouts: ATen picks its channels-last loop by them (a pooled
    # (N, C, 1, 1) feature map of a channels-last net; one channel)
    "group-one-position": "sn.GroupNorm(2, 8), (3, 8, 1, 1)",
    "group3d-one-position": "sn.GroupNorm(2, 8), (3, 8, 1, 1, 1)",
    "layer-one-channel": "sn.GroupNorm(1, 1), (2, 1, 3, 3)",
    "functional-group-one-position": "lambda x: SF.group_norm(x, 2, W, B), (3, 8, 1, 1)",
    # an offset input takes the shifted second pass (a new tensor that needs no grad)
    "group-offset": "sn.GroupNorm(2, 8), (2, 8, 32, 32), 1e3",
    "instance-offset": "sn.InstanceNorm2d(8, affine=True), (2, 8, 32, 32), 1e3",
    "me-group-offset": "sn.GroupNorm(2, 8, memory_efficient=True), (2, 8, 32, 32), 1e3",
}

_CRASH_SCRIPT = textwrap.dedent(
    """
    import sys, torch, sharenorm as sn
    import sharenorm.functional as SF
    W = torch.nn.Parameter(torch.rand(8) + 0.5)
    B = torch.nn.Parameter(torch.randn(8))
    for name, spec in CASES:
        layer, shape, *offset = eval(spec)
        dtype = getattr(layer, "weight", W).dtype
        x = (torch.randn(shape, dtype=torch.float64) + (offset[0] if offset else 0.0)).to(dtype)
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        x = x.to(memory_format=fmt)  # needs no grad: only γ, β do
        layer(x).float().square().sum().backward()
        params = [W, B] if isinstance(layer, type(lambda: 0)) else list(layer.parameters())
        assert all(p.grad is not None and bool(p.grad.isfinite().all()) for p in params), name
        print("ok", name, flush=True)
    """
)


@pytest.fixture(scope="module")
def crash_results() -> dict[str, str]:
    """Each case's verdict: 'ok', or how its process ended. One process runs the cases in
    turn; where one dies, a new process continues after it."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    todo, results = list(CRASH_CASES.items()), {}
    while todo:
        script = f"CASES = {todo!r}\n" + _CRASH_SCRIPT
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             env=env, timeout=300)
        done = [line.split()[1] for line in run.stdout.splitlines() if line.startswith("ok ")]
        results.update(dict.fromkeys(done, "ok"))
        todo = todo[len(done):]
        if todo:  # the next case ended the process
            name = todo.pop(0)[0]
            results[name] = f"exit {run.returncode}: {run.stderr.strip()[-300:]}"
    return results


@pytest.mark.parametrize("case", list(CRASH_CASES))
def test_channels_last_backward_without_input_grad_does_not_crash(case, crash_results):
    assert crash_results[case] == "ok", crash_results[case]


# ----------------------------------------------------------------------------- cancellation


def _layers(kind: str, c: int, dims: int, memory_efficient: bool):
    """The sharenorm layer, its reference and the torch.nn layer of the same math."""
    if kind == "instance":
        cls = {2: sn.InstanceNorm2d, 3: sn.InstanceNorm3d}[dims]
        tcls = {2: torch.nn.InstanceNorm2d, 3: torch.nn.InstanceNorm3d}[dims]
        ours = cls(c, affine=True, memory_efficient=memory_efficient)
        return ours, c, tcls(c, affine=True)
    groups = {"group": 4, "layer": 1}[kind]
    return sn.GroupNorm(groups, c, memory_efficient=memory_efficient), groups, \
        torch.nn.GroupNorm(groups, c)


def _errors(layer, groups, x, g):
    """Max abs errors of (y, dx, dγ, dβ) against the float64 reference on the same
    (already rounded) input, each over the reference's max magnitude."""
    xi = x.detach().clone().requires_grad_(True)
    y = layer(xi)
    y.backward(g)
    xr = x.detach().double().requires_grad_(True)
    wr = layer.weight.detach().double().requires_grad_(True)
    br = layer.bias.detach().double().requires_grad_(True)
    yr = reference.group_norm(xr, groups, wr, br, layer.eps)
    yr.backward(g.double())
    pairs = ((y, yr), (xi.grad, xr.grad), (layer.weight.grad, wr.grad), (layer.bias.grad, br.grad))
    return [float((a.detach().double() - b.detach()).abs().max() / b.detach().abs().max())
            for a, b in pairs]


def _offset_input(shape, ratio, layout):
    """float32 x with |mean|/std = ratio per channel (std 1), in ``layout``."""
    x = (torch.randn(shape, dtype=torch.float64) + ratio).float()
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x


def _with_affine(*layers):
    torch.manual_seed(1)
    w, b = torch.rand(layers[0].weight.shape) + 0.5, torch.randn(layers[0].weight.shape)
    with torch.no_grad():
        for m in layers:
            m.weight.copy_(w)
            m.bias.copy_(b)


@pytest.mark.parametrize("ratio", [1e2, 1e3, 1e4])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("memory_efficient", [False, True], ids=["plain", "memory_efficient"])
@pytest.mark.parametrize("kind,dims", [("group", 2), ("layer", 2), ("instance", 2),
                                       ("instance", 3), ("group", 3)])
def test_large_mean_over_std_matches_float64_reference(kind, dims, memory_efficient, layout,
                                                       ratio):
    """|mean|/std up to 1e4 in float32: output and every gradient within the usual float32
    tolerance of the float64 reference (ATen's channels-last kernel alone is off by
    1e-2 at 1e2 and by ~200 from 3e3 on, its contiguous one by ~2e-4 at 1e4)."""
    shape = (2, 8, 32, 32) if dims == 2 else (2, 8, 4, 16, 16)  # ≥ 1024 positions
    layer, groups, _ = _layers(kind, 8, dims, memory_efficient)
    _with_affine(layer)
    x = _offset_input(shape, ratio, layout)
    g = torch.randn(shape)
    errors = _errors(layer, groups, x, g)
    for what, err in zip(("y", "dx", "dγ", "dβ"), errors, strict=True):
        assert err < F32_ATOL, f"{what}: relative max error {err:.2e}"


@pytest.mark.parametrize("kind", ["group", "instance", "layer"])
def test_channels_last_where_torch_nn_cancels(kind):
    """Side by side on one channels-last input with |mean|/std = 300: torch.nn's layer
    (its GroupNorm kernel for GroupNorm/LayerNorm; its InstanceNorm takes another kernel
    and is accurate) against sharenorm's. If torch's error drops below 1e-4, its kernel
    was fixed and the shifted second pass could go."""
    ours, groups, theirs = _layers(kind, 8, 2, False)
    _with_affine(ours, theirs)
    x = _offset_input((2, 8, 32, 32), 300.0, "channels_last")
    g = torch.randn(x.shape)
    ours_err = _errors(ours, groups, x, g)
    theirs_err = _errors(theirs, groups, x, g)
    assert max(ours_err) < F32_ATOL, ours_err
    if kind != "instance":
        assert theirs_err[0] > 1e-3, f"torch.nn's {kind} is accurate now: {theirs_err}"


def test_instance_norm_through_torch_nn_groupnorm_kernel_is_what_the_issue_saw():
    """The reported case: InstanceNorm2d on a channels-last 32×32 input, mean 3, std 0.01
    (sharenorm runs it on the GroupNorm kernel, torch.nn's GroupNorm with one channel per
    group is the same computation)."""
    x = (torch.randn(2, 4, 32, 32, dtype=torch.float64) * 0.01 + 3).float()
    x = x.to(memory_format=torch.channels_last)
    expected = reference.instance_norm(x.double())[0]
    ours = sn.InstanceNorm2d(4)(x)
    torch_gn = torch.nn.GroupNorm(4, 4, affine=False)(x)
    assert float((ours.double() - expected).abs().max()) < 1e-4
    assert float((torch_gn.double() - expected).abs().max()) > 1e-2


# ----------------------------------------------------------------------------- memory_efficient

ACTS = [None, "relu", "leaky_relu", "elu", "silu", "gelu", "tanh", "sigmoid"]
NORMS = ["batch", "batch-eval", "instance", "instance-running", "group", "layer"]
# error floors: about the dtype's rounding of dx itself (float64: the reference IS the
# plain path, whose error is then 0)
FLOOR = {torch.bfloat16: 4e-3, torch.float16: 5e-4, torch.float32: 1e-6, torch.float64: 1e-13}


def _norm(kind: str, act, memory_efficient: bool):
    kw = {"act": act, "memory_efficient": memory_efficient}
    if kind.startswith("batch"):
        m = sn.BatchNorm2d(8, **kw)
        return m.eval() if kind == "batch-eval" else m
    if kind.startswith("instance"):
        return sn.InstanceNorm2d(8, affine=True, track_running_stats=kind != "instance", **kw)
    return sn.GroupNorm({"group": 4, "layer": 1}[kind], 8, **kw)


def _dx_error(kind, act, dtype, layout, memory_efficient):
    """max |dx − dx_ref| / max |dx_ref| on an offset input (mean 20, std 3), the
    reference being the plain layer in float64 with the same (rounded) parameters."""
    torch.manual_seed(0)
    m = _norm(kind, act, memory_efficient)
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_()
        if getattr(m, "running_mean", None) is not None:
            m.running_mean.fill_(20.0)
            m.running_var.fill_(9.0)
    m = m.to(dtype)
    ref = _norm(kind, act, False).double()
    ref.load_state_dict({k: v.double() if v.is_floating_point() else v
                         for k, v in m.state_dict().items()})
    x = (torch.randn(4, 8, 6, 6, dtype=torch.float64) * 3 + 20).to(dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    g = torch.randn(x.shape, dtype=torch.float64).to(dtype)
    xi = x.clone().requires_grad_(True)
    m(xi).backward(g)
    xr = x.double().requires_grad_(True)
    ref(xr).backward(g.double())
    return float((xi.grad.double() - xr.grad).abs().max() / xr.grad.abs().max())


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", list(FLOOR), ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("act", ACTS, ids=str)
@pytest.mark.parametrize("kind", NORMS)
def test_memory_efficient_gradients_as_accurate_as_the_plain_path(kind, act, dtype, layout):
    """Every norm × activation × dtype × layout: the memory-efficient dx is within twice
    the plain path's error (or the dtype's floor) of the float64 reference. A 16-bit
    recomputation once lost the bits of x − μ and flipped relu's mask (error 0.3-0.7)."""
    plain = _dx_error(kind, act, dtype, layout, False)
    ours = _dx_error(kind, act, dtype, layout, True)
    assert ours <= 2 * max(plain, FLOOR[dtype]), f"memory_efficient {ours:.2e}, plain {plain:.2e}"


@pytest.mark.parametrize("memory_efficient", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 2, 4), (2, 1, 3, 5), (1, 1, 2, 2, 3), (2, 6, 1, 1)])
def test_strides_that_suit_both_layouts_get_the_channels_last_limit(shape, memory_efficient):
    # one channel (or one position) in channels-last strides: is_contiguous() is True, yet
    # ATen runs its channels-last loop, which cancels at |μ|/σ of 10 already
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) + 50).float()
    x = x.to(memory_format=fmt)
    c = shape[1]
    layer = sn.GroupNorm(1 if c == 1 else 2, c, memory_efficient=memory_efficient)
    xr = x.double()
    groups = layer.num_groups
    xg = xr.reshape(shape[0], groups, -1)
    ref = ((xg - xg.mean(-1, keepdim=True))
           / torch.sqrt(xg.var(-1, unbiased=False, keepdim=True) + layer.eps)).reshape(shape)
    with torch.no_grad():
        y = layer(x).double()
    assert float((y - ref).abs().max()) < 2e-5
