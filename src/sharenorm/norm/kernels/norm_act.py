"""Launchers of the Triton norm + activation kernels: they allocate the outputs, pick the
family (:mod:`.contiguous` or :mod:`.channels_last`), the tiles and the split, and do no
autograd (the custom ops in :mod:`.ops` add it). The design is in
docs/design/triton-kernels.md.
"""

from __future__ import annotations

import math

import torch
import triton
from torch import Tensor

from sharenorm.norm._layout import memory_format as layout  # the dense layout a kernel reads
from sharenorm.norm.kernels._device import ACT_CODES
from sharenorm.norm.kernels.channels_last import (
    _cl_bwd_dx_kernel,
    _cl_bwd_merge_channel_kernel,
    _cl_bwd_merge_kernel,
    _cl_bwd_sums_kernel,
    _cl_coef_channel_kernel,
    _cl_coef_kernel,
    _cl_forward_kernel,
    _cl_stats_kernel,
)
from sharenorm.norm.kernels.contiguous import (
    _bwd_dx_kernel,
    _bwd_merge_kernel,
    _bwd_sums_kernel,
    _forward_kernel,
    _merge_kernel,
    _stats_kernel,
)
from sharenorm.norm.kernels.running import (  # noqa: F401 (the kernel: for tests that compile it)
    _running_update_kernel,
    update_running_stats,
)

__all__ = ["ACT_CODES", "norm_act_forward", "norm_act_backward", "layout", "update_running_stats"]


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
