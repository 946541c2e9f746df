"""The fused C loops of sharenorm.norm.cpu (backward.c) called directly: dx, dγ, dβ of
every kind for BatchNorm (training and eval), GroupNorm and InstanceNorm against float64
autograd, in every layout and dtype, split over threads, with NaN/inf inputs as ATen's
activation backwards treat them, and the fall-back when no compiler works. (The modules
and functions that use them are tested in test_fused.py, with and without the loops.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sharenorm as sn
from sharenorm.norm import cpu, fused

HAS_CC = shutil.which(os.environ.get("CC") or "cc") is not None
pytestmark = pytest.mark.skipif(not HAS_CC, reason="no C compiler (cc or $CC) to build the loops")

SLOPE = 0.2
ALPHA = 0.7  # elu's α
# kind -> (activation, whether the saved tensor is its output)
KINDS = {
    "ident": (lambda z: z, True),
    "inv_leaky": (lambda z: F.leaky_relu(z, SLOPE), True),
    "rec_relu": (torch.relu, False),
    "rec_leaky": (lambda z: F.leaky_relu(z, SLOPE), False),
    # float32 only: exp and log1p computed by backward.c's own vectorized functions
    "rec_silu": (F.silu, False),
    "rec_sigmoid": (torch.sigmoid, False),
    "rec_tanh": (torch.tanh, False),
    "rec_gelu": (F.gelu, False),
    "rec_elu": (lambda z: F.elu(z, ALPHA), False),
    "inv_elu": (lambda z: F.elu(z, ALPHA), True),
}
FLOAT32_ONLY = {"rec_silu", "rec_sigmoid", "rec_tanh", "rec_gelu", "rec_elu", "inv_elu"}
# (shape, memory format): 2-d and 3-d inputs, odd sizes, HW = 1, channels-last 2-d and 3-d
LAYOUTS = [
    ((3, 6), torch.contiguous_format),  # (N, C): one position
    ((2, 6, 7), torch.contiguous_format),  # 1-d signal, odd length
    ((2, 6, 3, 5), torch.contiguous_format),
    ((3, 6, 1, 1), torch.contiguous_format),  # HW = 1
    ((2, 6, 3, 5), torch.channels_last),
    ((2, 6, 2, 3, 2), torch.channels_last_3d),
]
NORMS = ["bn", "bn_eval", "gn", "in"]  # gn: 3 groups of 2 channels


def _structure(norm, c):
    """(stats_per_sample, channels_per_stat, fixed) of backward.c's statistic indexing."""
    return {"bn": (0, 1, False), "bn_eval": (0, 1, True), "gn": (3, c // 3, False),
            "in": (c, 1, False)}[norm]


def _normalize(x, norm, rm, rv):
    """x̂ in float64 with its per-statistic mean and rstd (flattened as backward.c reads them)."""
    n, c = x.shape[:2]
    if norm == "bn_eval":
        view = (1, c, *([1] * (x.dim() - 2)))
        r = (rv + 1e-5).rsqrt()
        return (x - rm.view(view)) * r.view(view), rm, r
    groups = {"bn": None, "gn": 3, "in": c}[norm]
    if groups is None:
        dims = [0, *range(2, x.dim())]
        mean, var = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
        r = (var + 1e-5).rsqrt()
        return (x - mean) * r, mean.flatten(), r.flatten()
    xg = x.reshape(n, groups, -1)
    mean, var = xg.mean(-1, keepdim=True), xg.var(-1, unbiased=False, keepdim=True)
    r = (var + 1e-5).rsqrt()
    return ((xg - mean) * r).reshape(x.shape), mean.flatten(), r.flatten()


def _case(kind, norm, shape, fmt, dtype, seed=0):
    """The inputs of norm_backward and the float64 autograd (dx, dγ, dβ) to expect."""
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).double()
    gamma = (torch.rand(c, generator=gen, dtype=torch.float64) + 0.5).to(dtype).double()
    beta = (torch.randn(c, generator=gen, dtype=torch.float64) * 0.5).to(dtype).double()
    rm = torch.randn(c, generator=gen, dtype=torch.float64).to(dtype).double()
    rv = (torch.rand(c, generator=gen, dtype=torch.float64) + 0.5).to(dtype).double()
    g = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).double()
    act, invert = KINDS[kind]
    xr, wr, br = (t.clone().requires_grad_(True) for t in (x, gamma, beta))
    view = (1, c, *([1] * (x.dim() - 2)))
    xhat, mean, r = _normalize(xr, norm, rm, rv)
    y = act(xhat * wr.view(view) + br.view(view))
    y.backward(g)
    saved = (y.detach() if invert else x).to(dtype).contiguous(memory_format=fmt)
    args = (kind, saved, g.to(dtype).contiguous(memory_format=fmt), gamma.to(dtype),
            beta.to(dtype), r.detach().to(dtype), mean.detach().to(dtype))
    return args, invert, (xr.grad, wr.grad, br.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape,fmt", LAYOUTS, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_norm_backward_matches_float64_autograd(kind, norm, shape, fmt, dtype):
    args, invert, want = _case(kind, norm, shape, fmt, dtype)
    if kind in FLOAT32_ONLY and dtype == torch.float64:
        assert not cpu.supports(kind, args[1], args[2])
        return
    assert cpu.supports(kind, args[1], args[2])
    per_sample, per_stat, fixed = _structure(norm, shape[1])
    dx, dw, db = cpu.norm_backward(
        *args, stats_per_sample=per_sample, channels_per_stat=per_stat, invert=invert,
        fixed=fixed, act_param=ALPHA if "elu" in kind else SLOPE, mask=[True, True, True],
    )
    assert dx.dtype == dtype and dx.stride() == args[1].stride()
    assert dw.dtype == db.dtype == dtype
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    for name, got, exp in zip(("dx", "dγ", "dβ"), (dx, dw, db), want, strict=True):
        torch.testing.assert_close(got.double(), exp, atol=tol, rtol=tol, msg=name)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_threads_split_the_work_without_changing_it(norm, fmt, monkeypatch):
    args, invert, _ = _case("rec_relu", norm, (4, 6, 5, 7), fmt, torch.float64)
    per_sample, per_stat, fixed = _structure(norm, 6)

    def run():
        return cpu.norm_backward(*args, stats_per_sample=per_sample, channels_per_stat=per_stat,
                                 invert=invert, fixed=fixed, act_param=SLOPE, mask=[True] * 3)

    threads = torch.get_num_threads()
    monkeypatch.setattr(cpu, "_MIN_PER_THREAD", 1)
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(3)
        assert cpu._threads(args[1].numel()) == 3
        many = run()
    finally:
        torch.set_num_threads(threads)
    for got, want in zip(many, one, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_threads_are_torchs_own_openmp_team():
    """The loops' OpenMP runtime is the one torch loaded (libgomp.so.1 is already in the
    process when the C file's library is opened): torch.set_num_threads reaches it."""
    threads = torch.get_num_threads()
    lib = cpu._library()
    try:
        for k in (1, 3):
            torch.set_num_threads(k)
            assert lib.max_threads() == k
    finally:
        torch.set_num_threads(threads)


def _eval_identity_map(kind, s, g, mask=(True, True, True)):
    """BatchNorm in eval with r = 1, μ = 0 and no affine: dx is the activation's gradient."""
    c = s.shape[1]
    return cpu.norm_backward(kind, s, g, None, None, torch.ones(c), torch.zeros(c),
                             stats_per_sample=0, channels_per_stat=1, invert=False, fixed=True,
                             act_param=ALPHA if "elu" in kind else SLOPE, mask=list(mask))


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
def test_nan_and_inf_as_atens_activation_backward(fmt):
    """As ATen's threshold, leaky_relu and elu backwards: a non-positive z passes no gradient
    (relu) or p·g (leaky_relu), whatever the gradient (inf, NaN); a NaN z passes g for relu
    and elu (their test is z ≤ 0) and p·g for leaky_relu (z > 0)."""
    aten = torch.ops.aten
    z = torch.tensor([1.0, -1.0, float("nan"), 0.0, -2.0, 3.0, float("nan"), -0.5])
    g = torch.tensor([2.0, float("inf"), 1.5, float("inf"), float("nan"), 1.0, float("nan"), 3.0])
    z, g = z.view(1, 1, 2, 4).contiguous(memory_format=fmt), g.view(1, 1, 2, 4).contiguous(memory_format=fmt)
    y = F.elu(z, ALPHA)
    for kind, s, want in (
        ("rec_relu", z, aten.threshold_backward(g, z, 0.0)),
        ("rec_leaky", z, aten.leaky_relu_backward(g, z, SLOPE, False)),
        ("rec_elu", z, aten.elu_backward(g, ALPHA, 1.0, 1.0, False, z)),
        ("inv_elu", y, aten.elu_backward(g, ALPHA, 1.0, 1.0, True, y)),
    ):
        dx = _eval_identity_map(kind, s, g, mask=(True, False, False))[0]
        torch.testing.assert_close(dx.nan_to_num(7.0), want.nan_to_num(7.0), msg=kind)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("act", [None, "relu", "leaky_relu", "elu", "silu"])
def test_eval_batchnorm_keeps_a_non_finite_inputs_gradient(act, fmt):
    """In eval dx = dy·act'(z)·γ·r at every element, also where x is ±inf or NaN (a
    0·x term of the training formula made it NaN). For elu and silu ATen's own value of
    act' at ±inf and NaN depends on its code path (vectorized or not): they are compared
    where x is finite."""
    x = torch.randn(2, 3, 4, 4).contiguous(memory_format=fmt)
    x[0, 1, 2, 2], x[1, 2, 0, 0], x[1, 0, 3, 1] = float("inf"), float("nan"), -float("inf")
    g = torch.randn(2, 3, 4, 4).contiguous(memory_format=fmt)
    lean = sn.BatchNorm2d(3, act=act, memory_efficient=True).eval()
    plain = sn.BatchNorm2d(3, act=act).eval()
    with torch.no_grad():
        lean.running_mean.copy_(torch.randn(3))
        lean.running_var.copy_(torch.rand(3) + 0.5)
    plain.load_state_dict(lean.state_dict())
    grads = []
    for m in (lean, plain):
        xi = x.clone().requires_grad_(True)
        m(xi).backward(g)
        grads.append((xi.grad, m.weight.grad, m.bias.grad))
    if act in ("elu", "silu"):
        finite = x.isfinite()
        torch.testing.assert_close(grads[0][0][finite], grads[1][0][finite])
        return
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, equal_nan=True)


@pytest.mark.parametrize("kind", ["rec_silu", "rec_sigmoid", "rec_tanh", "rec_gelu", "rec_elu"])
def test_float32_activation_gradients_as_accurate_as_atens(kind):
    """dz over z in [−30, 30] against float64 autograd at the same float32 z: within
    3e-7 absolute (ATen's float32 backward: up to 9.8e-7 for silu), and NaN in, NaN out
    (but elu, whose z ≤ 0 test lets a NaN pass g, as ATen's elu_backward)."""
    z = torch.linspace(-30, 30, 60001).view(1, 1, -1)
    z[0, 0, 0] = float("nan")
    dz = _eval_identity_map(kind, z, torch.ones_like(z), mask=(True, False, False))[0]
    z64 = z.double().requires_grad_(True)
    act = KINDS[kind][0]
    act(z64).sum().backward()
    assert dz[0, 0, 0] == 1.0 if kind == "rec_elu" else dz[0, 0, 0].isnan()
    torch.testing.assert_close(dz[..., 1:].double(), z64.grad[..., 1:], atol=3e-7, rtol=0)


def test_float32_elu_inverse_from_the_output():
    """inv_elu rebuilds z = log1p(y/α) from y = elu(z) ≥ −0.98·α (z ≥ −4): dγ of a
    BatchNorm in eval with γ = 1, β = 0, r = 1 and one element per channel is dz·z."""
    c = 4001
    z = torch.linspace(-4, 5, c, dtype=torch.float64)
    y = F.elu(z, ALPHA).float().view(1, c, 1)
    ones = torch.ones(c)
    dx, dw, _ = cpu.norm_backward("inv_elu", y, torch.ones_like(y), ones, torch.zeros(c), ones,
                                  None, stats_per_sample=0, channels_per_stat=1, invert=True,
                                  fixed=True, act_param=ALPHA, mask=[True, True, False])
    y64 = y.double().view(-1)
    dz = torch.where(y64 > 0, torch.ones_like(y64), y64 + ALPHA)
    z_of_y = torch.where(y64 > 0, y64, torch.log1p(y64 / ALPHA))
    torch.testing.assert_close(dx.double().view(-1), dz, atol=1e-7, rtol=0)
    # the float32 y/α alone is off by 1 ulp, which log1p near −1 amplifies 55 times
    torch.testing.assert_close(dw / dz, z_of_y, atol=5e-6, rtol=0)


def test_non_finite_coefficients_give_none():
    s, g = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    r = torch.tensor([1.0, float("inf"), 1.0])
    for fmt_s, fmt_g in ((s, g), (s.unsqueeze(-1).contiguous(memory_format=torch.channels_last),
                                  g.unsqueeze(-1).contiguous(memory_format=torch.channels_last))):
        got = cpu.norm_backward("ident", fmt_s, fmt_g, None, None, r, torch.zeros(3),
                                stats_per_sample=0, channels_per_stat=1, invert=False,
                                fixed=False, act_param=1.0, mask=[True, True, True])
        assert got is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_affine_invertible_matches_the_torch_check(dtype, monkeypatch):
    """The C check of fused._affine_invertible against its torch version, over a table:
    γ = 0, subnormal, NaN; |β| exactly at and just over 16·|γ|·s; inf β; no γ or no β; the
    spread s = min σ·r = √(1 − ε·r²) of a channel's statistics (r = 1/√(σ² + ε)) below 1."""
    tiny = torch.finfo(dtype).tiny
    r1 = [[1.0, 1.0]]  # ε = 0 below unless given: s = 1
    half = (0.75 / 0.1) ** 0.5  # ε = 0.1, σ² = 0.1/3: r² = 7.5, s² = 1 − ε·r² = 1/4
    cases = [
        ([1.0, -2.0], [0.5, -32.0], r1, 1, 0.0),  # |β| = 16·|γ| exactly: kept
        ([1.0, -2.0], [0.5, -32.01], r1, 1, 0.0),
        ([1.0, 0.0], [0.0, 0.0], r1, 1, 0.0),
        ([1.0, tiny / 2], None, r1, 1, 0.0),  # subnormal γ
        ([1.0, float("nan")], None, r1, 1, 0.0),
        ([1.0, 1.0], [0.0, float("inf")], r1, 1, 0.0),
        (None, [0.0, 16.0], r1, 1, 0.0),  # γ = 1
        (None, [0.0, 16.5], r1, 1, 0.0),
        ([-3.0, tiny], None, r1, 1, 0.0),
        # the spread: BN-like (one statistic per channel); r = 1 at ε = 0.1 gives s = √0.9
        # (limit 15.18), s = 1/2 on channel 1 (limit 8)
        ([1.0, 1.0], [15.0, 7.9], [[1.0, half]], 1, 0.1),
        ([1.0, 1.0], [15.0, 8.1], [[1.0, half]], 1, 0.1),
        ([1.0, 1.0], [15.0, 0.0], [[1.0, 1e6]], 1, 0.1),  # σ ≪ √ε, β = 0: kept
        # GN-like: 2 samples × 2 groups of 2 channels; the smaller spread over the samples
        ([1.0] * 4, [0.0, 0.0, 7.9, -7.9], [[1.0, 1.0], [1.0, half]], 2, 0.1),
        ([1.0] * 4, [0.0, 0.0, 8.1, 0.0], [[1.0, 1.0], [1.0, half]], 2, 0.1),
        ([1.0] * 4, [8.1, 0.0, 0.0, 0.0], [[1.0, 1.0], [1.0, half]], 2, 0.1),  # group 0: √0.9
        ([1.0, 1.0], [1.0, 1.0], [[float("nan"), 1.0]], 1, 0.1),  # a NaN statistic: skipped
    ]
    for gamma, beta, rstd, cpg, eps in cases:
        w = None if gamma is None else torch.tensor(gamma, dtype=dtype)
        b = None if beta is None else torch.tensor(beta, dtype=dtype)
        r = torch.tensor(rstd, dtype=dtype)
        got = cpu.affine_invertible(w, b, dtype, 16.0, r, cpg, eps)
        with monkeypatch.context() as m:
            m.setattr(cpu, "affine_invertible", lambda *args: None)  # the torch version
            want = fused._affine_invertible(w, b, dtype, r, cpg, eps)
        assert got is want, (gamma, beta, rstd)
    expected = [True, False, False, False, False, False, True, False, True, True, False, True,
                True, False, True, True]
    assert [cpu.affine_invertible(
        None if g is None else torch.tensor(g, dtype=dtype),
        None if b is None else torch.tensor(b, dtype=dtype), dtype, 16.0,
        torch.tensor(r, dtype=dtype), c, e) for g, b, r, c, e in cases] == expected
    assert cpu.affine_invertible(torch.ones(2, dtype=dtype), None, torch.float16, 16.0) is None
    assert cpu.affine_invertible(torch.ones(4, dtype=dtype)[::2], None, dtype, 16.0) is None


def test_supports_only_what_the_loops_read():
    s, g = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert cpu.supports("ident", s, g)
    assert not cpu.supports("silu", s, g)  # no loop for it
    assert not cpu.supports("ident", s.half(), g.half())
    assert not cpu.supports("ident", s, g.double())
    assert not cpu.supports("ident", s, g.contiguous(memory_format=torch.channels_last))
    assert not cpu.supports("ident", s.transpose(2, 3), g.transpose(2, 3))  # strided
    assert not cpu.supports("ident", s[:0], g[:0])
    assert not cpu.supports("ident", s, g[:, :, :3])  # shapes differ
    assert not cpu.supports("ident", s[0, 0, 0], g[0, 0, 0])  # 1-d: no channel dimension


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, **env},
    )


