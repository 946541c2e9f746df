"""Argument checks shared by :mod:`sharenorm.norm` and :mod:`sharenorm.sharing`.

Each returns the canonical value or raises an error that names the fix. Kept apart
from both packages so either may import it without importing the other.

Example:
    >>> from sharenorm._checks import as_count
    >>> as_count(3, "num_layers", "")
    3
"""

from __future__ import annotations

import math
import numbers
import operator
import stat
from typing import Any

import torch
from torch import Tensor


class ShapeError(ValueError, RuntimeError):
    """A tensor whose dims or shape do not fit the operation: a ValueError, as Python code
    expects, and a RuntimeError, which is what ``torch.nn.functional`` raises for the same
    mistakes, so that code catching torch's error catches sharenorm's too."""


class MissingStatisticsError(ValueError, RuntimeError):
    """No running statistics where they would normalize (eval, ``use_input_stats=False``):
    a ValueError, and the RuntimeError torch raises for it (see :class:`ShapeError`)."""


class ArgumentTypeError(ValueError, TypeError):
    """An argument of the wrong type (a float where a count goes, None where a momentum
    does): a ValueError, as sharenorm's other argument errors, and the TypeError torch
    raises for it."""


class DtypeError(TypeError, RuntimeError):
    """A tensor of a dtype the operation cannot take: a TypeError, and a RuntimeError as
    torch's kernels raise for it (see :class:`ShapeError`)."""


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISSOCK, "a socket"))


def not_a_regular_file(mode: int) -> str | None:
    """What a file of ``st_mode`` ``mode`` is ("a folder", "a FIFO (named pipe)", …) when it
    is not a regular file, else None. Such a file is never opened: ``/dev/zero`` never ends,
    and opening a FIFO blocks until someone writes to it."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def check_module(model: Any, caller: str) -> None:
    """``model`` is an ``nn.Module`` (a str, a state_dict or a tensor would otherwise fail
    deep inside with "has no attribute 'named_modules'")."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{caller} expects an nn.Module, got {type(model).__name__}")


def check_input(input: Tensor, op: str, min_dim: int = 2) -> None:
    """Raise a clear error for non-tensors, integer/complex tensors and too few dims."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: input must be a torch.Tensor, got {type(input).__name__}")
    if not input.is_floating_point():
        raise DtypeError(
            f"{op}: input has dtype {input.dtype}; normalization needs a real floating "
            "dtype (float16, bfloat16, float32 or float64): convert it with input.float()"
        )
    if input.dim() < min_dim:
        raise ShapeError(
            f"{op}: expected an input of shape (N, C, *) with at least {min_dim} dims, "
            f"got shape {tuple(input.shape)}"
        )


def as_count(value: Any, name: str, what: str) -> int:
    """``value`` as a plain positive ``int``: any integer type torch accepts
    (``operator.index``: numpy ints too), never a bool or a float; else a ValueError
    that says what the number is (``what``)."""
    try:
        n = operator.index(value)
    except TypeError:
        n = None
    if n is None or isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be a positive int{what}, got {value!r}")
    if n < 1:
        raise ValueError(f"{name} must be a positive int{what}, got {value!r}")
    return n


def check_eps(eps: float) -> float:
    """``eps`` as a float (any real number type, numpy's included), finite and > 0."""
    if not (
        isinstance(eps, numbers.Real)
        and not isinstance(eps, bool)
        and math.isfinite(eps)
        and eps > 0
    ):
        raise ValueError(
            f"eps must be positive: a finite number > 0 that keeps √(σ² + ε) away from 0, "
            f"got {eps!r}; use a small number such as 1e-5 (the default)"
        )
    return float(eps)


def check_momentum(momentum: float | None, allow_none: bool = True) -> float | None:
    """``momentum`` as a float in [0, 1] (any real number type), or None where allowed."""
    if momentum is None and allow_none:
        return None
    hint = " or None for a cumulative average" if allow_none else ""
    if not isinstance(momentum, numbers.Real) or isinstance(momentum, bool):
        raise ArgumentTypeError(f"momentum must be a number in [0, 1]{hint}, got {momentum!r}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be a number in [0, 1]{hint}, got {momentum!r}")
    return float(momentum)


class ChecksOnSet:
    """Mixin (before ``nn.Module`` in the bases): the attributes named in the class's
    ``_checks_on_set`` are checked whenever they are set, in ``__init__`` or later, so that
    ``m.eps = -1.0`` raises the constructor's error instead of making every later output
    NaN (torch.nn checks eps only when its functional call runs, momentum never). The values
    are plain instance attributes: ``state_dict``, ``deepcopy``, pickling and
    ``torch.compile`` see nothing special. (Not a data descriptor: Dynamo of torch 2.11
    recurses without end inlining its ``__get__``, and no norm layer would compile there.)

    Example:
        >>> import sharenorm as sn
        >>> m = sn.GroupNorm(2, 4)
        >>> m.eps = 1e-3
        >>> try:
        ...     m.eps = -1.0
        ... except ValueError as e:
        ...     print(str(e)[:21])
        eps must be positive:
    """

    _checks_on_set: dict[str, Any] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        check = self._checks_on_set.get(name)
        super().__setattr__(name, value if check is None else check(value))


def check_per_channel(t: Tensor | None, name: str, channels: int, input: Tensor) -> None:
    """γ, β and running statistics hold one value per channel: shape (C,)."""
    if t is None:
        return
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor of shape ({channels},) or None, got "
                        f"{type(t).__name__}")
    if t.shape != (channels,):
        raise ShapeError(
            f"{name} must have shape ({channels},), one value per channel of the input of "
            f"shape {tuple(input.shape)}; got {tuple(t.shape)}"
        )
    if not t.is_floating_point():
        raise DtypeError(f"{name} has dtype {t.dtype}; it must be a floating dtype")


