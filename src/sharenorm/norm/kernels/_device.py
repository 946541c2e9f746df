"""Triton device functions shared by the kernel families: the activation and its
derivative by compile-time code, tile addressing, γ/β loads, coefficient rows."""

from __future__ import annotations

import triton
import triton.language as tl

from sharenorm.activation import ACTIVATIONS

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