CHECK = """
import torch, sharenorm.functional as SF
from sharenorm.norm import cpu, fused
x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
SF.group_norm(x, 2, act="relu", memory_efficient=True).sum().backward()
ref = x.detach().clone().requires_grad_(True)
torch.relu(torch.nn.functional.group_norm(ref, 2)).sum().backward()
assert torch.allclose(x.grad, ref.grad, atol=1e-10)
print(cpu.available())
"""


def test_builds_into_the_cache_once(tmp_path):
    first = _python(CHECK, SHARENORM_CACHE_DIR=str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "True"
    built = sorted(tmp_path.glob("backward-*.so"))
    assert len(built) == 1 and len(list(tmp_path.iterdir())) == 1  # no temporary file left
    stamp = built[0].stat().st_mtime_ns
    again = _python(CHECK, SHARENORM_CACHE_DIR=str(tmp_path))
    assert again.stdout.strip() == "True" and built[0].stat().st_mtime_ns == stamp


def _built_library() -> Path:
    """The library this process loaded (built into its cache on first use)."""
    if not cpu.available():
        pytest.skip("no C compiler here: no library to damage")
    return Path(cpu._library()._name)


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty", "unsealed"])
def test_the_seal_shows_a_damaged_library(tmp_path, damage):
    data = _built_library().read_bytes()
    assert cpu._intact(_built_library())
    seal = len(cpu._SEAL) + 64
    flipped = data[:500] + bytes([data[500] ^ 1]) + data[501:]
    damaged = {"truncated": data[:1000], "flipped": flipped, "empty": b"",
               "unsealed": data[:-seal]}[damage]
    (tmp_path / "lib.so").write_bytes(damaged)
    assert not cpu._intact(tmp_path / "lib.so")


def test_a_truncated_library_in_the_cache_is_built_again(tmp_path):
    """A library cut short (a crash before its bytes reached the disk, a full disk) would
    make dlopen map pages past the end of the file: SIGBUS, in every process that loads it.
    The seal (the digest appended to each build) shows the damage, and it is built again."""
    built = _built_library()
    copy = tmp_path / built.name  # the name this source, compiler and CPU give
    copy.write_bytes(built.read_bytes()[:1000])
    run = _python(CHECK, SHARENORM_CACHE_DIR=str(tmp_path))
    assert run.returncode == 0, run.stderr  # -7 would be SIGBUS: the file was dlopen'ed
    assert run.stdout.strip() == "True"
    assert cpu._intact(copy)


@pytest.mark.parametrize("env", [{"CC": "/nonexistent/cc"}, {"SHARENORM_CPU_KERNELS": "0"}],
                         ids=["compiler-fails", "switched-off"])
def test_without_the_loops_the_composition_runs(tmp_path, env):
    run = _python(CHECK, SHARENORM_CACHE_DIR=str(tmp_path), **env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"
    assert not list(tmp_path.glob("*.so"))


def test_flags_that_do_not_compile_are_not_tried_again(tmp_path):
    """A compiler that rejects every flag set (here: one that always fails) is asked once per
    flag set; later processes read the .failed markers instead of running it again."""
    fake = tmp_path / "cc"
    calls = tmp_path / "calls"
    fake.write_text(f"#!/bin/sh\necho x >> {calls}\nexit 1\n")
    fake.chmod(0o755)
    cache = tmp_path / "cache"
    for _ in range(2):
        run = _python(CHECK, SHARENORM_CACHE_DIR=str(cache), CC=str(fake))
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == "False"
    assert len(calls.read_text().split()) == len(cpu._TARGET_FLAGS)
    assert len(list(cache.glob("*.failed"))) == len(cpu._TARGET_FLAGS)


def test_a_changed_compiler_is_tried_again(tmp_path):
    """The .failed markers belong to one compiler: replacing it (an upgrade, a fix to a
    broken install) gives new cache keys, so the build is attempted again and succeeds."""
    cc = tmp_path / "cc"
    cc.write_text("#!/bin/sh\nexit 1\n")
    cc.chmod(0o755)
    cache = tmp_path / "cache"
    assert _python(CHECK, SHARENORM_CACHE_DIR=str(cache), CC=str(cc)).stdout.strip() == "False"
    real = shutil.which("cc") or shutil.which("gcc")
    cc.unlink()
    cc.write_text(f'#!/bin/sh\nexec {real} "$@"\n')
    cc.chmod(0o755)
    os.utime(cc, ns=(1, 1))  # a different time of change even on a coarse clock
    run = _python(CHECK, SHARENORM_CACHE_DIR=str(cache), CC=str(cc))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "True"


def test_a_compiler_command_line_and_a_cpp_driver_work(tmp_path):
    """CC is a command line (CC="cc -g", as make reads it); a C++ driver compiles the file
    as C (-x c), so its symbols are not mangled."""
    run = _python(CHECK, SHARENORM_CACHE_DIR=str(tmp_path / "a"), CC=f"{shutil.which('cc')} -g")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "True"
    cpp = shutil.which("g++") or shutil.which("c++")
    if cpp is not None:
        run = _python(CHECK, SHARENORM_CACHE_DIR=str(tmp_path / "b"), CC=cpp)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == "True"


def test_a_library_without_the_loops_symbols_falls_back(tmp_path):
    """A "compiler" that builds a shared library of something else: the loops are off, the
    composition runs, and the library is not kept (nor tried again)."""
    fake = tmp_path / "cc"
    fake.write_text(
        '#!/bin/sh\nout=""\nwhile [ $# -gt 0 ]; do [ "$1" = "-o" ] && out="$2"; shift; done\n'
        f'exec {shutil.which("cc")} -shared -fPIC -x c /dev/null -o "$out"\n'
    )
    fake.chmod(0o755)
    cache = tmp_path / "cache"
    for _ in range(2):
        run = _python(CHECK, SHARENORM_CACHE_DIR=str(cache), CC=str(fake))
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == "False"
    assert not list(cache.glob("*.so"))
    assert len(list(cache.glob("*.failed"))) == len(cpu._TARGET_FLAGS)


def test_cache_dir_without_a_home(monkeypatch):
    for name in ("SHARENORM_CACHE_DIR", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(cpu.Path, "home", staticmethod(no_home))
    assert cpu._cache_dir().parent == cpu.Path(tempfile.gettempdir())


def test_a_cache_dir_that_cannot_be_written_builds_in_a_temporary_one(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    run = _python(CHECK + "print(cpu._cache_roots()[-1])", SHARENORM_CACHE_DIR=str(blocked / "c"))
    assert run.returncode == 0, run.stderr
    available, root = run.stdout.split()
    assert available == "True" and root == str(cpu._temporary_cache_dir())
