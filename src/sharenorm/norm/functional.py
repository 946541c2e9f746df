"""Functional Batch, Instance and Group Normalization with ``torch.nn.functional``'s
signatures, clear input checks, an optional fused activation (``act=``), and running
statistics that a non-finite batch cannot poison. All compute ``act(γ(x − μ)/√(σ² + ε) + β)``
over the elements of :mod:`sharenorm.norm.reference`; on the CPU through ATen's kernels.

Example:
    >>> import torch
    >>> import sharenorm.functional as SF
    >>> SF.group_norm(torch.randn(8, 6, 4, 4), 3, act="silu").shape
    torch.Size([8, 6, 4, 4])
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from sharenorm._checks import (  # noqa: F401 (re-exported: norm layers use SF.check_*)
    ChecksOnSet,
    MissingStatisticsError,
    ShapeError,
    as_count,
    check_dtypes,
    check_eps,
    check_group_values,
    check_groups,
    check_input,
    check_momentum,
    check_per_channel,
    check_running_pair,
)
from sharenorm._fx import traceable
from sharenorm.activation import apply_activation, check_activation
from sharenorm.norm import _group_stats
from sharenorm.norm._layout import is_channels_last, same_memory_format
from sharenorm.norm._tracing import in_transform, tracing

__all__ = ["batch_norm", "instance_norm", "group_norm"]


# ----------------------------------------------------------------------------- running statistics


def backup_running_stats(running_mean: Tensor, running_var: Tensor) -> Tensor:
    """A copy of both running statistics (one small op) to restore them from if the
    batch about to update them in place turns out not to be finite."""
    return torch.stack((running_mean, running_var))


def _warn_not_finite(op: str) -> None:
    warnings.warn(
        f"{op}: this batch's statistics are not finite (NaN or Inf in the input, or an "
        "overflow); running statistics were NOT updated by it and num_batches_tracked "
        "was not incremented. Look for NaN/Inf in the input or lower the learning rate.",
        RuntimeWarning,
        stacklevel=5,
    )


def keep_finite_running_stats(
    running_mean: Tensor, running_var: Tensor, backup: Tensor, op: str
) -> bool | Tensor:
    """After an in-place update: if the new statistics are not finite, restore them from
    ``backup`` and warn. torch.nn leaves them poisoned for good by one NaN batch; here
    that batch is simply not counted. Returns whether the update was kept.

    While ``torch.compile``, ``torch.export`` or ``torch.jit.trace`` traces, and on GPUs, the
    same restore runs branch-free (``torch.where``: no host sync, so ``fullgraph=True`` works
    and a CUDA step never waits for its kernels), without the warning
    (``num_batches_tracked`` still shows a skipped batch), and the flag is returned as a 0-d
    bool tensor for :meth:`_NormBase._uncount_skipped`. Inside a ``torch.func`` transform
    nothing is restored (see the code), as in torch.nn."""
    if in_transform():
        # Inside torch.func transforms (vmap, grad, …) no restore is possible: `.data` is
        # refused there, and an in-place restore of buffers the batch norm saved for backward
        # breaks grad's version check. The update stands, as in torch.nn.
        return True
    if running_var.device.type != "cpu" or tracing():
        ok = torch.isfinite(running_var).all()
        if torch.compiler.is_exporting():
            # torch.export lifts a `.data` alias as a constant (and then refuses the fake
            # tensor it holds); a plain in-place copy is traced as the buffer mutation it is
            with torch.no_grad():
                running_mean.copy_(torch.where(ok, running_mean, backup[0]))
                running_var.copy_(torch.where(ok, running_var, backup[1]))
            return ok
        running_mean.data.copy_(torch.where(ok, running_mean, backup[0]))
        running_var.data.copy_(torch.where(ok, running_var, backup[1]))
        return ok
    # The variance alone tells: a NaN/Inf input or a non-finite batch mean makes
    # (x − μ)² and so σ² NaN, and an overflow makes it Inf. Its sum, in double so that
    # float16's 65504 is no limit, is finite exactly when every entry is: one cheap
    # reduction (read on the host: CPU tensors only, see above).
    if math.isfinite(float(running_var.sum(dtype=torch.float64))):
        return True
    # Through .data: ATen's batch norm saved these buffers for backward (it reads them
    # only in eval), and a tracked in-place restore would make that backward refuse to run.
    running_mean.data.copy_(backup[0])
    running_var.data.copy_(backup[1])
    _warn_not_finite(op)
    return False


def guarded_update(run, running_mean: Tensor, running_var: Tensor, op: str):
    """``(run(running_mean, running_var), updated)``: a kernel that updates the running
    statistics in place, under :func:`keep_finite_running_stats`'s guard.

    While torch.export traces, the kernel updates clones, which are written back (or not)
    afterwards: ATen's batch norm saves the statistics it is given for backward, and the
    restore, a traced in-place copy there (no `.data`), would make that backward refuse to
    run ("modified by an inplace operation")."""
    if torch.compiler.is_exporting() and not in_transform():
        rm, rv = running_mean.clone(), running_var.clone()
        out = run(rm, rv)
        ok = torch.isfinite(rv).all()
        with torch.no_grad():
            running_mean.copy_(torch.where(ok, rm, running_mean))
            running_var.copy_(torch.where(ok, rv, running_var))
        return out, ok
    backup = backup_running_stats(running_mean, running_var)
    out = run(running_mean, running_var)
    return out, keep_finite_running_stats(running_mean, running_var, backup, op)


def _cudnn_enabled() -> bool:
    return torch.backends.cudnn.enabled


def contiguous_gradient(grad: Tensor | None) -> Tensor | None:
    """``grad`` as ATen's CPU batch-norm backward reads it right (see
    :func:`guard_gradient_layout`). ``None`` (an undefined gradient, which autograd hands a
    tensor hook when nothing flows back through the output) passes through."""
    if grad is None or grad.is_contiguous():
        return grad
    return grad.contiguous()


def gradient_layout_at_risk(input: Tensor) -> bool:
    """Whether torch 2.13's CPU ``batch_norm`` backward on ``input`` may misread its output
    gradient: a batch of one contiguous 4-d/5-d CPU input. There it returns a wrong dx and
    dγ, silently, for a channels-last gradient whose batch stride is not the canonical one (a
    size-1 dimension's stride is free: a ``view`` of a channels-last gradient of one sample
    gives one). tests/norm/test_grad_layouts.py shows the kernel failing."""
    return (
        input.shape[0] == 1
        and input.dim() in (4, 5)
        and input.device.type == "cpu"
        and input.is_contiguous()
    )


def guard_gradient_layout(out: Tensor, input: Tensor) -> Tensor:
    """``out`` (the output of ATen's batch norm on ``input``), with a tensor hook that makes
    its gradient contiguous where :func:`gradient_layout_at_risk`; registered only there.
    Tracing and ``torch.func`` transforms run other kernels and are left alone."""
    if out.requires_grad and gradient_layout_at_risk(input) and not tracing():
        out.register_hook(contiguous_gradient)
    return out


BACKENDS = ("auto", "torch", "triton")


def dense(t: Tensor | None) -> Tensor | None:
    """``t`` with contiguous strides (itself when it has them): ATen's group-norm kernel
    reads γ and β as dense arrays, and ``torch.native_group_norm``, which the GroupNorm and
    InstanceNorm paths call, does not make a strided view (``table[:, 0]``) dense as
    ``torch.group_norm`` does; the copy is differentiable."""
    return t if t is None or t.is_contiguous() else t.contiguous()


def check_running_stats_need_no_grad(op: str, running_mean, running_var) -> None:
    """Running statistics that require grad: torch's kernels refuse them (they are updated
    in place, not differentiated); the memory-efficient and Triton paths would return no
    gradient for them silently, so every path refuses them alike."""
    if ((running_mean is not None and running_mean.requires_grad)
            or (running_var is not None and running_var.requires_grad)) \
            and torch.is_grad_enabled():
        raise RuntimeError(
            f"{op}: running_mean/running_var require grad, but running statistics are not "
            "differentiable (the layer updates them in place): pass them detached, or "
            "requires_grad_(False)")


def check_backend(backend: str, memory_efficient: bool = False) -> None:
    """``backend`` is one of :data:`BACKENDS`; ``memory_efficient`` is a bool."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(
            f"backend must be 'auto' (Triton kernels for CUDA tensors when Triton is "
            f"installed, torch otherwise), 'torch' or 'triton'; got {backend!r}"
        )
    if not isinstance(memory_efficient, bool):
        raise TypeError(f"memory_efficient must be True or False, got {memory_efficient!r}")


