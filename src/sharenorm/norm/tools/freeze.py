"""Freeze the running statistics of a model's norm layers for fine-tuning.

``requires_grad_(False)`` freezes γ and β but not the running statistics; a frozen layer
normalizes with them and never updates them, in training mode too.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sharenorm._checks import check_module
from sharenorm.norm.batchnorm import _BatchNorm
from sharenorm.norm.instancenorm import _InstanceNorm

__all__ = ["freeze_norm_stats", "unfreeze_norm_stats", "is_norm_stats_frozen"]

BN_TYPES = (_BatchNorm, nn.modules.batchnorm._BatchNorm)
STAT_TYPES = BN_TYPES + (_InstanceNorm, nn.modules.instancenorm._InstanceNorm)
# The flag a frozen layer carries in its __dict__ (survives deepcopy and pickling).
FROZEN = "_sharenorm_stats_frozen"
_WAS_TRAINING = "_sharenorm_was_training"


def has_running_stats(m: nn.Module) -> bool:
    return isinstance(m, STAT_TYPES) and getattr(m, "running_mean", None) is not None


def stat_norms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) for every norm layer of ``model`` with running statistics."""
    return [(name, m) for name, m in model.named_modules() if has_running_stats(m)]



def _frozen_pre_hook(module: nn.Module, args: Any) -> None:
    # Eval behaviour for this one call: running statistics normalize and are not updated.
    # The flag is restored after the call, so model.training reads as the user set it.
    if module.__dict__.get(FROZEN, False) and module.training:
        module.__dict__[_WAS_TRAINING] = True
        module.training = False


def _frozen_post_hook(module: nn.Module, args: Any, output: Any = None) -> None:
    if module.__dict__.pop(_WAS_TRAINING, False):
        module.training = True


def is_freeze_hook(fn: Any) -> bool:
    """Whether ``fn`` (from a module's hook table) is one of the hooks a freeze registers."""
    return fn is _frozen_pre_hook or fn is _frozen_post_hook


def _remove_freeze_hooks(m: nn.Module) -> None:
    # Found by function rather than by stored handles: handles would survive deepcopy
    # pointing at the *original* module's hook table.
    for hooks, fn in ((m._forward_pre_hooks, _frozen_pre_hook), (m._forward_hooks, _frozen_post_hook)):
        for key in [k for k, h in hooks.items() if h is fn]:
            del hooks[key]
            m._forward_hooks_always_called.pop(key, None)


def is_norm_stats_frozen(module: nn.Module) -> bool:
    """Whether :func:`freeze_norm_stats` froze this norm layer."""
    return bool(module.__dict__.get(FROZEN, False))


def freeze_norm_stats(model: nn.Module, *, affine: bool = False) -> list[str]:
    """Freeze every norm layer with running statistics in ``model``: it normalizes with
    its running statistics and never updates them, in training mode too, and this
    survives later ``model.train()`` calls.

    Done with a forward pre-hook that runs the layer in eval behaviour for each call (and
    a post-hook that restores ``training``, also when the call raises), so it works for
    torch.nn layers too, keeps the state_dict unchanged, and survives ``deepcopy``, pickling
    and :func:`~sharenorm.convert_norm` to a layer with running statistics. Layers without
    running statistics (``track_running_stats=False``, GroupNorm) have nothing to freeze
    to and are left alone. A frozen SyncBatchNorm does no communication.

    Args:
        model: any module (or a single norm layer).
        affine: also stop γ and β from learning (``requires_grad_(False)``).

    Returns:
        The qualified names of the layers frozen ("" for ``model`` itself).

    Example:
        >>> import torch, sharenorm as sn
        >>> bn = sn.BatchNorm1d(3)
        >>> sn.freeze_norm_stats(bn)
        ['']
        >>> y = bn.train()(torch.randn(8, 3) + 5)
        >>> bn.running_mean.tolist(), bn.training
        ([0.0, 0.0, 0.0], True)

    Example:
        >>> import torch, torch.nn as nn, sharenorm as sn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        >>> sn.freeze_norm_stats(net)
        ['1']
        >>> _ = net.train()(torch.randn(4, 3, 8, 8))
        >>> net[1].num_batches_tracked.item()      # the statistics did not move
        0
    """
    check_module(model, "freeze_norm_stats")
    names = []
    for name, m in stat_norms(model):
        if not is_norm_stats_frozen(m):
            _remove_freeze_hooks(m)
            m.register_forward_pre_hook(_frozen_pre_hook)
            # always_call: `training` is restored also when the forward raises
            m.register_forward_hook(_frozen_post_hook, always_call=True)
            m.__dict__[FROZEN] = True
        if affine:
            for p in (getattr(m, "weight", None), getattr(m, "bias", None)):
                if isinstance(p, nn.Parameter):
                    p.requires_grad_(False)
        names.append(name)
    return names


def unfreeze_norm_stats(model: nn.Module, *, affine: bool = False) -> list[str]:
    """Undo :func:`freeze_norm_stats`: the layers follow ``model.train()``/``eval()``
    again. With ``affine=True`` γ and β learn again. Returns the names unfrozen.

    Example:
        >>> import sharenorm as sn
        >>> bn = sn.BatchNorm1d(3)
        >>> sn.freeze_norm_stats(bn), sn.unfreeze_norm_stats(bn), sn.is_norm_stats_frozen(bn)
        ([''], [''], False)
    """
    check_module(model, "unfreeze_norm_stats")
    names = []
    for name, m in stat_norms(model):
        if is_norm_stats_frozen(m):
            _remove_freeze_hooks(m)
            del m.__dict__[FROZEN]
            names.append(name)
        if affine:
            for p in (getattr(m, "weight", None), getattr(m, "bias", None)):
                if isinstance(p, nn.Parameter):
                    p.requires_grad_(True)
    return names
