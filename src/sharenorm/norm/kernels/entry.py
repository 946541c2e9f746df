"""The Triton path's entry points: ``act(norm(x))`` for BatchNorm, InstanceNorm and
GroupNorm through the custom ops of :mod:`.ops`, with the guarded running-statistics
update. The kernels recompute z from x in backward, so this path always keeps one
full-size tensor (x), whatever ``memory_efficient`` says.

Imported without Triton too: the ops load on the first call.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sharenorm.activation import default_param

__all__ = ["triton_batch_norm_act", "triton_instance_norm_act", "triton_group_norm_act"]



def _triton_ops():
    """``torch.ops.sharenorm``: the Triton custom ops, with their autograd (registered by
    :mod:`sharenorm.norm.kernels.ops` when it is imported)."""
    from sharenorm.norm import kernels

    kernels.load_ops()
    return torch.ops.sharenorm


def _triton_forward(x, weight, bias, mean_in, var_in, groups, eps, act, act_param, batch):
    p = default_param(act, act_param)
    ops = _triton_ops()
    from sharenorm.norm.kernels.norm_act import dense

    # The op keeps its input for backward: the dense copy the kernels read, not a view's
    # whole base (a chunk of a larger tensor would keep all of it alive).
    return ops.norm_act_fwd(
        dense(x), weight, bias, mean_in, var_in, groups, float(eps), act or "identity",
        0.0 if p is None else float(p), batch,
    )


def _running_update(running_mean, running_var, mean, var, count: int, momentum) -> Tensor:
    """The guarded running-statistics update in one kernel (σ² made unbiased over the
    ``count`` elements of a statistic); a 0-d bool tensor, True if it was kept."""
    unbias = count / max(count - 1, 1)
    return _triton_ops().running_update(running_mean, running_var, mean, var, float(momentum),
                                        unbias)


def triton_batch_norm_act(input, running_mean, running_var, weight, bias, training, momentum,
                          eps, act, act_param) -> tuple[Tensor, Tensor | None]:
    """``act(batch_norm(x))`` on the Triton kernels: ``(y, kept)``. In training the running
    statistics passed are updated in place under the non-finite guard of the plain path,
    in the same kernel launch (``kept``: a 0-d bool tensor; None when nothing is updated)."""
    if not training:
        return _triton_forward(input, weight, bias, running_mean, running_var, 1, eps, act,
                               act_param, True)[0], None
    y, mean, var = _triton_forward(input, weight, bias, None, None, 1, eps, act, act_param, True)
    if running_mean is None or running_var is None:
        return y, None
    m = input.numel() // input.shape[1]
    return y, _running_update(running_mean, running_var, mean, var, m, momentum)


def triton_instance_norm_act(input, running_mean, running_var, weight, bias, use_input_stats,
                             momentum, eps, act, act_param) -> tuple[Tensor, Tensor | None]:
    """``act(instance_norm(x))`` on the Triton kernels (GroupNorm with C groups): ``(y,
    kept)``; running statistics from the batch average of the per-instance μ and unbiased
    σ², guarded as :func:`triton_batch_norm_act` does."""
    if not use_input_stats:
        return triton_batch_norm_act(input, running_mean, running_var, weight, bias, False, 0.0,
                                     eps, act, act_param)
    c = input.shape[1]
    y, mean, var = _triton_forward(input, weight, bias, None, None, c, eps, act, act_param, False)
    if running_mean is None or running_var is None:
        return y, None
    m = math.prod(input.shape[2:])
    return y, _running_update(running_mean, running_var, mean, var, m, momentum)


def triton_group_norm_act(input, num_groups, weight, bias, eps, act, act_param) -> Tensor:
    """``act(group_norm(x))`` on the Triton kernels; channels-last in, channels-last out."""
    return _triton_forward(input, weight, bias, None, None, num_groups, eps, act, act_param,
                           False)[0]
