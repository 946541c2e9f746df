"""A residual conv net for signals or images (the GN paper's setting, scaled down): the
:class:`~sharenorm.models.ConvNet` stem, then residual blocks that keep the size."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import sharenorm as sn
from sharenorm.models._norms import canonical_kind, norm_removes_bias
from sharenorm.models.convnet import ConvNet

__all__ = ["ResNet"]


class _Block(nn.Module):
    """x + norm(conv(act(norm(conv(x))))), then the activation; the second norm's γ starts at
    0 so that every block starts as the identity (Goyal et al. 2017, as the GN paper)."""

    def __init__(self, width, dim, kernel, norm, kw, bias):
        super().__init__()
        conv = nn.Conv1d if dim == 1 else nn.Conv2d
        self.conv1 = conv(width, width, kernel, padding=kernel // 2, bias=bias)
        self.norm1 = sn.make_norm(norm, width, dim=dim, act="relu", **kw)
        self.conv2 = conv(width, width, kernel, padding=kernel // 2, bias=bias)
        self.norm2 = sn.make_norm(norm, width, dim=dim, **kw)
        if getattr(self.norm2, "weight", None) is not None:
            nn.init.zeros_(self.norm2.weight)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.norm2(self.conv2(self.norm1(self.conv1(x)))))


class ResNet(nn.Module):
    """``depth`` conv layers: the first 3 are :class:`~sharenorm.models.ConvNet`'s
    downsampling blocks, the rest come in residual blocks of two (``depth`` = 3 + 2·blocks).

    Args:
        in_shape: ``(C, L)`` or ``(C, H, W)``.
        num_classes: outputs.
        width: channels. Default 16.
        depth: conv layers, odd and ≥ 3. Default 9.
        norm: norm kind for :func:`sharenorm.make_norm`. Default "batch".
        num_groups: G for ``norm="group"``.

    Example:
        >>> net = ResNet((1, 40), 10, depth=7, norm="group", num_groups=4)
        >>> net(torch.randn(2, 1, 40)).shape, len(net.blocks)
        (torch.Size([2, 10]), 2)
    """

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, *, width: int = 16,
                 depth: int = 9, norm: str = "batch", num_groups: int | None = None) -> None:
        super().__init__()
        if depth < 3 or depth % 2 == 0:
            raise ValueError(f"depth must be odd and ≥ 3 (3 + 2·blocks), got {depth}")
        stem = ConvNet(in_shape, num_classes, width=width, depth=3, norm=norm,
                       num_groups=num_groups)
        self.stem, self.dim, self.norm_kind = stem.features, stem.dim, canonical_kind(norm)
        kernel = 5 if self.dim == 1 else 3
        kw = {"num_groups": num_groups} if self.norm_kind == "group" and num_groups else {}
        bias = not norm_removes_bias(self.norm_kind, width, num_groups)
        self.blocks = nn.Sequential(*(_Block(width, self.dim, kernel, norm, kw, bias)
                                      for _ in range((depth - 3) // 2)))
        self.head = nn.Linear(stem.head.in_features, num_classes)
        self.depth = depth

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.flatten(self.blocks(self.stem(x)), 1))