def _route(
    input: Tensor, weight: Tensor | None, bias: Tensor | None, memory_efficient: bool, backend: str
) -> str:
    """Which implementation runs: "torch" (ATen, the plain path), "memory_efficient"
    (:mod:`sharenorm.norm.fused`, one saved tensor) or "triton" (GPU kernels)."""
    if not memory_efficient and backend == "auto" and not input.is_cuda:
        return "torch"  # the CPU default, benchmarked against torch: decided in one test
    use_triton = False
    if backend == "torch" or (backend == "auto" and not input.is_cuda):
        pass  # the CPU default: no import, no check
    else:
        from sharenorm.norm import kernels

        supported = input.dtype in kernels.TRITON_DTYPES
        if backend == "triton":
            if not kernels.HAS_TRITON:
                raise ValueError(
                    "backend='triton' needs Triton: pip install 'sharenorm[triton]', or "
                    "pass backend='auto'/'torch'"
                )
            if not kernels.available(input.device):
                raise ValueError(
                    f"backend='triton' runs on CUDA tensors, got one on {input.device}; move "
                    "it with .cuda(), pass backend='auto'/'torch', or set TRITON_INTERPRET=1 "
                    "to run the kernels in Triton's (slow) CPU interpreter"
                )
            if not supported:
                raise TypeError(
                    f"backend='triton' supports float32, float16 and bfloat16 inputs, got "
                    f"{input.dtype}; pass backend='torch' (or 'auto') for it"
                )
        use_triton = backend == "triton" or (kernels.HAS_TRITON and supported)
    if input.numel() == 0:
        # An empty batch (N = 0): nothing to save or to launch a kernel on, and the fused
        # paths' reshapes and reductions need elements; ATen handles it as torch.nn does.
        return "torch"
    if use_triton:
        return "triton"
    if (
        memory_efficient
        and torch.is_grad_enabled()
        and any(t is not None and t.requires_grad for t in (input, weight, bias))
        # its autograd.Functions have no torch.func rules nor forward-mode derivative, and
        # jit.trace records them as opaque nodes: inside vmap/grad/jacrev, a forward-AD
        # dual level and under jit.trace the plain composition runs (same values; the
        # memory saving does not apply there)
        and not in_transform()
        and not torch.jit.is_tracing()
        and getattr(torch.autograd.forward_ad, "_current_level", -1) < 0
    ):
        return "memory_efficient"
    return "torch"


