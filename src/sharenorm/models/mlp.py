"""A multilayer perceptron with a pluggable norm after every hidden linear layer."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

import sharenorm as sn
from sharenorm._checks import as_count
from sharenorm.models._norms import canonical_kind, norm_removes_bias

__all__ = ["MLP"]


class MLP(nn.Module):
    """``depth`` hidden blocks of linear → norm → activation, then a linear head.

    The input is flattened. ``norm`` goes through :func:`sharenorm.make_norm` with ``dim=0``
    (features ``(N, C)``): "batch" is BatchNorm1d over the batch, "layer" normalizes each
    sample over its C features; "instance" is not defined for features without positions.

    Args:
        in_shape: shape of one sample (flattened to ``prod(in_shape)`` features).
        num_classes: outputs.
        hidden: width of every hidden layer (default 100, the MNIST-1D paper's MLP), or a
            sequence of widths, one per hidden layer (then ``depth`` is ignored).
        depth: hidden layers. Default 2.
        norm, act: as in :class:`~sharenorm.models.ConvNet` (a linear layer has a bias only
            where the norm would not cancel it: "none" and "layer").

    Example:
        >>> import torch
        >>> mlp = MLP((1, 40), 10, hidden=[32, 16], norm="batch")
        >>> mlp(torch.randn(4, 1, 40)).shape
        torch.Size([4, 10])
        >>> mlp.linears[0].bias is None  # BatchNorm subtracts the mean: a bias would be dead
        True
    """

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, *,
                 hidden: int | Sequence[int] = 100, depth: int = 2, norm: str = "none",
                 act: str = "relu") -> None:
        super().__init__()
        num_classes = as_count(num_classes, "num_classes", "")
        depth = as_count(depth, "depth", " (hidden layers)")
        if isinstance(hidden, Sequence) and not isinstance(hidden, str):
            widths = [as_count(h, "hidden", " width (each)") for h in hidden]
        else:  # one width (numpy's ints too), depth times
            widths = [as_count(hidden, "hidden", " width")] * depth
        if not widths:
            raise ValueError(f"need ≥ 1 hidden layer of width ≥ 1, got hidden={hidden}, "
                             f"depth={depth}")
        norm = canonical_kind(norm)
        dims = [math.prod(in_shape)] + widths
        # a bias the norm cancels would be a dead parameter (see norm_removes_bias)
        self.linears = nn.ModuleList(
            nn.Linear(a, b, bias=not norm_removes_bias(norm, b))
            for a, b in zip(dims[:-1], dims[1:], strict=False))
        self.norms = nn.ModuleList(sn.make_norm(norm, w, dim=0, act=act) for w in widths)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.flatten(x, 1)
        for lin, norm in zip(self.linears, self.norms, strict=False):
            h = norm(lin(h))
        return self.head(h)
