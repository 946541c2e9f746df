"""SyncBatchNorm: Batch Normalization whose statistics are taken over the batches of
every process of a ``torch.distributed`` group, on CPU (gloo) and GPU (NCCL).

The ranks' per-channel (count, mean, M2) are all-gathered and merged count-weighted
(Chan/Welford), so ranks may hold unequal or empty batches; backward all-reduces Σ dy and
Σ dy·x̂. docs/design/syncbatchnorm.md gives the math and the reasons. Models are
converted with ``sharenorm.convert_norm(model, "sync")`` or ``convert_sync_batchnorm``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from sharenorm import distributed as snd
from sharenorm._fx import Proxy, call_module_node
from sharenorm.activation import apply_activation
from sharenorm.norm import functional as SF
from sharenorm.norm._autograd import once_differentiable
from sharenorm.norm.batchnorm import _BatchNorm

__all__ = ["SyncBatchNorm", "sync_batch_norm_stats"]


def _stat_dtype(x: Tensor) -> torch.dtype:
    """Reductions run in float32 for 16-bit inputs, in the input's dtype otherwise."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _local_stats(input: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of a non-empty (N, C, *) input, by ATen's
    BatchNorm statistics kernel: the numbers BatchNorm itself normalizes with, and about
    3x faster on CPU than a generic ``var_mean`` over dims (0, 2, …) (the measurement:
    docs/design/syncbatchnorm.md). 16-bit inputs get
    float32 statistics (float32 running buffers make the kernel return float32)."""
    if input.dtype in (torch.float16, torch.bfloat16):
        c = input.shape[1]
        dummy = torch.zeros(c, dtype=torch.float32, device=input.device)
        return torch.batch_norm_update_stats(input, dummy, torch.ones_like(dummy), 0.0)
    return torch.batch_norm_update_stats(input, None, None, 0.0)


def sync_batch_norm_stats(input: Tensor, group: Any = None) -> tuple[Tensor, Tensor, int]:
    """Global per-channel ``(mean, biased variance, count)`` of ``input`` (N, C, *) over
    every rank of ``group`` (the default group for None), by the Chan/Welford merge of
    the ranks' ``(count, mean, M2)``. Mean and variance are float64 tensors of shape
    (C,); ``count`` is the global number of elements per channel. Without a
    multi-process group, these are the local statistics.

    Example:
        >>> import torch
        >>> x = torch.tensor([[1.0], [2.0], [6.0]], dtype=torch.float64)
        >>> mean, var, n = sync_batch_norm_stats(x)
        >>> mean.tolist(), var.tolist(), n
        ([3.0], [4.666666666666667], 3)
    """
    c = input.shape[1]
    n_local = input.numel() // c if c else 0
    if n_local > 0:
        mean, var = _local_stats(input)
        local = torch.cat((
            torch.tensor([float(n_local)], dtype=torch.float64, device=input.device),
            mean.to(torch.float64),
            var.to(torch.float64) * n_local,  # M2 = n·σ²
        ))
    else:
        # An empty batch: count 0, and zeros that the merge weights by 0.
        local = torch.zeros(2 * c + 1, dtype=torch.float64, device=input.device)
    world = snd.world_size(group)
    if world == 1:
        gathered = local.unsqueeze(0)
    else:
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local, group=group)
        gathered = torch.stack(parts)  # (world, 2C + 1)
    return merge_stats(gathered)


def merge_stats(gathered: Tensor) -> tuple[Tensor, Tensor, int]:
    """Chan/Welford merge of per-rank rows ``(n_r, μ_r[C], M2_r[C])`` (shape
    (ranks, 2C + 1), float64) into the global ``(mean, biased variance, count)``. Rows
    with n_r = 0 contribute nothing; all-empty gives NaN statistics and count 0."""
    c = (gathered.shape[1] - 1) // 2
    counts = gathered[:, :1]  # (ranks, 1)
    means, m2s = gathered[:, 1 : c + 1], gathered[:, c + 1 :]
    n = float(counts.sum())
    if n == 0:
        nan = torch.full((c,), math.nan, dtype=torch.float64, device=gathered.device)
        return nan, nan.clone(), 0
    mean = (counts * means).sum(0) / n
    m2 = m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)
    return mean, m2 / n, int(round(n))


class _SyncBatchNormFunction(torch.autograd.Function):
    """y = γ·(x − μ)/√(σ² + ε) + β with global μ, σ² given; backward all-reduces
    Σ dy and Σ dy·x̂ over ``group`` (skipped when ``world == 1``)."""

    @staticmethod
    def forward(ctx, input, weight, bias, mean, var, count, eps, group, world):
        # ATen's eval-mode kernel is exactly "normalize with these statistics" and keeps
        # the memory format; mean/var are passed in the dtype the kernel wants.
        out = torch.batch_norm(
            input, weight, bias, mean, var, False, 0.0, eps, torch.backends.cudnn.enabled
        )
        ctx.save_for_backward(input, weight, mean, var)
        ctx.count, ctx.eps, ctx.group, ctx.world = count, eps, group, world
        return out

    @staticmethod
    @once_differentiable(
        "SyncBatchNorm's synchronised training has no double backward (create_graph=True, "
        "gradient penalties): its statistics enter the backward formula as constants. Use "
        "sharenorm.BatchNorm*d (per-rank statistics) or GroupNorm for such a model"
    )
    def backward(ctx, grad_out):
        input, weight, mean, var = ctx.saved_tensors
        c = input.shape[1]
        if SF.gradient_layout_at_risk(input):
            grad_out = SF.contiguous_gradient(grad_out)
        if input.numel() > 0:
            # One fused pass for the two local sums: Σ dy·x̂ (γ's grad) and Σ dy (β's).
            _, sum_dy_xhat, sum_dy = torch.ops.aten.native_batch_norm_backward(
                grad_out, input, weight, mean, var, None, None, False, ctx.eps,
                [False, True, True],
            )
        else:
            # ATen's kernel crashes on an empty input; an empty batch adds zeros.
            sum_dy_xhat = torch.zeros(c, dtype=mean.dtype, device=input.device)
            sum_dy = torch.zeros_like(sum_dy_xhat)
        # A fresh (2C,) buffer: all-reduced in place, the local sums stay for γ and β.
        total = torch.cat((sum_dy.reshape(-1), sum_dy_xhat.reshape(-1)))
        # Every rank all-reduces, whatever its own needs_input_grad says, so that the
        # ranks always meet in the same collectives.
        if ctx.world > 1:
            dist.all_reduce(total, group=ctx.group)
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # dx = k·(dy − mean(dy) − x̂·mean(dy·x̂)) with x̂ = (x − μ)·invstd, k = γ·invstd
            #    = (x − μ)·a + b + k·dy.
            # ATen's eval-mode BN kernel computes (x − μ)·a + b in one pass (unit variance,
            # ε = 0) in x's memory format, subtracting μ before scaling so that a large
            # mean does not cancel; then one fused multiply-add for k·dy. The per-channel
            # coefficients are few ops on (C,) vectors in the statistics' dtype.
            means = total / float(ctx.count)  # (mean dy, mean dy·x̂)
            invstd = torch.rsqrt(var + ctx.eps)
            k = invstd if weight is None else invstd * weight
            a = (k * invstd).mul_(means[c:]).neg_()
            b = (k * means[:c]).neg_()
            grad_input = torch.batch_norm(
                input, a, b, mean, torch.ones_like(mean), False, 0.0, 0.0,
                torch.backends.cudnn.enabled,
            )
            grad_input.addcmul_(grad_out, k.reshape((1, c) + (1,) * (input.dim() - 2)))
        if ctx.needs_input_grad[1]:
            grad_weight = sum_dy_xhat.to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = sum_dy.to(mean.dtype)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


def sync_batch_norm_train(
    module: _BatchNorm, input: Tensor, group: Any, world: int
) -> Tensor:
    """The synchronised training forward of ``module`` (its γ, β, ε, momentum, running
    statistics and activation): global statistics, running-statistics update, output."""
    with torch.no_grad():  # the Function's backward differentiates μ, σ² itself
        mean64, var64, n = sync_batch_norm_stats(input, group if world > 1 else None)
    if n == 0:
        # Every rank's batch is empty: nothing to normalize, no statistics to record.
        return apply_activation(input * 1.0, module.act, module.act_param)
    if n == 1:
        raise ValueError(
            f"{type(module).__name__} in training needs more than one value per channel over "
            f"the whole process group, got one (input of shape {tuple(input.shape)} on this "
            "rank). Use larger batches, eval mode, or GroupNorm."
        )
    if module.training and module.track_running_stats and module.running_mean is not None:
        m = module._momentum_for_this_batch()
        module._count_batch()
        with torch.no_grad():
            rm, rv = module.running_mean, module.running_var
            backup = SF.backup_running_stats(rm, rv)
            # running ← running + m·(batch − running), the unbiased σ² for the variance.
            rm.lerp_(mean64.to(rm.dtype), m)
            rv.lerp_((var64 * (n / (n - 1))).to(rv.dtype), m)
            # Global statistics are equal on every rank, so every rank keeps or skips alike.
            updated = SF.keep_finite_running_stats(rm, rv, backup, type(module).__name__)
        module._uncount_skipped(updated)
    # Statistics (and γ, β) in float32 for 16-bit inputs: ATen's mixed-dtype kernels
    # take float32 parameters, and a mean rounded to 16 bits would shift every output.
    pd = _stat_dtype(input)
    w, b = module.weight, module.bias
    w = w.to(pd) if w is not None else None
    b = b.to(pd) if b is not None else None
    out = _SyncBatchNormFunction.apply(
        input, w, b, mean64.to(pd), var64.to(pd), n, module.eps, group, world
    )
    return apply_activation(out, module.act, module.act_param, fresh=True)


class SyncBatchNorm(_BatchNorm):
    r"""Batch Normalization with statistics over every process of a ``torch.distributed``
    group, for (N, C), (N, C, L), (N, C, H, W) and (N, C, D, H, W) inputs, on CPU (gloo)
    and GPU (NCCL); ``torch.nn.SyncBatchNorm``'s arguments plus ``act=``.

    .. math::
        y = \mathrm{act}\Big(\gamma \cdot \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} + \beta\Big)

    In training, E[x] and Var[x] (biased) are taken over the batches of *all* ranks,
    merged count-weighted (Chan/Welford), so ranks may have unequal or empty batches;
    the running statistics get the global unbiased variance (same on every rank). The
    backward pass all-reduces Σ dy and Σ dy·x̂. In eval, or without an initialised
    process group, or with a group of one process, the layer *is* BatchNorm (the same
    code path). docs/design/syncbatchnorm.md explains the algorithm.

    Args:
        num_features: C.
        eps, momentum, affine, track_running_stats: as BatchNorm.
        process_group: the group to synchronise over; None means the default (world)
            group. Passing a group when ``torch.distributed`` is not initialised is an
            error at forward.
        bias, act, act_param, memory_efficient, backend: as BatchNorm; the last two
            apply to the local (unsynchronised) path.

    Shape:
        - Input: (N, C, *); N may differ between ranks and may be 0 on some.
        - Output: same shape as the input.

    Every rank must run forward and backward through the layer in step (collectives);
    a rank with an empty batch too, including backward (e.g. ``loss = out.sum() * 0 +
    ...`` keeps it in the graph).

    Example:
        >>> import torch, sharenorm as sn
        >>> m = sn.SyncBatchNorm(4)        # no process group here: plain BatchNorm
        >>> bn = sn.BatchNorm2d(4)
        >>> x = torch.randn(8, 4, 5, 5)
        >>> torch.equal(m(x), bn(x))
        True
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
        act: str | None = None,
        act_param: float | None = None,
        memory_efficient: bool = False,
        backend: str = "auto",
    ) -> None:
        # the keyword extras spelled out: code that reads the signature (torch's
        # SyncBatchNorm lists bias=) sees them
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias,
            act=act, act_param=act_param, memory_efficient=memory_efficient, backend=backend,
        )
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(
                f"SyncBatchNorm expects an input of shape (N, C, *) with at least 2 dims, got "
                f"shape {tuple(input.shape)}"
            )

    def _sync_world(self) -> int:
        """The group size to synchronise over; 1 means behave as plain BatchNorm."""
        if not snd.is_initialized():
            if self.process_group is not None:
                snd.require_initialized(
                    f"SyncBatchNorm with process_group={self.process_group!r}"
                )
            return 1
        # A rank outside process_group gets −1: as in torch.nn.SyncBatchNorm it does not
        # synchronise (joining the world group's collectives instead would hang).
        return max(1, dist.get_world_size(self.process_group))

    def forward(self, input: Tensor) -> Tensor:
        if not isinstance(input, Tensor) and isinstance(input, Proxy):  # torch.fx tracing
            return call_module_node(self, input)
        # As torch.nn.SyncBatchNorm: only training synchronises (eval uses running
        # statistics, or the local batch when there are none).
        world = self._sync_world() if self.training else 1
        if world == 1:
            return super().forward(input)
        SF.check_input(input, type(self).__name__)
        self._check_input_dim(input)
        self._check_channels(input)
        self._check_dtypes(input)
        return sync_batch_norm_train(self, input, self.process_group, world)
