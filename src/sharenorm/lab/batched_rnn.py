"""K recurrent classifiers of one architecture as one model (:mod:`sharenorm.lab.batched`).

A recurrent classifier's forward is not channel-agnostic (it reads its channels in chunks of
positions), so it is stacked as a whole: member k reads its channels ``[k·C, (k+1)·C)`` of
``(N, K·C, L)`` as the classifier reads its own, every time step's input projection is one
batched matmul over the members (and, with separate weights per step, over the steps), the
recurrence one batched matmul per time step, and the head a
:class:`~sharenorm.lab.stacked_layers.StackedLinear`. The parameters keep the member's names with a
leading member axis, so :func:`~sharenorm.lab.batched.unstack_into` copies them back.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["StackedRNNClassifier", "StackedBNRNNClassifier"]


def _member_sequences(x: Tensor, k: int, in_shape: tuple[int, int], chunk: int) -> Tensor:
    """``(N, K·C, L)`` → ``(K, T, N, chunk·C)``: member k's sequence, time-major, as its
    classifier reads it (``x_k.transpose(1, 2).reshape(N, T, chunk·C)``)."""
    (c, length), n = in_shape, x.shape[0]
    seq = x.view(n, k, c, length).permute(1, 0, 3, 2).reshape(k, n, length // chunk, chunk * c)
    return seq.transpose(1, 2)


def _stacked_linear(mods: list[nn.Linear]) -> nn.Module:
    from sharenorm.lab.stacked_layers import StackedLinear, _stack_param

    m0 = mods[0]
    new = StackedLinear(len(mods), m0.in_features, m0.out_features, bias=m0.bias is not None)
    new.weight = _stack_param([m.weight for m in mods], tuple(new.weight.shape))
    if m0.bias is not None:
        new.bias = _stack_param([m.bias for m in mods], tuple(new.bias.shape))
    return new


def _project(seq: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Every member's ``x Wᵀ + b`` (``weight`` ``(K, H, I)``, ``bias`` ``(K, H)``) on every
    time step: ``(K, T, N, I)`` → ``(K, T, N, H)``, one batched matmul."""
    k, steps, n, i = seq.shape
    out = torch.bmm(seq.reshape(k, steps * n, i), weight.transpose(1, 2))
    if bias is not None:
        out = out + bias.unsqueeze(1)
    return out.view(k, steps, n, -1)


class StackedRNNClassifier(nn.Module):
    r"""K :class:`~sharenorm.models.RNNClassifier` of one architecture (a
    :class:`~sharenorm.SharedRNN` or :class:`~sharenorm.UnsharedRNN` inside) as one model on
    ``(N, K·C, L)`` → ``(N, K·classes)``:

    .. math:: h^{(k)}_t = \tanh\big(x^{(k)}_t W^{(k)T}_{ih}[t] + b^{(k)}_{ih}[t]
              + h^{(k)}_{t-1} W^{(k)T}_{hh}[t] + b^{(k)}_{hh}[t]\big)

    (``[t]`` only for the unshared RNN); ``rnn.weight_ih`` is ``(K, H, I)`` shared,
    ``(K, T, H, I)`` unshared.
    """

    def __init__(self, mods: list[nn.Module]) -> None:
        from sharenorm.lab.stacked_layers import _stack_param
        from sharenorm.sharing.layers import _NONLINEARITIES, UnsharedRNN

        super().__init__()
        m0, k = mods[0], len(mods)
        self.k, self.chunk, self.in_shape = k, m0.chunk, m0.in_shape
        rnn0 = m0.rnn
        self.unshared = isinstance(rnn0, UnsharedRNN)
        self.act = _NONLINEARITIES[rnn0.nonlinearity]
        self.hidden = rnn0.hidden_size
        self.rnn = nn.Module()
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            t = getattr(rnn0, name)
            setattr(self.rnn, name, None if t is None else
                    _stack_param([getattr(m.rnn, name) for m in mods], (k, *t.shape)))
        self.head = _stacked_linear([m.head for m in mods])

    def forward(self, x: Tensor) -> Tensor:
        k, r, n = self.k, self.rnn, x.shape[0]
        seq = _member_sequences(x, k, self.in_shape, self.chunk)
        steps, i = seq.shape[1], seq.shape[-1]
        if self.unshared:
            # step t's own W_ih[t], every member: (K·T, N, I) × (K·T, I, H)
            w = r.weight_ih[:, :steps].reshape(k * steps, self.hidden, i).transpose(1, 2)
            xw = torch.bmm(seq.reshape(k * steps, n, i), w)
            if r.bias_ih is not None:
                xw = xw + r.bias_ih[:, :steps].reshape(k * steps, 1, self.hidden)
            xw = xw.view(k, steps, n, self.hidden)
        else:
            xw = _project(seq, r.weight_ih, r.bias_ih)
        h = x.new_zeros(k, n, self.hidden)
        for t in range(steps):
            w_hh = r.weight_hh[:, t] if self.unshared else r.weight_hh
            pre = xw[:, t] + torch.bmm(h, w_hh.transpose(1, 2))
            if r.bias_hh is not None:
                pre = pre + (r.bias_hh[:, t] if self.unshared else r.bias_hh).unsqueeze(1)
            h = self.act(pre)
        return self.head(h.transpose(0, 1).reshape(n, k * self.hidden))


