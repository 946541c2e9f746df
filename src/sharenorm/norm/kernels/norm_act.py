"""Triton kernels for Batch/Instance/Group Normalization + activation, and their launchers.

Two families read the input in place, whatever its layout (no layout copies;
channels-last in gives channels-last out):

**Per-statistic kernels** (NCHW, (N, C, L), NCDHW). ``x`` of shape ``(N, C, *)`` is seen
as ``(N, C, S)`` with its real strides, and one statistic's elements as an A × B grid:

=========  ========================  ===================  =====================
norm       one statistic per         axis A (len, stride)  axis B (len, stride)
=========  ========================  ===================  =====================
group      (n, g): P = N·G           channel in group      spatial position
instance   group with C/G = 1        (C/G, stride_c)       (S, stride_s)
batch      channel c: P = C          sample (N, stride_n)  spatial (S, stride_s)
=========  ========================  ===================  =====================

The grid is cut into ``BLOCK_A × BLOCK_B`` tiles (the contiguous axis gets the long
side), shared by ``SPLIT`` programs per statistic (grid ``(P, SPLIT)``), so a small N·G
(a diffusion UNet at batch 1-2) still gives ~1024 programs; partials are merged
afterwards, deterministically (no atomics).

**Rows × channels kernels** (NHWC, NDHWC, (N, C)). With the channels innermost, a
statistic's elements are strided by C, so a program instead takes ``BLOCK_C``
consecutive channels × a chunk of rows and keeps one accumulator per channel: every row
is one coalesced segment, also for InstanceNorm (C/G = 1) and BatchNorm.

Statistics are fp32 whatever the input dtype: each tile's own mean, then Σ(x − mean)²
over the tile, tiles merged with Chan's parallel formula (Welford by blocks), on data
shifted by the statistic's first element K, so a mean large against σ loses nothing;
never E[x²] − E[x]² on raw values. The backward recomputes z = γ·x̂ + β from x (nothing
but x, μ and r is kept) and needs per-statistic Σ dz and Σ dz·x̂ (one pass), then dx
(a second pass).

Kernels:
    _stats_kernel / _cl_stats_kernel            partial (count, mean, M2) of x − K
    _merge_kernel / _cl_coef_kernel             partials → μ, σ², r (rows: + coefficients)
    _forward_kernel / _cl_forward_kernel        y = act(γ·r·(x − μ) + β)
    _bwd_sums_kernel / _cl_bwd_sums_kernel      partial Σ dz, Σ dz·x̂ (dz = dy·act'(z))
    _bwd_merge_kernel / _cl_bwd_merge_kernel    partials → c1, c2 and dγ, dβ partials
    _bwd_dx_kernel / _cl_bwd_dx_kernel          dx = r·(γ·dz − c1 − x̂·c2)

The partials are merged on the GPU too: a forward is 3 launches and a backward 3-5,
where merging with torch ops took ~15-25 small launches whose latency (~5 µs each)
would have outweighed the kernels on tensors of a few MB. The launchers allocate
outputs and pick tiles and the split; they do no autograd (see
:mod:`sharenorm.norm.fused`). Correctness is tested with
``TRITON_INTERPRET=1`` and by compiling every kernel for sm_90; speed is untested here
(no GPU was available when they were written).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from sharenorm.activation import ACTIVATIONS
from sharenorm.norm._layout import memory_format as layout  # the dense layout a kernel reads

__all__ = ["ACT_CODES", "norm_act_forward", "norm_act_backward", "layout"]

# The activation as a compile-time code (one specialization per activation).
ACT_CODES = {None: 0, **{name: a.triton for name, a in ACTIVATIONS.items()}}

_SQRT1_2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


# ----------------------------------------------------------------------------- device code


@triton.jit
def _act(z, ACT: tl.constexpr, param):
    """act(z) for fp32 z."""
    # relu and elu select with z ≤ 0 so that a NaN takes the other branch, z itself (as
    # in torch); tl.maximum would return 0 for it (fmax), hiding a NaN batch.
    if ACT == 1:
        y = tl.where(z <= 0, 0.0, z)
    elif ACT == 2:
        y = tl.where(z > 0, z, z * param)
    elif ACT == 3:
        y = tl.where(z <= 0, param * (tl.exp(tl.minimum(z, 0.0)) - 1.0), z)
    elif ACT == 4:
        y = z / (1.0 + tl.exp(-z))
    elif ACT == 5:
        y = 0.5 * z * (1.0 + tl.math.erf(z * _SQRT1_2))
    elif ACT == 6:
        # tanh(z) = sign(z)·(1 − e^{−2|z|}) / (1 + e^{−2|z|}): no overflow for any z.
        e = tl.exp(-2.0 * tl.abs(z))
        t = (1.0 - e) / (1.0 + e)
        y = tl.where(z < 0, -t, t)
    elif ACT == 7:
        y = 1.0 / (1.0 + tl.exp(-z))
    else:
        y = z
    return y


@triton.jit
def _act_grad(z, ACT: tl.constexpr, param):
    """act'(z) for fp32 z (the same one-sided choices as torch at the kinks)."""
    # NaN takes the branch torch's relu/elu backwards give it: the gradient passes
    if ACT == 1:
        d = tl.where(z <= 0, 0.0, 1.0)
    elif ACT == 2:
        d = tl.where(z > 0, 1.0, param)
    elif ACT == 3:
        d = tl.where(z <= 0, param * tl.exp(tl.minimum(z, 0.0)), 1.0)
    elif ACT == 4:
        s = 1.0 / (1.0 + tl.exp(-z))
        d = s * (1.0 + z * (1.0 - s))
    elif ACT == 5:
        d = 0.5 * (1.0 + tl.math.erf(z * _SQRT1_2)) + z * _INV_SQRT_2PI * tl.exp(-0.5 * z * z)
    elif ACT == 6:
        e = tl.exp(-2.0 * tl.abs(z))
        t = (1.0 - e) / (1.0 + e)
        d = 1.0 - t * t
    elif ACT == 7:
        s = 1.0 / (1.0 + tl.exp(-z))
        d = s * (1.0 - s)
    else:
        d = tl.full(z.shape, 1.0, tl.float32)
    return d


