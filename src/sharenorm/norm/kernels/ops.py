"""``torch.library`` custom ops around the Triton launchers.

``sharenorm::norm_act_fwd`` and ``sharenorm::norm_act_bwd`` are opaque to
``torch.compile`` (no graph break, no tracing into Triton's Python launcher); their fake
implementations give output shapes, dtypes and layouts for tracing. Autograd is attached
in :mod:`sharenorm.norm.fused`.

Example (needs a CUDA GPU or ``TRITON_INTERPRET=1``)::

    >>> y, mean, var = torch.ops.sharenorm.norm_act_fwd(
    ...     x, None, None, None, None, 2, 1e-5, "silu", 0.0, False)   # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import Tensor

from sharenorm.norm.kernels.norm_act import layout, norm_act_backward, norm_act_forward

__all__ = ["norm_act_fwd", "norm_act_bwd"]


def _act(act: str) -> str | None:
    return None if act == "identity" else act


def _num_stats(x: Tensor, groups: int, batch: bool) -> int:
    return x.shape[1] if batch else x.shape[0] * groups


@torch.library.custom_op("sharenorm::norm_act_fwd", mutates_args=())
def norm_act_fwd(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean_in: Tensor | None,
    var_in: Tensor | None,
    groups: int,
    eps: float,
    act: str,
    act_param: float,
    batch: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(act(norm(x)), μ, σ²)``; ``mean_in``/``var_in`` given: normalize with them."""
    y, mean, var = norm_act_forward(
        x, weight, bias, groups, eps, _act(act), act_param, batch, mean_in, var_in
    )
    if mean_in is not None:  # outputs must not alias inputs
        mean, var = mean.clone(), var.clone()
    return y, mean, var


@norm_act_fwd.register_fake
def _(x, weight, bias, mean_in, var_in, groups, eps, act, act_param, batch):
    p = _num_stats(x, groups, batch)
    stats = x.new_empty((p,), dtype=torch.float32)
    return torch.empty_like(x, memory_format=layout(x)), stats, torch.empty_like(stats)


@torch.library.custom_op("sharenorm::norm_act_bwd", mutates_args=())
def norm_act_bwd(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    var: Tensor,
    groups: int,
    eps: float,
    act: str,
    act_param: float,
    batch: bool,
    training: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dx, dγ, dβ)`` with fp32 ``dγ``, ``dβ`` of shape (C,)."""
    return norm_act_backward(
        dy, x, weight, bias, mean, var, groups, eps, _act(act), act_param, batch, training
    )


@norm_act_bwd.register_fake
def _(dy, x, weight, bias, mean, var, groups, eps, act, act_param, batch, training):
    c = x.shape[1]
    dw = x.new_empty((c,), dtype=torch.float32)
    return torch.empty_like(x, memory_format=layout(x)), dw, torch.empty_like(dw)
