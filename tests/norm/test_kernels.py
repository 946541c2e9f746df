"""Triton kernels (sharenorm.norm.kernels) on the CPU through Triton's interpreter
(``TRITON_INTERPRET=1``): forward and backward against the float64 reference for
GroupNorm / InstanceNorm / BatchNorm (training and eval) × activation × NCHW / NHWC ×
every dtype the kernels claim, the multi-tile and split-reduction paths, the
numerical stability of the statistics, the modules' ``backend="triton"`` route (running
statistics, non-finite guard), and the ``torch.library`` registration (opcheck,
``torch.compile(fullgraph=True)``). Shapes are tiny: the interpreter is slow."""

from __future__ import annotations

import os

# Where the kernels run: on the CPU under Triton's interpreter (the default, CI), or
# compiled on a GPU with SHARENORM_TEST_DEVICE=cuda (run this file on its own then).
DEVICE = os.environ.get("SHARENORM_TEST_DEVICE", "cpu")
if DEVICE == "cpu":  # the interpreter must be chosen before Triton decorates the kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")

import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton", reason="Triton is not installed (pip install 'sharenorm[triton]')")

import sharenorm as sn  # noqa: E402
import sharenorm.functional as SF  # noqa: E402
from sharenorm.norm import fused, kernels, reference  # noqa: E402
from sharenorm.norm.kernels import entry, norm_act  # noqa: E402

if DEVICE != "cpu":
    if not torch.cuda.is_available() or kernels.interpreting():
        pytest.skip(f"SHARENORM_TEST_DEVICE={DEVICE} needs a GPU and TRITON_INTERPRET unset",
                    allow_module_level=True)
elif type(norm_act._forward_kernel).__name__ != "InterpretedFunction" or not kernels.interpreting():
    pytest.skip(
        "the Triton kernels were compiled for a GPU before TRITON_INTERPRET=1 was set; run "
        "this file on its own or with TRITON_INTERPRET=1 in the environment",
        allow_module_level=True,
    )


@pytest.fixture(autouse=True)
def _on_test_device():
    """Every tensor and module a test creates lives on DEVICE (restored afterwards)."""
    before = torch.get_default_device()
    torch.set_default_device(DEVICE)
    yield
    torch.set_default_device(before)

ACTS = [None, "relu", "leaky_relu", "elu", "silu", "gelu", "tanh", "sigmoid"]
# (dtype, atol, rtol) against the float64 reference on the dtype-rounded input.
DTYPES = {
    torch.float32: (2e-5, 1e-4),
    torch.float16: (1e-2, 5e-3),
    torch.bfloat16: (6e-2, 2e-2),
}


def _input(shape, dtype=torch.float32, channels_last=False):
    x = (torch.randn(shape, dtype=torch.float64) * 2.0 + 1.0).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x


def _reference(x, w, b, kind, groups, act, p, rm=None, rv=None):
    """float64 ``act(norm(x))`` and its gradients (dx, dγ, dβ) for ``dy``."""
    xd = x.detach().double().requires_grad_(True)
    wd = w.detach().double().requires_grad_(True)
    bd = b.detach().double().requires_grad_(True)
    if kind == "bn":
        z = reference.batch_norm(xd, wd, bd)[0]
    elif kind == "bn_eval":
        z = reference.batch_norm_eval(xd, rm, rv, wd, bd)
    else:
        z = reference.group_norm(xd, groups, wd, bd)
    y = reference.ACTIVATIONS[act](z, p)
    dy = torch.randn_like(y)
    y.backward(dy)
    return y.detach(), dy, (xd.grad, wd.grad, bd.grad)


def _close(got, want, atol, rtol, what):
    torch.testing.assert_close(got.double(), want.double(), atol=atol, rtol=rtol,
                               msg=lambda m: f"{what}: {m}")


