"""ATen's CPU GroupNorm kernel (GroupNorm, InstanceNorm as one channel per group,
LayerNorm as one group), kept accurate where its statistics cancel and kept from
crashing where its backward would.

**Cancellation.** On a channels-last input the kernel takes σ² = E[x²] − E[x]² over
the raw values, accumulated in float32 for float32 and 16-bit inputs. With unit
roundoff u the relative error of σ² is about u·(μ/σ)², so the output is off by
~4e-7·(μ/σ)²: 4e-2 at |μ|/σ = 300, garbage (σ² ≤ 0) past ~3000. The contiguous kernel
is better, ~2e-8·|μ|/σ (its float32 μ is off by u·|μ|), which is still ten times the
float32 tolerance at |μ|/σ = 1e4. GroupNorm's output and its gradients do not change
when each (sample, group) is shifted by a constant, so :func:`group_norm`

1. runs the kernel as is and reads its μ and r = 1/√(σ² + ε) per (sample, group);
2. where some |μ|·r exceeds :data:`SHIFT_ABOVE` (per kernel and accumulation dtype,
   where the error above reaches ~1e-6 of the output's scale), runs it again on
   x − μ̃, μ̃ being step 1's μ (a constant for autograd: the shift has zero gradient).

x − μ̃ is exact where it matters: where |μ| ≫ σ, x and μ̃ are within a factor of two
of each other, and such a difference is exact in floating point (Sterbenz's lemma);
the second run sees |mean|/σ ≈ u·|μ|/σ ≤ 1e-3 and computes the true statistics. Step
1's r cannot hide a large ratio: a cancelled σ² is at most σ² + u·μ², so the ratio
read is at least min(|μ|/σ, 1/√u). The cost where nothing is shifted is one (N, G)
reduction read on the host (a few µs); where the shift is needed, a second forward.

**Crash.** torch 2.13's CPU channels-last GroupNorm backward segfaults when the
input's gradient is not requested (only γ/β need one: a trainable norm after a frozen
layer). :func:`grad_safe_input` asks for that gradient from a leaf that shares the
input's data, and autograd drops it.

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

from __future__ import annotations

import math

import torch
from torch import Tensor

from sharenorm.norm import cpu
from sharenorm.norm._layout import is_channels_last

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
    if limit == math.inf or mean.numel() == 0 or torch.compiler.is_compiling():
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
    channels-last GroupNorm backward would otherwise run without dx and crash."""
    if x.requires_grad or not torch.is_grad_enabled():  # the common cases, first
        return x
    if (
        x.is_cpu
        and any(t is not None and t.requires_grad for t in (weight, bias))
        and is_channels_last(x)
        and not torch.compiler.is_compiling()
    ):
        return x.detach().requires_grad_(True)
    return x


def group_norm(
    x: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """``torch.group_norm(x, groups, weight, bias, eps)``, arguments already checked,
    with the shift and the crash guard of the module doc on the CPU; the output keeps
    x's layout. (Runs on every plain GroupNorm/InstanceNorm call: kept to a few µs.)"""
    numel = x.numel()
    if numel == 0 or not x.is_cpu or torch.compiler.is_compiling():
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
    out, mean, rstd = torch.native_group_norm(xin, weight, bias, n, c, numel // (n * c), groups,
                                              eps)
    limit = _LIMITS[channels_last or may_run_channels_last(x)][x.dtype == torch.float64]
    if limit == math.inf:
        return out
    ratio = cpu.max_ratio(mean, rstd)  # ~2 µs; the torch ops below take ~12
    if ratio is None:
        ratio = (mean.detach().abs() * rstd.detach()).amax()
    if not ratio > limit:  # NaN statistics (a NaN input) compare False: stay as they are
        return out
    xs = grad_safe_input(shift(x, mean, groups), weight, bias)
    return torch.native_group_norm(xs, weight, bias, n, c, numel // (n * c), groups, eps)[0]