_HALF_DTYPES = (torch.float16, torch.bfloat16)


def check_dtypes(input: Tensor, op: str, mixed_ok: bool = False, **tensors: Tensor | None
                 ) -> None:
    """γ, β and running statistics have the input's dtype, or float32 for a 16-bit input
    (the mixed precision ATen's norms take), all alike unless ``mixed_ok`` (InstanceNorm,
    which takes them mixed as torch.instance_norm does); anything else would fail in ATen
    with "mixed dtype", which names neither the tensor nor the fix."""
    for name, t in tensors.items():
        if t is None or t.dtype == input.dtype:
            continue
        if input.dtype in _HALF_DTYPES and t.dtype == torch.float32:
            continue
        raise DtypeError(
            f"{op}: {name} is {t.dtype} but the input is {input.dtype}; convert the layer "
            f"(module.to({input.dtype})) or the input (x.to({t.dtype})). Only a float16 or "
            "bfloat16 input may meet float32 parameters and statistics, as in torch.nn."
        )
    if input.dtype not in _HALF_DTYPES or mixed_ok:  # the common case, without a dict
        return
    given = {name: t.dtype for name, t in tensors.items() if t is not None}
    if len(set(given.values())) > 1:
        # ATen takes them all in the input's dtype or all in float32, not a mix
        mix = ", ".join(f"{name} {dtype}" for name, dtype in given.items())
        raise DtypeError(
            f"{op}: with a {input.dtype} input, γ/β and the running statistics must all be "
            f"{input.dtype} or all float32, got {mix}; convert them alike (module.float(), "
            f"or module.to({input.dtype}))"
        )


def check_running_pair(running_mean: Tensor | None, running_var: Tensor | None, op: str) -> None:
    """Both running statistics or neither: one alone would be silently ignored."""
    if (running_mean is None) != (running_var is None):
        missing = "running_var" if running_var is None else "running_mean"
        raise ValueError(
            f"{op}: running_mean and running_var must both be given or both be None, got "
            f"no {missing}; pass both to use (and update) running statistics, or neither"
        )


def check_groups(num_channels: int, num_groups: int) -> int:
    """GroupNorm needs C divisible by G; the error lists the valid G nearest the one asked.
    Returns G as a plain int."""
    num_groups = as_count(num_groups, "num_groups", "")
    if num_channels % num_groups:
        divisors = [g for g in range(1, num_channels + 1) if num_channels % g == 0]
        near = sorted(divisors, key=lambda g: (abs(g - num_groups), g))[:4]
        raise ShapeError(
            f"num_channels={num_channels} is not divisible by num_groups={num_groups}; "
            f"valid group counts near {num_groups}: {', '.join(map(str, sorted(near)))} "
            f"(or pass group_size= with a divisor of {num_channels})"
        )
    return num_groups


def check_group_values(input: Tensor, num_groups: int, op: str) -> None:
    """Refuse what ``torch.nn.functional.group_norm`` refuses: a single sample whose groups
    hold one value each (σ² = 0, so x̂ = 0 and the output is β alone, whatever the input).
    torch's condition, N · C/G · ∏spatial == 1, is kept exactly (a drop-in must not refuse
    more): with N > 1 the same degenerate groups pass, as in torch. That product is
    numel / G: one integer compare per call."""
    if input.numel() == num_groups:
        raise ValueError(
            f"{op} needs more than one value per group, got input of shape "
            f"{tuple(input.shape)} with "
            f"num_groups={num_groups}: each group holds a single value, so the output would "
            "be the bias alone. Use fewer groups (num_groups=1 normalizes over all channels, "
            "as LayerNorm) or an input with spatial extent."
        )
