"""The activations a norm layer can apply after itself (``act=``), by name.

One small map from a name to torch's function, as timm's ``create_act`` does, so a
norm+activation layer stays weight-compatible with the plain norm (an activation
has no parameters).

Example:
    >>> import torch
    >>> from sharenorm.activation import apply_activation
    >>> apply_activation(torch.tensor([-2.0, 3.0]), "leaky_relu", 0.1)
    tensor([-0.2000,  3.0000])
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ACTIVATION_NAMES", "ACTIVATIONS", "Activation", "spec", "check_activation",
    "apply_activation",
]

_ATEN = torch.ops.aten


@dataclass(frozen=True)
class Activation:
    """Everything the library knows about one activation, so adding one is one entry.

    ``fn(x, p, inplace)`` is torch's function; ``fn_(y, p)`` runs it in place on a
    fresh tensor; ``grad(dy, z, p)`` is dL/dz from the pre-activation ``z``, written
    over ``z``; an invertible one also has ``grad_from_output(dy, y, p)`` and
    ``inverse(y, p)``, valid where ``invertible(p, dtype)``. ``triton`` is the
    compile-time code of the Triton kernels, ``c_name`` the name in the CPU backward's
    loops (``rec_<c_name>``, ``inv_<c_name>``), ``c_float32_only`` whether those exist
    for float32 only.
    """

    name: str
    default: float | None
    fn: Callable[[Tensor, Any, bool], Tensor]
    fn_: Callable[[Tensor, Any], Tensor]
    grad: Callable[[Tensor, Tensor, Any], Tensor]
    triton: int
    c_name: str
    c_float32_only: bool = True
    invertible: Callable[[Any, torch.dtype], bool] = lambda p, dtype: False
    grad_from_output: Callable[[Tensor, Tensor, Any], Tensor] | None = None
    inverse: Callable[[Tensor, Any], Tensor] | None = None


def _elu_inverse(y: Tensor, p: float) -> Tensor:
    z = torch.log1p(y / p)
    return torch.where(y > 0, y, z, out=z)


ACTIVATIONS: dict[str, Activation] = {a.name: a for a in (
    Activation(
        "identity", None, lambda x, p, inplace: x, lambda y, p: y, lambda dy, z, p: dy,
        triton=0, c_name="ident", c_float32_only=False,
        invertible=lambda p, dtype: True,
        grad_from_output=lambda dy, y, p: dy, inverse=lambda y, p: y,
    ),
    Activation(
        "relu", None, lambda x, p, inplace: F.relu(x, inplace=inplace),
        lambda y, p: y.relu_(),
        lambda dy, z, p: _ATEN.threshold_backward.grad_input(dy, z, 0, grad_input=z),
        triton=1, c_name="relu", c_float32_only=False,
    ),
    Activation(
        "leaky_relu", 0.01, lambda x, p, inplace: F.leaky_relu(x, p, inplace=inplace),
        lambda y, p: F.leaky_relu_(y, p),
        lambda dy, z, p: _ATEN.leaky_relu_backward.grad_input(dy, z, p, False, grad_input=z),
        triton=2, c_name="leaky", c_float32_only=False,
        # invertible with a well-conditioned inverse for a slope ≥ the dtype's eps
        invertible=lambda p, dtype: p >= torch.finfo(dtype).eps,
        # z > 0 ⇔ y > 0 for a positive slope
        grad_from_output=lambda dy, y, p: _ATEN.leaky_relu_backward(dy, y, p, True),
        # the inverse of slope p is slope 1/p: one fused pass
        inverse=lambda y, p: F.leaky_relu(y, 1.0 / p),
    ),
    Activation(
        "elu", 1.0, lambda x, p, inplace: F.elu(x, p), lambda y, p: F.elu_(y, p),
        lambda dy, z, p: _ATEN.elu_backward.grad_input(dy, p, 1, 1, False, z, grad_input=z),
        triton=3, c_name="elu",
        invertible=lambda p, dtype: p > 0,
        # elu'(z) = y + α for z ≤ 0
        grad_from_output=lambda dy, y, p: _ATEN.elu_backward(dy, p, 1, 1, True, y),
        inverse=_elu_inverse,
    ),
    Activation(
        "silu", None, lambda x, p, inplace: F.silu(x), lambda y, p: F.silu(y, inplace=True),
        lambda dy, z, p: _ATEN.silu_backward.grad_input(dy, z, grad_input=z),
        triton=4, c_name="silu",
    ),
    Activation(
        "gelu", None, lambda x, p, inplace: F.gelu(x), lambda y, p: _ATEN.gelu_(y),
        lambda dy, z, p: _ATEN.gelu_backward.grad_input(dy, z, grad_input=z),
        triton=5, c_name="gelu",
    ),
    Activation(
        "tanh", None, lambda x, p, inplace: x.tanh(), lambda y, p: y.tanh_(),
        lambda dy, z, p: _ATEN.tanh_backward.grad_input(dy, z.tanh_(), grad_input=z),
        triton=6, c_name="tanh",
    ),
    Activation(
        "sigmoid", None, lambda x, p, inplace: x.sigmoid(), lambda y, p: y.sigmoid_(),
        lambda dy, z, p: _ATEN.sigmoid_backward.grad_input(dy, z.sigmoid_(), grad_input=z),
        triton=7, c_name="sigmoid",
    ),
)}
ACTIVATION_NAMES = tuple(ACTIVATIONS)

# Activations whose backward needs only their output, so running them in place on a
# norm's fresh output is safe for autograd (the norm's backward keeps its input, not its
# output). The others would overwrite a value their own backward needs. leaky_relu only
# for a slope ≥ 0: with a negative one the output's sign no longer tells the input's,
# and torch refuses the in-place backward (see _runs_in_place).
_INPLACE_SAFE = frozenset({"relu", "leaky_relu"})


def _runs_in_place(act: str, param: float | None) -> bool:
    """Whether ``act`` with ``param`` may overwrite a fresh input (ATen's leaky_relu
    backward from its output requires ``negative_slope >= 0``)."""
    return act in _INPLACE_SAFE and not (act == "leaky_relu" and param < 0)


def check_activation(act: str | None, act_param: float | None = None) -> str | None:
    """Validate ``act``/``act_param``; return the canonical name (None for no activation)."""
    if act is None or act == "identity":
        if act_param is not None and act is None:
            raise ValueError("act_param is given but act is None; pass act='leaky_relu' or 'elu'")
        return None
    if not isinstance(act, str) or act not in ACTIVATIONS:
        close = difflib.get_close_matches(str(act), ACTIVATION_NAMES, n=2)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown act={act!r}; choose one of None, {', '.join(map(repr, ACTIVATION_NAMES))}."
            + hint
        )
    if act_param is not None and ACTIVATIONS[act].default is None:
        raise ValueError(f"act={act!r} takes no parameter; drop act_param={act_param!r}")
    if act_param is not None:
        what = "the negative slope" if act == "leaky_relu" else "α"
        if isinstance(act_param, bool) or not isinstance(act_param, numbers.Real):
            raise TypeError(
                f"act_param must be a number ({what} of {act}), got {act_param!r} of type "
                f"{type(act_param).__name__}; pass e.g. act_param={ACTIVATIONS[act].default}"
            )
        try:
            finite = math.isfinite(act_param)
        except OverflowError:  # an int beyond float's range
            finite = False
        if not finite:
            raise ValueError(
                f"act_param must be a finite number ({what} of {act}), got {act_param!r}; "
                f"pass e.g. act_param={ACTIVATIONS[act].default}"
            )
    return act


def spec(act: str | None) -> Activation:
    """The table entry of a checked activation name (None is identity)."""
    return ACTIVATIONS["identity" if act is None else act]


def default_param(act: str | None, act_param: float | None) -> float | None:
    """The parameter an activation runs with: ``act_param`` or its default."""
    if act is None:
        return act_param
    if act_param is None:
        return ACTIVATIONS[act].default
    return float(act_param)  # torch reads a Python int as int64, which 10**30 overflows


def apply_activation(
    x: Tensor, act: str | None, act_param: float | None = None, *, fresh: bool = False
) -> Tensor:
    """``act(x)``; ``fresh=True`` says ``x`` is a new tensor nobody else holds, so an
    activation that is safe to run in place (relu, leaky_relu with a slope ≥ 0)
    overwrites it and saves a full-size allocation."""
    if act is None or act == "identity":
        return x
    a = ACTIVATIONS[act]
    p = default_param(act, act_param)
    return a.fn(x, p, fresh and _runs_in_place(act, p))
