"""The CPU backward of memory-efficient norm + activation as fused C loops
(``backward.c``), compiled on first use with ``$CC`` or ``cc`` into
``$SHARENORM_CACHE_DIR`` (default ``~/.cache/sharenorm``). Where no compiler works, or
``SHARENORM_CPU_KERNELS=0``, :func:`available` is False and the callers keep their ATen
composition (same results, slower). The math is in :func:`norm_backward`; why the loops
and how they run: docs/design/cpu-backward-loops.md.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from sharenorm._cache import cache_dir as _cache_dir
from sharenorm._cache import temporary_cache_dir as _temporary_cache_dir
from sharenorm.activation import ACTIVATIONS
from sharenorm.norm._layout import memory_format as _memory_format
from sharenorm.norm._tracing import tracing

_log = logging.getLogger(__name__)
_SOURCE = Path(__file__).with_name("backward.c")


def _c_kinds(float32_only: bool) -> tuple[str, ...]:
    """backward.c's loops: ``rec_<name>`` (from the norm's input) for every activation,
    ``inv_<name>`` (from the output) for an invertible one, ``ident`` for none."""
    kinds = []
    for a in ACTIVATIONS.values():
        if a.c_float32_only != float32_only:
            continue
        if a.c_name == "ident":
            kinds.append("ident")
            continue
        kinds.append(f"rec_{a.c_name}")
        if a.inverse is not None:
            kinds.append(f"inv_{a.c_name}")
    return tuple(kinds)


_KINDS = _c_kinds(float32_only=False)
# kinds with exp or log1p on the fly: float32 only (float64 keeps the ATen composition)
_FLOAT32_KINDS = _c_kinds(float32_only=True)
# kinds that keep dz (or z) in dx between the passes (backward.c: KEEPS_DZ and inv_elu)
_KEEPING_KINDS = _FLOAT32_KINDS
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_TINY = {dtype: torch.finfo(dtype).tiny for dtype in _SUFFIX}  # smallest normal numbers
# Below this many elements a second thread costs more than it saves.
_MIN_PER_THREAD = 1 << 16


def _cpu_tag() -> str:
    """What -march=native depends on: the machine and its CPU flags."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()} {flags}"


def _compiler_tag(cc: list[str]) -> str:
    """The compiler's path, size and time of change (and the rest of its command line): a
    new or upgraded compiler gets a new cache key, so flags that failed with the old one
    are tried again."""
    path = shutil.which(cc[0]) or cc[0]
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
        return f"{real} {st.st_size} {st.st_mtime_ns} {cc[1:]}"
    except OSError:
        return f"{path} {cc[1:]}"


def _cache_roots() -> list[Path]:
    """Where built libraries are looked for, the last one also where they are built: the
    cache dir, then a per-user temporary one when the cache dir cannot be written (a
    read-only home, a file in its place)."""
    root = _cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
        if os.access(root, os.W_OK):
            return [root]
    except OSError:
        pass
    _log.info("sharenorm: cannot write %s; the CPU loops are built in a temporary dir", root)
    return [root, _temporary_cache_dir()]


def _compile(cc: list[str], flags: list[str], target: Path) -> bool:
    """Compile into a temporary file, then rename it into place (another process may be
    compiling the same file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        # -x c: the file is C even for a C++ driver (CC=g++), which would mangle the names
        cmd = [*cc, *flags, "-x", "c", str(_SOURCE), "-o", tmp]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if run.returncode != 0:
            _log.info("sharenorm: %s failed: %s", " ".join(cmd), run.stderr.strip())
            return False
        _seal(Path(tmp))
        os.replace(tmp, target)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# Every built library ends with this and the SHA-256 of the bytes before it (the dynamic
# loader ignores bytes past the ELF image). A library cut short (a crash before the data
# reached the disk, a full disk) would make dlopen map pages past the end of the file and
# kill the process with SIGBUS, and so would every later process until the file is gone.
_SEAL = b"sharenorm-sha256:"


def _seal(path: Path) -> None:
    """Append the seal to a freshly built library and flush it to the disk."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest().encode()
    with open(path, "ab") as f:
        f.write(_SEAL + digest)
        f.flush()
        os.fsync(f.fileno())


