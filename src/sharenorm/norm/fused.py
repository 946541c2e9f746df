"""Norm + activation as one autograd node that keeps ONE full-size tensor for backward
(``memory_efficient=True`` on the CPU and on CUDA without Triton), with outputs and running
statistics from ATen's own kernels. It saves the output and inverts the activation and
the affine step where that is safe (identity, leaky_relu, elu), else the input, and
recomputes the pre-activation; the CPU backward runs as two fused C loops
(:mod:`sharenorm.norm.cpu`). Why, when inverting is safe, and the limits (no double
backward, no in-place edit of a saved output): docs/design/memory-efficient-norms.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sharenorm.activation import default_param, spec
from sharenorm.norm._autograd import once_differentiable
from sharenorm.norm._group_stats import may_run_channels_last, needs_shift, shift
from sharenorm.norm._layout import memory_format as _memory_format
from sharenorm.norm._tracing import tracing

__all__ = [
    "batch_norm_act",
    "instance_norm_act",
    "group_norm_act",
    "act_is_invertible",
    "saved_tensor_bytes",
]

_ATEN = torch.ops.aten
# |β_c| ≤ _MAX_BETA_OVER_GAMMA·|γ_c|·s_c (s = σ·r, the spread of x̂): inverting the affine
# step then loses ≤ log2(17) bits.
_MAX_BETA_OVER_GAMMA = 16.0
# elu is inverted only where z ≥ −4: there log1p(y/α) has lost < 6 bits of z.
_ELU_MIN_PREACT = -4.0


_DOUBLE_BACKWARD = (
    "memory_efficient=True has no double backward (create_graph=True, gradient "
    "penalties): build this layer with memory_efficient=False"
)
_BATCHED_BACKWARD = (
    "memory_efficient=True has no batched backward (torch.autograd.grad(..., "
    "is_grads_batched=True), torch.autograd.functional.jacobian(..., vectorize=True)): "
    "build this layer with memory_efficient=False, or compute without vectorize"
)


def _saved(ctx) -> tuple[Tensor, ...]:
    """``ctx.saved_tensors``, with the fix named when an in-place op changed the saved output."""
    try:
        return ctx.saved_tensors
    except RuntimeError as e:
        if "inplace" not in str(e):
            raise
        raise RuntimeError(
            "memory_efficient=True keeps this layer's output for backward, and an in-place "
            "op changed it afterwards (e.g. `out += identity` or an inplace=True activation "
            "after the norm): make that op out-of-place (`out = out + identity`), or build "
            "this layer with memory_efficient=False"
        ) from e


# ----------------------------------------------------------------------------- activations


def act_is_invertible(act: str | None, act_param: float | None, dtype: torch.dtype) -> bool:
    """Whether ``act`` is injective with a well-conditioned inverse in ``dtype``:
    identity always; leaky_relu for a slope ≥ the dtype's eps; elu for α > 0."""
    return spec(act).invertible(default_param(act, act_param), dtype)


# ----------------------------------------------------------------------------- helpers


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _affine_invertible(
    weight: Tensor | None, bias: Tensor | None, dtype: torch.dtype, rstd: Tensor, cpg: int,
    eps: float,
) -> bool:
    """Every γ_c a normal number of ``dtype`` and every |β_c| ≤ 16·|γ_c|·s_c, where
    s_c = min √(1 − ε·r²) = σ·r over channel c's statistics (``rstd`` of shape (n, S),
    ``cpg`` channels per statistic): the spread of x̂ (see module doc)."""
    if weight is None and bias is None:
        return True
    known = _cpu_kernels().affine_invertible(weight, bias, dtype, _MAX_BETA_OVER_GAMMA, rstd,
                                             cpg, eps)
    if known is not None:  # CPU float32/float64: one C call instead of ~12 small ops
        return known
    acc = _acc_dtype(dtype)
    g = torch.ones((), dtype=acc) if weight is None else weight.detach().to(acc).abs()
    ok = g >= torch.finfo(dtype).tiny
    if bias is not None:  # β = 0: z = γ·x̂ rounds relative to itself, whatever x̂'s size
        r = rstd.detach().to(acc)
        spread = (1 - eps * r * r).clamp(min=0).nan_to_num(1.0).amin(0).sqrt()  # (S,)
        spread = spread.repeat_interleave(cpg) if cpg > 1 else spread
        ok = ok & (bias.detach().to(acc).abs() <= _MAX_BETA_OVER_GAMMA * g * spread)
    return bool(ok.all())