def _rstd_per_element(x, kind, groups, rv=None, eps=1e-5):
    """float64 1/√(σ² + ε) of the statistic each element of ``x`` belongs to."""
    xd = x.detach().double()
    if kind == "bn_eval":
        r = (rv.double() + eps).rsqrt()
    elif kind == "bn":
        r = (xd.transpose(0, 1).reshape(x.shape[1], -1).var(1, correction=0) + eps).rsqrt()
    else:
        var = xd.reshape(x.shape[0], groups, -1).var(2, correction=0)
        r = (var + eps).rsqrt().repeat_interleave(x.shape[1] // groups, 1)
        return r.reshape(r.shape + (1,) * (x.dim() - 2))
    return r.reshape((1, -1) + (1,) * (x.dim() - 2)) if kind != "gn" else r


def _close_scaled(got, want, atol, rtol, r, what):
    """y = x·(γr) + (β − μγr) and dx = r·(γ·dz − c1 − x̂·c2): fp32 rounding comes out
    scaled by r, so the absolute tolerance grows with r beyond the data's own scale (σ = 2,
    r ≈ 0.5). A group of two nearly equal values (the (N, C) shapes) has r in the hundreds:
    a fixed atol fails ~12% of random draws on errors of a few fp32 ulps × r."""
    err = (got.double() - want.double()).abs()
    allowed = atol * (2.0 * r).clamp(min=1.0) + rtol * want.double().abs()
    worst = int((err - allowed).argmax())
    assert (err <= allowed).all(), (
        f"{what}: {int((err > allowed).sum())} / {err.numel()} elements off; worst error "
        f"{float(err.flatten()[worst]):.3g} where {float(allowed.flatten()[worst]):.3g} allowed")


def _check_launchers(shape, kind, groups, act, dtype=torch.float32, channels_last=False,
                     tile=None, split=None, p=None):
    atol, rtol = DTYPES[dtype]
    c = shape[1]
    x = _input(shape, dtype, channels_last)
    w, b = torch.rand(c) + 0.5, torch.randn(c) * 0.5
    rm, rv = torch.randn(c), torch.rand(c) + 0.5
    pp = {"leaky_relu": 0.01, "elu": 1.0}.get(act, 0.0) if p is None else p
    batch = kind != "gn"
    mean_in, var_in = (rm, rv) if kind == "bn_eval" else (None, None)
    y, mean, var = norm_act.norm_act_forward(x, w, b, groups, 1e-5, act, pp, batch, mean_in,
                                             var_in, tile=tile, split=split)
    y_ref, dy, grads_ref = _reference(x, w, b, kind, groups, act, pp, rm, rv)
    assert y.dtype == dtype and y.stride() == x.stride()  # NHWC in, NHWC out, no copy
    r = _rstd_per_element(x, kind, groups, rv)
    _close_scaled(y, y_ref, atol, rtol, r, "y")
    dx, dw, db = norm_act.norm_act_backward(
        dy.to(dtype), x, w, b, mean, var, groups, 1e-5, act, pp, batch, kind != "bn_eval",
        tile=tile, split=split,
    )
    assert dx.stride() == x.stride()
    _close_scaled(dx, grads_ref[0], atol, rtol, r, "dx")
    # γ/β grads sum over many elements: scale the tolerance with the count
    for name, got, want in (("dγ", dw, grads_ref[1]), ("dβ", db, grads_ref[2])):
        _close(got, want, atol * 4, rtol * 4, name)


SHAPES = [
    # (kind, shape, groups, channels_last, tile, split)
    ("gn", (2, 6, 5, 3), 3, False, None, None),  # NCHW, odd spatial
    ("gn", (2, 6, 5, 3), 3, True, None, None),  # NHWC
    ("gn", (2, 6, 5, 3), 3, True, 8, 3),  # NHWC, several tiles per program, split 3
    ("gn", (3, 4, 7, 5), 1, False, 16, 4),  # one group (LayerNorm), split reduction
    ("gn", (2, 5, 4, 3), 5, True, None, None),  # group == channel (InstanceNorm), odd C
    ("gn", (3, 6, 1, 1), 2, False, None, None),  # HW = 1
    ("gn", (4, 6), 3, False, None, None),  # (N, C)
    ("gn", (1, 4, 3, 2, 3), 2, True, 8, 2),  # 3-d channels-last, batch of one
    ("bn", (7, 5), 1, False, None, None),  # BatchNorm1d (N, C)
    ("bn", (3, 4, 5, 3), 1, False, 8, 3),  # NCHW, split over samples and positions
    ("bn", (3, 4, 5, 3), 1, True, 8, 3),  # NHWC
    ("bn_eval", (3, 4, 5, 3), 1, True, None, None),  # running statistics normalize
    ("bn", (1, 128, 4, 8), 1, True, 128, 32),  # NHWC, 32 row chunks: the merges loop
    ("gn", (2, 128, 5, 5), 128, True, 128, 25),  # NHWC InstanceNorm, 25 row chunks
]


@pytest.mark.parametrize(("kind", "shape", "groups", "channels_last", "tile", "split"), SHAPES)
def test_shapes_match_reference(kind, shape, groups, channels_last, tile, split):
    _check_launchers(shape, kind, groups, "silu", channels_last=channels_last, tile=tile,
                     split=split)


@pytest.mark.parametrize("act", ACTS)
def test_activations_match_reference(act):
    _check_launchers((2, 6, 4, 3), "gn", 3, act, channels_last=True, tile=16, split=2)


@pytest.mark.parametrize("act", ["leaky_relu", "elu"])
def test_activation_parameter(act):
    _check_launchers((2, 4, 3, 3), "bn", 1, act, p=0.3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("kind", "channels_last"), [("gn", True), ("bn", False)])
def test_16bit_inputs(kind, channels_last, dtype):
    # fp32 statistics and arithmetic, 16-bit loads and stores.
    _check_launchers((2, 6, 5, 3), kind, 3 if kind == "gn" else 1, "gelu", dtype,
                     channels_last)


def test_statistics_are_stable_for_a_large_mean():
    # mean 1e4, std 1e-2: E[x²] − E[x]² in fp32 would lose every digit of σ² = 1e-4
    # (ulp(1e8) = 8); chunked Welford/Chan keeps it.
    x = (1e4 + 1e-2 * torch.randn(2, 4, 16, 16, dtype=torch.float64)).float()
    _, mean, var = norm_act.norm_act_forward(x, None, None, 2, 1e-5, None, 0.0, False,
                                             tile=64, split=3)
    xd = x.double().reshape(2 * 2, -1)
    torch.testing.assert_close(mean.double(), xd.mean(1), atol=1e-3, rtol=0)
    torch.testing.assert_close(var.double(), xd.var(1, correction=0), atol=0, rtol=1e-3)


def test_split_heuristic_fills_a_gpu_for_small_batches():
    # A diffusion-UNet block, N·G = 2·32 = 64 statistics of 10·4096 elements: one
    # program per statistic would leave most of an H100's 132 SMs idle.
    for shape, groups in [((2, 320, 64, 64), 32), ((1, 512, 64, 64), 32)]:
        geo = norm_act._Geometry(torch.empty(shape), groups, False, None, None)
        assert geo.P * geo.SPLIT >= 1024, shape
        assert (geo.SPLIT - 1) * geo.TPP < geo.T  # every program has a tile
    # many statistics already fill the GPU: no split
    geo = norm_act._Geometry(torch.empty(32, 128, 56, 56), 128, False, None, None)
    assert geo.SPLIT == 1
    # channels-last: programs = segments × channel blocks × split
    for shape, groups, batch in [((2, 320, 64, 64), 32, False), ((1, 512, 64, 64), 512, False),
                                 ((32, 128, 56, 56), 1, True)]:
        x = torch.empty(shape).to(memory_format=torch.channels_last)
        rows = norm_act._Rows(x, groups, batch, None, None)
        # ~1024 asked; whole tiles per program round it down a little
        assert rows.NSEG * rows.NCB * rows.SPLIT >= 768, shape
        assert (rows.SPLIT - 1) * rows.TPP < rows.T


@pytest.mark.parametrize(("shape", "channels_last", "rows"), [
    ((2, 6, 5, 3), True, True),  # NHWC: rows × channels kernels (coalesced over C)
    ((2, 6, 3, 4, 5), True, True),  # NDHWC
    ((7, 5), False, True),  # (N, C): channels already innermost
    ((2, 6, 5, 3), False, False),  # NCHW: per-statistic kernels
    ((2, 6, 9), False, False),  # (N, C, L)
])
def test_layout_picks_the_coalesced_kernels(shape, channels_last, rows):
    assert norm_act._channels_innermost(_input(shape, channels_last=channels_last)) == rows


_COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sharenorm.norm.kernels import norm_act as K
I, F, D = "i32", "fp32", "*bf16"
geo = dict(A=I, B=I, P_LO=I, s_hi=I, s_lo=I, sA=I, sB=I)
rows = dict(C=I, R_SEG=I, NCB=I, TPP=I, T=I)
kernels = [
    (K._stats_kernel, dict(X=D, PART="*fp32", **geo, TB=I, T=I, TPP=I, SPLIT=I), {}),
    (K._cl_stats_kernel, dict(X=D, PART="*fp32", **rows, CG=I, SPLIT=I), {}),
]
for act in range(8):
    co = dict(HAS_W=True, HAS_B=True, ACT=act)
    tail = dict(CH_P=I, CH_A=I, TB=I, T=I, TPP=I, param=F)
    kernels += [
        (K._forward_kernel, dict(X=D, Y=D, W="*fp32", Bi="*fp32", MEAN="*fp32",
                                 RSTD="*fp32", **geo, **tail), co),
        (K._bwd_dx_kernel, dict(X=D, DY=D, DX=D, W="*fp32", Bi="*fp32", MEAN="*fp32",
                                RSTD="*fp32", C1="*fp32", C2="*fp32", **geo, **tail), co),
        (K._cl_forward_kernel, dict(X=D, Y=D, COEF="*fp32", **rows, param=F), dict(ACT=act)),
        (K._cl_bwd_dx_kernel, dict(X=D, DY=D, DX=D, COEF="*fp32", **rows, param=F),
         dict(ACT=act)),
    ]
kernels += [
    (K._bwd_sums_kernel, dict(X=D, DY=D, W="*fp32", Bi="*fp32", MEAN="*fp32", RSTD="*fp32",
                              SUM_DZ="*fp32", SUM_DZX="*fp32", **geo, CH_P=I, CH_A=I, TB=I,
                              T=I, TPP=I, param=F), dict(HAS_W=True, HAS_B=False, ACT=4)),
    (K._cl_bwd_sums_kernel, dict(X=D, DY=D, COEF="*fp32", SUM_DZ="*fp32", SUM_DZX="*fp32",
                                 **rows, SPLIT=I, param=F), dict(ACT=4)),
]
P32 = "*fp32"
kernels.append((K._merge_kernel, dict(PART=P32, MEAN=P32, VAR=P32, RSTD=P32, P=I, SPLIT=I, eps=F),
                dict(BLOCK_P=32, BLOCK_S=64)))
for has_part in (True, False):
    kernels.append((K._cl_coef_kernel, dict(PART=P32, MEAN=P32, VAR=P32, W=D, Bi=D, COEF=P32, C=I,
                                            G=I, CG=I, SPLIT=I, eps=F),
                    dict(HAS_PART=has_part, HAS_W=True, HAS_B=True, BLOCK_S=4, BLOCK_CG=1024)))
kernels.append((K._bwd_merge_kernel, dict(SUM_DZ=P32, SUM_DZX=P32, W=D, S_DZ=P32, S_DZX=P32,
                                          C1=P32, C2=P32, DB=P32, DW=P32, A=I, TB=I, P_LO=I,
                                          CH_P=I, CH_A=I, inv_count=F),
                dict(HAS_W=True, TRAINING=True, PER_CHANNEL=True, BLOCK_T=4, BLOCK_A=1024)))
kernels.append((K._cl_bwd_merge_kernel, dict(SUM_DZ=P32, SUM_DZX=P32, W=D, COEF=P32, S_DZ=P32,
                                             S_DZX=P32, C=I, G=I, CG=I, SPLIT=I, inv_count=F),
                dict(HAS_W=True, TRAINING=True, BLOCK_S=4, BLOCK_CG=1024)))
for has_part in (True, False):
    kernels.append((K._cl_coef_channel_kernel, dict(PART=P32, MEAN=P32, VAR=P32, W=D, Bi=D,
                                                    COEF=P32, C=I, SPLIT=I, eps=F),
                    dict(HAS_PART=has_part, HAS_W=True, HAS_B=True, BLOCK_S=16, BLOCK_C=128)))
kernels.append((K._cl_bwd_merge_channel_kernel, dict(SUM_DZ=P32, SUM_DZX=P32, W=D, COEF=P32,
                                                     S_DZ=P32, S_DZX=P32, C=I, SPLIT=I,
                                                     inv_count=F),
                dict(HAS_W=True, TRAINING=True, BLOCK_S=16, BLOCK_C=128)))
for stats in (P32, "*fp16"):  # running statistics of a float32 or a .half() module
    kernels.append((K._running_update_kernel, dict(MEAN=P32, VAR=P32, RM=stats, RV=stats,
                                                   OK="*i1", R=I, C=I, momentum=F, unbias=F),
                    dict(BLOCK_R=4, BLOCK_C=1024)))
for fn, sig, const in kernels:
    const = dict(const)
    if "BLOCK_B" in fn.arg_names:
        const.update(BLOCK_A=16, BLOCK_B=64)
    elif "BLOCK_R" in fn.arg_names:
        const.update(BLOCK_R=16, BLOCK_C=128)
    sig = dict(sig, **{k: "constexpr" for k in const})
    src = ASTSource(fn=fn, signature=sig,
                    constexprs={(fn.arg_names.index(k),): v for k, v in const.items()})
    assert triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["cubin"]
print("compiled", len(kernels))
"""


def test_kernels_compile_for_h100():
    # The interpreter runs Python; the real compiler (Triton → PTX → ptxas cubin for
    # sm_90) is stricter. No GPU needed, only Triton's bundled NVIDIA toolchain.
    import subprocess
    import sys

    import triton.backends

    if "nvidia" not in triton.backends.backends:
        pytest.skip("this Triton build has no NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # The child imports sharenorm from this checkout, installed or not (pytest's own
    # `pythonpath` setting does not reach a subprocess).
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    out = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "compiled 46" in out.stdout


# ----------------------------------------------------------------------------- modules


def test_groupnorm_module_triton_backend_matches_torch():
    x = _input((2, 6, 4, 3), channels_last=True).requires_grad_(True)
    tri = sn.GroupNorm(3, 6, act="silu", backend="triton")
    ref = sn.GroupNorm(3, 6, act="silu", backend="torch")
    with torch.no_grad():
        for m in (tri, ref):
            m.weight.copy_(torch.linspace(0.5, 1.5, 6))
            m.bias.copy_(torch.linspace(-1, 1, 6))
    y = tri(x)
    assert "norm_act_fwd" in y.grad_fn.name() or "NormActFwd" in type(y.grad_fn).__name__
    assert y.is_contiguous(memory_format=torch.channels_last)
    y_ref = ref(x)
    torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-4)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, tri.weight, tri.bias), g)
    want = torch.autograd.grad(y_ref, (x, ref.weight, ref.bias), g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("cls", "shape", "kw"), [
    (sn.BatchNorm2d, (3, 4, 3, 3), {}),
    (sn.BatchNorm1d, (6, 4), {"momentum": None}),
    (sn.InstanceNorm2d, (3, 4, 3, 3), {"track_running_stats": True, "affine": True}),
])
def test_running_stats_and_guard_match_torch_backend(cls, shape, kw):
    tri = cls(4, act="relu", backend="triton", **kw)
    ref = cls(4, act="relu", backend="torch", **kw)
    for step in range(3):
        x = _input(shape) + step
        if step == 1:
            x[0, 0] = float("nan")
        ys = []
        for m in (tri, ref):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ys.append(m(x))
            # the guard warns on the CPU; on a GPU it restores without a host sync, silently
            assert any("not finite" in str(w.message) for w in caught) == (
                step == 1 and DEVICE == "cpu")
        if step != 1:
            torch.testing.assert_close(ys[0], ys[1], atol=2e-5, rtol=1e-4)
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(tri, name), getattr(ref, name), atol=1e-5, rtol=1e-5)
    assert int(tri.num_batches_tracked) == int(ref.num_batches_tracked) == 2
    tri.eval()
    ref.eval()
    x = _input(shape)
    torch.testing.assert_close(tri(x), ref(x), atol=2e-5, rtol=1e-4)


def test_auto_backend_keeps_cpu_tensors_on_torch():
    # Even with the interpreter on, "auto" never sends CPU tensors to Triton.
    x = _input((2, 4, 3, 3)).cpu().requires_grad_(True)
    y = SF.group_norm(x, 2, act="silu")
    assert "norm_act" not in type(y.grad_fn).__name__.lower()


# ----------------------------------------------------------------------------- registration


def _op_args(act="silu"):
    x = _input((2, 4, 3, 3), channels_last=True)
    w, b = torch.rand(4) + 0.5, torch.randn(4)
    return x, w, b, act


def test_custom_ops_pass_opcheck():
    ops = entry._triton_ops()
    x, w, b, act = _op_args()
    fwd_args = (x.requires_grad_(True), w.requires_grad_(True), b, None, None, 2, 1e-5, act,
                0.0, False)
    torch.library.opcheck(ops.norm_act_fwd.default, fwd_args)
    y, mean, var = ops.norm_act_fwd(*fwd_args)
    bwd_args = (torch.randn_like(y), x.detach(), w.detach(), b, mean.detach(), var.detach(),
                2, 1e-5, act, 0.0, False, True)
    torch.library.opcheck(ops.norm_act_bwd.default, bwd_args)


def test_compiles_without_graph_break():
    # fullgraph=True raises on any graph break; aot_eager runs the fake implementations
    # and the registered autograd, without needing a C++ compiler or a GPU.
    x, w, b, _ = _op_args()

    def f(x, w, b):
        return SF.group_norm(x, 2, w, b, act="gelu", backend="triton").square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    xs = [x.detach().clone().requires_grad_(True) for _ in range(2)]
    out_c = compiled(xs[0], w, b)
    out_e = f(xs[1], w, b)
    torch.testing.assert_close(out_c, out_e)
    out_c.backward()
    out_e.backward()
    torch.testing.assert_close(xs[0].grad, xs[1].grad)


@pytest.mark.parametrize(("shape", "groups", "channels_last", "tile", "split"), [
    ((1, 1, 48, 48), 1, False, 16, 144),  # 144 partials per statistic (blocks of 128)
    ((1, 128, 8, 9), 2, True, 64, 72),  # rows: 72 row chunks × 64 channels (blocks of 64)
    ((1, 2050, 3, 3), 1, True, None, None),  # rows: 2050 channels in one group (of 1024)
])
def test_on_device_merges_of_many_partials(shape, groups, channels_last, tile, split):
    # The partials are merged by a kernel in blocks; enough of them that it loops.
    x = _input(shape, channels_last=channels_last)
    _, mean, var = norm_act.norm_act_forward(x, None, None, groups, 1e-5, None, 0.0, False,
                                             tile=tile, split=split)
    xd = x.double().reshape(shape[0] * groups, -1)
    torch.testing.assert_close(mean.double(), xd.mean(1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(var.double(), xd.var(1, correction=0), atol=1e-5, rtol=1e-5)


def test_backward_merge_kernels_loop_over_blocks():
    # Blocks much smaller than the partials, so every loop of the merge kernels runs.
    P, TB, A, P_LO = 6, 7, 5, 3  # GroupNorm-like: 2 samples × 3 groups of 5 channels
    sdz, sdzx = torch.randn(P, TB, A), torch.randn(P, TB, A)
    w = torch.rand(P_LO * A) + 0.5
    f32 = {"dtype": torch.float32}
    outs = [torch.empty(P, A, **f32), torch.empty(P, A, **f32), torch.empty(P, **f32),
            torch.empty(P, **f32), torch.empty(P, **f32), torch.empty(P, **f32)]
    norm_act._bwd_merge_kernel[(P,)](sdz, sdzx, w, *outs, A, TB, P_LO, A, 1, 0.25,
                                     HAS_W=True, TRAINING=True, PER_CHANNEL=True,
                                     BLOCK_T=2, BLOCK_A=2)
    s_dz, s_dzx, c1, c2, db, dw = outs
    gam = w.view(P_LO, A).repeat(P // P_LO, 1)  # γ of each (statistic, channel in group)
    torch.testing.assert_close(s_dz, sdz.sum(1))
    torch.testing.assert_close(s_dzx, sdzx.sum(1))
    torch.testing.assert_close(c1, (gam * sdz.sum(1)).sum(1) * 0.25)
    torch.testing.assert_close(c2, (gam * sdzx.sum(1)).sum(1) * 0.25)
    torch.testing.assert_close(db, sdz.sum((1, 2)))
    torch.testing.assert_close(dw, sdzx.sum((1, 2)))
    # rows × channels: 2 segments × 2 groups of 3 channels, 5 row chunks
    NSEG, SPLIT, G, CG = 2, 5, 2, 3
    C = G * CG
    sums = torch.randn(2, NSEG, SPLIT, C)
    coef = torch.randn(NSEG, 6, C)
    r = coef[:, 2].clone()
    s_dz, s_dzx = torch.empty(NSEG, C), torch.empty(NSEG, C)
    w = torch.rand(C) + 0.5
    norm_act._cl_bwd_merge_kernel[(NSEG * G,)](sums[0], sums[1], w, coef, s_dz, s_dzx, C, G,
                                               CG, SPLIT, 0.5, HAS_W=True, TRAINING=True,
                                               BLOCK_S=2, BLOCK_CG=2)
    torch.testing.assert_close(s_dz, sums[0].sum(1))
    torch.testing.assert_close(s_dzx, sums[1].sum(1))
    c1 = (w * s_dz).view(NSEG, G, CG).sum(-1) * 0.5
    c2 = (w * s_dzx).view(NSEG, G, CG).sum(-1) * 0.5
    torch.testing.assert_close(coef[:, 4], r * c1.repeat_interleave(CG, 1))
    torch.testing.assert_close(coef[:, 5], r * c2.repeat_interleave(CG, 1))


def test_running_update_op_passes_opcheck_and_guards():
    ops = entry._triton_ops()
    rm, rv = torch.randn(5), torch.rand(5) + 0.5
    mean, var = torch.randn(3, 5), torch.rand(3, 5)
    torch.library.opcheck(ops.running_update.default, (rm.clone(), rv.clone(), mean, var, 0.1,
                                                       2.0))
    want_m, want_v = 0.9 * rm + 0.1 * mean.mean(0), 0.9 * rv + 0.1 * 2.0 * var.mean(0)
    assert bool(ops.running_update(rm, rv, mean, var, 0.1, 2.0))
    torch.testing.assert_close(rm, want_m)
    torch.testing.assert_close(rv, want_v)
    var[1, 2] = float("inf")
    before = rm.clone(), rv.clone()
    assert not bool(ops.running_update(rm, rv, mean, var, 0.1, 2.0))  # kept as they were
    assert torch.equal(rm, before[0]) and torch.equal(rv, before[1])


def test_batchnorm_training_on_triton_compiles_without_graph_break():
    # The running-statistics update is a custom op too: BN in training is one graph.
    bn = sn.BatchNorm2d(4, act="relu", backend="triton")
    ref = sn.BatchNorm2d(4, act="relu", backend="triton")
    compiled = torch.compile(bn, backend="aot_eager", fullgraph=True)
    for step in range(2):
        x = _input((3, 4, 3, 3), channels_last=True) + step
        torch.testing.assert_close(compiled(x), ref(x))
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked) == 2


def test_strided_parameters_and_running_statistics():
    # Views such as weight[::2] or a strided running buffer: read and updated where they are.
    x = _input((3, 4, 3, 3), channels_last=True)
    big_w, big_b = torch.rand(8) + 0.5, torch.randn(8)
    buf_m, buf_v = torch.zeros(8), torch.ones(8)
    ref_m, ref_v = torch.zeros(4), torch.ones(4)
    y = SF.batch_norm(x, buf_m[::2], buf_v[::2], big_w[::2], big_b[::2], True, act="relu",
                      backend="triton")
    want = SF.batch_norm(x, ref_m, ref_v, big_w[::2].clone(), big_b[::2].clone(), True,
                         act="relu", backend="torch")
    torch.testing.assert_close(y, want, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(buf_m[::2], ref_m)
    torch.testing.assert_close(buf_v[::2], ref_v)
    assert torch.equal(buf_m[1::2], torch.zeros(4)) and torch.equal(buf_v[1::2], torch.ones(4))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # numpy's
def test_a_half_running_variance_that_would_overflow_is_not_kept():
    # fp32 keeps a variance of 1e6; fp16 (max 65504) would store inf: the update is refused.
    rm, rv = torch.zeros(4, dtype=torch.float16), torch.ones(4, dtype=torch.float16)
    kept = norm_act.update_running_stats(rm, rv, torch.zeros(4), torch.full((4,), 1e6), 0.1, 1.0)
    assert not bool(kept)
    assert torch.equal(rv, torch.ones(4, dtype=torch.float16))


_FRESH_COMPILE = """
import sys, torch
import sharenorm as sn, sharenorm.functional as SF
assert "sharenorm.norm.kernels" not in sys.modules  # the first Triton use is inside the trace
x = torch.randn(2, 4, 3, 3).to(memory_format=torch.channels_last).requires_grad_(True)
w, b = torch.rand(4) + 0.5, torch.randn(4)
f = lambda x, w, b: SF.group_norm(x, 2, w, b, act="gelu", backend="triton").square().sum()
torch.compile(f, backend="aot_eager", fullgraph=True)(x, w, b).backward()
bn = sn.BatchNorm2d(4, backend="triton")
torch.compile(bn, backend="aot_eager", fullgraph=True)(x.detach())
print("ok", int(bn.num_batches_tracked))
"""


def test_first_triton_call_inside_torch_compile():
    # A fresh process whose first Triton call is traced: the custom ops and their autograd
    # must already be registered by the import, not at that call.
    import subprocess
    import sys

    if DEVICE != "cpu":
        pytest.skip("runs the interpreter in a subprocess")
    env = dict(os.environ, TRITON_INTERPRET="1")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", _FRESH_COMPILE], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok 1" in out.stdout


# Inputs whose size-1 dims carry odd strides (is_contiguous ignores them): the transpose
# of a (.., 1, 5) tensor to (.., 5, 1), and a channels-last one with H = W = 1.
ODD_STRIDES = [
    lambda: _input((2, 4, 1, 5)).transpose(2, 3),
    lambda: _input((2, 4, 3, 1, 5)).transpose(3, 4),
    lambda: _input((3, 4, 1, 1), channels_last=True),
]


@pytest.mark.parametrize("make", ODD_STRIDES, ids=["last-dim-1", "3d-last-dim-1", "cl-1x1"])
@pytest.mark.parametrize("op", ["bn", "gn", "in"])
def test_size_one_dims_with_odd_strides(make, op):
    """The kernels address a dense copy with canonical strides: the raw strides of such an
    input used as its spatial stride read and wrote past the end of the tensor."""
    x = make()
    assert x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
    if op == "in" and x[0, 0].numel() == 1:
        pytest.skip("InstanceNorm needs more than one spatial element")
    w, b = torch.rand(4) + 0.5, torch.randn(4)

    def run(backend):
        xi, wi, bi = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
        if op == "bn":
            y = SF.batch_norm(xi, None, None, wi, bi, True, act="silu", backend=backend)
        elif op == "gn":
            y = SF.group_norm(xi, 2, wi, bi, act="silu", backend=backend)
        else:
            y = SF.instance_norm(xi, weight=wi, bias=bi, act="silu", backend=backend)
        g = torch.linspace(-1, 1, y.numel()).view(y.shape)
        return (y, *torch.autograd.grad(y, (xi, wi, bi), g))

    for got, want in zip(run("triton"), run("torch"), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("op", ["bn", "gn"])
def test_a_nan_input_shows_in_the_output(op, channels_last, act):
    """As in torch: NaN in, NaN out over its statistic, whatever the activation (relu and
    elu as fmax/fmin turned it into 0)."""
    x = _input((3, 4, 3, 3), channels_last=channels_last)
    x[1, 2, 0, 1] = float("nan")
    kw = {"act": act}
    outs = [
        SF.batch_norm(x, None, None, training=True, backend=be, **kw) if op == "bn"
        else SF.group_norm(x, 2, backend=be, **kw)
        for be in ("triton", "torch")
    ]
    assert torch.equal(outs[0].isnan(), outs[1].isnan()) and outs[1].isnan().any()


def test_a_view_input_keeps_only_its_own_elements_for_backward():
    big = _input((2, 8, 4, 4)).requires_grad_(True)
    h = big.chunk(2, dim=1)[0]
    _, saved = fused.saved_tensor_bytes(
        lambda: SF.group_norm(h, 2, act="silu", memory_efficient=True, backend="triton"))
    assert saved <= h.numel() * 4 + 1024  # the chunk (and small statistics), not its base


@pytest.mark.parametrize("make", [lambda: sn.GroupNorm(2, 4, act="silu", backend="triton"),
                                  lambda: sn.BatchNorm2d(4, act="relu", backend="triton")],
                         ids=["gn", "bn"])
def test_double_backward_error_names_the_fix(make):
    """A gradient penalty through the Triton path is refused with the way out
    (backend='torch'), not torch's "no autograd formula was registered" for the backward op."""
    m = make()
    x = _input((3, 4, 3, 2)).requires_grad_(True)
    w = torch.randn_like(x)
    for wrt in (None, x, m.weight):
        out = (m(x) * w).sum()
        (dx,) = torch.autograd.grad(out, x, create_graph=True)  # first order is fine
        penalty = out + dx.pow(2).sum()
        with pytest.raises(RuntimeError, match="backend='triton' has no double backward.*"
                                               "backend='torch'"):
            penalty.backward() if wrt is None else torch.autograd.grad(penalty, wrt)


@pytest.mark.parametrize("dtype", list(DTYPES), ids=["f32", "f16", "bf16"])
def test_torch_op_db_samples_on_the_triton_path(dtype):
    """torch's op_db samples of the three functionals (test_op_db.py) with backend='triton',
    judged against a float64 run as torch's own result is (16 roundings: the kernels
    reduce γ's and β's gradients over tiles, in another order than torch)."""
    import test_op_db  # torch's test material, imported only by this test

    for op in test_op_db.OPS:
        test_op_db.check_samples(op, dtype, DEVICE, tight=False, roundings=16.0,
                                 backend="triton")
