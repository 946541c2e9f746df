"""torch.fx symbolic tracing (``torch.fx.symbolic_trace``, torchvision's feature extraction,
FX quantization) of sharenorm's layers and functionals: torch.fx traces into every module
but torch.nn's, and sharenorm's layers check and branch on values a Proxy cannot give, so each
layer records itself as one ``call_module`` node (the GraphModule then calls the layer, in
its train or eval mode) and each functional as one ``call_function`` node.

Example:
    >>> import torch, torch.fx as fx, sharenorm as sn
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), sn.GroupNorm(2, 4, act="silu"))
    >>> [n.op for n in fx.symbolic_trace(net).graph.nodes]
    ['placeholder', 'call_module', 'call_module', 'output']
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from torch import nn
from torch.fx import Proxy

__all__ = ["Proxy", "call_module_node", "traceable"]


def call_module_node(module: nn.Module, *args: Any, **kwargs: Any) -> Proxy:
    """``module(*args, **kwargs)`` recorded by the tracer of the Proxy among the arguments as
    one ``call_module`` node, as torch.fx records torch.nn's layers. The layers call it first
    thing where their input is a Proxy (``not isinstance(input, Tensor)`` comes first: a
    tensor pays one isinstance check)."""
    tracer = next(a for a in (*args, *kwargs.values()) if isinstance(a, Proxy)).tracer
    path = tracer.path_of_module(module)
    if not path:  # the traced root itself: fx traces into it, and nothing can call it as a node
        raise TypeError(
            f"torch.fx traces into the module it is given, and a {type(module).__name__} "
            "cannot be traced into (its checks read values and shapes): trace a model that "
            "holds it, e.g. torch.fx.symbolic_trace(torch.nn.Sequential(layer))"
        )
    return tracer.create_proxy("call_module", path, args, kwargs)


def traceable(fn: Callable) -> Callable:
    """Decorator of a functional: a call whose input (first argument) is a Proxy is recorded as
    one ``call_function`` node of this function; any other call runs it."""

    @functools.wraps(fn)
    def wrapper(input: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(input, Proxy):
            return input.tracer.create_proxy("call_function", wrapper, (input, *args), kwargs)
        return fn(input, *args, **kwargs)

    return wrapper
