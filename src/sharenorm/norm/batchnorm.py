"""BatchNorm1d/2d/3d: drop-in replacements for ``torch.nn``'s, with ``act=`` and
running statistics that a non-finite batch cannot poison.

``_NormBase`` owns what BatchNorm and InstanceNorm share (parameters, buffers,
``reset_*``, ``extra_repr``, state-dict versioning), as in ``torch.nn``; concrete
classes only check the input rank.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sharenorm._fx import Proxy, call_module_node
from sharenorm.activation import check_activation
from sharenorm.norm import functional as SF

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


def check_num_features(num_features: int, name: str = "num_features") -> int:
    """The channel count C as a plain int (numpy ints accepted, as torch.nn does)."""
    return SF.as_count(num_features, name, " (the channel count C)")


_READ = object()  # _check_channels: read the per-channel tensors from the module


class _NormBase(SF.ChecksOnSet, nn.Module):
    """Parameters γ (``weight``), β (``bias``) and buffers ``running_mean``,
    ``running_var``, ``num_batches_tracked`` with torch.nn's names, so checkpoints move
    freely between ``torch.nn`` and sharenorm."""

    # Version 2 added num_batches_tracked (as in torch.nn).
    _version = 2
    # checked whenever set, not only here (m.eps = -1.0 raises)
    _checks_on_set = {"eps": SF.check_eps, "momentum": SF.check_momentum}

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
        act: str | None = None,
        act_param: float | None = None,
        memory_efficient: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        num_features = check_num_features(num_features)
        eps = SF.check_eps(eps)
        momentum = SF.check_momentum(momentum)
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.act = check_activation(act, act_param)
        self.act_param = act_param
        SF.check_backend(backend, memory_efficient)
        self.memory_efficient = memory_efficient
        self.backend = backend
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(num_features, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked",
                torch.tensor(
                    0, dtype=torch.long, **{k: v for k, v in factory.items() if k != "dtype"}
                ),
            )
            self.running_mean: Tensor | None
            self.running_var: Tensor | None
            self.num_batches_tracked: Tensor | None
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def _check_input_dim(self, input: Tensor) -> None:
        raise NotImplementedError

    def _check_channels(self, input: Tensor, channel_dim: int = 1,
                        per_channel: Tensor | None | object = _READ) -> None:
        # Against the per-channel tensors, as torch.nn's kernels check (num_features is never
        # read in forward: a pruning that slices γ/β/statistics and leaves it stale still
        # runs); a layer with none takes any channel count, as torch.nn's does.
        # ``per_channel``: the running mean, else γ, where the caller has read them already
        if per_channel is _READ:
            per_channel = self.running_mean if self.running_mean is not None else self.weight
        if per_channel is not None and input.shape[channel_dim] != per_channel.shape[0]:
            c = per_channel.shape[0]
            raise SF.ShapeError(
                f"{type(self).__name__}({self.num_features}) expected an input with {c} "
                f"channels at dim {channel_dim} (its per-channel tensors have {c}), got shape "
                f"{tuple(input.shape)}"
            )

    def _check_dtypes(self, input: Tensor) -> None:
        SF.check_dtypes(input, type(self).__name__, weight=self.weight, bias=self.bias,
                        running_mean=self.running_mean, running_var=self.running_var)

    def _momentum_for_this_batch(self) -> float:
        """The factor of the running-statistics update for the batch about to be seen:
        ``momentum``, or ``1 / (batches so far + 1)`` for the cumulative average."""
        if self.momentum is not None:
            return self.momentum
        return 1.0 / (float(self.num_batches_tracked) + 1.0)

    def _count_batch(self) -> None:
        """Count the batch about to update the running statistics, before the kernel runs,
        as torch.nn does: a recompute under ``torch.utils.checkpoint`` (which stops once the
        kernel's saved tensors are rebuilt, before any code after it) then counts every
        update it makes, and ``momentum=None``'s cumulative average stays right."""
        self.num_batches_tracked.add_(1)

    def _uncount_skipped(self, updated: bool | Tensor) -> None:
        """Take the count back for a batch whose update was not kept (non-finite);
        ``updated`` is a 0-d bool tensor under torch.compile (see
        :func:`~sharenorm.norm.functional.keep_finite_running_stats`)."""
        if isinstance(updated, Tensor):
            self.num_batches_tracked.sub_((~updated).to(self.num_batches_tracked.dtype))
        elif not updated:
            self.num_batches_tracked.sub_(1)

    def extra_repr(self) -> str:
        s = (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
        )
        if self.act is not None:
            s += f", act={self.act!r}"
            if self.act_param is not None:
                s += f", act_param={self.act_param}"
        if self.memory_efficient:
            s += ", memory_efficient=True"
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        return s

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            # Checkpoints older than version 2 have no num_batches_tracked: start at 0,
            # on the buffer's own device, as torch.nn does.
            state_dict[key] = (
                self.num_batches_tracked
                if self.num_batches_tracked is not None
                and self.num_batches_tracked.device != torch.device("meta")
                else torch.tensor(0, dtype=torch.long)
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class _BatchNorm(_NormBase):
    def forward(self, input: Tensor) -> Tensor:
        if not isinstance(input, Tensor) and isinstance(input, Proxy):  # torch.fx tracing
            return call_module_node(self, input)
        SF.check_input(input, type(self).__name__)
        self._check_input_dim(input)
        # each read once: a parameter or buffer read goes through Module.__getattr__ (~1 µs)
        weight, bias = self.weight, self.bias
        running_mean, running_var = self.running_mean, self.running_var
        self._check_channels(input, per_channel=running_mean if running_mean is not None
                             else weight)
        SF.check_dtypes(input, type(self).__name__, weight=weight, bias=bias,
                        running_mean=running_mean, running_var=running_var)
        # As torch.nn: batch statistics in training, and in eval too when no running
        # statistics exist; running ones are passed in eval, and in training when tracked.
        use_batch_stats = self.training or (running_mean is None and running_var is None)
        pass_running = not self.training or self.track_running_stats
        counting = (
            self.training and self.track_running_stats and self.num_batches_tracked is not None
        )
        momentum = self._momentum_for_this_batch() if counting else (self.momentum or 0.0)
        if counting:
            self._count_batch()
        out, updated = SF.batch_norm_impl(
            input,
            running_mean if pass_running else None,
            running_var if pass_running else None,
            weight,
            bias,
            use_batch_stats,
            momentum,
            self.eps,
            self.act,
            self.act_param,
            self.memory_efficient,
            self.backend,
        )
        # a batch with no running statistics to reach (set to None) counts, as in torch.nn
        if counting and not (running_mean is None and running_var is None):
            self._uncount_skipped(updated)
        return out


_BN_DOC = r"""Batch Normalization over a {rank} input, as ``torch.nn.{name}``, plus ``act=``.

    .. math::
        y = \mathrm{{act}}\Big(\gamma \cdot \frac{{x - \mathrm{{E}}[x]}}{{\sqrt{{\mathrm{{Var}}[x] + \epsilon}}}} + \beta\Big)

    E[x] and Var[x] are taken per channel over the batch and {over}. In training the
    biased variance normalizes, and the running statistics are updated with the
    *unbiased* one: ``running ← (1 − momentum)·running + momentum·batch``
    (``momentum=None``: cumulative average over ``num_batches_tracked`` batches). A batch
    whose statistics are not finite does not update them (a warning says so on the CPU;
    on a GPU, to avoid a host sync, only ``num_batches_tracked`` shows it). In eval the
    running statistics normalize; with ``track_running_stats=False`` the batch's own are
    used in both modes.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance. Default: 1e-5.
        momentum: the new batch's weight in the running statistics, or None for a
            cumulative average. Default: 0.1.
        affine: learnable γ (``weight``, init 1) and β (``bias``, init 0). Default: True.
        bias: with ``affine``, whether β is learned (False: γ only). Default: True.
        track_running_stats: keep running statistics for eval. Default: True.
        act: activation applied after the norm: None, "relu", "leaky_relu", "elu",
            "silu", "gelu", "tanh", "sigmoid". Default: None.
        act_param: the slope of leaky_relu (0.01) or α of elu (1.0).
        memory_efficient: keep one full-size tensor for backward instead of two (the
            output for identity/leaky_relu/elu, else the input; see
            :mod:`sharenorm.norm.fused`). Same outputs, gradients, running statistics.
            Default: False.
        backend: "auto" (Triton kernels for CUDA tensors when Triton is installed),
            "torch" or "triton". Default: "auto".

    Shape:
        - Input: {shape}
        - Output: same shape and memory format as the input.

    Examples::

        >>> import torch, sharenorm as sn
        >>> m = sn.{name}(4, act="relu")
        >>> y = m(torch.randn({example}))
        >>> tuple(y.shape) == ({example},)
        True
    """


class BatchNorm1d(_BatchNorm):
    __doc__ = _BN_DOC.format(
        rank="2-d or 3-d",
        name="BatchNorm1d",
        over="(for 3-d input) the length L",
        shape="(N, C) or (N, C, L)",
        example="8, 4, 10",
    )

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in (2, 3):
            raise ValueError(
                f"BatchNorm1d expects a 2-d (N, C) or 3-d (N, C, L) input, got shape "
                f"{tuple(input.shape)}; use BatchNorm2d for (N, C, H, W)"
            )


class BatchNorm2d(_BatchNorm):
    __doc__ = _BN_DOC.format(
        rank="4-d",
        name="BatchNorm2d",
        over="every position (H, W)",
        shape="(N, C, H, W)",
        example="8, 4, 5, 5",
    )

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 4:
            raise ValueError(
                f"BatchNorm2d expects a 4-d input (N, C, H, W), got shape {tuple(input.shape)}"
                + ("; add the batch dim to an unbatched (C, H, W) image (x.unsqueeze(0)), or "
                   "use BatchNorm1d for (N, C, L)" if input.dim() == 3 else "")
                + ("; use BatchNorm1d for (N, C)" if input.dim() == 2 else "")
                + ("; use BatchNorm3d for (N, C, D, H, W)" if input.dim() == 5 else "")
            )


class BatchNorm3d(_BatchNorm):
    __doc__ = _BN_DOC.format(
        rank="5-d",
        name="BatchNorm3d",
        over="every position (D, H, W)",
        shape="(N, C, D, H, W)",
        example="2, 4, 3, 3, 3",
    )

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() != 5:
            raise ValueError(
                f"BatchNorm3d expects a 5-d input (N, C, D, H, W), got shape {tuple(input.shape)}"
                + ("; add the batch dim to an unbatched (C, D, H, W) volume (x.unsqueeze(0)), "
                   "or use BatchNorm2d for (N, C, H, W)" if input.dim() == 4 else "")
            )
