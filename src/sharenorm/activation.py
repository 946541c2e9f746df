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

import torch.nn.functional as F
from torch import Tensor

__all__ = ["ACTIVATION_NAMES", "check_activation", "apply_activation"]

# name -> (function(x, param, inplace), default parameter or None)
_ACTIVATIONS = {
    "identity": (lambda x, p, inplace: x, None),
    "relu": (lambda x, p, inplace: F.relu(x, inplace=inplace), None),
    "leaky_relu": (lambda x, p, inplace: F.leaky_relu(x, p, inplace=inplace), 0.01),
    "elu": (lambda x, p, inplace: F.elu(x, p), 1.0),
    "silu": (lambda x, p, inplace: F.silu(x), None),
    "gelu": (lambda x, p, inplace: F.gelu(x), None),
    "tanh": (lambda x, p, inplace: x.tanh(), None),
    "sigmoid": (lambda x, p, inplace: x.sigmoid(), None),
}
ACTIVATION_NAMES = tuple(_ACTIVATIONS)

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
    if not isinstance(act, str) or act not in _ACTIVATIONS:
        close = difflib.get_close_matches(str(act), ACTIVATION_NAMES, n=2)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown act={act!r}; choose one of None, {', '.join(map(repr, ACTIVATION_NAMES))}."
            + hint
        )
    if act_param is not None and _ACTIVATIONS[act][1] is None:
        raise ValueError(f"act={act!r} takes no parameter; drop act_param={act_param!r}")
    if act_param is not None:
        what = "the negative slope" if act == "leaky_relu" else "α"
        if isinstance(act_param, bool) or not isinstance(act_param, numbers.Real):
            raise TypeError(
                f"act_param must be a number ({what} of {act}), got {act_param!r} of type "
                f"{type(act_param).__name__}; pass e.g. act_param={_ACTIVATIONS[act][1]}"
            )
        if not math.isfinite(act_param):
            raise ValueError(
                f"act_param must be a finite number ({what} of {act}), got {act_param!r}; "
                f"pass e.g. act_param={_ACTIVATIONS[act][1]}"
            )
    return act


def default_param(act: str | None, act_param: float | None) -> float | None:
    """The parameter an activation runs with: ``act_param`` or its default."""
    if act is None or act_param is not None:
        return act_param
    return _ACTIVATIONS[act][1]


def apply_activation(
    x: Tensor, act: str | None, act_param: float | None = None, *, fresh: bool = False
) -> Tensor:
    """``act(x)``; ``fresh=True`` says ``x`` is a new tensor nobody else holds, so an
    activation that is safe to run in place (relu, leaky_relu with a slope ≥ 0)
    overwrites it and saves a full-size allocation."""
    if act is None or act == "identity":
        return x
    fn, default = _ACTIVATIONS[act]
    p = default if act_param is None else act_param
    return fn(x, p, fresh and _runs_in_place(act, p))
