"""A plain conv net for signals (1-d) or images (2-d), and its locally connected twin."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

import sharenorm as sn
from sharenorm._checks import as_count
from sharenorm.models._norms import canonical_kind, norm_removes_bias

__all__ = ["ConvNet", "LocallyConnectedNet", "conv_out_len"]


def conv_out_len(n: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution along one dim: ⌊(n + 2p − k)/s⌋ + 1."""
    return (n + 2 * padding - kernel) // stride + 1


class ConvNet(nn.Module):
    """``depth`` blocks of conv → norm → activation, then flatten → linear.

    The first ``downsample`` blocks use stride 2 (the MNIST-1D paper's CNN: three stride-2
    convolutions, then a linear layer on the flattened features); later blocks keep the size,
    so ``depth`` can grow without the signal vanishing. Norms come from
    :func:`sharenorm.make_norm` with the activation fused in; ``norm`` is read once through
    its canonical name (``"BN"``, ``"GroupNorm"``, ``"identity"`` work as in ``make_norm``).
    A convolution has a bias only where the norm after it would not cancel one (no norm,
    LayerNorm, GroupNorm with more than one channel per group).

    Args:
        in_shape: ``(C, L)`` or ``(C, H, W)`` of one sample.
        num_classes: outputs.
        width: channels of every block. Default 32.
        depth: number of conv blocks. Default 3.
        norm: norm kind for :func:`sharenorm.make_norm`. Default "batch".
        act: activation name. Default "relu".
        kernel: kernel size (odd). Default 5 for signals, 3 for images.
        downsample: how many leading blocks use stride 2. Default 3 (fewer if the input is small).
        num_groups: G for ``norm="group"`` (default: make_norm's rule, 32 or a divisor).

    Shape:
        Input ``(N, *in_shape)``, output ``(N, num_classes)``.

    Example:
        >>> import torch
        >>> net = ConvNet((1, 8, 8), 10, width=16, norm="GN", num_groups=4)
        >>> net(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
        >>> net.norm_kind, net.features[1].num_groups, net.features[0].bias is not None
        ('group', 4, True)
    """

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, *, width: int = 32,
                 depth: int = 3, norm: str = "batch", act: str = "relu", kernel: int | None = None,
                 downsample: int | None = None, num_groups: int | None = None) -> None:
        super().__init__()
        if not isinstance(in_shape, (tuple, list)) or len(in_shape) not in (2, 3):
            raise ValueError(f"in_shape must be (C, L) or (C, H, W), got {in_shape!r}")
        in_shape = tuple(as_count(s, "in_shape", " (each size)") for s in in_shape)
        num_classes = as_count(num_classes, "num_classes", "")
        depth = as_count(depth, "depth", "")
        width = as_count(width, "width", "")
        self.dim = len(in_shape) - 1
        kernel = (5 if self.dim == 1 else 3) if kernel is None else as_count(
            kernel, "kernel", " (the convolution's kernel size)")
        size = list(in_shape[1:])
        if downsample is None:
            downsample = 3
            while downsample and min(size) // 2 ** downsample < 2:
                downsample -= 1  # 8×8 digits: stop before the maps shrink below 2
        elif isinstance(downsample, bool) or not isinstance(downsample, int) or downsample < 0:
            raise ValueError(f"downsample must be an int >= 0 (the stride-2 blocks), got "
                             f"{downsample!r}")
        norm = canonical_kind(norm)
        self.in_shape, self.norm_kind = tuple(in_shape), norm
        conv = nn.Conv1d if self.dim == 1 else nn.Conv2d
        kw = {"num_groups": num_groups} if norm == "group" and num_groups else {}
        bias = not norm_removes_bias(norm, width, num_groups)
        layers: list[nn.Module] = []
        c = in_shape[0]
        for i in range(depth):
            stride = 2 if i < downsample else 1
            # a bias the norm cancels would be a dead parameter (see norm_removes_bias)
            layers.append(self._layer(conv, c, width, kernel, stride, size, bias=bias))
            layers.append(sn.make_norm(norm, width, dim=self.dim, act=act, **kw))
            size = [conv_out_len(s, kernel, stride, kernel // 2) for s in size]
            c = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width * math.prod(size), num_classes)

    def _layer(self, conv, c_in, c_out, kernel, stride, size, bias):
        return conv(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.flatten(self.features(x), 1))


class LocallyConnectedNet(ConvNet):
    """:class:`ConvNet` with every convolution replaced by a locally connected layer.

    Same connectivity (kernel, stride, padding) and the same activations, but every output
    position has its own filter: the network without weight sharing across positions, for the
    sharing experiments (S1–S3). Uses :class:`sharenorm.LocallyConnected1d` / ``2d``.

    Example:
        >>> import torch
        >>> import sharenorm as sn
        >>> lc, conv = LocallyConnectedNet((1, 40), 10, width=8), ConvNet((1, 40), 10, width=8)
        >>> lc(torch.randn(2, 1, 40)).shape
        torch.Size([2, 10])
        >>> sn.count_parameters(lc) > sn.count_parameters(conv)  # one filter per position
        True
    """

    def _layer(self, conv, c_in, c_out, kernel, stride, size, bias):
        cls = sn.LocallyConnected1d if self.dim == 1 else sn.LocallyConnected2d
        in_size = size[0] if self.dim == 1 else tuple(size)
        return cls(c_in, c_out, in_size, kernel, stride=stride, padding=kernel // 2, bias=bias)