def _elu_unsaturated(y: Tensor, alpha: float) -> bool:
    """min z ≥ −4, read off the output: y ≥ α·(e⁻⁴ − 1)."""
    return y.numel() == 0 or bool(y.amin() >= alpha * math.expm1(_ELU_MIN_PREACT))


def _choose_inversion(
    act: str | None, p: float | None, weight: Tensor | None, bias: Tensor | None, dtype,
    rstd: Tensor, cpg: int, eps: float,
) -> bool:
    # Under torch.compile the input is kept: the checks read values on the host, which
    # would break the graph at every norm layer (and fail fullgraph=True).
    if tracing():
        return False
    return act_is_invertible(act, p, dtype) and _affine_invertible(
        weight, bias, dtype, rstd, cpg, eps)


def _activate_fresh(y: Tensor, act: str | None, p: float | None) -> Tensor:
    """``act(y)`` on a norm's fresh output: in place (no second full-size tensor), except
    while torch.compile traces. The compiler reuses buffers by itself there, and Dynamo of
    torch 2.11 turned an in-place op on the output of an ``autograd.Function``'s forward into
    all-zero gradients (torch 2.13 traces it right)."""
    if tracing():
        return spec(act).fn(y, p, False)
    return spec(act).fn_(y, p)


def _representable(v: Tensor, dtype: torch.dtype) -> bool:
    """Every |v| a normal finite number of ``dtype``."""
    a = v.abs()
    fi = torch.finfo(dtype)
    return bool(((a >= fi.tiny) & (a <= fi.max)).all())


def _cpu_kernels():
    """:mod:`sharenorm.norm.cpu` (imported on first use: it may compile its C loops)."""
    from sharenorm.norm import cpu

    return cpu


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    """(C,) or (N, C) → broadcastable against x of shape (N, C, *), in x's dtype."""
    lead = (1, -1) if v.dim() == 1 else tuple(v.shape)
    return v.reshape(*lead, *([1] * (x.dim() - 2))).to(x.dtype)


def _scale_shift(z: Tensor, scale: Tensor, shift: Tensor, out: Tensor | None = None) -> Tensor:
    """``z·scale + shift`` in one pass, with per-channel ``(C,)`` or per-(sample, channel)
    ``(N, C)`` factors in the statistics dtype, written into ``out`` (``z`` itself is
    fine: the pass is elementwise) or into a new tensor of z's layout.

    On the CPU this runs ATen's eval-mode BatchNorm kernel with μ = 0, σ² = 1, ε = 0, whose
    loop is exactly ``z·scale + shift`` per channel; per-(n, c) factors use it on the
    ``(1, N·C, *)`` view of a contiguous ``z``: about 3× faster than a broadcasting ``addcmul``
    (whose NCHW loop is not vectorized over the spatial positions; the measurement:
    docs/design/memory-efficient-norms.md). Channels-last per-(n, c)
    factors vary along the innermost dimension, where ``addcmul`` is already as fast.
    """
    if out is None:
        out = torch.empty_like(z)
    per_sample = scale.dim() == 2
    if z.device.type == "cpu" and z.numel() and not (per_sample and not z.is_contiguous()):
        if per_sample:  # one BatchNorm "channel" per (n, c)
            z, dst = z.view(1, scale.numel(), -1), out.view(1, scale.numel(), -1)
            scale, shift = scale.reshape(-1), shift.reshape(-1)
        else:
            dst = out
        empty = scale.new_empty(0)
        _ATEN.native_batch_norm.out(
            z, scale, shift, torch.zeros_like(scale), torch.ones_like(scale), False, 0.0, 0.0,
            out=dst, save_mean=empty, save_invstd=empty,
        )
        return out
    return torch.addcmul(_per_channel(shift, z), z, _per_channel(scale, z), out=out)