def _triton_path(impl, input, running_mean, running_var, updating: bool, op: str, *args):
    """Run a Triton implementation: it guards its running-statistics update in the kernel
    that makes it (no backup copy, no host sync) and returns ``(output, kept)``;
    ``(output, updated)`` as :func:`_fused_path`."""
    out, kept = impl(input, running_mean, running_var, *args)
    if kept is None or not updating:
        return out, False
    if input.device.type != "cpu" or tracing():
        return out, kept
    if not bool(kept):  # the CPU (Triton's interpreter): warn as the plain path does
        _warn_not_finite(op)
    return out, bool(kept)


def _fused_path(impl, input, running_mean, running_var, updating: bool, op: str, *args):
    """Run a fused implementation that updates the running statistics in place, under the
    same non-finite guard as the plain path; ``(output, updated)``."""
    if not updating:
        return impl(input, running_mean, running_var, *args), False
    return guarded_update(lambda rm, rv: impl(input, rm, rv, *args), running_mean,
                          running_var, op)


# ATen's channels-last GroupNorm kernel, with one channel per group, is several times slower
# than a channels-first pass between two layout copies when each channel has few positions,
# and much faster when it has many (measurements: docs/design/groupnorm-statistics.md).
_CL_INSTANCE_NATIVE_MIN_POSITIONS = 1024


# ----------------------------------------------------------------------------- batch norm


