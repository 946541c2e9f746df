"""BatchNorm (and BatchRenorm) as W DDP processes compute it, in one process, in one pass.

Under DistributedDataParallel each of W ranks normalizes its own chunk of b samples with
that chunk's statistics, the gradients are averaged, and rank 0's buffers are broadcast
before every forward, so only rank 0's running-statistics update survives.
:class:`PerRankBatchNorm` computes exactly that on the global batch of W·b samples in one
forward, and stacks like BatchNorm (N9's seeds train as one model). Why one pass and not W
forwards of b samples: docs/design/lab-batching.md.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PerRankBatchNorm", "per_rank_norms"]


class PerRankBatchNorm(nn.Module):
    r"""A trained BatchNorm/BatchRenorm layer as W DDP ranks of ``b = N / W`` samples each
    compute it, in one process.

    Training, for chunk ``r`` (samples ``[r·b, (r+1)·b)``) and channel ``c``, over the b
    samples and the spatial positions of the chunk:

    .. math::
        y_{r} = \gamma\,\frac{x_r - \mu_{r}}{\sqrt{\sigma^2_{r} + \epsilon}} + \beta,
        \qquad \hat\mu \leftarrow (1-m)\hat\mu + m\,\mu_0,\quad
        \hat\sigma^2 \leftarrow (1-m)\hat\sigma^2 + m\,\tfrac{n}{n-1}\sigma^2_0

    (biased variance to normalize, unbiased into the running statistics, ``n = b·L``; only
    chunk 0's update: rank 0's). With ``renorm`` (BatchRenorm), each chunk is corrected
    towards the step-start running statistics as that rank's BatchRenorm does:
    ``γ(x̂_r·r_r + d_r) + β`` with ``r_r = clip(σ_r/σ̂)`` and ``d_r = clip((μ_r − μ̂)/σ̂)``, the
    clips of the layer's warm-up at ``num_batches_tracked``. Eval mode is BatchNorm's with the
    running statistics. The layer's activation (``act``) is applied after, as the layer's own.

    A channel whose chunk-0 statistics are not finite keeps its running statistics (as
    sharenorm's BatchNorm keeps them on a non-finite batch).

    Args:
        layer: the BatchNorm or BatchRenorm to compute (sharenorm's or torch.nn's, with a
            momentum and running statistics); its parameters and buffers are taken over.
        world: W, the number of ranks; the batch must be a multiple of it.

    Example:
        >>> import torch, sharenorm as sn
        >>> bn = sn.BatchNorm1d(3)
        >>> per_rank = PerRankBatchNorm(sn.BatchNorm1d(3), world=2)
        >>> x = torch.randn(4, 3, 5)
        >>> y = per_rank(x)
        >>> torch.allclose(y[:2], bn(x[:2]), atol=1e-6)     # rank 0 sees samples 0, 1
        True
        >>> torch.allclose(per_rank.running_mean, bn.running_mean)   # and keeps its update
        True
    """

    def __init__(self, layer: nn.Module, world: int) -> None:
        super().__init__()
        if not isinstance(world, int) or world < 1:
            raise ValueError(f"world must be a positive number of ranks, got {world!r}")
        if getattr(layer, "momentum", None) is None or layer.running_mean is None:
            raise ValueError("PerRankBatchNorm needs a BatchNorm with running statistics and a "
                             "momentum (not None: a cumulative average is not what DDP ranks "
                             "keep in step)")
        self.world, self.eps, self.momentum = world, layer.eps, layer.momentum
        self.num_features = layer.num_features
        self.act, self.act_param = getattr(layer, "act", None), getattr(layer, "act_param", None)
        # BatchRenorm's clips and their warm-up (None: plain BatchNorm)
        self.renorm = ((layer.r_max, layer.d_max, layer.r_warmup, layer.d_warmup)
                       if hasattr(layer, "r_warmup") else None)
        self.weight, self.bias = layer.weight, layer.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, getattr(layer, name))

    def _clips(self) -> tuple[float, float]:
        from sharenorm.norm.batchrenorm import _ramp

        r_max, d_max, r_warmup, d_warmup = self.renorm
        step = int(self.num_batches_tracked)
        return _ramp(step, r_warmup, 1.0, r_max), _ramp(step, d_warmup, 0.0, d_max)

    def forward(self, x: Tensor) -> Tensor:
        from sharenorm.activation import apply_activation

        rm, rv = self.running_mean, self.running_var
        if not self.training:
            out = torch.batch_norm(x, self.weight, self.bias, rm, rv, False, 0.0, self.eps, False)
            return apply_activation(out, self.act, self.act_param, fresh=True)
        n, c, w = x.shape[0], x.shape[1], self.world
        if n % w:
            raise ValueError(f"PerRankBatchNorm: a batch of {n} does not split into {w} ranks' "
                             f"equal chunks; use a batch that is a multiple of {w}")
        b = n // w
        # (W·b, C, *) → (b, W·C, L): channel r·C + c is rank r's channel c
        t = x.reshape(w, b, c, -1).transpose(0, 1).reshape(b, w * c, -1)
        with torch.no_grad():
            var, mean = torch.var_mean(t, dim=(0, 2), correction=0)
        weight = None if self.weight is None else self.weight.repeat(w)
        bias = None if self.bias is None else self.bias.repeat(w)
        if self.renorm is not None:
            r_max, d_max = self._clips()
            if r_max != 1.0 or d_max != 0.0:
                with torch.no_grad():
                    sigma = torch.sqrt(rv + self.eps).repeat(w)
                    r = (torch.sqrt(var + self.eps) / sigma).clamp_(1.0 / r_max, r_max)
                    d = ((mean - rm.repeat(w)) / sigma).clamp_(-d_max, d_max)
                gamma = weight if weight is not None else torch.ones_like(r)
                weight = gamma * r
                bias = gamma * d if bias is None else torch.addcmul(bias, gamma, d)
        out = torch.batch_norm(t, weight, bias, None, None, True, 0.0, self.eps, False)
        with torch.no_grad():
            # rank 0's update, from the step-start buffers every rank started from
            count = t.shape[0] * t.shape[2]
            m0, v0 = mean[:c], var[:c] * (count / max(count - 1, 1))
            ok = torch.isfinite(m0) & torch.isfinite(v0)
            rm.copy_(torch.where(ok, torch.lerp(rm, m0.to(rm.dtype), self.momentum), rm))
            rv.copy_(torch.where(ok, torch.lerp(rv, v0.to(rv.dtype), self.momentum), rv))
            self.num_batches_tracked.add_(1)
        out = out.reshape(b, w, c, -1).transpose(0, 1).reshape(x.shape)
        return apply_activation(out, self.act, self.act_param, fresh=True)

    @classmethod
    def stack_members(cls, mods: list[PerRankBatchNorm]) -> PerRankBatchNorm:
        """K such layers as one over K·C channels (:func:`sharenorm.lab.batched.stack_models`):
        the statistics are per (rank, channel), so K members side by side are K layers."""
        import copy

        from sharenorm.lab.stacked_layers import _stack_param

        k, m0 = len(mods), mods[0]
        new = copy.copy(m0)
        new._parameters, new._buffers = {}, {}  # noqa: SLF001 - fresh stacked tensors
        new.num_features = k * m0.num_features
        for name in ("weight", "bias"):
            p = getattr(m0, name)
            setattr(new, name, None if p is None else
                    _stack_param([getattr(m, name) for m in mods], (k * p.numel(),)))
        for name in ("running_mean", "running_var"):
            new.register_buffer(name, torch.cat([getattr(m, name) for m in mods]).clone())
        # every member takes its steps together (the warm-up clock)
        new.register_buffer("num_batches_tracked", m0.num_batches_tracked.clone())
        return new

    def extra_repr(self) -> str:
        kind = "BatchNorm" if self.renorm is None else \
            "BatchRenorm, r_max={}, d_max={}, r_warmup={}, d_warmup={}".format(*self.renorm)
        return (f"{self.num_features}, world={self.world}, eps={self.eps}, "
                f"momentum={self.momentum}, {kind}, act={self.act!r}")


def per_rank_norms(model: nn.Module, world: int) -> nn.Module:
    """Replace every BatchNorm/BatchRenorm of ``model`` (in place) by its
    :class:`PerRankBatchNorm` for ``world`` ranks, which takes over its parameters and
    buffers; returns ``model``, whose ``state_dict`` keys are unchanged."""
    from sharenorm.lab.batched import _batchnorm_types

    for name, m in list(model.named_modules()):
        if isinstance(m, _batchnorm_types()):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr,
                    PerRankBatchNorm(m, world))
    return model