def _gamma_beta(weight, bias, stats: Tensor, channels: int | None = None):
    """γ and β in the statistics' dtype, ones and zeros where the norm has none."""
    c = stats.shape[-1] if channels is None else channels
    gamma = stats.new_ones(c) if weight is None else weight.to(stats.dtype)
    beta = stats.new_zeros(c) if bias is None else bias.to(stats.dtype)
    return gamma, beta


def _bn_backward_from_preact(dz, z, gamma, beta, invstd, mask):
    """``(dx, dγ, dβ)`` of a training-mode BatchNorm from its pre-activation ``z`` alone,
    with no pass that reconstructs x: ATen's backward takes x̂ = (input − save_mean) ·
    save_invstd, and x̂ = (z − β)/γ, so z goes in as the input with save_mean := β,
    save_invstd := 1/γ and the weight := γ²·r, which makes its weight·save_invstd the
    true γ·r. None when γ²·r underflows or overflows the statistics dtype (the caller
    then reconstructs x − μ instead)."""
    w_arg = gamma.double() ** 2 * invstd.double()
    if not _representable(w_arg, invstd.dtype):
        return None
    dx, dw, db = _ATEN.native_batch_norm_backward(
        dz, z, w_arg.to(invstd.dtype), None, None, beta, 1.0 / gamma, True, 0.0, mask
    )
    return dx, dw if mask[1] else None, db if mask[2] else None