@triton.jit
def _tile(p, t, TB, A, B, P_LO, s_hi, s_lo, sA, sB, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """Offsets, mask and A/B indices of tile ``t`` of statistic ``p`` (int64 offsets)."""
    ta = t // TB
    tb = t % TB
    a = ta * BLOCK_A + tl.arange(0, BLOCK_A)
    b = tb * BLOCK_B + tl.arange(0, BLOCK_B)
    base = (p // P_LO).to(tl.int64) * s_hi + (p % P_LO).to(tl.int64) * s_lo
    offs = base + a.to(tl.int64)[:, None] * sA + b.to(tl.int64)[None, :] * sB
    mask = (a[:, None] < A) & (b[None, :] < B)
    return offs, mask, a, tb


@triton.jit
def _param(PTR, idx, mask, default: tl.constexpr, HAS: tl.constexpr):
    """γ or β at channels ``idx`` as fp32, or ``default`` where the norm has none."""
    if HAS:
        v = tl.load(PTR + idx, mask=mask, other=default).to(tl.float32)
    else:
        v = tl.full(idx.shape, default, tl.float32)
    return v


@triton.jit
def _store_coefs(out, C, c, cm, mean, rstd, w, b):
    """The six coefficient rows of channels ``c`` (see the channels-last section): scale,
    shift, r, μ·r, and rows 4, 5 zeroed (the backward fills them)."""
    scale = w * rstd
    zero = tl.zeros(c.shape, dtype=tl.float32)
    tl.store(out + c, scale, mask=cm)
    tl.store(out + C + c, b - mean * scale, mask=cm)
    tl.store(out + 2 * C + c, zero + rstd, mask=cm)
    tl.store(out + 3 * C + c, zero + mean * rstd, mask=cm)
    tl.store(out + 4 * C + c, zero, mask=cm)
    tl.store(out + 5 * C + c, zero, mask=cm)


@triton.jit
def _affine_coefs(W, Bi, p, a, A, P_LO, CH_P, CH_A, mean, rstd,
                  HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    """Per-row (axis A) γ, scale = γ·r and shift = β − μ·γ·r, fp32."""
    ch = (p % P_LO) * CH_P + a * CH_A
    w = _param(W, ch, a < A, 1.0, HAS_W)
    bb = _param(Bi, ch, a < A, 0.0, HAS_B)
    scale = w * rstd
    return w, scale, bb - mean * scale


@triton.jit
def _stats_kernel(
    X,      # (N, C, S) input, any strides
    PART,   # (P, SPLIT, 4) fp32 out: count, mean − K, M2 of each program's tiles, and K
    A, B, P_LO, s_hi, s_lo, sA, sB, TB, T, TPP, SPLIT,
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
):
    p = tl.program_id(0)
    k = tl.program_id(1)
    # Shift by K = the statistic's first element (the same K in every program of p):
    # x − K is exact near K and small, so a large mean (1e4 ± 1e-2) costs no digits of σ².
    pivot = tl.load(X + (p // P_LO).to(tl.int64) * s_hi + (p % P_LO).to(tl.int64) * s_lo)
    pivot = pivot.to(tl.float32)
    cnt = tl.zeros((), dtype=tl.float32)
    mean = tl.zeros((), dtype=tl.float32)
    m2 = tl.zeros((), dtype=tl.float32)
    t1 = tl.minimum(k * TPP + TPP, T)
    for t in range(k * TPP, t1):
        offs, mask, a, tb = _tile(p, t, TB, A, B, P_LO, s_hi, s_lo, sA, sB, BLOCK_A, BLOCK_B)
        x = tl.where(mask, tl.load(X + offs, mask=mask, other=0.0).to(tl.float32) - pivot, 0.0)
        n_t = tl.sum(mask.to(tl.int32)).to(tl.float32)
        m_t = tl.sum(x) / n_t
        d = tl.where(mask, x - m_t, 0.0)
        m2_t = tl.sum(d * d)
        tot = cnt + n_t
        delta = m_t - mean
        mean += delta * (n_t / tot)
        m2 += m2_t + delta * delta * (cnt * (n_t / tot))
        cnt = tot
    out = PART + (p * SPLIT + k) * 4
    tl.store(out, cnt)
    tl.store(out + 1, mean)
    tl.store(out + 2, m2)
    tl.store(out + 3, pivot)


@triton.jit
def _merge_kernel(
    PART,   # (P, SPLIT, 4) fp32 partials of _stats_kernel
    MEAN, VAR, RSTD,  # (P,) fp32 out: μ, biased σ², 1/√(σ² + ε)
    P, SPLIT, eps,
    BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Merge each statistic's SPLIT partials with Chan's formula, on the GPU: one launch
    instead of a dozen small torch ops (whose launch latency would outweigh the kernels on
    tensors of a few MB). Two passes over the partials: the merged mean first, then
    M2 = Σ M2_k + Σ n_k·(mean_k − mean)²."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < P
    base = p.to(tl.int64) * SPLIT * 4
    total = tl.zeros((BLOCK_P,), dtype=tl.float32)
    s = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for k0 in range(0, SPLIT, BLOCK_S):
        k = k0 + tl.arange(0, BLOCK_S)
        m = pmask[:, None] & (k[None, :] < SPLIT)
        off = base[:, None] + k[None, :] * 4
        cnt = tl.load(PART + off, mask=m, other=0.0)
        total += tl.sum(cnt, axis=1)
        s += tl.sum(cnt * tl.load(PART + off + 1, mask=m, other=0.0), axis=1)
    total = tl.where(pmask, total, 1.0)
    mean = s / total  # of x − K
    m2 = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for k0 in range(0, SPLIT, BLOCK_S):
        k = k0 + tl.arange(0, BLOCK_S)
        m = pmask[:, None] & (k[None, :] < SPLIT)
        off = base[:, None] + k[None, :] * 4
        cnt = tl.load(PART + off, mask=m, other=0.0)
        d = tl.load(PART + off + 1, mask=m, other=0.0) - mean[:, None]
        m2 += tl.sum(tl.load(PART + off + 2, mask=m, other=0.0) + cnt * d * d, axis=1)
    var = m2 / total
    tl.store(MEAN + p, mean + tl.load(PART + base + 3, mask=pmask, other=0.0), mask=pmask)
    tl.store(VAR + p, var, mask=pmask)
    tl.store(RSTD + p, 1.0 / tl.sqrt(var + eps), mask=pmask)


@triton.jit
def _forward_kernel(
    X,      # (N, C, S) input
    Y,      # (N, C, S) output, same strides as X
    W, Bi,  # (C,) γ, β (or dummies when HAS_W / HAS_B is False)
    MEAN, RSTD,  # (P,) fp32 μ and 1/√(σ² + ε) of each statistic
    A, B, P_LO, s_hi, s_lo, sA, sB, CH_P, CH_A, TB, T, TPP, param,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr,
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
):
    p = tl.program_id(0)
    k = tl.program_id(1)
    mean = tl.load(MEAN + p)
    rstd = tl.load(RSTD + p)
    t1 = tl.minimum(k * TPP + TPP, T)
    for t in range(k * TPP, t1):
        offs, mask, a, tb = _tile(p, t, TB, A, B, P_LO, s_hi, s_lo, sA, sB, BLOCK_A, BLOCK_B)
        _, scale, shift = _affine_coefs(W, Bi, p, a, A, P_LO, CH_P, CH_A, mean, rstd, HAS_W, HAS_B)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        y = _act(x * scale[:, None] + shift[:, None], ACT, param)
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_sums_kernel(
    X, DY,          # (N, C, S) input and output grad, same strides
    W, Bi,          # (C,) γ, β
    MEAN, RSTD,     # (P,) fp32
    SUM_DZ, SUM_DZX,  # (P, TB, A) fp32 out: Σ_b dz and Σ_b dz·x̂ of each (tile row, b-tile)
    A, B, P_LO, s_hi, s_lo, sA, sB, CH_P, CH_A, TB, T, TPP, param,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr,
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
):
    p = tl.program_id(0)
    k = tl.program_id(1)
    mean = tl.load(MEAN + p)
    rstd = tl.load(RSTD + p)
    t1 = tl.minimum(k * TPP + TPP, T)
    for t in range(k * TPP, t1):
        offs, mask, a, tb = _tile(p, t, TB, A, B, P_LO, s_hi, s_lo, sA, sB, BLOCK_A, BLOCK_B)
        _, scale, shift = _affine_coefs(W, Bi, p, a, A, P_LO, CH_P, CH_A, mean, rstd, HAS_W, HAS_B)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        z = x * scale[:, None] + shift[:, None]
        dz = tl.where(mask, dy * _act_grad(z, ACT, param), 0.0)
        xh = (x - mean) * rstd
        out = (p * TB + tb).to(tl.int64) * A + a
        tl.store(SUM_DZ + out, tl.sum(dz, axis=1), mask=a < A)
        tl.store(SUM_DZX + out, tl.sum(dz * xh, axis=1), mask=a < A)


@triton.jit
def _bwd_dx_kernel(
    X, DY, DX,      # (N, C, S), same strides
    W, Bi,          # (C,) γ, β
    MEAN, RSTD,     # (P,) fp32
    C1, C2,         # (P,) fp32: mean over the statistic's elements of γ·dz and γ·dz·x̂
    A, B, P_LO, s_hi, s_lo, sA, sB, CH_P, CH_A, TB, T, TPP, param,
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr,
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
):
    p = tl.program_id(0)
    k = tl.program_id(1)
    mean = tl.load(MEAN + p)
    rstd = tl.load(RSTD + p)
    c1 = tl.load(C1 + p)
    c2 = tl.load(C2 + p)
    t1 = tl.minimum(k * TPP + TPP, T)
    for t in range(k * TPP, t1):
        offs, mask, a, tb = _tile(p, t, TB, A, B, P_LO, s_hi, s_lo, sA, sB, BLOCK_A, BLOCK_B)
        w, scale, shift = _affine_coefs(W, Bi, p, a, A, P_LO, CH_P, CH_A, mean, rstd, HAS_W, HAS_B)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        z = x * scale[:, None] + shift[:, None]
        dz = dy * _act_grad(z, ACT, param)
        xh = (x - mean) * rstd
        dx = rstd * (w[:, None] * dz - c1 - xh * c2)
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)


@triton.jit
def _sum_rows(X, Y, row0, n_rows, stride, col, col_mask, BLOCK_ROWS: tl.constexpr,
              BLOCK_COLS: tl.constexpr):
    """Σ over rows ``row0 … row0 + n_rows − 1`` of two row-major fp32 matrices (row
    ``stride``), at the columns ``col``: the partial-sum merge of both backward layouts."""
    sx = tl.zeros((BLOCK_COLS,), dtype=tl.float32)
    sy = tl.zeros((BLOCK_COLS,), dtype=tl.float32)
    for r0 in range(0, n_rows, BLOCK_ROWS):
        r = r0 + tl.arange(0, BLOCK_ROWS)
        m = (r[:, None] < n_rows) & col_mask[None, :]
        off = (row0 + r[:, None]).to(tl.int64) * stride + col[None, :]
        sx += tl.sum(tl.load(X + off, mask=m, other=0.0), axis=0)
        sy += tl.sum(tl.load(Y + off, mask=m, other=0.0), axis=0)
    return sx, sy


@triton.jit
def _bwd_merge_kernel(
    SUM_DZ, SUM_DZX,  # (P, TB, A) fp32 partials of _bwd_sums_kernel
    W,                # (C,) γ (a dummy when HAS_W is False)
    S_DZ, S_DZX,      # (P, A) fp32 out: the partials summed over the b-tiles
    C1, C2,           # (P,) fp32 out: mean of γ·dz and of γ·dz·x̂ (0 when not TRAINING)
    DB, DW,           # (P,) fp32 out (PER_CHANNEL: BatchNorm, a statistic is a channel)
    A, TB, P_LO, CH_P, CH_A, inv_count,
    HAS_W: tl.constexpr, TRAINING: tl.constexpr, PER_CHANNEL: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_A: tl.constexpr,
):
    """One program per statistic: what the dx pass needs (c1, c2) and the parameter
    gradients' partials, in one launch instead of a dozen small torch ops."""
    p = tl.program_id(0)
    c1 = tl.zeros((), dtype=tl.float32)
    c2 = tl.zeros((), dtype=tl.float32)
    db = tl.zeros((), dtype=tl.float32)
    dw = tl.zeros((), dtype=tl.float32)
    for a0 in range(0, A, BLOCK_A):
        a = a0 + tl.arange(0, BLOCK_A)
        am = a < A
        s_dz, s_dzx = _sum_rows(SUM_DZ, SUM_DZX, p * TB, TB, A, a, am, BLOCK_T, BLOCK_A)
        out = p.to(tl.int64) * A + a
        tl.store(S_DZ + out, s_dz, mask=am)
        tl.store(S_DZX + out, s_dzx, mask=am)
        w = _param(W, (p % P_LO) * CH_P + a * CH_A, am, 1.0, HAS_W)
        c1 += tl.sum(w * s_dz)
        c2 += tl.sum(w * s_dzx)
        db += tl.sum(s_dz)
        dw += tl.sum(s_dzx)
    if PER_CHANNEL:
        tl.store(DB + p, db)
        tl.store(DW + p, dw)
    if TRAINING:
        tl.store(C1 + p, c1 * inv_count)
        tl.store(C2 + p, c2 * inv_count)
    else:
        tl.store(C1 + p, 0.0)
        tl.store(C2 + p, 0.0)


# ----------------------------------------------------------------------------- channels-last
# With the channels innermost (NHWC / NDHWC, and (N, C) matrices), x is a row-major matrix
# X[r, c] with r = n·S + s. A program takes BLOCK_C consecutive channels (one coalesced
# segment per row) × a chunk of rows of one *segment* (all N·S rows for BatchNorm, the S
# rows of one sample for Group/InstanceNorm) and keeps one accumulator per channel, so
# even C/G = 1 reads full cache lines. Per-(segment, channel) partials are merged into
# per-statistic values (channels of a group × row chunks) on the host side, with Chan's
# formula. COEF holds per-(segment, channel) fp32 rows: 0 scale = γ·r, 1 shift = β − μ·γ·r,
# 2 r, 3 μ·r, 4 r·c1, 5 r·c2.


@triton.jit
def _cl_tile(seg, cb, t, C, R_SEG, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    r = t * BLOCK_R + tl.arange(0, BLOCK_R)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    rows = seg.to(tl.int64) * R_SEG + r.to(tl.int64)
    offs = rows[:, None] * C + c[None, :]
    mask = (r[:, None] < R_SEG) & (c[None, :] < C)
    return offs, mask, r, c


@triton.jit
def _cl_stats_kernel(
    X,      # (N·S, C) rows × channels, dense
    PART,   # (NSEG, SPLIT, 4, C) fp32 out: rows counted, mean − K, M2, K per channel
    C, R_SEG, NCB, TPP, T, CG, SPLIT,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    seg = tl.program_id(0) // NCB
    cb = tl.program_id(0) % NCB
    k = tl.program_id(1)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    # K = the statistic's first element (first row of the segment, first channel of the
    # group), shared by all channels of a group so their partials merge exactly.
    pivot = tl.load(X + seg.to(tl.int64) * R_SEG * C + (c // CG) * CG, mask=cmask, other=0.0)
    pivot = pivot.to(tl.float32)
    cnt = tl.zeros((), dtype=tl.float32)
    mean = tl.zeros((BLOCK_C,), dtype=tl.float32)
    m2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for t in range(k * TPP, tl.minimum(k * TPP + TPP, T)):
        offs, mask, r, _ = _cl_tile(seg, cb, t, C, R_SEG, BLOCK_R, BLOCK_C)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32) - pivot[None, :]
        x = tl.where(mask, x, 0.0)
        n_t = tl.sum((r < R_SEG).to(tl.int32)).to(tl.float32)
        m_t = tl.sum(x, axis=0) / n_t
        d = tl.where(mask, x - m_t[None, :], 0.0)
        m2_t = tl.sum(d * d, axis=0)
        tot = cnt + n_t
        delta = m_t - mean
        mean += delta * (n_t / tot)
        m2 += m2_t + delta * delta * (cnt * (n_t / tot))
        cnt = tot
    out = PART + ((seg * SPLIT + k) * 4).to(tl.int64) * C + c
    tl.store(out, tl.zeros((BLOCK_C,), dtype=tl.float32) + cnt, mask=cmask)
    tl.store(out + C, mean, mask=cmask)
    tl.store(out + 2 * C, m2, mask=cmask)
    tl.store(out + 3 * C, pivot, mask=cmask)


@triton.jit
def _cl_forward_kernel(
    X, Y,   # (N·S, C) input and output, dense rows × channels
    COEF,   # (NSEG, 6, C) fp32 per-(segment, channel) coefficients (rows 0, 1 used)
    C, R_SEG, NCB, TPP, T, param,
    ACT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    seg = tl.program_id(0) // NCB
    cb = tl.program_id(0) % NCB
    k = tl.program_id(1)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    coef = COEF + seg.to(tl.int64) * 6 * C + c
    scale = tl.load(coef, mask=c < C, other=0.0)
    shift = tl.load(coef + C, mask=c < C, other=0.0)
    for t in range(k * TPP, tl.minimum(k * TPP + TPP, T)):
        offs, mask, _, _ = _cl_tile(seg, cb, t, C, R_SEG, BLOCK_R, BLOCK_C)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        y = _act(x * scale[None, :] + shift[None, :], ACT, param)
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _cl_bwd_sums_kernel(
    X, DY,            # (N·S, C) input and output grad
    COEF,             # (NSEG, 6, C) fp32 (rows 0-3 used)
    SUM_DZ, SUM_DZX,  # (NSEG, SPLIT, C) fp32 out: Σ dz, Σ dz·x̂ over the program's rows
    C, R_SEG, NCB, TPP, T, SPLIT, param,
    ACT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    seg = tl.program_id(0) // NCB
    cb = tl.program_id(0) % NCB
    k = tl.program_id(1)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    coef = COEF + seg.to(tl.int64) * 6 * C + c
    scale = tl.load(coef, mask=cmask, other=0.0)
    shift = tl.load(coef + C, mask=cmask, other=0.0)
    rstd = tl.load(coef + 2 * C, mask=cmask, other=0.0)
    mean_r = tl.load(coef + 3 * C, mask=cmask, other=0.0)
    s_dz = tl.zeros((BLOCK_C,), dtype=tl.float32)
    s_dzx = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for t in range(k * TPP, tl.minimum(k * TPP + TPP, T)):
        offs, mask, _, _ = _cl_tile(seg, cb, t, C, R_SEG, BLOCK_R, BLOCK_C)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        dz = tl.where(mask, dy * _act_grad(x * scale[None, :] + shift[None, :], ACT, param), 0.0)
        xh = x * rstd[None, :] - mean_r[None, :]
        s_dz += tl.sum(dz, axis=0)
        s_dzx += tl.sum(dz * xh, axis=0)
    out = (seg * SPLIT + k).to(tl.int64) * C + c
    tl.store(SUM_DZ + out, s_dz, mask=cmask)
    tl.store(SUM_DZX + out, s_dzx, mask=cmask)


@triton.jit
def _cl_bwd_dx_kernel(
    X, DY, DX,  # (N·S, C)
    COEF,       # (NSEG, 6, C) fp32 (all rows used)
    C, R_SEG, NCB, TPP, T, param,
    ACT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    seg = tl.program_id(0) // NCB
    cb = tl.program_id(0) % NCB
    k = tl.program_id(1)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    coef = COEF + seg.to(tl.int64) * 6 * C + c
    scale = tl.load(coef, mask=cmask, other=0.0)
    shift = tl.load(coef + C, mask=cmask, other=0.0)
    rstd = tl.load(coef + 2 * C, mask=cmask, other=0.0)
    mean_r = tl.load(coef + 3 * C, mask=cmask, other=0.0)
    c1r = tl.load(coef + 4 * C, mask=cmask, other=0.0)
    c2r = tl.load(coef + 5 * C, mask=cmask, other=0.0)
    for t in range(k * TPP, tl.minimum(k * TPP + TPP, T)):
        offs, mask, _, _ = _cl_tile(seg, cb, t, C, R_SEG, BLOCK_R, BLOCK_C)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        dz = dy * _act_grad(x * scale[None, :] + shift[None, :], ACT, param)
        xh = x * rstd[None, :] - mean_r[None, :]
        dx = scale[None, :] * dz - c1r[None, :] - xh * c2r[None, :]
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)


@triton.jit
def _cl_bwd_merge_kernel(
    SUM_DZ, SUM_DZX,  # (NSEG, SPLIT, C) fp32 partials of _cl_bwd_sums_kernel
    W,                # (C,) γ (a dummy when HAS_W is False)
    COEF,             # (NSEG, 6, C) fp32: rows 4, 5 (r·c1, r·c2) written here
    S_DZ, S_DZX,      # (NSEG, C) fp32 out: the partials summed over the row chunks
    C, G, CG, SPLIT, inv_count,
    HAS_W: tl.constexpr, TRAINING: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_CG: tl.constexpr,
):
    """One program per statistic (segment, group): sums over its row chunks, then
    c1 = mean of γ·dz and c2 = mean of γ·dz·x̂ over the group, written as r·c1, r·c2 into
    its channels' coefficient rows (one launch for ~15 small torch ops)."""
    q = tl.program_id(0)
    seg = q // G
    g = q % G
    c1 = tl.zeros((), dtype=tl.float32)
    c2 = tl.zeros((), dtype=tl.float32)
    for c0 in range(0, CG, BLOCK_CG):
        c = g * CG + c0 + tl.arange(0, BLOCK_CG)
        cm = c < (g + 1) * CG
        s_dz, s_dzx = _sum_rows(SUM_DZ, SUM_DZX, seg * SPLIT, SPLIT, C, c, cm, BLOCK_S,
                                BLOCK_CG)
        out = seg.to(tl.int64) * C + c
        tl.store(S_DZ + out, s_dz, mask=cm)
        tl.store(S_DZX + out, s_dzx, mask=cm)
        w = _param(W, c, cm, 1.0, HAS_W)
        c1 += tl.sum(w * s_dz)
        c2 += tl.sum(w * s_dzx)
    if TRAINING:
        c1 = c1 * inv_count
        c2 = c2 * inv_count
    else:  # the statistics were given: dx = r·γ·dz, whatever the sums hold
        c1 = tl.zeros((), dtype=tl.float32)
        c2 = tl.zeros((), dtype=tl.float32)
    coef = COEF + seg.to(tl.int64) * 6 * C
    for c0 in range(0, CG, BLOCK_CG):
        c = g * CG + c0 + tl.arange(0, BLOCK_CG)
        cm = c < (g + 1) * CG
        r = tl.load(coef + 2 * C + c, mask=cm, other=0.0)
        tl.store(coef + 4 * C + c, r * c1, mask=cm)
        tl.store(coef + 5 * C + c, r * c2, mask=cm)


@triton.jit
def _cl_part_sums(PART, base, C, SPLIT, c, cm, BLOCK_S: tl.constexpr):
    """Per channel ``c`` of one segment's (SPLIT, 4, C) partials: Σ n_k and Σ n_k·mean_k."""
    total = tl.zeros(c.shape, dtype=tl.float32)
    s = tl.zeros(c.shape, dtype=tl.float32)
    for k0 in range(0, SPLIT, BLOCK_S):
        k = k0 + tl.arange(0, BLOCK_S)
        m = (k[:, None] < SPLIT) & cm[None, :]
        off = base + k[:, None].to(tl.int64) * 4 * C + c[None, :]
        cnt = tl.load(PART + off, mask=m, other=0.0)
        total += tl.sum(cnt, axis=0)
        s += tl.sum(cnt * tl.load(PART + off + C, mask=m, other=0.0), axis=0)
    return total, s


@triton.jit
def _cl_part_m2(PART, base, C, SPLIT, c, cm, mean, BLOCK_S: tl.constexpr):
    """Per channel: Σ M2_k + n_k·(mean_k − mean)² (Chan's second pass; ``mean`` is a scalar
    or one value per channel)."""
    m2 = tl.zeros(c.shape, dtype=tl.float32)
    for k0 in range(0, SPLIT, BLOCK_S):
        k = k0 + tl.arange(0, BLOCK_S)
        m = (k[:, None] < SPLIT) & cm[None, :]
        off = base + k[:, None].to(tl.int64) * 4 * C + c[None, :]
        cnt = tl.load(PART + off, mask=m, other=0.0)
        d = tl.load(PART + off + C, mask=m, other=0.0) - mean
        m2 += tl.sum(tl.load(PART + off + 2 * C, mask=m, other=0.0) + cnt * d * d, axis=0)
    return m2


@triton.jit
def _cl_coef_kernel(
    PART,       # (NSEG, SPLIT, 4, C) fp32 partials of _cl_stats_kernel (HAS_PART)
    MEAN, VAR,  # (NSEG·G,) fp32: written (HAS_PART) or read (statistics given)
    W, Bi,      # (C,) γ, β (dummies when HAS_W / HAS_B is False)
    COEF,       # (NSEG, 6, C) fp32 out: scale, shift, r, μ·r; rows 4, 5 zeroed
    C, G, CG, SPLIT, eps,
    HAS_PART: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_CG: tl.constexpr,
):
    """One program per statistic (segment, group): merge its partials over the row chunks
    and the group's channels (Chan's formula, two passes), then write the per-channel
    coefficients of its CG channels; one launch for what took ~20 small torch ops."""
    q = tl.program_id(0)
    seg = q // G
    g = q % G
    if HAS_PART:
        seg_base = seg.to(tl.int64) * SPLIT * 4 * C
        total = tl.zeros((), dtype=tl.float32)
        s = tl.zeros((), dtype=tl.float32)
        for c0 in range(0, CG, BLOCK_CG):
            c = g * CG + c0 + tl.arange(0, BLOCK_CG)
            t_c, s_c = _cl_part_sums(PART, seg_base, C, SPLIT, c, c < (g + 1) * CG, BLOCK_S)
            total += tl.sum(t_c)
            s += tl.sum(s_c)
        mean = s / total  # of x − K (K shared by the group's channels)
        m2 = tl.zeros((), dtype=tl.float32)
        for c0 in range(0, CG, BLOCK_CG):
            c = g * CG + c0 + tl.arange(0, BLOCK_CG)
            m2 += tl.sum(_cl_part_m2(PART, seg_base, C, SPLIT, c, c < (g + 1) * CG, mean,
                                     BLOCK_S))
        var = m2 / total
        mean += tl.load(PART + seg_base + 3 * C + g * CG)
        tl.store(MEAN + q, mean)
        tl.store(VAR + q, var)
    else:
        mean = tl.load(MEAN + q)
        var = tl.load(VAR + q)
    rstd = 1.0 / tl.sqrt(var + eps)
    out = COEF + seg.to(tl.int64) * 6 * C
    for c0 in range(0, CG, BLOCK_CG):
        c = g * CG + c0 + tl.arange(0, BLOCK_CG)
        cm = c < (g + 1) * CG
        _store_coefs(out, C, c, cm, mean, rstd, _param(W, c, cm, 1.0, HAS_W),
                     _param(Bi, c, cm, 0.0, HAS_B))


@triton.jit
def _running_update_kernel(
    MEAN, VAR,  # (R, C) fp32 batch statistics (biased σ²), averaged over the R rows
    RM, RV,     # (C,) running statistics, updated in place when every new value is finite
    OK,         # () bool out: True if the update was kept
    R, C, momentum, unbias,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """``r ← (1 − momentum)·r + momentum·batch`` (σ² unbiased), ATen's formula, kept only if
    every new value is finite (one NaN batch must not poison the running statistics). A
    single program: first the check over all channels, then the write; one launch for
    the ~14 small torch ops of the same guarded update."""
    ok = tl.full((), 1, tl.int32)
    for pass_ in range(2):
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            cm = c < C
            s_m = tl.zeros((BLOCK_C,), dtype=tl.float32)
            s_v = tl.zeros((BLOCK_C,), dtype=tl.float32)
            for r0 in range(0, R, BLOCK_R):
                r = r0 + tl.arange(0, BLOCK_R)
                m = (r[:, None] < R) & cm[None, :]
                off = r[:, None].to(tl.int64) * C + c[None, :]
                s_m += tl.sum(tl.load(MEAN + off, mask=m, other=0.0), axis=0)
                s_v += tl.sum(tl.load(VAR + off, mask=m, other=0.0), axis=0)
            rm = tl.load(RM + c, mask=cm, other=0.0).to(tl.float32)
            rv = tl.load(RV + c, mask=cm, other=0.0).to(tl.float32)
            # rounded to the buffers' dtype first: an fp16 variance overflows to inf there
            new_m = ((1.0 - momentum) * rm + momentum * (s_m / R)).to(RM.dtype.element_ty)
            new_v = ((1.0 - momentum) * rv + momentum * (s_v / R * unbias)).to(
                RV.dtype.element_ty)
            if pass_ == 0:
                finite = ((tl.abs(new_m.to(tl.float32)) < float("inf"))
                          & (tl.abs(new_v.to(tl.float32)) < float("inf")))
                ok = tl.minimum(ok, tl.min(tl.where(cm & ~finite, 0, 1), axis=0))
            elif ok == 1:
                tl.store(RM + c, new_m, mask=cm)
                tl.store(RV + c, new_v, mask=cm)
    tl.store(OK, ok != 0)


def update_running_stats(running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor,
                         momentum: float, unbias: float) -> Tensor:
    """Guarded in-place running-statistics update from batch statistics ``mean``/``var``
    of shape (C,) or (R, C) (rows averaged: InstanceNorm's per-sample statistics); returns
    a 0-d bool tensor, True if the update was kept (no host sync)."""
    c = running_mean.numel()
    mean, var = mean.float().reshape(-1, c).contiguous(), var.float().reshape(-1, c).contiguous()
    # the kernel addresses the buffers densely: strided ones are updated through a copy
    rm = running_mean if running_mean.is_contiguous() else running_mean.contiguous()
    rv = running_var if running_var.is_contiguous() else running_var.contiguous()
    ok = torch.empty((), device=mean.device, dtype=torch.bool)
    block_c = min(triton.next_power_of_2(c), 1024)
    block_r = max(1, min(triton.next_power_of_2(mean.shape[0]), 4096 // block_c))
    _running_update_kernel[(1,)](mean, var, rm, rv, ok, mean.shape[0], c, float(momentum),
                                 float(unbias), BLOCK_R=block_r, BLOCK_C=block_c)
    if rm is not running_mean:
        running_mean.copy_(rm)
    if rv is not running_var:
        running_var.copy_(rv)
    return ok


@triton.jit
def _cl_coef_channel_kernel(
    PART, MEAN, VAR, W, Bi, COEF,  # as _cl_coef_kernel, with one channel per statistic
    C, SPLIT, eps,
    HAS_PART: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """:func:`_cl_coef_kernel` for BatchNorm and InstanceNorm (C/G = 1): a program takes
    BLOCK_C consecutive channels of a segment, so every row of partials it reads is one
    coalesced segment (one program per channel would gather 4 bytes per 32-byte sector)."""
    seg = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    stat = seg.to(tl.int64) * C + c
    if HAS_PART:
        base = seg.to(tl.int64) * SPLIT * 4 * C
        total, s = _cl_part_sums(PART, base, C, SPLIT, c, cm, BLOCK_S)
        total = tl.where(cm, total, 1.0)
        mean = s / total  # of x − K
        var = _cl_part_m2(PART, base, C, SPLIT, c, cm, mean, BLOCK_S) / total
        mean += tl.load(PART + base + 3 * C + c, mask=cm, other=0.0)
        tl.store(MEAN + stat, mean, mask=cm)
        tl.store(VAR + stat, var, mask=cm)
    else:
        mean = tl.load(MEAN + stat, mask=cm, other=0.0)
        var = tl.load(VAR + stat, mask=cm, other=1.0)
    rstd = 1.0 / tl.sqrt(var + eps)
    _store_coefs(COEF + seg.to(tl.int64) * 6 * C, C, c, cm, mean, rstd,
                 _param(W, c, cm, 1.0, HAS_W), _param(Bi, c, cm, 0.0, HAS_B))


@triton.jit
def _cl_bwd_merge_channel_kernel(
    SUM_DZ, SUM_DZX, W, COEF, S_DZ, S_DZX,  # as _cl_bwd_merge_kernel, one channel per statistic
    C, SPLIT, inv_count,
    HAS_W: tl.constexpr, TRAINING: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """:func:`_cl_bwd_merge_kernel` for C/G = 1, BLOCK_C consecutive channels a program
    (coalesced reads of the partials, as :func:`_cl_coef_channel_kernel`)."""
    seg = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < C
    s_dz, s_dzx = _sum_rows(SUM_DZ, SUM_DZX, seg * SPLIT, SPLIT, C, c, cm, BLOCK_S, BLOCK_C)
    out = seg.to(tl.int64) * C + c
    tl.store(S_DZ + out, s_dz, mask=cm)
    tl.store(S_DZX + out, s_dzx, mask=cm)
    coef = COEF + seg.to(tl.int64) * 6 * C + c
    if TRAINING:
        w = _param(W, c, cm, 1.0, HAS_W)
        r = tl.load(coef + 2 * C, mask=cm, other=0.0)
        tl.store(coef + 4 * C, r * w * s_dz * inv_count, mask=cm)
        tl.store(coef + 5 * C, r * w * s_dzx * inv_count, mask=cm)
    else:  # the statistics were given: dx = r·γ·dz
        zero = tl.zeros((BLOCK_C,), dtype=tl.float32)
        tl.store(coef + 4 * C, zero, mask=cm)
        tl.store(coef + 5 * C, zero, mask=cm)


# ----------------------------------------------------------------------------- launchers


def _dense(t: Tensor | None) -> Tensor | None:
    """γ or β as the kernels address them: (C,) with stride 1."""
    return None if t is None else t.contiguous()


_ORDER = {  # dims from innermost to outermost
    torch.channels_last: (1, 3, 2, 0),
    torch.channels_last_3d: (1, 4, 3, 2, 0),
}


def dense(x: Tensor) -> Tensor:
    """``x`` dense in :func:`layout` with the canonical strides the kernels' index math
    assumes. ``is_contiguous`` ignores the stride of a size-1 dim: a (2, 4, 1, 5) tensor
    transposed to (2, 4, 5, 1) is "contiguous" with stride 5 on its last dim, which read
    as the spatial stride would address past the end of the tensor."""
    fmt = layout(x)
    x = x.contiguous(memory_format=fmt)
    strides, step = [0] * x.dim(), 1
    for d in _ORDER.get(fmt, range(x.dim() - 1, -1, -1)):
        strides[d] = step
        step *= max(x.shape[d], 1)
    if list(x.stride()) != strides:
        x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt).copy_(x)
    return x


class _Geometry:
    """Where the elements of each statistic lie and how the tiles and split are cut."""

    def __init__(self, x: Tensor, groups: int, batch: bool, tile: int | None,
                 split: int | None):
        n, c = x.shape[:2]
        s = math.prod(x.shape[2:])
        s_n, s_c = x.stride(0), x.stride(1)
        s_s = x.stride(-1) if x.dim() > 2 else 1
        if batch:  # statistic = channel; A = samples, B = positions
            self.P, self.P_LO, self.s_hi, self.s_lo = c, c, 0, s_c
            self.A, self.B, self.sA, self.sB = n, s, s_n, s_s
            self.CH_P, self.CH_A = 1, 0
        else:  # statistic = (sample, group); A = channels of the group, B = positions
            cg = c // groups
            self.P, self.P_LO, self.s_hi, self.s_lo = n * groups, groups, s_n, cg * s_c
            self.A, self.B, self.sA, self.sB = cg, s, s_c, s_s
            self.CH_P, self.CH_A = cg, 1
        # Tiles of ≤ `tile` elements (2048; down to 512 when the whole tensor has fewer
        # than ~4096 tiles, so a small N·G still splits into ~1024 programs of a few
        # tiles); the contiguous axis gets the long side of the tile (coalesced loads).
        if tile is None:
            tile = 2048
            while tile > 512 and self.P * triton.cdiv(self.A * self.B, tile) < 4096:
                tile //= 2
        a_inner = self.sA == 1 and self.A > 1
        inner, outer = (self.A, self.B) if a_inner else (self.B, self.A)
        b_in = min(triton.next_power_of_2(max(inner, 1)), tile)
        b_out = max(1, min(triton.next_power_of_2(max(outer, 1)), tile // b_in))
        self.BLOCK_A, self.BLOCK_B = (b_in, b_out) if a_inner else (b_out, b_in)
        self.TB = triton.cdiv(self.B, self.BLOCK_B)
        self.T = triton.cdiv(self.A, self.BLOCK_A) * self.TB
        if split is None:
            # Aim at ~1024 programs (8 per SM on a 132-SM H100) when P alone is fewer.
            split = triton.cdiv(1024, self.P)
        self.TPP = triton.cdiv(self.T, max(1, min(split, self.T)))  # tiles per program
        self.SPLIT = triton.cdiv(self.T, self.TPP)  # no program without a tile
        self.count = self.A * self.B

    def args(self):
        return (self.A, self.B, self.P_LO, self.s_hi, self.s_lo, self.sA, self.sB)

    def blocks(self):
        return {"BLOCK_A": self.BLOCK_A, "BLOCK_B": self.BLOCK_B}


def _stats(x: Tensor, geo: _Geometry, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-statistic fp32 (μ, biased σ², 1/√(σ² + ε)): kernel partials merged with Chan's
    formula by :func:`_merge_kernel` (two launches in all)."""
    part = torch.empty((geo.P, geo.SPLIT, 4), device=x.device, dtype=torch.float32)
    _stats_kernel[(geo.P, geo.SPLIT)](
        x, part, *geo.args(), geo.TB, geo.T, geo.TPP, geo.SPLIT, **geo.blocks()
    )
    # separate tensors: the custom op's outputs may not alias each other
    mean, var, rstd = (torch.empty(geo.P, device=x.device, dtype=torch.float32)
                       for _ in range(3))
    # ≤ 1024 partials per program: 4096 made ptxas spill (255 registers at 4 warps)
    block_s = min(triton.next_power_of_2(geo.SPLIT), 128)
    block_p = max(1, min(triton.next_power_of_2(geo.P), 1024 // block_s))
    _merge_kernel[(triton.cdiv(geo.P, block_p),)](
        part, mean, var, rstd, geo.P, geo.SPLIT, float(eps), BLOCK_P=block_p, BLOCK_S=block_s
    )
    return mean, var, rstd


def _channels_innermost(x: Tensor) -> bool:
    """Dense with the channels innermost (channels-last, or an (N, C) matrix): the
    rows × channels kernels apply. (Call after :func:`dense`.)"""
    return x.shape[1] > 1 and (x.dim() == 2 or layout(x) != torch.contiguous_format)


class _Rows:
    """Tiles and split of the rows × channels kernels: segments of R_SEG rows (all N·S
    rows for BatchNorm, the S rows of one sample otherwise), BLOCK_C channels per program."""

    def __init__(self, x: Tensor, groups: int, batch: bool, tile: int | None,
                 split: int | None):
        n, c = x.shape[:2]
        s = math.prod(x.shape[2:])
        self.C = c
        if batch:
            self.NSEG, self.R_SEG, self.G, self.CG = 1, n * s, c, 1
        else:
            self.NSEG, self.R_SEG, self.G, self.CG = n, s, groups, c // groups
        if tile is None:  # as _Geometry: smaller tiles when the tensor is small
            tile = 2048
            while tile > 512 and triton.cdiv(n * c * s, tile) < 4096:
                tile //= 2
        self.BLOCK_C = min(triton.next_power_of_2(c), 128, tile)
        self.BLOCK_R = max(1, min(triton.next_power_of_2(self.R_SEG), tile // self.BLOCK_C))
        self.NCB = triton.cdiv(c, self.BLOCK_C)
        self.T = triton.cdiv(self.R_SEG, self.BLOCK_R)
        if split is None:
            split = triton.cdiv(1024, self.NSEG * self.NCB)
        self.TPP = triton.cdiv(self.T, max(1, min(split, self.T)))
        self.SPLIT = triton.cdiv(self.T, self.TPP)
        self.grid = (self.NSEG * self.NCB, self.SPLIT)
        self.count = self.R_SEG * self.CG  # elements per statistic

    def blocks(self):
        return {"BLOCK_R": self.BLOCK_R, "BLOCK_C": self.BLOCK_C}


def _cl_coefs(x: Tensor, geo: _Rows, weight, bias, eps: float, mean=None, var=None):
    """``(coef, μ, σ²)``: the (NSEG, 6, C) fp32 per-(segment, channel) coefficients
    scale = γ·r, shift = β − μ·γ·r, r, μ·r (rows 4, 5 zero), and the per-statistic fp32
    μ and biased σ², from the batch (two launches: partials, then :func:`_cl_coef_kernel`
    merging them) or from the ``mean``/``var`` given (one launch)."""
    coef = torch.empty((geo.NSEG, 6, geo.C), device=x.device, dtype=torch.float32)
    has_part = mean is None
    if has_part:
        part = torch.empty((geo.NSEG, geo.SPLIT, 4, geo.C), device=x.device,
                           dtype=torch.float32)
        _cl_stats_kernel[geo.grid](
            x, part, geo.C, geo.R_SEG, geo.NCB, geo.TPP, geo.T, geo.CG, geo.SPLIT,
            **geo.blocks()
        )
        mean, var = (torch.empty(geo.NSEG * geo.G, device=x.device, dtype=torch.float32)
                     for _ in range(2))
    else:
        part = mean = mean.float().contiguous()
        var = var.float().contiguous()
    w_arg = mean if weight is None else weight
    b_arg = mean if bias is None else bias
    flags = {"HAS_PART": has_part, "HAS_W": weight is not None, "HAS_B": bias is not None}
    if geo.CG == 1:  # BatchNorm, InstanceNorm: blocks of channels, coalesced
        block_c = min(triton.next_power_of_2(geo.C), 128)
        block_s = max(1, min(triton.next_power_of_2(geo.SPLIT), 2048 // block_c))
        _cl_coef_channel_kernel[(geo.NSEG, triton.cdiv(geo.C, block_c))](
            part, mean, var, w_arg, b_arg, coef, geo.C, geo.SPLIT, float(eps), **flags,
            BLOCK_S=block_s, BLOCK_C=block_c,
        )
        return coef, mean, var
    block_cg = min(triton.next_power_of_2(geo.CG), 1024)
    block_s = max(1, min(triton.next_power_of_2(geo.SPLIT), 4096 // block_cg))
    _cl_coef_kernel[(geo.NSEG * geo.G,)](
        part, mean, var, w_arg, b_arg, coef, geo.C, geo.G, geo.CG, geo.SPLIT, float(eps),
        **flags, BLOCK_S=block_s, BLOCK_CG=block_cg,
    )
    return coef, mean, var


def norm_act_forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    groups: int,
    eps: float,
    act: str | None,
    act_param: float,
    batch: bool,
    mean: Tensor | None = None,
    var: Tensor | None = None,
    *,
    tile: int | None = None,
    split: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``y = act(γ·(x − μ)/√(σ² + ε) + β)``; returns ``(y, μ, σ²)`` (fp32, biased σ²).

    ``batch=True``: BatchNorm statistics (one per channel), else GroupNorm with
    ``groups`` groups (InstanceNorm: ``groups = C``). Passing ``mean``/``var`` (one per
    statistic) normalizes with them instead (BatchNorm eval). ``tile`` and ``split``
    override the tile size and the number of programs per statistic (tests use them to
    exercise multi-tile and split paths on tiny inputs). ``y`` has ``x``'s layout.
    """
    x = dense(x)
    weight, bias = _dense(weight), _dense(bias)
    if _channels_innermost(x):
        rows = _Rows(x, groups, batch, tile, split)
        coef, mean, var = _cl_coefs(x, rows, weight, bias, eps, mean, var)
        y = torch.empty_like(x)
        _cl_forward_kernel[rows.grid](
            x, y, coef, rows.C, rows.R_SEG, rows.NCB, rows.TPP, rows.T, float(act_param),
            ACT=ACT_CODES[act], **rows.blocks(),
        )
        return y, mean, var
    geo = _Geometry(x, groups, batch, tile, split)
    if mean is None:
        mean, var, rstd = _stats(x, geo, eps)
    else:
        mean, var = mean.float().contiguous(), var.float().contiguous()
        rstd = torch.rsqrt(var + eps)
    y = torch.empty_like(x)
    dummy = mean
    _forward_kernel[(geo.P, geo.SPLIT)](
        x, y, dummy if weight is None else weight, dummy if bias is None else bias,
        mean, rstd, *geo.args(), geo.CH_P, geo.CH_A, geo.TB, geo.T, geo.TPP,
        float(act_param), HAS_W=weight is not None, HAS_B=bias is not None,
        ACT=ACT_CODES[act], **geo.blocks(),
    )
    return y, mean, var


def norm_act_backward(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    var: Tensor,
    groups: int,
    eps: float,
    act: str | None,
    act_param: float,
    batch: bool,
    training: bool = True,
    *,
    tile: int | None = None,
    split: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients ``(dx, dγ, dβ)`` of :func:`norm_act_forward` (z recomputed from x).

    With x̂ = (x − μ)·r, z = γ·x̂ + β, dz = dy·act'(z), g = γ·dz and means over one
    statistic's M elements: ``dx = r·(g − mean(g) − x̂·mean(g·x̂))`` when the statistics
    came from the batch (``training``), ``dx = r·g`` when they were given (eval);
    ``dγ = Σ dz·x̂``, ``dβ = Σ dz`` per channel. ``dγ``/``dβ`` are fp32 of shape (C,).
    """
    x = dense(x)
    dy = dy.contiguous(memory_format=layout(x))
    if dy.stride() != x.stride():  # size-1 dims can make equal layouts differ in strides
        dy = torch.empty_like(x).copy_(dy)
    mean = mean.float().contiguous()
    weight, bias = _dense(weight), _dense(bias)
    if _channels_innermost(x):
        return _cl_backward(dy, x, weight, bias, mean, var, eps, groups, act, act_param,
                            batch, training, tile, split)
    n = x.shape[0]
    rstd = torch.rsqrt(var.float() + eps).contiguous()
    geo = _Geometry(x, groups, batch, tile, split)
    f32 = {"device": x.device, "dtype": torch.float32}
    sum_dz, sum_dzx = (torch.empty((geo.P, geo.TB, geo.A), **f32) for _ in range(2))
    common = (*geo.args(), geo.CH_P, geo.CH_A, geo.TB, geo.T, geo.TPP, float(act_param))
    flags = {"HAS_W": weight is not None, "HAS_B": bias is not None, "ACT": ACT_CODES[act]}
    dummy = mean
    w_arg = dummy if weight is None else weight
    b_arg = dummy if bias is None else bias
    _bwd_sums_kernel[(geo.P, geo.SPLIT)](
        x, dy, w_arg, b_arg, mean, rstd, sum_dz, sum_dzx, *common, **flags, **geo.blocks()
    )
    s_dz, s_dzx = (torch.empty((geo.P, geo.A), **f32) for _ in range(2))
    c1, c2 = (torch.empty(geo.P, **f32) for _ in range(2))
    db, dw = (torch.empty(geo.P if batch else 0, **f32) for _ in range(2))
    block_a = min(triton.next_power_of_2(geo.A), 1024)
    block_t = max(1, min(triton.next_power_of_2(geo.TB), 4096 // block_a))
    _bwd_merge_kernel[(geo.P,)](
        sum_dz, sum_dzx, w_arg, s_dz, s_dzx, c1, c2, db if batch else c1, dw if batch else c2,
        geo.A, geo.TB, geo.P_LO, geo.CH_P, geo.CH_A, 1.0 / geo.count,
        HAS_W=weight is not None, TRAINING=training, PER_CHANNEL=batch,
        BLOCK_T=block_t, BLOCK_A=block_a,
    )
    if not batch:  # P = (sample, group), A = channels of the group: sum over the samples
        db = s_dz.view(n, -1).sum(0)
        dw = s_dzx.view(n, -1).sum(0)
    dx = torch.empty_like(x)
    _bwd_dx_kernel[(geo.P, geo.SPLIT)](
        x, dy, dx, w_arg, b_arg, mean, rstd, c1, c2, *common, **flags, **geo.blocks(),
    )
    return dx, dw, db


def _cl_backward(dy, x, weight, bias, mean, var, eps, groups, act, act_param,
                 batch, training, tile, split):
    """:func:`norm_act_backward` on the rows × channels kernels."""
    rows = _Rows(x, groups, batch, tile, split)
    coef = _cl_coefs(x, rows, weight, bias, eps, mean, var)[0]
    f32 = {"device": x.device, "dtype": torch.float32}
    sums = torch.empty((2, rows.NSEG, rows.SPLIT, rows.C), **f32)
    _cl_bwd_sums_kernel[rows.grid](
        x, dy, coef, sums[0], sums[1], rows.C, rows.R_SEG, rows.NCB, rows.TPP, rows.T,
        rows.SPLIT, float(act_param), ACT=ACT_CODES[act], **rows.blocks(),
    )
    s_dz, s_dzx = (torch.empty((rows.NSEG, rows.C), **f32) for _ in range(2))
    w_arg = coef if weight is None else weight
    flags = {"HAS_W": weight is not None, "TRAINING": training}
    if rows.CG == 1:  # BatchNorm, InstanceNorm: blocks of channels, coalesced
        block_c = min(triton.next_power_of_2(rows.C), 128)
        block_s = max(1, min(triton.next_power_of_2(rows.SPLIT), 2048 // block_c))
        _cl_bwd_merge_channel_kernel[(rows.NSEG, triton.cdiv(rows.C, block_c))](
            sums[0], sums[1], w_arg, coef, s_dz, s_dzx, rows.C, rows.SPLIT, 1.0 / rows.count,
            **flags, BLOCK_S=block_s, BLOCK_C=block_c,
        )
    else:
        block_cg = min(triton.next_power_of_2(rows.CG), 1024)
        block_s = max(1, min(triton.next_power_of_2(rows.SPLIT), 4096 // block_cg))
        _cl_bwd_merge_kernel[(rows.NSEG * rows.G,)](
            sums[0], sums[1], w_arg, coef, s_dz, s_dzx, rows.C, rows.G, rows.CG, rows.SPLIT,
            1.0 / rows.count, **flags, BLOCK_S=block_s, BLOCK_CG=block_cg,
        )
    # dβ, dγ: per channel over the segments (one row for BatchNorm: nothing to add)
    db, dw = (s_dz[0], s_dzx[0]) if rows.NSEG == 1 else (s_dz.sum(0), s_dzx.sum(0))
    dx = torch.empty_like(x)
    _cl_bwd_dx_kernel[rows.grid](
        x, dy, dx, coef, rows.C, rows.R_SEG, rows.NCB, rows.TPP, rows.T, float(act_param),
        ACT=ACT_CODES[act], **rows.blocks(),
    )
    return dx, dw, db
