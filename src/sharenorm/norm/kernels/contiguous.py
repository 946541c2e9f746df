"""Per-statistic Triton kernels (NCHW, (N, C, L), NCDHW): one statistic's elements as
an A × B grid of tiles, ``SPLIT`` programs per statistic, partials merged on the GPU.
See docs/design/triton-kernels.md."""

from __future__ import annotations

import triton
import triton.language as tl

from sharenorm.norm.kernels._device import (
    _act,
    _act_grad,
    _affine_coefs,
    _param,
    _sum_rows,
    _tile,
)


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