def batch_norm_impl(
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
    memory_efficient: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, bool]:
    """Batch norm (+ activation) returning ``(output, running_stats_updated)``; the
    modules use the flag to count only batches that reached the running statistics."""
    check_running_stats_need_no_grad("batch_norm", running_mean, running_var)
    updating = training and running_mean is not None and running_var is not None
    if training and input.shape[0] * math.prod(input.shape[2:]) == 1:
        # Exactly one value per channel: σ² = 0 and x̂ = 0 for every element.
        if running_mean is None:  # no running statistics: batch statistics in eval too
            eval_hint = (
                "build the layer with track_running_stats=True (eval mode then uses running "
                "statistics)"
            )
        else:
            eval_hint = "switch the layer to eval mode (model.eval()) to use running statistics"
        raise ValueError(
            f"batch_norm in training needs more than one value per channel, got input of "
            f"shape {tuple(input.shape)} (a batch of one with no spatial extent). Use a "
            f"larger batch, {eval_hint}, or use a batch-independent norm: GroupNorm or "
            "InstanceNorm (sharenorm.convert_norm(model, 'group'))."
        )
    if not training and (running_mean is None or running_var is None):
        raise MissingStatisticsError(
            "batch_norm with training=False normalizes with running statistics, but "
            "running_mean/running_var is None; pass them, or training=True to use the "
            "batch's own statistics"
        )
    path = _route(input, weight, bias, memory_efficient, backend)
    if path != "torch":
        from sharenorm.norm import fused
        from sharenorm.norm.kernels import entry

        triton = path == "triton"
        return (_triton_path if triton else _fused_path)(
            entry.triton_batch_norm_act if triton else fused.batch_norm_act,
            input,
            running_mean,
            running_var,
            updating,
            "batch_norm",
            weight,
            bias,
            training,
            momentum,
            eps,
            act,
            act_param,
        )
    if updating:
        out, updated = guarded_update(lambda rm, rv: torch.batch_norm(
            input, weight, bias, rm, rv, True, momentum, eps, _cudnn_enabled()
        ), running_mean, running_var, "batch_norm")
    else:
        out = torch.batch_norm(
            input,
            weight,
            bias,
            running_mean,
            running_var,
            training,
            momentum,
            eps,
            _cudnn_enabled(),
        )
        updated = False
    out = guard_gradient_layout(out, input)
    return apply_activation(out, act, act_param, fresh=True), updated


@traceable
def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    act: str | None = None,
    act_param: float | None = None,
    memory_efficient: bool = False,
    backend: str = "auto",
) -> Tensor:
    r"""Batch Normalization over ``(N, C, *)``: one μ_c, σ²_c per channel, taken over the
    batch and every spatial position, then ``act(γ_c · x̂ + β_c)``.

    In training the batch statistics normalize (biased σ²) and, when running statistics
    are passed, update them in place: ``r ← (1 − momentum)·r + momentum·batch`` with the
    unbiased σ² for ``running_var``. A batch whose statistics are not finite leaves them
    untouched (with a warning). In eval (``training=False``) the running statistics
    normalize.

    Args:
        input: ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``, any
            memory format (channels-last in gives channels-last out).
        running_mean, running_var: ``(C,)`` or None.
        weight, bias: γ, β of shape ``(C,)`` or None.
        training: use batch statistics (and update running ones).
        momentum: weight of the new batch in the running-statistics update.
        eps: added to σ² for numerical stability.
        act: None, "relu", "leaky_relu", "elu", "silu", "gelu", "tanh" or "sigmoid".
        act_param: negative slope for leaky_relu, α for elu.
        memory_efficient: keep one full-size tensor for backward instead of two
            (:mod:`sharenorm.norm.fused`); same outputs, gradients and running statistics.
        backend: "auto" (Triton kernels for CUDA float32/16-bit tensors when Triton is
            installed, ATen otherwise), "torch" or "triton".

    Example:
        >>> import torch
        >>> import sharenorm.functional as SF
        >>> x = torch.randn(16, 3, 8, 8)
        >>> rm, rv = torch.zeros(3), torch.ones(3)
        >>> y = SF.batch_norm(x, rm, rv, training=True, act="relu")
        >>> bool((y >= 0).all())
        True
    """
    check_input(input, "batch_norm")
    c = input.shape[1]
    for t, name in (
        (running_mean, "running_mean"),
        (running_var, "running_var"),
        (weight, "weight"),
        (bias, "bias"),
    ):
        check_per_channel(t, name, c, input)
    check_dtypes(input, "batch_norm", running_mean=running_mean, running_var=running_var,
                 weight=weight, bias=bias)
    check_running_pair(running_mean, running_var, "batch_norm")
    eps = check_eps(eps)
    momentum = check_momentum(momentum, allow_none=False)
    act = check_activation(act, act_param)
    check_backend(backend, memory_efficient)
    return batch_norm_impl(
        input,
        running_mean,
        running_var,
        weight,
        bias,
        training,
        momentum,
        eps,
        act,
        act_param,
        memory_efficient,
        backend,
    )[0]


