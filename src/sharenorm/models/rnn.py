"""Sequence classifiers whose recurrent weights are shared across time, or not."""

from __future__ import annotations

from torch import Tensor, nn

import sharenorm as sn
from sharenorm._checks import as_count

__all__ = ["RNNClassifier"]


class RNNClassifier(nn.Module):
    """Read a ``(N, C, L)`` signal in chunks of ``chunk`` positions per time step, classify from
    the last hidden state.

    Step t sees positions ``t·chunk … t·chunk + chunk − 1`` of every channel (C·chunk inputs),
    so there are ``T = L / chunk`` steps. ``shared=True`` uses :class:`sharenorm.SharedRNN` (one
    cell's weights at every step, the usual RNN); ``shared=False`` uses
    :class:`sharenorm.UnsharedRNN` (separate weights per step, parameters × T). Everything else
    is identical, so the comparison isolates sharing.

    Args:
        in_shape: ``(C, L)`` of one sample.
        num_classes: outputs.
        hidden: hidden size. Default 64.
        shared: share the cell across time. Default True.
        chunk: positions per time step (must divide L). Default 1.

    Example:
        >>> import torch
        >>> net = RNNClassifier((1, 40), 10, hidden=8, chunk=4)
        >>> net(torch.randn(2, 1, 40)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_shape: tuple[int, int], num_classes: int, *, hidden: int = 64,
                 shared: bool = True, chunk: int = 1) -> None:
        super().__init__()
        if len(in_shape) != 2:
            raise ValueError(f"in_shape must be (C, L) for a sequence, got {in_shape!r}")
        c, length = (as_count(v, "in_shape", " (each size)") for v in in_shape)
        num_classes = as_count(num_classes, "num_classes", "")
        chunk = as_count(chunk, "chunk", f" that divides the length {length}")
        if length % chunk:
            raise ValueError(f"chunk must be ≥ 1 and divide the length {length}, got {chunk}")
        self.chunk, self.in_shape = chunk, tuple(in_shape)
        c, t = c * chunk, length // chunk
        name = "SharedRNN" if shared else "UnsharedRNN"
        cls = getattr(sn, name, None)
        if cls is None:
            raise RuntimeError(f"sharenorm.{name} is not available in this build")
        self.rnn = cls(c, hidden, batch_first=True) if shared else \
            cls(c, hidden, t, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"RNNClassifier expects input (N, {self.in_shape[0]}, {self.in_shape[1]}), "
                             f"got {tuple(x.shape)}; build it with in_shape=(C, L) of your data")
        n, c, length = x.shape
        # (N, C, L) -> (N, T, chunk, C) -> (N, T, chunk·C): one time step per chunk
        seq = x.transpose(1, 2).reshape(n, length // self.chunk, self.chunk * c)
        _, h_n = self.rnn(seq)
        return self.head(h_n[0])
