"""An MLP autoencoder whose decoder weights are the encoder's, transposed (the seed's
``W_decoder = W_encoderᵀ``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from sharenorm._checks import as_count
from sharenorm._fx import Proxy, call_module_node
from sharenorm.activation import apply_activation, check_activation
from sharenorm.sharing.tie import tie

__all__ = ["TiedAutoencoder"]


class TiedAutoencoder(nn.Module):
    r"""Encoder/decoder MLP; with ``tied=True`` each decoder weight is an encoder weight
    transposed.

    For ``sizes = [d_0, d_1, …, d_k]`` the encoder maps ``d_0 → … → d_k`` with
    ``h_{i+1} = act(W_i h_i + b_i)`` (no activation on the code ``h_k``) and the decoder mirrors
    it, ``d_k → … → d_0``, ending in ``out_activation``. With ``tied=True``

    .. math:: W^{dec}_{j} = \left(W^{enc}_{k-1-j}\right)^T

    through :func:`sharenorm.tie` (one stored matrix, gradients of both uses summed); biases stay
    separate. The weight matrices are stored once, so the parameter count is
    ``Σ d_i d_{i+1}`` weights instead of ``2 Σ d_i d_{i+1}``. ``tied=False`` builds the same
    architecture (same names and state_dict keys) without the ties.

    Args:
        sizes: layer widths from input to code, at least two.
        tied: tie decoder weights to the transposed encoder weights. Default: True.
        activation: hidden activation (a ``sharenorm`` activation name). Default: ``"relu"``.
        out_activation: activation of the reconstruction, e.g. ``"sigmoid"``. Default: None.
        bias: use biases. Default: True.

    Shape:
        Input ``(N, d_0)`` → output ``(N, d_0)``; :meth:`encode` gives ``(N, d_k)``.

    Example:
        >>> import torch, sharenorm as sn
        >>> ae = sn.TiedAutoencoder([784, 128, 32])
        >>> ae(torch.randn(5, 784)).shape
        torch.Size([5, 784])
        >>> torch.equal(ae.decoder[0].weight, ae.encoder[1].weight.T)
        True
        >>> sn.count_parameters(ae), sn.count_parameters(sn.TiedAutoencoder([784, 128, 32], False))
        (105520, 209968)
    """

    def __init__(
        self,
        sizes: Sequence[int],
        tied: bool = True,
        activation: str | None = "relu",
        out_activation: str | None = None,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__()
        try:  # any integer type torch.nn accepts for a width (numpy's too), as plain ints
            if not isinstance(sizes, (list, tuple)) or len(sizes) < 2:
                raise ValueError
            sizes = [as_count(s, "sizes", "") for s in sizes]
        except ValueError:
            raise ValueError(
                f"sizes must be a list of at least two positive ints (input, ..., code), "
                f"got {sizes!r}"
            ) from None
        self.sizes = tuple(sizes)
        self.tied = bool(tied)
        self.activation = check_activation(activation)
        self.out_activation = check_activation(out_activation)
        f = {"device": device, "dtype": dtype}
        k = len(sizes) - 1
        self.encoder = nn.ModuleList(
            nn.Linear(sizes[i], sizes[i + 1], bias=bias, **f) for i in range(k)
        )
        self.decoder = nn.ModuleList(
            nn.Linear(sizes[k - j], sizes[k - j - 1], bias=bias, **f) for j in range(k)
        )
        if self.tied:
            for j in range(k):
                tie(self, f"decoder.{j}.weight", f"encoder.{k - 1 - j}.weight", "transpose")

    def _check(self, x: Tensor, size: int, what: str) -> None:
        if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[-1] != size:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"TiedAutoencoder{list(self.sizes)}.{what} expects (*, {size}), got {shape}"
            )

    def encode(self, x: Tensor) -> Tensor:
        """The code ``h_k`` (no activation on the last layer)."""
        self._check(x, self.sizes[0], "encode")
        for i, layer in enumerate(self.encoder):
            x = layer(x)
            if i < len(self.encoder) - 1:
                x = apply_activation(x, self.activation)
        return x

    def decode(self, h: Tensor) -> Tensor:
        """The reconstruction from a code."""
        self._check(h, self.sizes[-1], "decode")
        for j, layer in enumerate(self.decoder):
            h = layer(h)
            act = self.activation if j < len(self.decoder) - 1 else self.out_activation
            h = apply_activation(h, act)
        return h

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) and isinstance(x, Proxy):  # torch.fx tracing
            return call_module_node(self, x)
        return self.decode(self.encode(x))

    def extra_repr(self) -> str:
        return (
            f"sizes={list(self.sizes)}, tied={self.tied}, activation={self.activation!r}, "
            f"out_activation={self.out_activation!r}"
        )
