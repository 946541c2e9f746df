"""Memory-format helpers: which dense layout a tensor is in, and keeping it.

A 4-d/5-d tensor that is channels-last and not also plain contiguous (a tensor with
every spatial size 1 is both) is read as channels-last; everything else as contiguous,
which is how ATen's CPU norm kernels pick their loop.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["memory_format", "is_channels_last", "same_memory_format"]

_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def memory_format(x: Tensor) -> torch.memory_format:
    """The layout ATen keeps for ``x``: channels-last (4-d/5-d) or contiguous.

    Example:
        >>> import torch
        >>> from sharenorm.norm import _layout
        >>> x = torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last)
        >>> _layout.memory_format(x) == torch.channels_last, _layout.is_channels_last(x)
        (True, True)
        >>> _layout.same_memory_format(x.contiguous(), x).is_contiguous()
        False
    """
    fmt = _CHANNELS_LAST.get(x.dim())
    if fmt is None:
        return torch.contiguous_format
    try:
        channels_last = x.is_contiguous(memory_format=fmt) and not x.is_contiguous()
    except RuntimeError:  # inside torch.func.vmap: the query is not implemented there
        return torch.contiguous_format
    return fmt if channels_last else torch.contiguous_format


def is_channels_last(x: Tensor) -> bool:
    """Whether ``x`` is a channels-last (4-d/5-d) tensor that is not also contiguous."""
    return memory_format(x) != torch.contiguous_format


def same_memory_format(out: Tensor, like: Tensor) -> Tensor:
    """``out`` in ``like``'s layout (channels-last in gives channels-last out), for
    kernels that do not keep it; ``out`` itself when it already is."""
    fmt = memory_format(like)
    return out if fmt == torch.contiguous_format else out.contiguous(memory_format=fmt)
