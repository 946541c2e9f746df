"""Batch Renormalization (Ioffe, 2017): BatchNorm whose training output is corrected
towards the running statistics, so small or non-i.i.d. batches train a network that
behaves the same in eval.

Training computes y = γ((x − μ_B)/σ_B · r + d) + β with r = clip(σ_B/σ) and
d = clip((μ_B − μ)/σ) held constant in backward, as sharenorm's BatchNorm with weight γ·r
and bias γ·d + β: running statistics, state_dict and eval are BatchNorm's. The clips start
at plain BatchNorm and widen over a warm-up (the paper's ImageNet schedule by default).
The math, the gradients and the warm-up: docs/design/batchrenorm.md.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from sharenorm._fx import Proxy, call_module_node
from sharenorm.norm import functional as SF
from sharenorm.norm._tracing import tracing
from sharenorm.norm.batchnorm import _BatchNorm

__all__ = ["BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d"]


def _check_warmup(warmup: Any, name: str) -> tuple[int, int]:
    ok = (
        isinstance(warmup, (tuple, list))
        and len(warmup) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in warmup)
        and warmup[0] <= warmup[1]
    )
    if not ok:
        raise ValueError(
            f"{name} must be a pair of steps (start, end) with 0 <= start <= end, over which "
            f"the clip is relaxed linearly; got {warmup!r}"
        )
    return int(warmup[0]), int(warmup[1])


def _ramp(step: int, warmup: tuple[int, int], start_value: float, end_value: float) -> float:
    start, end = warmup
    if step <= start:
        return start_value if end > start else (end_value if step >= end else start_value)
    if step >= end:
        return end_value
    return start_value + (end_value - start_value) * (step - start) / (end - start)


def _ramp_tensor(step: Tensor, warmup: tuple[int, int], start_value: float,
                 end_value: float) -> Tensor:
    """:func:`_ramp` of a 0-d ``step`` tensor, without reading it on the host (float64, the
    same operations in the same order: equal to the Python float)."""
    start, end = warmup
    s = step.to(torch.float64)
    if end > start:
        mid = start_value + (end_value - start_value) * (s - start) / (end - start)
        return torch.where(s <= start, start_value, torch.where(s >= end, end_value, mid))
    return torch.where(s >= end, end_value, start_value)  # a step function at `end`


class _BatchRenorm(_BatchNorm):
    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        r_max: float = 3.0,
        d_max: float = 5.0,
        r_warmup: tuple[int, int] = (5000, 40000),
        d_warmup: tuple[int, int] = (5000, 25000),
        **kwargs: Any,
    ) -> None:
        if not track_running_stats:
            raise ValueError(
                f"{type(self).__name__} corrects batch statistics towards the running ones, so "
                "it needs track_running_stats=True; without running statistics use BatchNorm"
            )
        if not (isinstance(r_max, (int, float)) and math.isfinite(r_max) and r_max >= 1.0):
            raise ValueError(f"r_max must be a finite number >= 1 (1 means no r correction), got {r_max!r}")
        if not (isinstance(d_max, (int, float)) and math.isfinite(d_max) and d_max >= 0.0):
            raise ValueError(f"d_max must be a finite number >= 0 (0 means no d correction), got {d_max!r}")
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, **kwargs
        )
        self.r_max = float(r_max)
        self.d_max = float(d_max)
        self.r_warmup = _check_warmup(r_warmup, "r_warmup")
        self.d_warmup = _check_warmup(d_warmup, "d_warmup")
        # False: train as plain BatchNorm (recalibrate_norm_stats sets it while it runs).
        self.renorm = True

    def clips(self, step: int | None = None) -> tuple[float, float]:
        """``(r_max, d_max)`` in force at training batch ``step`` (default: the next
        batch, ``num_batches_tracked``), after the warm-up schedule."""
        if step is None:
            step = int(self.num_batches_tracked)
        return (
            _ramp(step, self.r_warmup, 1.0, self.r_max),
            _ramp(step, self.d_warmup, 0.0, self.d_max),
        )

    def forward(self, input: Tensor) -> Tensor:
        if not isinstance(input, Tensor) and isinstance(input, Proxy):  # torch.fx tracing
            return call_module_node(self, input)
        if not self.training or not self.renorm:
            return super().forward(input)
        if tracing():
            # the step is not read on the host (torch.export, vmap): the clips as tensors,
            # and no shortcut (r = 1, d = 0 give BatchNorm's output all the same)
            step = self.num_batches_tracked
            r_max = _ramp_tensor(step, self.r_warmup, 1.0, self.r_max)
            d_max = _ramp_tensor(step, self.d_warmup, 0.0, self.d_max)
        else:
            r_max, d_max = self.clips()
            if (r_max == 1.0 and d_max == 0.0) or (isinstance(input, Tensor)
                                                   and input.numel() == 0):
                # r = 1, d = 0: BatchNorm itself; an empty batch has no statistics to
                # correct (BatchNorm leaves everything as it is, without var_mean's warning)
                return super().forward(input)
        SF.check_input(input, type(self).__name__)
        self._check_input_dim(input)
        self._check_channels(input)
        self._check_dtypes(input)
        rm, rv = self.running_mean, self.running_var
        with torch.no_grad():
            dims = (0,) + tuple(range(2, input.dim()))
            x = input if input.dtype in (torch.float32, torch.float64) else input.float()
            var_b, mean_b = torch.var_mean(x, dim=dims, correction=0)
            sigma = torch.sqrt(rv.to(var_b.dtype) + self.eps)
            r = torch.sqrt(var_b + self.eps) / sigma
            d = (mean_b - rm.to(mean_b.dtype)) / sigma
            if isinstance(r_max, Tensor):
                # bounds in the statistics' dtype, as a float bound is; maximum/minimum, which
                # vmap batches (it has no rule for clamp_ with tensor bounds)
                r = torch.minimum(torch.maximum(r, (1.0 / r_max).to(r.dtype)), r_max.to(r.dtype))
                d = torch.minimum(torch.maximum(d, (-d_max).to(d.dtype)), d_max.to(d.dtype))
            else:
                r, d = r.clamp_(1.0 / r_max, r_max), d.clamp_(-d_max, d_max)
            r, d = r.to(rm.dtype), d.to(rm.dtype)
        # BatchNorm with weight γ·r and bias γ·d + β (r, d constants) is the renormalized
        # output; its backward differentiates μ_B, σ_B and γ, β as the paper says.
        gamma = self.weight if self.weight is not None else torch.ones_like(r)
        weight = gamma * r
        bias = gamma * d if self.bias is None else torch.addcmul(self.bias, gamma, d)
        momentum = self._momentum_for_this_batch()
        self._count_batch()
        out, updated = SF.batch_norm_impl(
            input, rm, rv, weight, bias, True, momentum, self.eps,
            self.act, self.act_param, self.memory_efficient, self.backend,
        )
        self._uncount_skipped(updated)
        return out

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", r_max={self.r_max}, d_max={self.d_max}, r_warmup={self.r_warmup}, "
            f"d_warmup={self.d_warmup}"
        )


_BRN_DOC = r"""Batch Renormalization (Ioffe, 2017) over a {rank} input; BatchNorm's arguments
    plus ``r_max``, ``d_max`` and their warm-up.

    .. math::
        y = \gamma\Big(\frac{{x - \mu_B}}{{\sigma_B}}\, r + d\Big) + \beta,\quad
        r = \mathrm{{clip}}_{{[1/r_{{max}}, r_{{max}}]}}\Big(\frac{{\sigma_B}}{{\sigma}}\Big),\quad
        d = \mathrm{{clip}}_{{[-d_{{max}}, d_{{max}}]}}\Big(\frac{{\mu_B - \mu}}{{\sigma}}\Big)

    with r, d treated as constants in backward, σ_B = √(σ²_B + ε) and σ = √(running_var + ε).
    Equal to BatchNorm when r_max = 1 and d_max = 0 (and during the warm-up's first
    phase); eval mode and the running statistics are BatchNorm's. The warm-up schedule and
    why: docs/design/batchrenorm.md.

    Args:
        num_features, eps, momentum, affine, bias, act, act_param: as BatchNorm.
        track_running_stats: must be True (the correction needs running statistics).
        r_max: the final clip of r (≥ 1). Default: 3.0.
        d_max: the final clip of d (≥ 0). Default: 5.0.
        r_warmup: (start, end) training steps over which r's clip grows linearly from 1
            to ``r_max``. Default: (5000, 40000), the paper's.
        d_warmup: (start, end) for d's clip, from 0 to ``d_max``. Default: (5000, 25000).

    Shape:
        - Input: {shape}
        - Output: same shape as the input.

    Examples::

        >>> import torch, sharenorm as sn
        >>> m = sn.{name}(4, r_max=2.0, d_max=1.0, r_warmup=(0, 0), d_warmup=(0, 0))
        >>> y = m(torch.randn({example}))
        >>> m.clips()
        (2.0, 1.0)
    """


class BatchRenorm1d(_BatchRenorm):
    __doc__ = _BRN_DOC.format(
        rank="2-d or 3-d", name="BatchRenorm1d", shape="(N, C) or (N, C, L)", example="8, 4, 10"
    )

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise ValueError(
                f"BatchRenorm1d expects a 2-d (N, C) or 3-d (N, C, L) input, got shape "
                f"{tuple(input.shape)}; use BatchRenorm2d for (N, C, H, W)"
            )


class BatchRenorm2d(_BatchRenorm):
    __doc__ = _BRN_DOC.format(
        rank="4-d", name="BatchRenorm2d", shape="(N, C, H, W)", example="8, 4, 5, 5"
    )

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(
                f"BatchRenorm2d expects a 4-d input (N, C, H, W), got shape {tuple(input.shape)}"
            )


class BatchRenorm3d(_BatchRenorm):
    __doc__ = _BRN_DOC.format(
        rank="5-d", name="BatchRenorm3d", shape="(N, C, D, H, W)", example="2, 4, 3, 3, 3"
    )

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise ValueError(
                f"BatchRenorm3d expects a 5-d input (N, C, D, H, W), got shape "
                f"{tuple(input.shape)}"
            )
