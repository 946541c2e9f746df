"""Sequence classifiers whose recurrent weights are shared across time, or not."""

from __future__ import annotations

from torch import Tensor, nn

import sharenorm as sn

__all__ = ["RNNClassifier"]


class RNNClassifier(nn.Module):
    """Read a ``(N, C, T)`` signal one time step at a time, classify from the last hidden state.

    ``shared=True`` uses :class:`sharenorm.SharedRNN` (one cell's weights at every step, the
    usual RNN); ``shared=False`` uses :class:`sharenorm.UnsharedRNN` (a separate cell per step,
    parameters × T). Everything else is identical, so the comparison isolates sharing.

    Args:
        in_shape: ``(C, T)`` of one sample.
        num_classes: outputs.
        hidden: hidden size. Default 64.
        shared: share the cell across time. Default True.
    """

    def __init__(self, in_shape: tuple[int, int], num_classes: int, *, hidden: int = 64,
                 shared: bool = True) -> None:
        super().__init__()
        if len(in_shape) != 2:
            raise ValueError(f"in_shape must be (C, T) for a sequence, got {in_shape!r}")
        c, t = in_shape
        name = "SharedRNN" if shared else "UnsharedRNN"
        cls = getattr(sn, name, None)
        if cls is None:
            raise RuntimeError(f"sharenorm.{name} is not available in this build")
        self.rnn = cls(c, hidden, batch_first=True) if shared else \
            cls(c, hidden, t, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        _, h_n = self.rnn(x.transpose(1, 2))  # (N, T, C): one time step per position
        return self.head(h_n[0])
