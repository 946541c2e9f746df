"""GroupNorm: a drop-in replacement for ``torch.nn.GroupNorm``, plus ``group_size=`` and
``act=``."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sharenorm._fx import Proxy, call_module_node
from sharenorm.activation import check_activation
from sharenorm.norm import functional as SF
from sharenorm.norm.batchnorm import check_num_features

__all__ = ["GroupNorm"]


class GroupNorm(SF.ChecksOnSet, nn.Module):
    r"""Group Normalization over ``(N, C, *)``, as ``torch.nn.GroupNorm``, plus extras.

    .. math::
        y = \mathrm{act}\Big(\gamma \cdot \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} + \beta\Big)

    The C channels are split into G groups of C/G consecutive channels; E[x] and Var[x]
    (biased) are taken per sample over one group's channels and every spatial position.
    γ and β stay per channel. Nothing depends on the batch, so training and eval behave
    the same and a batch of one is fine. ``num_groups=1`` is LayerNorm over (C, *);
    ``num_groups=C`` is InstanceNorm with per-channel affine.

    Args:
        num_groups: G, the number of groups (C must be divisible by it).
        num_channels: C, the number of channels.
        eps: added to the variance. Default: 1e-5.
        affine: learnable per-channel γ (init 1) and β (init 0). Default: True.
        bias: with ``affine``, whether β is learned. Default: True.
        group_size: channels per group, instead of ``num_groups`` (G = C / group_size).
        act, act_param: activation after the norm (see :class:`BatchNorm2d`).
        memory_efficient, backend: see :class:`BatchNorm2d`.

    Shape:
        - Input: ``(N, C, *)``
        - Output: same shape and memory format as the input.

    Examples::

        >>> import torch, sharenorm as sn
        >>> gn = sn.GroupNorm(4, 32, act="silu")
        >>> gn(torch.randn(2, 32, 8, 8)).shape
        torch.Size([2, 32, 8, 8])
        >>> sn.GroupNorm(num_channels=32, group_size=16).num_groups
        2
    """

    _checks_on_set = {"eps": SF.check_eps}  # checked whenever set (m.eps = -1.0 raises)

    def __init__(
        self,
        num_groups: int | None = None,
        num_channels: int | None = None,
        eps: float = 1e-5,
        affine: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
        group_size: int | None = None,
        act: str | None = None,
        act_param: float | None = None,
        memory_efficient: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if num_channels is None:
            raise ValueError("GroupNorm needs num_channels (C), e.g. GroupNorm(32, 64)")
        num_channels = check_num_features(num_channels, "num_channels")
        num_groups = _resolve_groups(num_groups, num_channels, group_size)
        eps = SF.check_eps(eps)
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        self.act = check_activation(act, act_param)
        self.act_param = act_param
        SF.check_backend(backend, memory_efficient)
        self.memory_efficient = memory_efficient
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        if affine:
            self.weight = nn.Parameter(torch.empty(num_channels, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(num_channels, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    @property
    def group_size(self) -> int:
        return self.num_channels // self.num_groups

    def reset_parameters(self) -> None:
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        if not isinstance(input, Tensor) and isinstance(input, Proxy):  # torch.fx tracing
            return call_module_node(self, input)
        SF.check_input(input, "GroupNorm")
        weight, bias = self.weight, self.bias  # read once: Module.__getattr__ takes ~1 µs
        # against γ/β, as torch's kernel checks (num_channels is not read in forward)
        per_channel = weight if weight is not None else bias
        if per_channel is not None and input.shape[1] != per_channel.shape[0]:
            c = per_channel.shape[0]
            raise SF.ShapeError(
                f"GroupNorm({self.num_groups}, {self.num_channels}) expected an input "
                f"(N, {c}, *) (its γ/β have {c} channels), got shape {tuple(input.shape)}"
            )
        SF.check_group_values(input, self.num_groups, "GroupNorm")
        SF.check_dtypes(input, "GroupNorm", weight=weight, bias=bias)
        return SF.group_norm_impl(
            input, self.num_groups, weight, bias, self.eps, self.act, self.act_param,
            self.memory_efficient, self.backend,
        )

    def extra_repr(self) -> str:
        s = (
            f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
            f"bias={self.bias is not None}"
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


def _resolve_groups(num_groups: int | None, num_channels: int, group_size: int | None) -> int:
    """G from ``num_groups`` or ``group_size`` (channels per group), checked against C."""
    if group_size is not None:
        group_size = SF.as_count(group_size, "group_size", "")
        if num_channels % group_size:
            divisors = [d for d in range(1, num_channels + 1) if num_channels % d == 0]
            raise ValueError(
                f"num_channels={num_channels} is not divisible by group_size={group_size}; "
                f"valid group sizes: {', '.join(map(str, divisors))}"
            )
        from_size = num_channels // group_size
        if num_groups is not None and num_groups != from_size:
            raise ValueError(
                f"num_groups={num_groups} and group_size={group_size} disagree for "
                f"num_channels={num_channels} (group_size gives {from_size} groups); pass one"
            )
        return from_size
    if num_groups is None:
        raise ValueError("GroupNorm needs num_groups or group_size, e.g. GroupNorm(32, 64)")
    return SF.check_groups(num_channels, num_groups)
