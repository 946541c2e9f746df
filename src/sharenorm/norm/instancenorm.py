"""InstanceNorm1d/2d/3d: drop-in replacements for ``torch.nn``'s, with ``act=``."""

from __future__ import annotations

import warnings

from torch import Tensor

from sharenorm._fx import Proxy, call_module_node
from sharenorm.norm import functional as SF
from sharenorm.norm.batchnorm import _NormBase

__all__ = ["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


class _InstanceNorm(_NormBase):
    _spatial_dims: int  # 1, 2 or 3

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
        act: str | None = None,
        act_param: float | None = None,
        memory_efficient: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device,
            dtype,
            bias=bias,
            act=act,
            act_param=act_param,
            memory_efficient=memory_efficient,
            backend=backend,
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # As torch.nn's InstanceNorm: a checkpoint without a version (saved before torch 0.4,
        # or a plain dict) may hold running statistics that a layer without tracking would
        # drop silently under strict=False; refuse them, naming both ways out
        if local_metadata.get("version", None) is None and not self.track_running_stats:
            keys = [prefix + n for n in ("running_mean", "running_var") if prefix + n in state_dict]
            if keys:
                error_msgs.append(
                    f"Unexpected running stats buffer(s) {keys} for {type(self).__name__} with "
                    "track_running_stats=False (a checkpoint without a version: saved before "
                    "torch 0.4, when InstanceNorm tracked them by default, or a plain dict). "
                    "Remove these keys from the state_dict, or build the layer with "
                    "track_running_stats=True if the statistics are needed."
                )
                for key in keys:
                    state_dict.pop(key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _check_input_dim(self, input: Tensor) -> None:
        n = self._spatial_dims
        if input.dim() not in (n + 1, n + 2):
            spatial = ("L",) if n == 1 else ("H", "W") if n == 2 else ("D", "H", "W")
            raise ValueError(
                f"{type(self).__name__} expects a {n + 2}-d input (N, C, {', '.join(spatial)}) "
                f"or a {n + 1}-d one without batch dim (C, {', '.join(spatial)}), got shape "
                f"{tuple(input.shape)}"
            )

    def forward(self, input: Tensor) -> Tensor:
        if not isinstance(input, Tensor) and isinstance(input, Proxy):  # torch.fx tracing
            return call_module_node(self, input)
        SF.check_input(input, type(self).__name__)
        self._check_input_dim(input)
        # each read once: a parameter or buffer read goes through Module.__getattr__ (~1 µs)
        weight, bias = self.weight, self.bias
        running_mean, running_var = self.running_mean, self.running_var
        SF.check_dtypes(input, type(self).__name__, mixed_ok=True, weight=weight, bias=bias,
                        running_mean=running_mean, running_var=running_var)
        unbatched = input.dim() == self._spatial_dims + 1
        channel_dim = 0 if unbatched else 1
        if input.shape[channel_dim] != self.num_features:
            if self.affine or self.track_running_stats:
                self._check_channels(input, channel_dim)
            # As torch.nn: without γ/β or running statistics num_features is not used.
            warnings.warn(
                f"input's size at dim={channel_dim} does not match num_features "
                f"({self.num_features}); it is unused because affine=False and "
                "track_running_stats=False",
                stacklevel=2,
            )
        if unbatched:
            input = input.unsqueeze(0)
        use_input_stats = self.training or not self.track_running_stats
        counting = (
            use_input_stats and self.track_running_stats and self.num_batches_tracked is not None
        )
        momentum = self._momentum_for_this_batch() if counting else (self.momentum or 0.0)
        if counting:
            self._count_batch()
        out, updated = SF.instance_norm_impl(
            input,
            running_mean,
            running_var,
            weight,
            bias,
            use_input_stats,
            momentum,
            self.eps,
            self.act,
            self.act_param,
            self.memory_efficient,
            self.backend,
        )
        if counting:
            self._uncount_skipped(updated)
        return out.squeeze(0) if unbatched else out


_IN_DOC = r"""Instance Normalization over a {rank} input, as ``torch.nn.{name}``, plus ``act=``.

    .. math::
        y = \mathrm{{act}}\Big(\gamma \cdot \frac{{x - \mathrm{{E}}[x]}}{{\sqrt{{\mathrm{{Var}}[x] + \epsilon}}}} + \beta\Big)

    E[x] and Var[x] (biased) are taken per sample and per channel over {over}: each
    instance is normalized on its own, so the output does not depend on the rest of the
    batch. Defaults follow torch: ``affine=False``, ``track_running_stats=False``. With
    ``track_running_stats=True`` the batch-averaged instance statistics (unbiased
    variance) update running ones used in eval; unlike torch, ``momentum=None`` is a real
    cumulative average and ``num_batches_tracked`` counts the batches.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance. Default: 1e-5.
        momentum: the running-statistics update factor, or None. Default: 0.1.
        affine: learnable per-channel γ, β. Default: False.
        track_running_stats: keep running statistics for eval. Default: False.
        act, act_param: activation after the norm (see :class:`BatchNorm2d`).
        memory_efficient, backend: see :class:`BatchNorm2d`.

    Shape:
        - Input: {shape}
        - Output: same shape as the input.

    Examples::

        >>> import torch, sharenorm as sn
        >>> m = sn.{name}(3, affine=True)
        >>> m(torch.randn({example})).shape == torch.Size([{example}])
        True
    """


class InstanceNorm1d(_InstanceNorm):
    __doc__ = _IN_DOC.format(
        rank="3-d",
        name="InstanceNorm1d",
        over="the length L",
        shape="(N, C, L) or (C, L)",
        example="4, 3, 10",
    )
    _spatial_dims = 1


class InstanceNorm2d(_InstanceNorm):
    __doc__ = _IN_DOC.format(
        rank="4-d",
        name="InstanceNorm2d",
        over="(H, W)",
        shape="(N, C, H, W) or (C, H, W)",
        example="4, 3, 6, 6",
    )
    _spatial_dims = 2


class InstanceNorm3d(_InstanceNorm):
    __doc__ = _IN_DOC.format(
        rank="5-d",
        name="InstanceNorm3d",
        over="(D, H, W)",
        shape="(N, C, D, H, W) or (C, D, H, W)",
        example="2, 3, 4, 4, 4",
    )
    _spatial_dims = 3
