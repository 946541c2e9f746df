"""Rows × channels Triton kernels (NHWC, NDHWC, (N, C)): a program takes ``BLOCK_C``
consecutive channels × a chunk of rows, one coalesced segment per row.
See docs/design/triton-kernels.md."""

from __future__ import annotations

import triton
import triton.language as tl

from sharenorm.norm.kernels._device import (
    _act,
    _act_grad,
    _param,
    _store_coefs,
    _sum_rows,
)

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


