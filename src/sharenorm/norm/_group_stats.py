"""ATen's CPU GroupNorm kernel (GroupNorm, InstanceNorm as one channel per group,
LayerNorm as one group), kept accurate where its statistics cancel (:func:`group_norm`
reruns it on the input shifted by its mean where |μ|·r exceeds :data:`SHIFT_ABOVE`) and
kept from crashing where its backward would (:func:`grad_safe_input`). Why and how
much: docs/design/groupnorm-statistics.md.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sharenorm.norm import cpu
from sharenorm.norm._layout import is_channels_last
from sharenorm.norm._tracing import tracing

__all__ = ["SHIFT_ABOVE", "may_run_channels_last", "needs_shift", "shift", "grad_safe_input", "group_norm"]

# max |μ|·r above which the statistics are taken again on the shifted input, keyed by
# (channels-last kernel, float64 accumulation); measured errors ~4e-7·ratio² (float32,
# channels-last), ~2e-8·ratio (float32, contiguous), ~2e-16·ratio² (float64, channels-last)
SHIFT_ABOVE = {
    (True, False): 4.0,
    (False, False): 64.0,
    (True, True): 128.0,
    (False, True): math.inf,
}
_LIMITS = {cl: {f64: SHIFT_ABOVE[(cl, f64)] for f64 in (False, True)} for cl in (False, True)}


def may_run_channels_last(x: Tensor) -> bool:
    """Whether ATen may pick its channels-last loop for ``x``: a tensor whose strides
    suit both layouts (one channel, or one position) goes either way by its strides, so
    it gets the channels-last kernel's (lower) limit."""
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    return fmt is not None and x.is_contiguous(memory_format=fmt)


def needs_shift(mean: Tensor, rstd: Tensor, channels_last: bool, dtype: torch.dtype) -> bool:
    """Whether ATen's statistics ``mean``, ``rstd`` (N, G) of an input of ``dtype`` may
    have cancelled (see the module doc). False while ``torch.compile`` traces (its
    generated kernels use Welford's update, which does not cancel) and where a
    statistic is NaN (a NaN input stays NaN either way)."""
    limit = SHIFT_ABOVE[(channels_last, dtype == torch.float64)]
    if limit == math.inf or mean.numel() == 0 or tracing():
        return False
    ratio = cpu.max_ratio(mean, rstd)  # ~2 µs; the torch ops below take ~12
    if ratio is None:
        ratio = (mean.detach().abs() * rstd.detach()).amax()
    return bool(ratio > limit)


def shift(x: Tensor, mean: Tensor, groups: int) -> Tensor:
    """``x − μ̃`` in x's layout, μ̃ the (N, G) ``mean`` repeated over each group's
    channels, as a constant (detached) in x's dtype."""
    n, c = x.shape[:2]
    m = mean.detach().to(x.dtype)
    if groups != c:
        m = m.repeat_interleave(c // groups, dim=1)
    return x - m.view(n, c, *([1] * (x.dim() - 2)))


def grad_safe_input(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """``x``, or a leaf sharing its data that requires grad where torch 2.13's CPU
    channels-last GroupNorm backward would otherwise run without dx and crash: wherever
    ATen may pick that loop, which includes a tensor whose strides suit both layouts
    ((3, 4, 1, 1) in channels-last, strides (4, 1, 4, 4): a pooled feature map)."""
    if x.requires_grad or not torch.is_grad_enabled():  # the common cases, first
        return x
    if (
        x.is_cpu
        and any(t is not None and t.requires_grad for t in (weight, bias))
        and may_run_channels_last(x)
        and not tracing()
    ):
        return x.detach().requires_grad_(True)
    return x


def group_norm(
    x: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """``torch.group_norm(x, groups, weight, bias, eps)``, arguments already checked,
    with the shift and the crash guard of the module doc on the CPU; the output keeps
    x's layout. (Runs on every plain GroupNorm/InstanceNorm call: kept to a few µs.)

    Example:
        >>> import torch
        >>> from sharenorm.norm import _group_stats, reference
        >>> x = (torch.randn(2, 8, 32, 32, dtype=torch.float64) + 3000).float()
        >>> x = x.to(memory_format=torch.channels_last)        # |μ|/σ = 3000
        >>> y = _group_stats.group_norm(x, 4, None, None, 1e-5)
        >>> err = (y.double() - reference.group_norm(x.double(), 4)).abs().max()
        >>> bool(err < 1e-4), y.is_contiguous(memory_format=torch.channels_last)
        (True, True)
    """
    numel = x.numel()
    if numel == 0 or not x.is_cpu or tracing():
        # CUDA's kernels and torch.compile's use Welford's update (no cancellation)
        return torch.group_norm(
            grad_safe_input(x, weight, bias), groups, weight, bias, eps,
            torch.backends.cudnn.enabled,
        )
    n, c = x.shape[:2]
    if x.is_contiguous():
        channels_last = False
    else:
        channels_last = is_channels_last(x)
        if not channels_last:
            x = x.contiguous()  # what torch.group_norm hands its kernel
    xin = x if x.requires_grad or not torch.is_grad_enabled() else grad_safe_input(x, weight, bias)
    positions = numel // (n * c)
    out, mean, rstd = torch.native_group_norm(xin, weight, bias, n, c, positions, groups, eps)
    if not channels_last and x.dim() in (4, 5):
        # contiguous strides that also suit channels-last (see may_run_channels_last)
        channels_last = c == 1 or positions == 1
    limit = _LIMITS[channels_last][x.dtype == torch.float64]
    if limit == math.inf:
        return out
    ratio = cpu.max_ratio(mean, rstd)  # ~1 µs; the torch ops below take ~12
    if ratio is None:
        ratio = (mean.detach().abs() * rstd.detach()).amax()
    if not ratio > limit:  # NaN statistics (a NaN input) compare False: stay as they are
        return out
    xs = grad_safe_input(shift(x, mean, groups), weight, bias)
    return torch.native_group_norm(xs, weight, bias, n, c, numel // (n * c), groups, eps)[0]