class StackedBNRNNClassifier(nn.Module):
    r"""K :class:`~sharenorm.models.bn_rnn.BNRNNClassifier` of one architecture as one model
    on ``(N, K·C, L)`` → ``(N, K·classes)``: with ``norm="batch"``, member k's

    .. math:: h_t = \tanh(\gamma_x \mathrm{BN}_t(W_x x_t) + \beta
              + \gamma_h \mathrm{BN}_t(W_h h_{t-1}))

    with each time step's BatchNorms stacked over the members
    (:class:`~sharenorm.lab.stacked_layers.StackedBatchNorm`: per-member running statistics).
    """

    def __init__(self, mods: list[nn.Module]) -> None:
        from sharenorm.lab.stacked_layers import StackedBatchNorm, _stack_param

        super().__init__()
        m0, k = mods[0], len(mods)
        self.k, self.chunk, self.in_shape, self.norm = k, m0.chunk, m0.in_shape, m0.norm
        self.hidden = m0.wh.in_features
        self.wx = _stacked_linear([m.wx for m in mods])
        self.wh = _stacked_linear([m.wh for m in mods])
        if self.norm == "batch":
            self.bn_x = nn.ModuleList(StackedBatchNorm([m.bn_x[t] for m in mods])
                                      for t in range(m0.steps))
            self.bn_h = nn.ModuleList(StackedBatchNorm([m.bn_h[t] for m in mods])
                                      for t in range(m0.steps))
            for name in ("gamma_x", "gamma_h", "beta"):
                setattr(self, name, _stack_param([getattr(m, name) for m in mods],
                                                 (k, self.hidden)))
        self.head = _stacked_linear([m.head for m in mods])

    def _bn(self, bn: nn.Module, a: Tensor) -> Tensor:
        """A stacked BatchNorm on ``(K, N, H)``: it reads ``(N, K·H)``, member-major."""
        k, n, h = a.shape
        return bn(a.transpose(0, 1).reshape(n, k * h)).view(n, k, h).transpose(0, 1)

    def forward(self, x: Tensor) -> Tensor:
        k, n = self.k, x.shape[0]
        seq = _member_sequences(x, k, self.in_shape, self.chunk)
        xw = _project(seq, self.wx.weight, self.wx.bias)  # (K, T, N, H)
        h = x.new_zeros(k, n, self.hidden)
        for t in range(seq.shape[1]):
            a, r = xw[:, t], torch.bmm(h, self.wh.weight.transpose(1, 2))
            if self.norm == "batch":
                a = self.gamma_x.unsqueeze(1) * self._bn(self.bn_x[t], a) + self.beta.unsqueeze(1)
                # h_0 = 0 has no variance to normalize: the first step has no recurrent term
                r = self.gamma_h.unsqueeze(1) * self._bn(self.bn_h[t], r) if t > 0 else r
            h = torch.tanh(a + r)
        return self.head(h.transpose(0, 1).reshape(n, k * self.hidden))
