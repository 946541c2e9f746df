"""Recurrent classifiers with batch normalization per time step (Cooijmans et al. 2016), and a
GRU, for the lab's "BN is used in RNNs" measurement.

One BatchNorm cannot serve every time step (the distribution of ``W_h h_{t-1}`` changes
from step to step), so :class:`BNRNNClassifier` keeps statistics per step and normalizes the
input and the recurrent contribution separately (its docstring has the formula).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import sharenorm as sn

__all__ = ["BNRNNClassifier", "GRUClassifier"]


def _sequence(x: Tensor, in_shape: tuple[int, int], chunk: int, name: str) -> Tensor:
    """``(N, C, L)`` → ``(N, T, chunk·C)``: one time step per ``chunk`` positions."""
    if tuple(x.shape[1:]) != tuple(in_shape):
        raise ValueError(f"{name} expects input (N, {in_shape[0]}, {in_shape[1]}), got "
                         f"{tuple(x.shape)}; build it with in_shape=(C, L) of your data")
    n, c, length = x.shape
    return x.transpose(1, 2).reshape(n, length // chunk, chunk * c)


def _check(in_shape, chunk) -> tuple[int, int]:
    if len(in_shape) != 2:
        raise ValueError(f"in_shape must be (C, L) for a sequence, got {in_shape!r}")
    c, length = in_shape
    if chunk < 1 or length % chunk:
        raise ValueError(f"chunk must be ≥ 1 and divide the length {length}, got {chunk}")
    return c * chunk, length // chunk


class BNRNNClassifier(nn.Module):
    """A tanh Elman RNN read in chunks (as :class:`~sharenorm.models.RNNClassifier`), with
    batch normalization per time step (``norm="batch"``) or without (``norm="none"``).

    With ``norm="batch"``, separate statistics per time step t (Cooijmans et al., "Recurrent
    Batch Normalization", ICLR 2017)::

        h_t = tanh(BN_t(W_x x_t; γ_x, β_x) + BN_t(W_h h_{t-1}; γ_h, 0) + b)

    with γ shared across time and initialised to 0.1 (their finding: γ = 1 saturates tanh
    and makes gradients vanish).

    Args:
        in_shape: ``(C, L)`` of one sample.
        num_classes: outputs.
        hidden: hidden size. Default 64.
        chunk: positions per time step (must divide L). Default 4.
        norm: ``"batch"`` (per-time-step statistics) or ``"none"``.
        gamma0: initial γ of the normalized branches. Default 0.1 (Cooijmans et al.).

    Example:
        >>> net = BNRNNClassifier((1, 40), 10, hidden=8, chunk=4)
        >>> net(torch.randn(3, 1, 40)).shape, len(net.bn_x)
        (torch.Size([3, 10]), 10)
    """

    def __init__(self, in_shape: tuple[int, int], num_classes: int, *, hidden: int = 64,
                 chunk: int = 4, norm: str = "batch", gamma0: float = 0.1) -> None:
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {norm!r}")
        d, steps = _check(in_shape, chunk)
        self.in_shape, self.chunk, self.norm, self.steps = tuple(in_shape), chunk, norm, steps
        self.wx = nn.Linear(d, hidden, bias=norm == "none")
        self.wh = nn.Linear(hidden, hidden, bias=False)
        if norm == "batch":
            # statistics per time step (affine=False), γ/β shared across time
            self.bn_x = nn.ModuleList(sn.BatchNorm1d(hidden, affine=False) for _ in range(steps))
            self.bn_h = nn.ModuleList(sn.BatchNorm1d(hidden, affine=False) for _ in range(steps))
            self.gamma_x = nn.Parameter(torch.full((hidden,), gamma0))
            self.gamma_h = nn.Parameter(torch.full((hidden,), gamma0))
            self.beta = nn.Parameter(torch.zeros(hidden))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        seq = _sequence(x, self.in_shape, self.chunk, type(self).__name__)
        h = seq.new_zeros(seq.shape[0], self.wh.in_features)
        for t in range(seq.shape[1]):
            a, r = self.wx(seq[:, t]), self.wh(h)
            if self.norm == "batch":
                a = self.gamma_x * self.bn_x[t](a) + self.beta
                # h_0 = 0 has no variance to normalize: the first step has no recurrent term
                r = self.gamma_h * self.bn_h[t](r) if t > 0 else r
            h = torch.tanh(a + r)
        return self.head(h)


class GRUClassifier(nn.Module):
    r"""``torch.nn.GRU`` read in chunks with a linear head: the mnist1d paper's GRU baseline.

    ``readout="last"`` (default) classifies from the last hidden state :math:`h_T` (of each
    direction); ``readout="all"`` from the outputs of every time step, flattened,
    :math:`[o_1, \dots, o_T]` — as the mnist1d paper's ``GRUBase`` does, so the head sees
    where in the sequence a feature occurred instead of only what the recurrence kept of it.
    ``bidirectional`` reads the sequence both ways (``torch.nn.GRU``'s flag).

    Example:
        >>> GRUClassifier((1, 40), 10, hidden=8)(torch.randn(2, 1, 40)).shape
        torch.Size([2, 10])
        >>> m = GRUClassifier((1, 40), 10, hidden=8, readout="all", bidirectional=True)
        >>> m(torch.randn(2, 1, 40)).shape, m.head.in_features   # 10 steps × 2 directions × 8
        (torch.Size([2, 10]), 160)
    """

    def __init__(self, in_shape: tuple[int, int], num_classes: int, *, hidden: int = 64,
                 chunk: int = 4, readout: str = "last", bidirectional: bool = False) -> None:
        super().__init__()
        d, steps = _check(in_shape, chunk)
        if readout not in ("last", "all"):
            raise ValueError(f"readout must be 'last' (the last hidden state) or 'all' (every "
                             f"time step's output), got {readout!r}")
        self.in_shape, self.chunk, self.readout = tuple(in_shape), chunk, readout
        self.gru = nn.GRU(d, hidden, batch_first=True, bidirectional=bidirectional)
        dirs = 2 if bidirectional else 1
        self.head = nn.Linear(hidden * dirs * (steps if readout == "all" else 1), num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out, h = self.gru(_sequence(x, self.in_shape, self.chunk, type(self).__name__))
        if self.readout == "all":
            return self.head(out.reshape(out.shape[0], -1))
        return self.head(h.transpose(0, 1).reshape(h.shape[1], -1))  # each direction's h_T
