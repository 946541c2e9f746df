"""The stacked twins of single layers that :mod:`sharenorm.lab.batched` and
:mod:`sharenorm.lab.batched_rnn` build models from: K linear layers as one batched matmul, K
BatchNorms as one over K·C channels. Member-major: ``t.view(K, -1)[k]`` is member k's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["NotStackable", "StackedLinear", "StackedBatchNorm"]


class NotStackable(ValueError):
    """A model (or a layer in it) that :func:`~sharenorm.lab.batched.stack_models` cannot
    stack exactly."""


def _stack_param(tensors: list[Tensor], shape: tuple[int, ...]) -> nn.Parameter:
    return nn.Parameter(torch.stack([t.detach() for t in tensors]).reshape(shape).clone())


class StackedLinear(nn.Module):
    """K independent ``nn.Linear(in_features, out_features)`` on ``(N, K·in)`` → ``(N, K·out)``.

    ``y[:, k] = x[:, k] @ W_kᵀ + b_k`` with ``x`` read as ``(N, K, in)``.
    """

    def __init__(self, k: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.k, self.in_features, self.out_features = k, in_features, out_features
        self.weight = nn.Parameter(torch.empty(k, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(k, out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        h = x.reshape(n, self.k, self.in_features).transpose(0, 1)       # (K, N, in)
        if self.bias is None:
            y = torch.bmm(h, self.weight.transpose(1, 2))
        else:
            y = torch.baddbmm(self.bias.unsqueeze(1), h, self.weight.transpose(1, 2))
        return y.transpose(0, 1).reshape(n, self.k * self.out_features)

    def extra_repr(self) -> str:
        return f"k={self.k}, in_features={self.in_features}, out_features={self.out_features}, " \
               f"bias={self.bias is not None}"


class StackedBatchNorm(nn.Module):
    """K BatchNorms of C channels as one over ``K·C`` channels, each member's running
    statistics guarded on their own.

    Per channel the math is the member's (torch.nn / sharenorm BatchNorm: biased variance to
    normalize, unbiased into the running statistics, then ``act``). A batch whose statistics
    are not finite leaves the running statistics as they were, as sharenorm's BatchNorm does —
    but per member: one member's NaN batch does not stop the others' update (sharenorm's own
    layer checks all its channels at once, which would couple the members).
    ``num_batches_tracked`` is kept per member, shape ``(K,)``.
    """

    def __init__(self, mods: list[nn.Module]) -> None:
        super().__init__()
        m0, k = mods[0], len(mods)
        if m0.momentum is None:
            raise NotStackable("BatchNorm with momentum=None (a cumulative average) needs a "
                               "per-member momentum; train it alone")
        self.k, self.eps, self.momentum = k, m0.eps, m0.momentum
        self.act, self.act_param = getattr(m0, "act", None), getattr(m0, "act_param", None)
        self.track_running_stats = m0.track_running_stats
        for name in ("weight", "bias"):
            p = getattr(m0, name)
            setattr(self, name, None if p is None else
                    _stack_param([getattr(m, name) for m in mods], (k * p.numel(),)))
        if m0.track_running_stats:
            for name in ("running_mean", "running_var"):
                self.register_buffer(name, torch.stack([getattr(m, name) for m in mods])
                                     .reshape(-1).clone())
            self.register_buffer("num_batches_tracked",
                                 torch.stack([m.num_batches_tracked for m in mods]).clone())
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def forward(self, x: Tensor) -> Tensor:
        from sharenorm.activation import apply_activation

        rm, rv = self.running_mean, self.running_var
        if self.training and rm is not None:
            backup = torch.stack([rm, rv])
            out = torch.batch_norm(x, self.weight, self.bias, rm, rv, True, self.momentum,
                                   self.eps, False)
            with torch.no_grad():
                # one reduction, read on the host, in the common case that all is finite
                if math.isfinite(float(rv.sum(dtype=torch.float64))):
                    self.num_batches_tracked.add_(1)
                else:
                    from sharenorm.norm.functional import _warn_not_finite

                    ok = torch.isfinite(rv.view(self.k, -1)).all(1)
                    # through .data: batch_norm saved these buffers for its backward
                    rm.data.view(self.k, -1)[~ok] = backup[0].view(self.k, -1)[~ok]
                    rv.data.view(self.k, -1)[~ok] = backup[1].view(self.k, -1)[~ok]
                    self.num_batches_tracked.add_(ok)
                    _warn_not_finite("batch_norm")
        else:
            out = torch.batch_norm(x, self.weight, self.bias, rm, rv,
                                   self.training or rm is None, self.momentum, self.eps, False)
        return apply_activation(out, self.act, self.act_param, fresh=True)