# ----------------------------------------------------------------------------- instance norm


def instance_norm_impl(
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
    memory_efficient: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, bool]:
    """Instance norm (+ activation) returning ``(output, running_stats_updated)``."""
    check_running_stats_need_no_grad("instance_norm", running_mean, running_var)
    weight, bias = dense(weight), dense(bias)
    if use_input_stats and input.dim() > 2 and math.prod(input.shape[2:]) == 1:
        raise ValueError(
            f"instance_norm needs more than one spatial element per channel to compute "
            f"statistics, got input of shape {tuple(input.shape)}. Use BatchNorm or "
            "GroupNorm for inputs without spatial extent."
        )
    if not use_input_stats and (running_mean is None or running_var is None):
        raise MissingStatisticsError(
            "instance_norm with use_input_stats=False normalizes with running statistics, "
            "but running_mean/running_var is None; pass them or use_input_stats=True"
        )
    # An empty batch has no instance statistics to average into the running ones (torch
    # writes the NaN mean of nothing there): it leaves them as they are and is not counted.
    updating = (
        use_input_stats
        and running_mean is not None
        and running_var is not None
        and input.numel() > 0
    )
    path = _route(input, weight, bias, memory_efficient, backend)
    if path != "torch":
        from sharenorm.norm import fused
        from sharenorm.norm.kernels import entry

        triton = path == "triton"
        return (_triton_path if triton else _fused_path)(
            entry.triton_instance_norm_act if triton else fused.instance_norm_act,
            input,
            running_mean,
            running_var,
            updating,
            "instance_norm",
            weight,
            bias,
            use_input_stats,
            momentum,
            eps,
            act,
            act_param,
        )
    updated = False
    if not use_input_stats:
        # Normalizing with running statistics is per-channel, exactly BatchNorm in eval.
        # torch.instance_norm takes 16-bit and float32 γ/β/statistics mixed, ATen's
        # batch_norm all alike: float32 for all of them then (exact, read-only here)
        given = [t for t in (weight, bias, running_mean, running_var) if t is not None]
        if len({t.dtype for t in given}) > 1:
            weight, bias, running_mean, running_var = (
                None if t is None else t.float()
                for t in (weight, bias, running_mean, running_var))
        out = torch.batch_norm(
            input, weight, bias, running_mean, running_var, False, 0.0, eps, _cudnn_enabled()
        )
        out = guard_gradient_layout(out, input)
    elif not updating:
        # Instance statistics are group statistics with one channel per group. ATen's
        # GroupNorm kernel computes them several times faster on the CPU than
        # torch.instance_norm (which reshapes to a (1, N·C, *) BatchNorm) and keeps
        # channels-last inputs channels-last.
        if is_channels_last(input) and math.prod(input.shape[2:]) < _CL_INSTANCE_NATIVE_MIN_POSITIONS:
            # see _CL_INSTANCE_NATIVE_MIN_POSITIONS
            out = _group_stats.group_norm(input.contiguous(), input.shape[1], weight, bias, eps)
            out = same_memory_format(out, input)
        else:
            out = _group_stats.group_norm(input, input.shape[1], weight, bias, eps)
    else:
        def run(rm, rv):
            if input.shape[0] == 1:
                # One sample's instance statistics are its batch statistics, and the running
                # update is the same. torch.instance_norm would view the output gradient as
                # (1, N·C, *), which for one sample gives a channels-last gradient the batch
                # stride that ATen's CPU backward gets wrong (see gradient_layout_at_risk).
                out = torch.batch_norm(input, weight, bias, rm, rv, True, momentum, eps,
                                       _cudnn_enabled())
                return guard_gradient_layout(out, input)
            out = torch.instance_norm(input, weight, bias, rm, rv, True, momentum, eps,
                                      _cudnn_enabled())
            return same_memory_format(out, input)

        out, updated = guarded_update(run, running_mean, running_var, "instance_norm")
    return apply_activation(out, act, act_param, fresh=True), updated


