"""Tools for training and deploying models with BatchNorm: freeze the statistics for
fine-tuning, recompute them exactly after training, fold BN into the layer before it.

All three work on ``torch.nn`` and sharenorm layers alike (BatchNorm1d/2d/3d,
SyncBatchNorm, BatchRenorm; InstanceNorm with running statistics for the first two).

- :func:`freeze_norm_stats` / :func:`unfreeze_norm_stats`: the layers normalize with
  their running statistics and stop updating them, also after ``model.train()`` — the
  usual fine-tuning bug is that ``requires_grad_(False)`` freezes γ and β but the
  running statistics keep moving with every training batch.
- :func:`recalibrate_norm_stats`: replace the running statistics by the exact average
  of the per-batch statistics over the batches given (precise-BN, Wu & Johnson 2021),
  e.g. after SWA/EMA weight averaging, whose averaged weights no running statistics
  were collected for.
- :func:`fuse_conv_bn`: for inference, fold an eval-mode BN into the Conv/Linear that
  feeds it: ``W' = W·s``, ``b' = (b − μ)·s + β`` with ``s = γ / √(σ² + ε)`` per output
  channel; reports every BN layer it could not fold and why.
- :class:`NormTracer`: the ``torch.fx`` tracer ``fuse_conv_bn`` uses, which keeps
  sharenorm norms as leaf modules (``fx.symbolic_trace`` cannot trace into them).

Example:
    >>> import torch, torch.nn as nn, sharenorm as sn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    >>> sn.freeze_norm_stats(net)
    ['1']
    >>> _ = net.train()(torch.randn(4, 3, 8, 8))
    >>> net[1].num_batches_tracked.item()      # the statistics did not move
    0
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.nn.utils import parametrize

from sharenorm.norm.batchnorm import _BatchNorm, _NormBase
from sharenorm.norm.groupnorm import GroupNorm
from sharenorm.norm.instancenorm import _InstanceNorm

__all__ = [
    "freeze_norm_stats",
    "unfreeze_norm_stats",
    "is_norm_stats_frozen",
    "recalibrate_norm_stats",
    "fuse_conv_bn",
    "FuseReport",
    "NormTracer",
]

_BN_TYPES = (_BatchNorm, nn.modules.batchnorm._BatchNorm)
_STAT_TYPES = _BN_TYPES + (_InstanceNorm, nn.modules.instancenorm._InstanceNorm)
_FROZEN = "_sharenorm_stats_frozen"
_WAS_TRAINING = "_sharenorm_was_training"
_RECALIBRATE_CALLS = "_sharenorm_recalibrate_calls"
# Layers whose momentum=None does not average cumulatively (torch.nn's InstanceNorm
# passes 0.0 then, and never counts num_batches_tracked).
_NO_CUMULATIVE_AVERAGE = (nn.modules.instancenorm._InstanceNorm,)


def _has_running_stats(m: nn.Module) -> bool:
    return isinstance(m, _STAT_TYPES) and getattr(m, "running_mean", None) is not None


def _stat_norms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if _has_running_stats(m)]


# ----------------------------------------------------------------------------- freeze


def _frozen_pre_hook(module: nn.Module, args: Any) -> None:
    # Eval behaviour for this one call: running statistics normalize and are not updated.
    # The flag is restored after the call, so model.training reads as the user set it.
    if module.__dict__.get(_FROZEN, False) and module.training:
        module.__dict__[_WAS_TRAINING] = True
        module.training = False


def _frozen_post_hook(module: nn.Module, args: Any, output: Any = None) -> None:
    if module.__dict__.pop(_WAS_TRAINING, False):
        module.training = True


def _remove_freeze_hooks(m: nn.Module) -> None:
    # Found by function rather than by stored handles: handles would survive deepcopy
    # pointing at the *original* module's hook table.
    for hooks, fn in ((m._forward_pre_hooks, _frozen_pre_hook), (m._forward_hooks, _frozen_post_hook)):
        for key in [k for k, h in hooks.items() if h is fn]:
            del hooks[key]
            m._forward_hooks_always_called.pop(key, None)


def is_norm_stats_frozen(module: nn.Module) -> bool:
    """Whether :func:`freeze_norm_stats` froze this norm layer."""
    return bool(module.__dict__.get(_FROZEN, False))


def freeze_norm_stats(model: nn.Module, *, affine: bool = False) -> list[str]:
    """Freeze every norm layer with running statistics in ``model``: it normalizes with
    its running statistics and never updates them, in training mode too, and this
    survives later ``model.train()`` calls.

    Done with a forward pre-hook that runs the layer in eval behaviour for each call (and
    a post-hook that restores ``training``, also when the call raises), so it works for torch.nn layers too, keeps
    the state_dict unchanged, and survives ``deepcopy`` and pickling. Layers without
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
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"freeze_norm_stats expects an nn.Module, got {type(model).__name__}")
    names = []
    for name, m in _stat_norms(model):
        if not is_norm_stats_frozen(m):
            _remove_freeze_hooks(m)
            m.register_forward_pre_hook(_frozen_pre_hook)
            # always_call: `training` is restored also when the forward raises
            m.register_forward_hook(_frozen_post_hook, always_call=True)
            m.__dict__[_FROZEN] = True
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
    if not isinstance(model, nn.Module):
        raise TypeError(f"unfreeze_norm_stats expects an nn.Module, got {type(model).__name__}")
    names = []
    for name, m in _stat_norms(model):
        if is_norm_stats_frozen(m):
            _remove_freeze_hooks(m)
            del m.__dict__[_FROZEN]
            names.append(name)
        if affine:
            for p in (getattr(m, "weight", None), getattr(m, "bias", None)):
                if isinstance(p, nn.Parameter):
                    p.requires_grad_(True)
    return names


