"""MLP autoencoders with tied, untied or softly tied decoder weights (for T1–T3)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

import sharenorm as sn
from sharenorm._checks import as_count

__all__ = ["Autoencoder"]


class Autoencoder(nn.Module):
    """:class:`sharenorm.TiedAutoencoder` on flattened inputs, output reshaped like the input.

    Args:
        in_shape: shape of one sample (flattened to ``prod(in_shape)`` features).
        hidden: widths from the first hidden layer to the code, e.g. ``(48, 16)``.
        tied: ``W_decoder = W_encoderᵀ`` (the seed's example) or separate decoder weights.
        act: hidden activation. Default "tanh".

    Example:
        >>> import torch
        >>> ae = Autoencoder((1, 8, 8), (32, 8), tied=True)
        >>> ae(torch.randn(3, 1, 8, 8)).shape
        torch.Size([3, 1, 8, 8])
        >>> len(ae.soft_tie_pairs())
        2
    """

    def __init__(self, in_shape: tuple[int, ...], hidden: tuple[int, ...], *, tied: bool = True,
                 act: str = "tanh") -> None:
        super().__init__()
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence) or not hidden:
            raise ValueError(f"hidden must be the widths from the first hidden layer to the "
                             f"code, e.g. (48, 16), got {hidden!r}")
        hidden = tuple(as_count(h, "hidden", " width (each)") for h in hidden)
        self.in_shape = tuple(as_count(v, "in_shape", " (each size)") for v in in_shape)
        self.sizes = (math.prod(self.in_shape), *hidden)
        self.ae = sn.TiedAutoencoder(list(self.sizes), tied=tied, activation=act)

    def soft_tie_pairs(self) -> list[tuple[str, str, str]]:
        """``(decoder weight, encoder weight, "transpose")`` names for :class:`sharenorm.SoftTie`."""
        k = len(self.sizes) - 1
        return [(f"ae.decoder.{j}.weight", f"ae.encoder.{k - 1 - j}.weight", "transpose")
                for j in range(k)]

    def tie_distance(self) -> float:
        """``sqrt(Σ ‖W_dec − W_encᵀ‖²)`` over the pairs (0 when tied)."""
        k = len(self.sizes) - 1
        s = sum(((self.ae.decoder[j].weight - self.ae.encoder[k - 1 - j].weight.T) ** 2).sum()
                .item() for j in range(k))
        return math.sqrt(s)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.in_shape:  # an unbatched sample, or another shape
            raise ValueError(f"Autoencoder expects a batch of samples of shape {self.in_shape}, "
                             f"i.e. (N, {', '.join(map(str, self.in_shape))}), got shape "
                             f"{tuple(x.shape)}")
        return self.ae(x.flatten(1)).view_as(x)
