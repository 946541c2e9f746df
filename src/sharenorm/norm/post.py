"""What a norm layer applies after normalizing, as modules: sharenorm's ``act=`` name, or
another library's ``drop`` and ``act`` modules (timm's norm+activation layers).

:func:`post_modules` reads them off a layer, :func:`activation_name` says which sharenorm
``act=`` an activation module is, and :class:`NormAct` runs a norm and then modules that
have no ``act=`` equivalent. ``convert_norm`` and ``fuse_conv_bn`` use these.

Example:
    >>> import torch.nn as nn
    >>> activation_name(nn.LeakyReLU(0.2)), activation_name(nn.Hardswish())
    (('leaky_relu', 0.2), None)
"""

from __future__ import annotations

from torch import Tensor, nn

from sharenorm.activation import apply_activation, check_activation

__all__ = ["Activation", "NormAct", "activation_name", "post_modules"]


class Activation(nn.Module):
    """The activation alone, what ``make_norm("none", C, act=...)`` returns."""

    def __init__(self, act: str | None, act_param: float | None = None) -> None:
        super().__init__()
        self.act = check_activation(act, act_param)
        self.act_param = act_param

    def forward(self, input: Tensor) -> Tensor:
        return apply_activation(input, self.act, self.act_param)

    def extra_repr(self) -> str:
        param = "" if self.act_param is None else f", act_param={self.act_param}"
        return f"act={self.act!r}{param}"


class NormAct(nn.Module):
    """``act(drop(norm(x)))``: a norm layer, then the modules a norm+activation layer of
    another library applied after its norm (timm's ``BatchNormAct2d``: ``drop``, then
    ``act``) where sharenorm's ``act=`` has no equivalent (a Hardswish, a DropBlock).

    Example:
        >>> import torch, torch.nn as nn, sharenorm as sn
        >>> m = NormAct(sn.BatchNorm2d(3), nn.Identity(), nn.Hardswish())
        >>> m(torch.randn(2, 3, 4, 4)).shape
        torch.Size([2, 3, 4, 4])
    """

    def __init__(self, norm: nn.Module, drop: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.drop = drop
        self.act = act

    def forward(self, input: Tensor) -> Tensor:
        return self.act(self.drop(self.norm(input)))


def post_modules(norm: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """``(drop, act)``: the modules a norm layer applies after normalizing by timm's
    convention (module attributes ``drop`` and ``act``, applied in that order; a missing
    one is ``nn.Identity()``), or None for a layer without them (torch.nn's norms, and
    sharenorm's, whose ``act`` is a name)."""
    drop, act = getattr(norm, "drop", None), getattr(norm, "act", None)
    if not isinstance(drop, nn.Module) and not isinstance(act, nn.Module):
        return None
    return (drop if isinstance(drop, nn.Module) else nn.Identity(),
            act if isinstance(act, nn.Module) else nn.Identity())


def activation_name(act: nn.Module) -> tuple[str, float | None] | None:
    """``(name, act_param)`` of the sharenorm ``act=`` that computes exactly what the
    torch.nn activation module ``act`` computes ("identity" for ``nn.Identity``), or None
    when there is none. Only the exact classes count: a subclass may compute something
    else."""
    kind = type(act)
    if kind is nn.Identity:
        return "identity", None
    if kind in _SIMPLE:
        return _SIMPLE[kind], None
    if kind is nn.LeakyReLU:
        return "leaky_relu", float(act.negative_slope)
    if kind is nn.ELU:
        return "elu", float(act.alpha)
    if kind is nn.GELU and act.approximate == "none":
        return "gelu", None
    return None


# torch.nn activation classes without a parameter -> sharenorm's act= name
_SIMPLE = {nn.ReLU: "relu", nn.SiLU: "silu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}
