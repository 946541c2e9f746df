"""Recompute the running statistics of a model's norm layers exactly (precise-BN).

The running statistics become the plain average of the per-batch statistics over the batches
given (Wu & Johnson 2021), e.g. after SWA/EMA weight averaging, whose averaged weights no
running statistics were collected for.

Example:
    >>> import torch, sharenorm as sn
    >>> bn = sn.BatchNorm1d(2)
    >>> sn.recalibrate_norm_stats(bn, [torch.randn(16, 2) for _ in range(3)])
    3
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from sharenorm._checks import check_module
from sharenorm.norm.tools.freeze import FROZEN, stat_norms

__all__ = ["recalibrate_norm_stats"]

_RECALIBRATE_CALLS = "_sharenorm_recalibrate_calls"
# Layers whose momentum=None does not average cumulatively (torch.nn's InstanceNorm
# passes 0.0 then, and never counts num_batches_tracked).
_NO_CUMULATIVE_AVERAGE = (nn.modules.instancenorm._InstanceNorm,)



def _cumulative_momentum_hook(module: nn.Module, args: Any) -> None:
    """Before each call of a layer whose ``momentum=None`` is not a cumulative average
    (torch.nn's InstanceNorm turns it into 0.0, no update): momentum 1/(k + 1) for its
    k-th call since the reset, which makes the running statistics the plain average."""
    calls = module.__dict__.get(_RECALIBRATE_CALLS, 0) + 1
    module.__dict__[_RECALIBRATE_CALLS] = calls
    module.momentum = 1.0 / calls


def _default_forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return model(batch[0])  # (inputs, targets, ...) as a DataLoader yields
    raise TypeError(
        f"recalibrate_norm_stats: cannot feed a batch of type {type(batch).__name__} to the "
        "model; give tensors or (input, ...) tuples, or pass forward=lambda model, batch: ..."
    )


@torch.no_grad()
def recalibrate_norm_stats(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> int:
    r"""Recompute the running statistics of every norm layer in ``model`` from
    ``batches``: each becomes the plain average, over the batches, of that layer's
    per-batch mean and unbiased variance (precise-BN):

    .. math::
        \mu = \frac{1}{K}\sum_{k=1}^{K} \mu_k,\qquad \sigma^2 = \frac{1}{K}\sum_{k=1}^{K} s^2_k

    computed as the cumulative average from reset statistics (``momentum=None``; for
    torch.nn's InstanceNorm, where None means no update, momentum 1/k at its k-th call), with
    the model in eval mode except the norm layers (so dropout is off and each layer sees
    the inputs the eval model produces upstream, normalized with batch statistics as in
    training). Frozen layers are recalibrated too; BatchRenorm runs as plain BN meanwhile,
    and keeps its ``num_batches_tracked`` (the training steps its r/d warm-up counts,
    which recalibration batches are not; other layers count the batches averaged).
    Afterwards momentum, train/eval modes and frozen states are as before; if a batch
    raises, or there is no batch, the old statistics are restored.

    Args:
        model: the model, on the batches' device.
        batches: an iterable of input tensors or ``(input, ...)`` tuples (a DataLoader);
            a batch whose statistics are not finite is skipped by sharenorm layers.
        forward: ``forward(model, batch)`` for other batch types.

    Returns:
        The number of batches read (a skipped non-finite one included: a layer's
        ``num_batches_tracked`` says how many it averaged).

    Example:
        >>> import torch, sharenorm as sn
        >>> bn = sn.BatchNorm1d(2)
        >>> batches = [torch.randn(16, 2) + 3 for _ in range(4)]
        >>> sn.recalibrate_norm_stats(bn, batches)
        4
        >>> expected = torch.stack([b.mean(0) for b in batches]).mean(0)
        >>> torch.allclose(bn.running_mean, expected)
        True
    """
    check_module(model, "recalibrate_norm_stats")
    if isinstance(batches, (torch.Tensor, str, bytes)) or not isinstance(batches, Iterable):
        raise TypeError(
            "recalibrate_norm_stats: batches must be an iterable of input batches (a "
            f"DataLoader, or a list of tensors), got {type(batches).__name__}"
            + ("; wrap a single batch in a list: [x]" if isinstance(batches, torch.Tensor)
               else "")
        )
    layers = [m for _, m in stat_norms(model)]
    if not layers:
        raise ValueError(
            "recalibrate_norm_stats: the model has no norm layer with running statistics "
            "(BatchNorm, or InstanceNorm with track_running_stats=True); nothing to recompute"
        )
    forward = forward or _default_forward
    modes = {m: m.training for m in model.modules()}
    saved = [
        (m, m.momentum, m.__dict__.get(FROZEN, False), getattr(m, "renorm", None),
         {k: getattr(m, k).clone() for k in ("running_mean", "running_var", "num_batches_tracked")
          if isinstance(getattr(m, k, None), Tensor)})
        for m in layers
    ]
    ok = False
    count = 0
    handles = []
    try:
        model.eval()
        for m in layers:
            m.train()
            m.momentum = None  # cumulative average
            if isinstance(m, _NO_CUMULATIVE_AVERAGE):  # ... done by hand for these
                handles.append(m.register_forward_pre_hook(_cumulative_momentum_hook))
            m.__dict__[FROZEN] = False
            if hasattr(m, "renorm"):
                m.renorm = False
            m.reset_running_stats()
        for batch in batches:
            forward(model, batch)
            count += 1
        if count == 0:
            raise ValueError("recalibrate_norm_stats: `batches` yielded no batch")
        ok = True
    finally:
        for h in handles:
            h.remove()
        for m, momentum, frozen, renorm, stats in saved:
            m.__dict__.pop(_RECALIBRATE_CALLS, None)
            m.momentum = momentum
            if frozen:
                m.__dict__[FROZEN] = True
            if renorm is not None:
                m.renorm = renorm
                if ok and "num_batches_tracked" in stats:  # its warm-up's step count
                    m.num_batches_tracked.copy_(stats["num_batches_tracked"])
            if not ok:
                for k, v in stats.items():
                    getattr(m, k).copy_(v)
        for m, mode in modes.items():
            m.training = mode
    return count