def _intact(path: Path) -> bool:
    """Whether a built library is whole: its seal holds the digest of the bytes before it."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    n = len(_SEAL) + 64
    return (len(data) > n and data[-n:-64] == _SEAL
            and hashlib.sha256(data[:-n]).hexdigest().encode() == data[-64:])


# -fno-trapping-math lets the selects of relu vectorize (no code here reads FP exception
# flags); gnu99 (unlike c99) lets the compiler fuse multiply-adds, which the polynomials of
# exp and log1p need to keep up with ATen's.
_BASE_FLAGS = ["-std=gnu99", "-O3", "-fno-trapping-math", "-fPIC", "-shared"]
# Tried in order until one compiles: OpenMP threads and the widest vectors the CPU has
# (AVX-512 on x86 CPUs with it; gcc otherwise prefers 256 bits there), then the compiler's
# choice of vectors, then portable code, then one thread (-fopenmp-simd: vector pragmas
# only, no runtime).
_TARGET_FLAGS = (
    ["-fopenmp", "-march=native", "-mprefer-vector-width=512"],
    ["-fopenmp", "-march=native"],
    ["-fopenmp"],
    ["-fopenmp-simd"],
)


@functools.cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("SHARENORM_CPU_KERNELS", "1") == "0":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        _log.info("sharenorm: no C compiler; the CPU backward stays an ATen composition")
        return None
    cc = shlex.split(cc)  # CC="ccache gcc" is a command line, as make reads it
    if not cc:
        return None
    source = _SOURCE.read_bytes()
    roots = _cache_roots()
    for flags in (_BASE_FLAGS + target for target in _TARGET_FLAGS):
        key = hashlib.sha256(
            source + repr((_compiler_tag(cc), flags, _cpu_tag())).encode()
        ).hexdigest()[:16]
        name = f"backward-{key}"
        target = next((r / f"{name}.so" for r in roots if (r / f"{name}.so").exists()),
                      roots[-1] / f"{name}.so")
        failed = roots[-1] / f"{name}.failed"  # these flags do not compile here: skip them
        try:
            if any((r / f"{name}.failed").exists() for r in roots):
                continue
            if target.exists() and not _intact(target):
                _log.info("sharenorm: %s is damaged or unsealed; building it again", target)
                target.unlink(missing_ok=True)
            if target.exists() or _compile(cc, flags, target):
                try:
                    return _declare(ctypes.CDLL(str(target)))
                except AttributeError as e:  # built, but not our C symbols
                    _log.info("sharenorm: %s lacks the loops' symbols (%s)", target, e)
                    target.unlink(missing_ok=True)
            failed.touch()
        except (OSError, subprocess.SubprocessError) as e:
            _log.info("sharenorm: CPU kernels unavailable (%s)", e)
    return None


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, f64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    lib.max_threads.restype = i32
    lib.max_threads.argtypes = []
    for suffix in _SUFFIX.values():
        getattr(lib, f"prepare_{suffix}").argtypes = [i64, i64, i64, i64] + [p] * 6
        fn = getattr(lib, f"affine_invertible_{suffix}")
        fn.argtypes = [p, p, p, i64, i64, i64, i64, f64, f64, f64]
        fn.restype = i32
        fn = getattr(lib, f"max_ratio_{suffix}")
        fn.argtypes = [p, p, i64]
        fn.restype = f64
        fn = getattr(lib, f"coefs_{suffix}")
        fn.argtypes = [i64] * 5 + [f64] + [p] * 4 + [i32] * 2 + [p] * 6
        fn.restype = i32
        for kind in _KINDS + (_FLOAT32_KINDS if suffix == "f32" else ()):
            fn = getattr(lib, f"fused_nchw_{kind}_{suffix}")
            fn.argtypes = [p] * 3 + [i64] * 6 + [f64, i32] + [p] * 4 + [i32] * 2 + [f64] + [p] * 4
            fn.restype = i32
            getattr(lib, f"sums_nhwc_{kind}_{suffix}").argtypes = [p] * 5 + [i64] * 3 + [f64, i32, p]
            getattr(lib, f"apply_nhwc_{kind}_{suffix}").argtypes = (
                [p] * 8 + [i64] * 3 + [f64, i32, i32]
            )
    return lib


def available() -> bool:
    """Whether the compiled loops can run (a C compiler was found and the build worked)."""
    return _library() is not None


def _layout(s: Tensor) -> str | None:
    """'nchw' (contiguous) or 'nhwc' (channels-last 2-d/3-d), or None for any other."""
    fmt = _memory_format(s)
    if not s.is_contiguous(memory_format=fmt):
        return None
    return "nchw" if fmt == torch.contiguous_format else "nhwc"


def supports(kind: str, s: Tensor, g: Tensor) -> bool:
    """Whether :func:`norm_backward` takes these tensors: float32/float64 CPU tensors of
    one shape and one layout (contiguous or channels-last), and a kind backward.c has."""
    return (
        (kind in _KINDS or (kind in _FLOAT32_KINDS and s.dtype == torch.float32))
        # under torch.compile's tracing there are no data pointers: the caller traces its
        # ATen composition instead
        and not tracing()
        and s.device.type == "cpu"
        and s.dtype in _SUFFIX
        and g.dtype == s.dtype
        and g.device == s.device
        and g.shape == s.shape
        and s.dim() >= 2
        and _layout(s) is not None
        and _layout(g) == _layout(s)
        and s.numel() > 0
        and available()
    )


def _threads(numel: int) -> int:
    """torch's thread count, or fewer where a thread would get under _MIN_PER_THREAD
    elements (starting it would cost more than it saves)."""
    return max(1, min(torch.get_num_threads(), numel // _MIN_PER_THREAD))


def _sums_nhwc(kind: str, s: Tensor, g: Tensor, ab: Tensor, dx: Tensor, act_param: float):
    """``(S1, S2)``, float64 (N, C), of a channels-last tensor; ``ab`` holds the (N, C)
    a and b of z = a·x + b for the rec_ kinds, ``dx`` receives what a keeping kind keeps
    for the second pass."""
    n, c = s.shape[:2]
    hw = s.numel() // (n * c)
    threads = _threads(s.numel())
    acc = torch.zeros(threads, 2, n, c, dtype=torch.float64)  # one (S1, S2) pair a thread
    getattr(_library(), f"sums_nhwc_{kind}_{_SUFFIX[s.dtype]}")(
        s.data_ptr(), g.data_ptr(), ab[0].data_ptr(), ab[1].data_ptr(), dx.data_ptr(), n, hw,
        c, act_param, threads, acc.data_ptr(),
    )
    total = acc.sum(0)
    return total[0], total[1]


def _apply_nhwc(kind: str, s: Tensor, g: Tensor, ab: Tensor, coefs: Tensor, dx: Tensor,
                act_param: float, fixed: bool) -> Tensor:
    """``dx = c1·dz + c2·u + c3`` of a channels-last tensor into ``dx``, ``coefs`` (3, N, C)."""
    n, c = s.shape[:2]
    getattr(_library(), f"apply_nhwc_{kind}_{_SUFFIX[s.dtype]}")(
        s.data_ptr(), g.data_ptr(), ab[0].data_ptr(), ab[1].data_ptr(), coefs[0].data_ptr(),
        coefs[1].data_ptr(), coefs[2].data_ptr(), dx.data_ptr(), n, s.numel() // (n * c), c,
        act_param, _threads(s.numel()), int(fixed),
    )
    return dx


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _as(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """``t`` as a contiguous tensor of ``dtype`` (itself when it already is one)."""
    if t is None or (t.dtype == dtype and t.is_contiguous()):
        return t
    return t.detach().to(dtype).contiguous()


def affine_invertible(weight: Tensor | None, bias: Tensor | None, dtype: torch.dtype,
                      max_ratio: float, rstd: Tensor | None = None, cpg: int = 1,
                      eps: float = 0.0) -> bool | None:
    """Whether every ``|γ_c| ≥ finfo(dtype).tiny`` and ``|β_c| ≤ max_ratio·|γ_c|·s_c``, in
    one C call, where ``s_c = min √(1 − eps·r²)`` over the ``rstd`` (an (n, S) tensor, S
    statistics per sample, ``cpg`` channels each; None: s = 1) of channel c; None where the
    loops cannot tell (no library, other dtypes or devices: the caller then computes it
    with torch)."""
    suffix = _SUFFIX.get(dtype)
    if suffix is None or tracing() or not available():
        return None
    c = 0
    for t in (weight, bias, rstd):
        if t is not None and (t.device.type != "cpu" or t.dtype != dtype
                              or not t.is_contiguous()):
            return None
    for t in (weight, bias):
        if t is not None:
            c = t.numel()
    n, sn = (1, 0) if rstd is None else rstd.shape
    fn = getattr(_library(), f"affine_invertible_{suffix}")
    return bool(fn(_ptr(weight), _ptr(bias), _ptr(rstd), n, c, sn, cpg, eps, _TINY[dtype],
                   max_ratio))


def max_ratio(mean: Tensor, rstd: Tensor) -> float | None:
    """``max |mean·rstd|`` over ATen's per-statistic μ and r (contiguous CPU tensors of
    one shape and dtype, as its norm kernels return them), NaN entries skipped, in one C
    call (~2 µs, where four torch ops take ~12: this runs on every forward of the plain
    GroupNorm); None where the loops cannot tell (not float32/float64, no library: the
    caller then computes it with torch)."""
    fn = _RATIO_FNS.get(mean.dtype) if _RATIO_FNS is not None else _ratio_fns().get(mean.dtype)
    return None if fn is None else fn(mean.data_ptr(), rstd.data_ptr(), mean.numel())


_RATIO_FNS: dict | None = None  # dtype -> C function, filled on the first call


def _ratio_fns() -> dict:
    global _RATIO_FNS
    lib = _library()
    _RATIO_FNS = {} if lib is None else {
        dtype: getattr(lib, f"max_ratio_{suffix}") for dtype, suffix in _SUFFIX.items()
    }
    return _RATIO_FNS


def norm_backward(kind: str, s: Tensor, g: Tensor, gamma: Tensor | None, beta: Tensor | None,
                  r: Tensor, mu: Tensor | None, *, stats_per_sample: int, channels_per_stat: int,
                  invert: bool, fixed: bool, act_param: float, mask):
    """``(dx, dγ, dβ)`` of BatchNorm, InstanceNorm or GroupNorm followed by the activation
    of ``kind``, from the saved tensor ``s`` and the gradient ``g`` of the output; each
    is None where ``mask`` (dx, dγ, dβ) says it is not needed; all in ``s``'s dtype.
    Returns None when a coefficient is not finite. Callers check :func:`supports` first.

    Statistic of (n, c): ``n·stats_per_sample + c // channels_per_stat`` (BatchNorm: 0
    and 1, GroupNorm: G and C/G, InstanceNorm: C and 1); ``r`` and ``mu`` hold the rstd
    and mean of each statistic (``mu`` is not read when ``invert``), ``gamma``/``beta`` are
    per channel or None. ``invert``: ``s`` is the activation's output, else the norm's
    input. ``fixed``: the statistics are constants (BatchNorm in eval).

    With u = z (inverting) or u = x (recomputing), x̂ = α·u + δ per (n, c):

        invert:     α = 1/γ,  δ = −β/γ        recompute:  α = r,  δ = −r·μ  (z = γ·r·(x − μ) + β)
        per (n, c): S1 = Σ dz,  S2 = Σ dz·u,  P = Σ dz·x̂ = α·S2 + δ·S1
        per statistic of M elements: A = Σ γ·S1 / M,  B = Σ γ·P / M   (0 when fixed)
        dx = r·(γ·dz − A − B·x̂) = c1·dz + c2·u + c3
             c1 = r·γ,  c2 = −r·B·α,  c3 = −r·(A + B·δ)
        dγ = Σ_n P,  dβ = Σ_n S1

    The sums are accumulated and the coefficients computed in float64.

    Example:
        >>> import torch
        >>> from sharenorm.norm import cpu
        >>> y, dy = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
        >>> r = torch.ones(3)
        >>> cpu.supports("ident", y, dy)  # False only without a C compiler (the suite needs one)
        True
        >>> dx, dw, db = cpu.norm_backward("ident", y, dy, None, None, r, torch.zeros(3),
        ...     stats_per_sample=0, channels_per_stat=1, invert=False, fixed=True,
        ...     act_param=1.0, mask=[True, False, True])   # BatchNorm in eval with r = 1: dx = dy
        >>> torch.equal(dx, dy), dw is None, torch.allclose(db, dy.sum((0, 2)))
        (True, True, True)
    """
    lib = _library()
    n, c = s.shape[:2]
    dtype, suffix = s.dtype, _SUFFIX[s.dtype]
    gamma, beta, r = _as(gamma, dtype), _as(beta, dtype), _as(r, dtype)
    mu = r if mu is None else _as(mu, dtype)  # not read when inverting
    nstats = r.numel()
    count = s.numel() // (n * c) * channels_per_stat * (n if stats_per_sample == 0 else 1)
    if _layout(s) == "nchw":
        return _fused_nchw(kind, s, g, gamma, beta, r, mu, stats_per_sample, channels_per_stat,
                           count, invert, fixed, act_param, mask)
    ab = torch.zeros(2, n, c, dtype=dtype)  # z = a·x + b, read by the rec_ kinds only
    if not invert:
        getattr(lib, f"prepare_{suffix}")(
            n, c, stats_per_sample, channels_per_stat, _ptr(gamma), _ptr(beta), r.data_ptr(),
            mu.data_ptr(), ab[0].data_ptr(), ab[1].data_ptr(),
        )
    dx = torch.empty_like(s)
    s1, s2 = _sums_nhwc(kind, s, g, ab, dx, act_param)
    f64 = torch.float64
    acc = torch.zeros(2 * nstats, dtype=f64)
    coefs = torch.empty(3, n, c, dtype=dtype)
    dgamma = torch.zeros(c, dtype=f64) if mask[1] else None
    dbeta = torch.zeros(c, dtype=f64) if mask[2] else None
    finite = getattr(lib, f"coefs_{suffix}")(
        n, c, stats_per_sample, channels_per_stat, nstats, float(count), _ptr(gamma),
        _ptr(beta), r.data_ptr(), mu.data_ptr(), int(invert), int(fixed), s1.data_ptr(),
        s2.data_ptr(), acc.data_ptr(), coefs.data_ptr(), _ptr(dgamma), _ptr(dbeta),
    )
    if not finite:
        return None
    dgamma = None if dgamma is None else dgamma.to(dtype)
    dbeta = None if dbeta is None else dbeta.to(dtype)
    if not mask[0]:
        return None, dgamma, dbeta
    return _apply_nhwc(kind, s, g, ab, coefs, dx, act_param, fixed), dgamma, dbeta


def _fused_nchw(kind, s, g, gamma, beta, r, mu, stats_per_sample, channels_per_stat, count,
                invert, fixed, act_param, mask):
    """:func:`norm_backward` on a contiguous tensor: one statistic at a time, its sums and
    then its dx while its rows are still in the cache (``fused_nchw_*`` in backward.c),
    the statistics shared by the threads."""
    lib = _library()
    n, c = s.shape[:2]
    hw = s.numel() // (n * c)
    nstats = r.numel()
    sums = torch.empty(2 * n * c, dtype=torch.float64)  # S1 and P of each row
    grads = torch.empty(2, c, dtype=s.dtype)  # dγ, dβ
    # the keeping kinds use dx between the passes: allocated even when not returned
    dx = torch.empty_like(s) if mask[0] or kind in _KEEPING_KINDS else None
    finite = getattr(lib, f"fused_nchw_{kind}_{_SUFFIX[s.dtype]}")(
        s.data_ptr(), g.data_ptr(), _ptr(dx), n, c, hw, stats_per_sample, channels_per_stat,
        nstats, float(count), _threads(s.numel()), _ptr(gamma), _ptr(beta), r.data_ptr(),
        mu.data_ptr(), int(invert), int(fixed), act_param, sums.data_ptr(),
        sums.data_ptr() + 8 * n * c, grads.data_ptr(), grads.data_ptr() + grads.element_size() * c,
    )
    if not finite:
        return None
    return dx if mask[0] else None, grads[0] if mask[1] else None, grads[1] if mask[2] else None
