"""The guarded running-statistics update as one Triton kernel."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


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