# ----------------------------------------------------------------------------- recalibrate


def _cumulative_momentum_hook(module: nn.Module, args: Any) -> None:
    """Before each call of a layer whose ``momentum=None`` is not a cumulative average
    (torch.nn's InstanceNorm turns it into 0.0, no update): momentum 1/(k + 1) for its
    k-th call since the reset, which makes the running statistics the plain average."""
    calls = module.__dict__.get(_RECALIBRATE_CALLS, 0) + 1
    module.__dict__[_RECALIBRATE_CALLS] = calls
    module.momentum = 1.0 / calls


def _default_forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return model(batch[0])  # (inputs, targets, ...) as a DataLoader yields
    raise TypeError(
        f"recalibrate_norm_stats: cannot feed a batch of type {type(batch).__name__} to the "
        "model; give tensors or (input, ...) tuples, or pass forward=lambda model, batch: ..."
    )


@torch.no_grad()
def recalibrate_norm_stats(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> int:
    r"""Recompute the running statistics of every norm layer in ``model`` from
    ``batches``: each becomes the plain average, over the batches, of that layer's
    per-batch mean and unbiased variance (precise-BN):

    .. math::
        \mu = \frac{1}{K}\sum_{k=1}^{K} \mu_k,\qquad \sigma^2 = \frac{1}{K}\sum_{k=1}^{K} s^2_k

    computed as the cumulative average from reset statistics (``momentum=None``; for
    torch.nn's InstanceNorm, where None means no update, momentum 1/k at its k-th call), with
    the model in eval mode except the norm layers (so dropout is off and each layer sees
    the inputs the eval model produces upstream, normalized with batch statistics as in
    training). Frozen layers are recalibrated too; BatchRenorm runs as plain BN meanwhile.
    Afterwards momentum, train/eval modes and frozen states are as before; if a batch
    raises, or there is no batch, the old statistics are restored.

    Args:
        model: the model, on the batches' device.
        batches: an iterable of input tensors or ``(input, ...)`` tuples (a DataLoader);
            a batch whose statistics are not finite is skipped by sharenorm layers.
        forward: ``forward(model, batch)`` for other batch types.

    Returns:
        The number of batches used.

    Example:
        >>> import torch, sharenorm as sn
        >>> bn = sn.BatchNorm1d(2)
        >>> batches = [torch.randn(16, 2) + 3 for _ in range(4)]
        >>> sn.recalibrate_norm_stats(bn, batches)
        4
        >>> expected = torch.stack([b.mean(0) for b in batches]).mean(0)
        >>> torch.allclose(bn.running_mean, expected)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"recalibrate_norm_stats expects an nn.Module, got {type(model).__name__}")
    layers = [m for _, m in _stat_norms(model)]
    if not layers:
        raise ValueError(
            "recalibrate_norm_stats: the model has no norm layer with running statistics "
            "(BatchNorm, or InstanceNorm with track_running_stats=True); nothing to recompute"
        )
    forward = forward or _default_forward
    modes = {m: m.training for m in model.modules()}
    saved = [
        (m, m.momentum, m.__dict__.get(_FROZEN, False), getattr(m, "renorm", None),
         {k: getattr(m, k).clone() for k in ("running_mean", "running_var", "num_batches_tracked")
          if isinstance(getattr(m, k, None), Tensor)})
        for m in layers
    ]
    ok = False
    count = 0
    handles = []
    try:
        model.eval()
        for m in layers:
            m.train()
            m.momentum = None  # cumulative average
            if isinstance(m, _NO_CUMULATIVE_AVERAGE):  # ... done by hand for these
                handles.append(m.register_forward_pre_hook(_cumulative_momentum_hook))
            m.__dict__[_FROZEN] = False
            if hasattr(m, "renorm"):
                m.renorm = False
            m.reset_running_stats()
        for batch in batches:
            forward(model, batch)
            count += 1
        if count == 0:
            raise ValueError("recalibrate_norm_stats: `batches` yielded no batch")
        ok = True
    finally:
        for h in handles:
            h.remove()
        for m, momentum, frozen, renorm, stats in saved:
            m.__dict__.pop(_RECALIBRATE_CALLS, None)
            m.momentum = momentum
            if frozen:
                m.__dict__[_FROZEN] = True
            if renorm is not None:
                m.renorm = renorm
            if not ok:
                for k, v in stats.items():
                    getattr(m, k).copy_(v)
        for m, mode in modes.items():
            m.training = mode
    return count


# ----------------------------------------------------------------------------- fuse


_FUSABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
            nn.ConvTranspose3d, nn.Linear)


@dataclass
class FuseReport:
    """What :func:`fuse_conv_bn` did: ``model`` (the fused model), ``fused`` (pairs of
    (conv name, BN name) folded) and ``skipped`` ((BN name, reason) for every BN layer
    left in place)."""

    model: nn.Module
    fused: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"fuse_conv_bn: {len(self.fused)} BN layer(s) folded, {len(self.skipped)} not"]
        lines += [f"  folded {bn} into {conv}" for conv, bn in self.fused]
        lines += [f"  NOT folded {bn}: {why}" for bn, why in self.skipped]
        return "\n".join(lines)


def _out_channels(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _why_not(prev: nn.Module, bn: nn.Module, refs: dict[int, int]) -> str | None:
    """None if ``bn`` can be folded into ``prev``; the reason otherwise."""
    if not isinstance(prev, _FUSABLE):
        return f"follows a {type(prev).__name__}, not a Conv/ConvTranspose/Linear"
    if bn.training and not is_norm_stats_frozen(bn):
        return "it is in training mode (call model.eval() first, or freeze_norm_stats)"
    if getattr(bn, "running_mean", None) is None:
        return "it has no running statistics (track_running_stats=False): it uses batch statistics"
    if _out_channels(prev) != bn.num_features:
        return f"{_out_channels(prev)} channels come in, it normalizes {bn.num_features}"
    if parametrize.is_parametrized(prev):
        return "the layer before it is parametrized (tied or reparametrized weight)"
    if refs.get(id(prev), 0) > 1 or any(
        refs.get(id(p), 0) > 1 for p in (prev.weight, prev.bias) if p is not None
    ):
        return "the layer before it (or its weight) is shared with another place in the model"
    return None


class FoldedNorm1d(nn.Module):
    """What stands where a BatchNorm1d after a Linear was folded into it: the activation
    (if any), and a check of the rank. The fold is that BatchNorm only on (N, features)
    inputs; on an (N, L, features) one the BatchNorm normalized dim 1 (L), which no
    change of the Linear reproduces.

    Example:
        >>> import torch, torch.nn as nn, sharenorm as sn
        >>> net = sn.fuse_conv_bn(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).eval()).model
        >>> net(torch.randn(2, 4)).shape
        torch.Size([2, 3])
    """

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.act = act

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() != 2:
            raise ValueError(
                f"this BatchNorm1d was folded into the Linear before it, which is exact only "
                f"for (N, features) inputs, got shape {tuple(input.shape)} (the BatchNorm "
                "normalized dim 1 of it); fuse the model only for 2-d inputs, or keep this "
                "pair unfused"
            )
        return self.act(input)


@torch.no_grad()
def _fold(prev: nn.Module, bn: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(the folded copy of ``prev``, what replaces ``bn``: Identity or its activation)."""
    from sharenorm.norm.factory import Activation

    w = prev.weight.to(torch.float64)
    c = bn.num_features
    gamma = bn.weight.to(torch.float64) if bn.weight is not None else torch.ones(c, dtype=torch.float64)
    beta = bn.bias.to(torch.float64) if bn.bias is not None else torch.zeros(c, dtype=torch.float64)
    scale = gamma * torch.rsqrt(bn.running_var.to(torch.float64) + bn.eps)
    b = prev.bias.to(torch.float64) if prev.bias is not None else torch.zeros(c, dtype=torch.float64)
    if isinstance(prev, nn.modules.conv._ConvTransposeNd):
        # weight (C_in, C_out / groups, *k): output channel g·(C_out/g) + j is column j
        # of group g's rows.
        g = prev.groups
        shape = (g, w.shape[0] // g, w.shape[1]) + w.shape[2:]
        s = scale.reshape((g, 1, w.shape[1]) + (1,) * (w.dim() - 2))
        new_w = (w.reshape(shape) * s).reshape(w.shape)
    else:
        new_w = w * scale.reshape((-1,) + (1,) * (w.dim() - 1))
    new_b = (b - bn.running_mean.to(torch.float64)) * scale + beta
    fused = copy.deepcopy(prev)
    dtype = prev.weight.dtype
    fused.weight = nn.Parameter(new_w.to(dtype), requires_grad=prev.weight.requires_grad)
    fused.bias = nn.Parameter(new_b.to(dtype), requires_grad=prev.weight.requires_grad)
    act = getattr(bn, "act", None)
    after = nn.Identity() if act is None else Activation(act, getattr(bn, "act_param", None))
    return fused, FoldedNorm1d(after) if isinstance(prev, nn.Linear) else after


def _reference_counts(model: nn.Module) -> dict[int, int]:
    refs: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        refs[id(m)] = refs.get(id(m), 0) + 1
    for _, p in model.named_parameters(remove_duplicate=False):
        refs[id(p)] = refs.get(id(p), 0) + 1
    return refs


def _fuse_sequential(model: nn.Module, report: FuseReport, reasons: dict[str, str]) -> None:
    refs = _reference_counts(model)
    for seq_name, seq in list(model.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        keys = list(seq._modules)
        for prev_key, bn_key in zip(keys, keys[1:], strict=False):
            bn, prev = seq._modules[bn_key], seq._modules[prev_key]
            if not isinstance(bn, _BN_TYPES):
                continue
            bn_name = f"{seq_name}.{bn_key}" if seq_name else bn_key
            why = _why_not(prev, bn, refs)
            if why is not None:
                reasons[bn_name] = why
                continue
            seq._modules[prev_key], seq._modules[bn_key] = _fold(prev, bn)
            report.fused.append((f"{seq_name}.{prev_key}" if seq_name else prev_key, bn_name))
            reasons.pop(bn_name, None)


class NormTracer(fx.Tracer):
    """A ``torch.fx`` tracer that keeps sharenorm's norm layers (BatchNorm, InstanceNorm,
    GroupNorm, BatchRenorm, SyncBatchNorm) as leaves, one ``call_module`` node each, as
    ``fx.Tracer`` keeps torch.nn's. ``fx.symbolic_trace`` cannot trace them otherwise:
    their input checks and data-dependent routing need a real tensor, not a Proxy.

    Example:
        >>> import torch, torch.fx as fx, torch.nn as nn, sharenorm as sn
        >>> from sharenorm.norm.tools import NormTracer
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 1), sn.BatchNorm2d(4, act="relu"))
        >>> gm = fx.GraphModule(net, NormTracer().trace(net))
        >>> [n.target for n in gm.graph.nodes if n.op == "call_module"]
        ['0', '1']
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (_NormBase, GroupNorm)) or super().is_leaf_module(
            m, module_qualified_name
        )


def _symbolic_trace(model: nn.Module) -> fx.GraphModule:
    """``fx.symbolic_trace`` with sharenorm norms as leaves (:class:`NormTracer`)."""
    graph = NormTracer().trace(model)
    return fx.GraphModule(model, graph, model.__class__.__name__)


def _fuse_fx(model: nn.Module, report: FuseReport, reasons: dict[str, str]) -> nn.Module:
    try:
        gm = _symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "not with fx"
        msg = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        for name in reasons:
            if "follows" in reasons[name] or "not found" in reasons[name]:
                reasons[name] += f"; torch.fx could not trace the model ({msg})"
        return model
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    refs = _reference_counts(model)
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or node.target not in reasons:
            continue
        bn = modules[node.target]
        src = node.args[0] if node.args else None
        # A reason found by the Sequential pass (shared, training, ...) stays; the graph
        # only replaces "not found next to a conv".
        generic = reasons[node.target].startswith(("not found", "follows"))
        if not (isinstance(src, fx.Node) and src.op == "call_module"):
            if generic:
                reasons[node.target] = "its input does not come straight from a module (torch.fx)"
            continue
        why = _why_not(modules[src.target], bn, refs)
        if why is None and (
            len(src.users) != 1 or calls.get(src.target, 0) != 1 or calls.get(node.target, 0) != 1
        ):
            why = f"{src.target}'s output is also used elsewhere, or a layer is called twice"
        if why is not None:
            if generic or not why.startswith("follows"):
                reasons[node.target] = why
            continue
        prev = modules[src.target]
        fused, after = _fold(prev, bn)
        _set_submodule(gm, src.target, fused)
        if isinstance(after, nn.Identity):
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
            _set_submodule(gm, node.target, after)
        else:
            _set_submodule(gm, node.target, after)
        report.fused.append((src.target, node.target))
        del reasons[node.target]
        changed = True
    if not changed:
        return model
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def fuse_conv_bn(model: nn.Module, *, inplace: bool = False, method: str = "auto") -> FuseReport:
    r"""Fold every eval-mode BatchNorm that directly follows a Conv1d/2d/3d,
    ConvTranspose1d/2d/3d or Linear into that layer, for inference.

    Per output channel, with s = γ / √(running_var + ε):

    .. math::
        W' = W \cdot s,\qquad b' = (b - \mu_{running}) \cdot s + \beta

    (computed in float64, stored in the layer's dtype). The BN layer becomes
    ``nn.Identity`` (or the activation of a sharenorm BN with ``act=``); after a Linear,
    :class:`FoldedNorm1d`, which refuses inputs other than (N, features), where the fold
    would not be the BatchNorm. Pairs are found
    in two ways: consecutive children of an ``nn.Sequential`` (the model keeps its type);
    then, for BN layers left over (``method="auto"``), in the ``torch.fx`` graph of the
    model traced with :class:`NormTracer` (the result is then a ``torch.fx.GraphModule``),
    when the model can be traced.

    Not folded, and reported with the reason: BN in training mode (unless frozen), BN
    without running statistics, a preceding layer that is not Conv/Linear, that is
    shared (the same module or weight used elsewhere: folding would change the other
    use) or parametrized (a tie), whose output also goes elsewhere, or a channel
    mismatch.

    Args:
        model: the model (in eval mode).
        inplace: fold into ``model`` itself; by default a deep copy is fused and
            ``model`` is untouched.
        method: "auto" (Sequential, then torch.fx), "sequential" or "fx".

    Returns:
        :class:`FuseReport` with ``.model``, ``.fused`` and ``.skipped``.

    Example:
        >>> import torch, torch.nn as nn, sharenorm as sn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
        >>> report = sn.fuse_conv_bn(net)
        >>> report.fused, type(report.model[1]).__name__
        ([('0', '1')], 'Identity')
        >>> x = torch.randn(2, 3, 8, 8)
        >>> torch.allclose(report.model(x), net(x), atol=1e-5)
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse_conv_bn expects an nn.Module, got {type(model).__name__}")
    if method not in ("auto", "sequential", "fx"):
        raise ValueError(f"method must be 'auto', 'sequential' or 'fx', got {method!r}")
    if not inplace:
        model = copy.deepcopy(model)
    report = FuseReport(model)
    # Every BN layer starts "not found next to a conv"; passes replace the reason or fold it.
    reasons = {
        name: "not found right after a Conv/Linear"
        for name, m in model.named_modules() if isinstance(m, _BN_TYPES)
    }
    if method in ("auto", "sequential"):
        _fuse_sequential(model, report, reasons)
    if method in ("auto", "fx") and reasons:
        report.model = _fuse_fx(model, report, reasons)
    report.skipped = sorted(reasons.items())
    return report
