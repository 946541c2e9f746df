"""A tiny conv encoder/decoder for the instance-norm style experiments, and the AdaIN swap."""

from __future__ import annotations

from torch import Tensor, nn

import sharenorm as sn
from sharenorm.models._norms import canonical_kind

__all__ = ["StyleEncoder", "StyleDecoder", "adain", "channel_stats"]


def channel_stats(f: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and standard deviation over the spatial dims of ``(N, C, *)``."""
    dims = tuple(range(2, f.dim()))
    mean = f.mean(dims, keepdim=True)
    std = (f.var(dims, keepdim=True, unbiased=False) + eps).sqrt()
    return mean, std


def adain(content: Tensor, style: Tensor, eps: float = 1e-5) -> Tensor:
    r"""Adaptive instance normalization (Huang & Belongie, 2017).

    .. math::
        \mathrm{AdaIN}(c, s) = \sigma(s)\,\frac{c - \mu(c)}{\sigma(c)} + \mu(s)

    μ and σ per sample and channel over the spatial positions: instance-normalize the content
    features, then give them the style features' statistics.

    Example:
        >>> import torch
        >>> c, s = torch.randn(1, 4, 8, 8), 3 * torch.randn(1, 4, 6, 6) + 1
        >>> out = adain(c, s)
        >>> torch.allclose(channel_stats(out)[1], channel_stats(s)[1], atol=1e-3)
        True
    """
    mc, sc = channel_stats(content, eps)
    ms, ss = channel_stats(style, eps)
    return ss * (content - mc) / sc + ms


class StyleEncoder(nn.Module):
    """Two reflect-padded 3×3 convolutions (the second with stride 2), each followed by a norm.

    Reflect padding keeps a constant image constant at the borders, so with ``norm="instance"``
    the features are exactly invariant (up to ε) to the input's own contrast ``a`` and
    brightness ``b``: conv(a·x + b) = a·conv(x) + const per channel, which IN removes.

    Args:
        norm: norm kind for :func:`sharenorm.make_norm` (any alias). Default "instance".
        width: channels of the first conv (the second has ``2·width``). Default 32.
        act: activation fused into the norms. Default "relu".
        num_groups: G for ``norm="group"``. Default 8.

    Example:
        >>> import torch
        >>> enc = StyleEncoder(width=8)
        >>> x = torch.rand(1, 3, 16, 16)
        >>> enc(x).shape
        torch.Size([1, 16, 8, 8])
        >>> torch.allclose(enc.first(2 * x + 0.5), enc.first(x), atol=1e-3)  # contrast, brightness
        True
    """

    def __init__(self, norm: str = "instance", width: int = 32, act: str = "relu",
                 num_groups: int = 8) -> None:
        super().__init__()
        kw = {"num_groups": num_groups} if canonical_kind(norm) == "group" else {}
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, padding_mode="reflect")
        self.norm1 = sn.make_norm(norm, width, dim=2, act=act, **kw)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, padding_mode="reflect")
        self.norm2 = sn.make_norm(norm, 2 * width, dim=2, act=act, **kw)

    def first(self, x: Tensor) -> Tensor:
        """Features after the first conv → norm → act (where invariance is measured)."""
        return self.norm1(self.conv1(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.norm2(self.conv2(self.first(x)))


class StyleDecoder(nn.Module):
    """Mirror of :class:`StyleEncoder` without norms (the AdaIN decoder has none either)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(2 * width, width, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
            nn.Conv2d(width, 3, 3, padding=1, padding_mode="reflect"),
        )

    def forward(self, f: Tensor) -> Tensor:
        return self.net(f)