@traceable
def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    act: str | None = None,
    act_param: float | None = None,
    memory_efficient: bool = False,
    backend: str = "auto",
) -> Tensor:
    r"""Instance Normalization over ``(N, C, *)``: one μ_{n,c}, σ²_{n,c} per sample and
    channel, taken over the spatial positions, then ``act(γ_c · x̂ + β_c)``.

    When running statistics are passed and ``use_input_stats`` is True, they are updated
    with the batch average of the per-instance statistics (unbiased σ²), as in torch; a
    non-finite batch leaves them untouched. ``memory_efficient`` and ``backend``: see
    :func:`batch_norm`.

    Example:
        >>> import torch
        >>> import sharenorm.functional as SF
        >>> y = SF.instance_norm(torch.randn(2, 3, 10) * 5 + 7)
        >>> round(float(y[0, 0].mean()), 4) == 0.0
        True
    """
    check_input(input, "instance_norm", min_dim=3)
    c = input.shape[1]
    for t, name in (
        (running_mean, "running_mean"),
        (running_var, "running_var"),
        (weight, "weight"),
        (bias, "bias"),
    ):
        check_per_channel(t, name, c, input)
    check_dtypes(input, "instance_norm", mixed_ok=True, running_mean=running_mean,
                 running_var=running_var, weight=weight, bias=bias)
    check_running_pair(running_mean, running_var, "instance_norm")
    eps = check_eps(eps)
    momentum = check_momentum(momentum, allow_none=False)
    act = check_activation(act, act_param)
    check_backend(backend, memory_efficient)
    return instance_norm_impl(
        input,
        running_mean,
        running_var,
        weight,
        bias,
        use_input_stats,
        momentum,
        eps,
        act,
        act_param,
        memory_efficient,
        backend,
    )[0]


# ----------------------------------------------------------------------------- group norm


@traceable
def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    *,
    act: str | None = None,
    act_param: float | None = None,
    memory_efficient: bool = False,
    backend: str = "auto",
) -> Tensor:
    r"""Group Normalization over ``(N, C, *)``: the C channels form ``num_groups`` groups of
    C/G consecutive channels; one μ_{n,g}, σ²_{n,g} per sample and group (over its
    channels and every spatial position), then ``act(γ_c · x̂ + β_c)``. Independent of the
    batch; ``num_groups=1`` is LayerNorm over (C, *), ``num_groups=C`` is InstanceNorm.
    ``memory_efficient`` and ``backend``: see :func:`batch_norm`.

    Example:
        >>> import torch
        >>> import sharenorm.functional as SF
        >>> SF.group_norm(torch.randn(1, 4, 3, 3), 2, act="relu").shape
        torch.Size([1, 4, 3, 3])
    """
    check_input(input, "group_norm")
    c = input.shape[1]
    num_groups = check_groups(c, num_groups)
    check_group_values(input, num_groups, "group_norm")
    check_per_channel(weight, "weight", c, input)
    check_per_channel(bias, "bias", c, input)
    check_dtypes(input, "group_norm", weight=weight, bias=bias)
    eps = check_eps(eps)
    act = check_activation(act, act_param)
    check_backend(backend, memory_efficient)
    return group_norm_impl(
        input, num_groups, weight, bias, eps, act, act_param, memory_efficient, backend
    )


def group_norm_impl(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    act: str | None,
    act_param: float | None,
    memory_efficient: bool = False,
    backend: str = "auto",
) -> Tensor:
    """Group norm (+ activation) after the checks."""
    weight, bias = dense(weight), dense(bias)
    path = _route(input, weight, bias, memory_efficient, backend)
    if path != "torch":
        from sharenorm.norm import fused
        from sharenorm.norm.kernels import entry

        impl = entry.triton_group_norm_act if path == "triton" else fused.group_norm_act
        return impl(input, num_groups, weight, bias, eps, act, act_param)
    # ATen's kernel, guarded against its channels-last cancellation and backward crash
    out = _group_stats.group_norm(input, num_groups, weight, bias, eps)
    return apply_activation(out, act, act_param, fresh=True)
