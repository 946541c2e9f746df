"""MLP autoencoders with tied, untied or softly tied decoder weights."""

from __future__ import annotations

from torch import Tensor, nn

import sharenorm as sn

__all__ = ["Autoencoder"]


class Autoencoder(nn.Module):
    """A :class:`sharenorm.TiedAutoencoder` with a uniform interface for the tying experiments.

    Args:
        sizes: layer widths from the input to the code, e.g. ``(64, 32, 8)``.
        tied: ``W_decoder = W_encoderᵀ`` (the seed's example) or separate decoder weights.
    """

    def __init__(self, sizes: tuple[int, ...], *, tied: bool = True, act: str = "tanh") -> None:
        super().__init__()
        cls = getattr(sn, "TiedAutoencoder", None)
        if cls is None:
            raise RuntimeError("sharenorm.TiedAutoencoder is not available in this build")
        self.ae = cls(list(sizes), tied=tied)
        self.sizes = tuple(sizes)

    def forward(self, x: Tensor) -> Tensor:
        return self.ae(x.flatten(1)).view_as(x)