def _channel_sums(dz: Tensor, z: Tensor, stats_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(Σ dz, Σ dz·z)`` over the positions of each (sample, channel), shape (N, C), in
    one read of both tensors and no full-size temporary: ATen's eval-mode BatchNorm
    backward with μ = 0, σ² = 1, ε = 0 returns exactly these as dβ and dγ (accumulated in
    double on the CPU). It runs on the (1, N·C, *) view of contiguous tensors, per sample
    on channels-last ones (whose (n, c) pairs do not form one dimension)."""
    n, c = dz.shape[:2]

    def sums(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        k = a.shape[1]
        zeros = torch.zeros(k, dtype=stats_dtype, device=a.device)
        ones = torch.ones_like(zeros)
        _, s2, s1 = _ATEN.native_batch_norm_backward(
            a, b, None, zeros, ones, None, None, False, 0.0, [False, True, True]
        )
        return s1, s2

    if dz.is_contiguous() and z.is_contiguous():
        s1, s2 = sums(dz.view(1, n * c, -1), z.view(1, n * c, -1))
        return s1.view(n, c), s2.view(n, c)
    per_sample = [sums(dz[i : i + 1], z[i : i + 1]) for i in range(n)]
    return torch.stack([s[0] for s in per_sample]), torch.stack([s[1] for s in per_sample])


def _group_norm_backward_from_preact(dz, z, gamma, beta, rstd, groups, out):
    """``(dx, dγ, dβ)`` of GroupNorm from its pre-activation ``z = γ·x̂ + β`` and ``dz``,
    or None when a coefficient is not finite. No pass reconstructs x − μ (which ATen's
    GroupNorm backward would need as its input, one more full-size tensor): with
    x̂ = (z − β)/γ,

        per (n, c):  S1 = Σ dz,  S2 = Σ dz·z,  P = Σ dz·x̂ = (S2 − β·S1)/γ
        per (n, g):  A = Σ_{c∈g} γ·S1 / M,  B = Σ_{c∈g} γ·P / M   (M = C/G · positions)
        dγ = Σ_n P,  dβ = Σ_n S1,
        dx = r·(γ·dz − A − B·x̂) = c2·z + c3 + c1·dz
             with c1 = r·γ,  c2 = −r·B/γ,  c3 = r·(B·β/γ − A).

    Three passes, the last two in place: the sums (reading dz and z), ``c2·z + c3`` into
    ``out`` (z itself when it is a scratch tensor), then ``+ c1·dz``.
    """
    n, c = z.shape[:2]
    count = (c // groups) * (z.numel() // (n * c))
    s1, s2 = _channel_sums(dz, z, rstd.dtype)
    p = torch.addcmul(s2, s1, beta, value=-1.0).div_(gamma)
    # A and B side by side: (2, N, G, 1)
    ab = (torch.stack((s1, p)) * gamma).view(2, n, groups, -1).sum(-1, keepdim=True) / count
    gam, bet, r = gamma.view(groups, -1), beta.view(groups, -1), rstd.view(n, groups, 1)
    rb = r * ab[1] / gam  # r·B/γ, (N, G, C/G)
    coef = torch.stack((r * gam, -rb, rb * bet - r * ab[0]))  # c1, c2, c3
    if not bool(torch.isfinite(coef).all()):
        return None
    c1, c2, c3 = coef.view(3, n, c)
    dx = _scale_shift(z, c2, c3, out=out)
    dx.addcmul_(dz, _per_channel(c1, dz))
    return dx, p.sum(0), s1.sum(0)


def _cpu_kernel_kind(act: str | None, invert: bool) -> str:
    """The backward.c loop for this activation and saved tensor (its output if ``invert``,
    else the norm's input); :func:`sharenorm.norm.cpu.supports` says if it runs."""
    name = spec(act).c_name
    return name if name == "ident" else f"{'inv' if invert else 'rec'}_{name}"


def _per_sample_channel(per_group: Tensor, channels: int) -> Tensor:
    """(N, G) → (N, C): each group's value repeated over its C/G channels."""
    g = per_group.shape[1]
    return per_group if g == channels else per_group.repeat_interleave(channels // g, dim=1)


def _param_dtypes(grads, weight, bias):
    """(dx, dγ, dβ) with dγ, dβ cast from the statistics dtype to the parameters' own."""
    dx, dw, db = grads
    dw = None if weight is None or dw is None else dw.to(weight.dtype)
    db = None if bias is None or db is None else db.to(bias.dtype)
    return dx, dw, db


def _float32_params(x: Tensor, weight: Tensor | None, *rest: Tensor | None):
    """γ (ones where None), β and running statistics as float32 for a 16-bit ``x`` (the
    rest unchanged), so that ATen runs its mixed-precision mode and returns float32 μ
    and r. Its 16-bit ones would be the float32 values it normalized with, rounded: at
    μ = 20 a bfloat16 μ is off by up to 0.04, which shifts the pre-activation that
    backward recomputes and flips relu's mask wherever |z| is below that."""
    if x.dtype not in (torch.float16, torch.bfloat16):
        return (weight, *rest)
    if weight is None:
        weight = torch.ones(x.shape[1], dtype=torch.float32, device=x.device)
    return tuple(None if t is None else t.float() for t in (weight, *rest))


def _in_float32(grads: Callable, ctx, dy: Tensor):
    """``(dx, dγ, dβ)`` from ``grads(ctx, saved, dy, γ, β, μ, r)``, run on float32 copies
    where the input was 16-bit: the precision ATen's own norm kernels compute in, so
    recomputing z, the activation's gradient and the sums add no 16-bit rounding (a
    16-bit z = a·x + b of an offset input loses the bits of x − μ, and relu's mask with
    them). dx is rounded once to the input's dtype, dγ and dβ to the parameters'."""
    if not tracing() and torch._C._functorch.is_legacy_batchedtensor(dy):
        raise RuntimeError(_BATCHED_BACKWARD)
    saved, weight, bias, mean, rstd = _saved(ctx)
    dtype = saved.dtype
    if dtype not in (torch.float16, torch.bfloat16):
        return _param_dtypes(grads(ctx, saved, dy, weight, bias, mean, rstd), weight, bias)
    up = [None if t is None else t.float() for t in (saved, dy, weight, bias, mean, rstd)]
    dx, dw, db = grads(ctx, *up)
    return _param_dtypes((None if dx is None else dx.to(dtype), dw, db), weight, bias)


def saved_tensor_bytes(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn()`` and return ``(result, bytes)``: the bytes of the unique storages autograd
    saved for backward while it ran (views of one storage count once).

    Example:
        >>> import torch
        >>> x = torch.randn(100, requires_grad=True)
        >>> saved_tensor_bytes(lambda: (x * 2).sin())[1]   # sin saves its input, 400 bytes
        400
    """
    storages: dict[tuple[str, int], int] = {}

    def pack(t: Tensor) -> Tensor:
        st = t.untyped_storage()
        storages[(str(t.device), st.data_ptr())] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


# ----------------------------------------------------------------------------- batch norm


class _BatchNormAct(torch.autograd.Function):
    """``act(batch_norm(x))`` with one saved full-size tensor (``y`` or ``x``)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps,
                act, p):
        w, b, rm, rv = _float32_params(x, weight, bias, running_mean, running_var)
        y, mean, invstd = torch.native_batch_norm(x, w, b, rm, rv, training, momentum, eps)
        for own, copy in ((running_mean, rm), (running_var, rv)):
            if training and own is not None and copy is not own:  # a 16-bit module's
                own.copy_(copy)
        if not training:  # eval: the running statistics normalize; keep copies (C values)
            acc = _acc_dtype(x.dtype)
            mean = running_mean.detach().to(acc, copy=True)
            invstd = torch.rsqrt(running_var.detach().to(acc) + eps)
            ctx.running_var = running_var.detach().clone()
        invert = _choose_inversion(act, p, weight, bias, x.dtype, invstd.view(1, -1), 1, eps)
        y = _activate_fresh(y, act, p)
        if invert and act == "elu":
            invert = _elu_unsaturated(y, p)
        ctx.save_for_backward(y if invert else x, weight, bias, mean, invstd)
        ctx.invert, ctx.training, ctx.eps, ctx.act, ctx.p = invert, training, eps, act, p
        ctx.fmt = _memory_format(x)
        return y

    @staticmethod
    @once_differentiable(_DOUBLE_BACKWARD)
    def backward(ctx, dy):
        return (*_in_float32(_BatchNormAct.grads, ctx, dy), *([None] * 7))

    @staticmethod
    def grads(ctx, saved, dy, weight, bias, mean, invstd):
        act, p = ctx.act, ctx.p
        dy = dy.contiguous(memory_format=ctx.fmt)
        mask = list(ctx.needs_input_grad[:3])
        kind = _cpu_kernel_kind(act, ctx.invert)
        if _cpu_kernels().supports(kind, saved, dy):
            grads = _cpu_kernels().norm_backward(
                kind, saved, dy, weight, bias, invstd, mean, stats_per_sample=0,
                channels_per_stat=1, invert=ctx.invert, fixed=not ctx.training,
                act_param=1.0 if p is None else p, mask=mask,
            )
            if grads is not None:
                return grads
        gamma, beta = _gamma_beta(weight, bias, invstd)
        if ctx.invert:
            dz = spec(act).grad_from_output(dy, saved, p).contiguous(memory_format=ctx.fmt)
            z = spec(act).inverse(saved, p).contiguous(memory_format=ctx.fmt)
            if ctx.training:
                grads = _bn_backward_from_preact(dz, z, gamma, beta, invstd, mask)
                if grads is not None:
                    return grads
            s = 1.0 / (gamma * invstd)  # x − μ = (z − β) / (γ·r)
            xin = _scale_shift(z, s, -beta * s, out=None if z is saved else z)
            center = torch.zeros_like(mean)
        else:
            a = gamma * invstd  # z = γ·r·(x − μ) + β = a·x + b
            if act is None:
                dz = dy
            else:
                z = _scale_shift(saved, a, beta - mean * a)
                dz = spec(act).grad(dy, z, p)
            xin, center = saved, mean
        dz = dz.contiguous(memory_format=ctx.fmt)
        if ctx.training:
            dx, dw, db = _ATEN.native_batch_norm_backward(
                dz, xin, weight, None, None, center, invstd, True, ctx.eps, mask
            )
        else:
            # ATen's eval backward wants the mean in the running statistics' dtype
            # (16-bit for a .half() module), not the float32 kept for the forward passes.
            rv = ctx.running_var.to(saved.dtype)  # a 16-bit module's, for float32 tensors
            dx, dw, db = _ATEN.native_batch_norm_backward(
                dz, xin, weight, center.to(rv.dtype), rv, None, None, False, ctx.eps, mask
            )
        return dx, dw, db


def batch_norm_act(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    act: str | None,
    act_param: float | None,
) -> Tensor:
    """Memory-efficient ``act(batch_norm(x))``, inputs already checked.

    In training the running statistics passed are updated in place exactly as by
    ``torch.batch_norm`` (the caller guards them against a non-finite batch).

    Example:
        >>> import torch
        >>> x = torch.randn(8, 3, 4, 4, requires_grad=True)
        >>> y = batch_norm_act(x, None, None, None, None, True, 0.1, 1e-5, "leaky_relu", None)
        >>> y.sum().backward(); x.grad.shape
        torch.Size([8, 3, 4, 4])
    """
    p = default_param(act, act_param)
    return _BatchNormAct.apply(
        input, weight, bias, running_mean, running_var, training, momentum, eps, act, p
    )


# ----------------------------------------------------------------------------- group norm


class _GroupNormAct(torch.autograd.Function):
    """``act(group_norm(x))`` with one saved full-size tensor (``y`` or ``x``)."""

    @staticmethod
    def forward(ctx, x, weight, bias, num_groups, eps, act, p):
        fmt = _memory_format(x)
        x = x.contiguous(memory_format=fmt)
        n, c = x.shape[:2]
        hw = math.prod(x.shape[2:])
        w, b = _float32_params(x, weight, bias)
        y, mean, rstd = torch.native_group_norm(x, w, b, n, c, hw, num_groups, eps)
        if needs_shift(mean, rstd, may_run_channels_last(x), x.dtype):
            # statistics that cancelled: take them again on x − μ (see _group_stats); the
            # shifted x is the one saved, consistent with the μ kept beside it
            x = shift(x, mean, num_groups)
            y, mean, rstd = torch.native_group_norm(x, w, b, n, c, hw, num_groups, eps)
        invert = _choose_inversion(act, p, weight, bias, x.dtype, rstd.view(n, -1),
                                   c // num_groups, eps)
        y = _activate_fresh(y, act, p)
        if invert and act == "elu":
            invert = _elu_unsaturated(y, p)
        ctx.save_for_backward(y if invert else x, weight, bias, mean, rstd)
        ctx.invert, ctx.act, ctx.p, ctx.fmt = invert, act, p, fmt
        ctx.sizes = (n, c, hw, num_groups)
        return y

    @staticmethod
    @once_differentiable(_DOUBLE_BACKWARD)
    def backward(ctx, dy):
        return (*_in_float32(_GroupNormAct.grads, ctx, dy), None, None, None, None)

    @staticmethod
    def grads(ctx, saved, dy, weight, bias, mean, rstd):
        act, p = ctx.act, ctx.p
        n, c, hw, g = ctx.sizes
        dy = dy.contiguous(memory_format=ctx.fmt)
        mask = list(ctx.needs_input_grad[:3])
        kind = _cpu_kernel_kind(act, ctx.invert)
        if _cpu_kernels().supports(kind, saved, dy):
            grads = _cpu_kernels().norm_backward(
                kind, saved, dy, weight, bias, rstd, mean, stats_per_sample=g,
                channels_per_stat=c // g, invert=ctx.invert, fixed=False,
                act_param=1.0 if p is None else p, mask=mask,
            )
            if grads is not None:
                return grads
        gamma, beta = _gamma_beta(weight, bias, rstd, c)
        if ctx.invert:
            dz = spec(act).grad_from_output(dy, saved, p).contiguous(memory_format=ctx.fmt)
            z = spec(act).inverse(saved, p).contiguous(memory_format=ctx.fmt)
            if g == c and z.is_contiguous():
                # InstanceNorm: per (n, c) statistics are BatchNorm's on the (1, N·C, *)
                # view, whose backward takes z directly (see _bn_backward_from_preact).
                view = (1, n * c, -1)
                grads = _bn_backward_from_preact(
                    dz.view(view), z.view(view), gamma.repeat(n), beta.repeat(n),
                    rstd.reshape(-1), mask,
                )
                if grads is not None:
                    dx, dw, db = grads  # each None where its input needs no gradient
                    dx = None if dx is None else dx.view(dz.shape)
                    dw = None if dw is None else dw.view(n, c).sum(0)
                    db = None if db is None else db.view(n, c).sum(0)
                    return dx, dw, db
            if z.device.type == "cpu" and z.dtype in (torch.float32, torch.float64):
                # On the CPU (measured faster there; 16-bit would round its coefficients)
                grads = _group_norm_backward_from_preact(
                    dz, z, gamma, beta, rstd, g, None if z is saved else z
                )
                if grads is not None:
                    return grads
            s = 1.0 / (gamma * _per_sample_channel(rstd, c))  # x − μ = (z − β) / (γ·r)
            xin = _scale_shift(z, s, -beta * s, out=None if z is saved else z)
            center = torch.zeros_like(mean)
        else:
            if act is None:
                dz = dy
            else:
                a = gamma * _per_sample_channel(rstd, c)
                b = beta - _per_sample_channel(mean, c) * a
                z = _scale_shift(saved, a, b)
                dz = spec(act).grad(dy, z, p)
            xin, center = saved, mean
        dz = dz.contiguous(memory_format=ctx.fmt)
        xin = xin.contiguous(memory_format=ctx.fmt)
        # torch 2.13's CPU channels-last kernel crashes (segfault) when dx is not asked for
        cl_crash = ctx.fmt != torch.contiguous_format and not mask[0]
        dx, dw, db = _ATEN.native_group_norm_backward(
            dz, xin, center, rstd, weight, n, c, hw, g, [True, *mask[1:]] if cl_crash else mask
        )
        return (None if cl_crash else dx), dw, db


def group_norm_act(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    act: str | None,
    act_param: float | None,
) -> Tensor:
    """Memory-efficient ``act(group_norm(x))``, inputs already checked; channels-last in
    gives channels-last out.

    Example:
        >>> import torch
        >>> x = torch.randn(2, 8, 5, 5, requires_grad=True)
        >>> group_norm_act(x, 4, None, None, 1e-5, "gelu", None).shape
        torch.Size([2, 8, 5, 5])

    Example:
        >>> import torch
        >>> from sharenorm.norm import fused
        >>> x = torch.randn(4, 6, 5, 5, requires_grad=True)
        >>> y, nbytes = fused.saved_tensor_bytes(lambda: fused.group_norm_act(x, 3, None, None,
        ...                                                                   1e-5, "silu", None))
        >>> nbytes == x.numel() * 4 + 2 * 4 * 3 * 4   # x, plus μ and r per (sample, group)
        True
    """
    p = default_param(act, act_param)
    return _GroupNormAct.apply(input, weight, bias, num_groups, eps, act, p)


# ----------------------------------------------------------------------------- instance norm


def instance_norm_act(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    use_input_stats: bool,
    momentum: float,
    eps: float,
    act: str | None,
    act_param: float | None,
) -> Tensor:
    """Memory-efficient ``act(instance_norm(x))``, routed as the plain path routes it.

    * running statistics normalize (``use_input_stats=False``): per-channel, i.e.
      BatchNorm in eval;
    * instance statistics, nothing to update: GroupNorm with one channel per group
      (channels-last stays channels-last);
    * instance statistics updating running ones: BatchNorm over the ``(1, N·C, *)`` view
      with γ, β and the running statistics repeated N times, as ``torch.instance_norm``
      does, then the running statistics averaged over the batch (written in place into
      the ``running_*`` passed; the caller guards them against a non-finite batch).

    Example:
        >>> import torch
        >>> x = torch.randn(2, 3, 6, requires_grad=True)
        >>> instance_norm_act(x, None, None, None, None, True, 0.1, 1e-5, "relu", None).shape
        torch.Size([2, 3, 6])
    """
    if not use_input_stats:
        return batch_norm_act(
            input, running_mean, running_var, weight, bias, False, 0.0, eps, act, act_param
        )
    n, c = input.shape[:2]
    if running_mean is None or running_var is None:
        return group_norm_act(input, c, weight, bias, eps, act, act_param)
    fmt = _memory_format(input)
    shape = (1, n * c, *input.shape[2:])
    rm, rv = running_mean.repeat(n), running_var.repeat(n)
    out = batch_norm_act(
        input.contiguous().view(shape), rm, rv,
        None if weight is None else weight.repeat(n), None if bias is None else bias.repeat(n),
        True, momentum, eps, act, act_param,
    ).view(input.shape)
    running_mean.copy_(rm.view(n, c).mean(0))
    running_var.copy_(rv.view(n, c).mean(0))
    return out.contiguous(memory_format=fmt)
