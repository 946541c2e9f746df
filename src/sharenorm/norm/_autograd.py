"""Backward passes that cannot be differentiated again, and say so.

A hand-written backward (the memory-efficient layers', SyncBatchNorm's synchronised one)
computes the gradient from its own formulas, with statistics that entered the forward as
constants. Differentiating such a backward again (``create_graph=True``: gradient penalties,
MAML) would follow those formulas, not the function, and give a wrong second derivative.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

__all__ = ["once_differentiable"]


class _RaiseIfDifferentiated(torch.autograd.Function):
    """The identity on ``values`` (aliases, no copy), linked in the graph to ``links``;
    differentiating it raises ``RuntimeError(why)``."""

    @staticmethod
    def forward(ctx, why, n, *tensors):
        ctx.why = why
        return tuple(t.detach() for t in tensors[:n])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(ctx.why)


def once_differentiable(why: str) -> Callable:
    """Decorator of an ``autograd.Function``'s ``backward``: torch's ``once_differentiable``
    with ``why`` (which names the fix) as the error, and without its blind spots.

    The backward runs without grad. Under ``create_graph=True`` its gradients are linked to
    everything they depend on (the output gradients and the saved tensors that require
    grad) through a node that raises ``RuntimeError(why)`` if, and only if, that graph is
    differentiated in turn. torch's own decorator hangs its error node on fresh leaves: when
    the output gradient is constant (the layer feeds a fixed linear loss) it returns
    gradients that look constant, and ``torch.autograd.grad`` of them with respect to the
    layer's input never reaches the node. Either way a gradient penalty's gradient through
    the layer would come out silently zero, not refused.

    Example:
        >>> class Cube(torch.autograd.Function):
        ...     @staticmethod
        ...     def forward(ctx, x):
        ...         ctx.save_for_backward(x)
        ...         return x ** 3
        ...     @staticmethod
        ...     @once_differentiable("Cube has no double backward")
        ...     def backward(ctx, dy):
        ...         (x,) = ctx.saved_tensors
        ...         return 3 * x ** 2 * dy
        >>> x = torch.tensor(2.0, requires_grad=True)
        >>> (g,) = torch.autograd.grad(Cube.apply(x), x, create_graph=True)
        >>> g.item()
        12.0
        >>> torch.autograd.grad(g, x)
        Traceback (most recent call last):
        ...
        RuntimeError: Cube has no double backward
    """

    def decorate(backward: Callable) -> Callable:
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            with torch.no_grad():
                grads_in = backward(ctx, *grads)
            if not torch.is_grad_enabled():  # no graph is being built: a plain backward
                return grads_in
            links = [t for t in (*grads, *ctx.saved_tensors)
                     if t is not None and t.requires_grad]
            single = not isinstance(grads_in, tuple)
            grads_in = (grads_in,) if single else grads_in
            where = [i for i, g in enumerate(grads_in) if g is not None]
            if not links or not where:
                return grads_in[0] if single else grads_in
            linked = _RaiseIfDifferentiated.apply(why, len(where),
                                                  *(grads_in[i] for i in where), *links)
            out = list(grads_in)
            for i, g in zip(where, linked, strict=True):
                out[i] = g
            return out[0] if single else tuple(out)

        return wrapper

    return decorate
