"""``torch.library`` custom ops around the Triton launchers.

``sharenorm::norm_act_fwd`` and ``sharenorm::norm_act_bwd`` are opaque to ``torch.compile``
(no graph break, no tracing into Triton's launcher); their fake implementations give output
shapes, dtypes and layouts, and the forward's autograd is registered here, at import.
``sharenorm::running_update`` is the guarded, in-place running-statistics update. With a CUDA
GPU or ``TRITON_INTERPRET=1``, ``torch.ops.sharenorm.norm_act_fwd(x, None, None, None, None,
2, 1e-5, "silu", 0.0, False)`` returns ``(y, mean, var)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sharenorm.norm.kernels.norm_act import (
    layout,
    norm_act_backward,
    norm_act_forward,
    update_running_stats,
)

__all__ = ["norm_act_fwd", "norm_act_bwd", "running_update"]


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


def _setup(ctx, inputs, output) -> None:
    x, weight, bias, mean_in, _, groups, eps, act, p, batch = inputs
    _, mean, var = output
    ctx.mark_non_differentiable(mean, var)
    ctx.save_for_backward(x, weight, bias, mean, var)
    ctx.cfg = (groups, eps, act, p, batch, mean_in is None)


def _backward(ctx, dy, _dmean, _dvar):
    x, weight, bias, mean, var = ctx.saved_tensors
    groups, eps, act, p, batch, training = ctx.cfg
    dx, dw, db = norm_act_bwd(dy, x, weight, bias, mean, var, groups, eps, act, p, batch,
                              training)
    dw = None if weight is None else dw.to(weight.dtype)
    db = None if bias is None else db.to(bias.dtype)
    return dx, dw, db, None, None, None, None, None, None, None


def _no_double_backward(ctx, *grads):
    # the backward kernel's own derivative is not written: refuse, naming the way out,
    # rather than torch's "no autograd formula was registered"
    raise RuntimeError(
        "backend='triton' has no double backward (create_graph=True, gradient penalties): "
        "build this layer with backend='torch'"
    )


# Registered here, at import, not at a first call: a first call inside a torch.compile
# trace could not register anything.
torch.library.register_autograd("sharenorm::norm_act_fwd", _backward, setup_context=_setup)
torch.library.register_autograd("sharenorm::norm_act_bwd", _no_double_backward)


@torch.library.custom_op("sharenorm::running_update", mutates_args=("running_mean", "running_var"))
def running_update(
    running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor, momentum: float,
    unbias: float,
) -> Tensor:
    """Guarded in-place update of the running statistics (see
    :func:`~sharenorm.norm.kernels.norm_act.update_running_stats`); a 0-d bool: kept."""
    return update_running_stats(running_mean, running_var, mean, var, momentum, unbias)


@running_update.register_fake
def _(running_mean, running_var, mean, var, momentum, unbias):
    return running_mean.new_empty((), dtype=torch.bool)
