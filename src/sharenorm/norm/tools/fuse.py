"""Fold eval-mode BatchNorm into the Conv/ConvTranspose/Linear that feeds it, for inference.

:func:`fold_bn_weights` is the arithmetic alone, on tensors; :func:`fuse_conv_bn` finds the
pairs in a model (consecutive children of an ``nn.Sequential``, then the ``torch.fx`` graph
traced with :class:`NormTracer`), folds them, and reports every BatchNorm it left, with why.

Example:
    >>> import torch, torch.nn as nn, sharenorm as sn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.SiLU()).eval()
    >>> sn.fuse_conv_bn(net).fused
    [('0', '1')]
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.nn.utils import parametrize

from sharenorm._checks import check_module
from sharenorm.norm.batchnorm import _NormBase
from sharenorm.norm.groupnorm import GroupNorm
from sharenorm.norm.post import Activation, post_modules
from sharenorm.norm.tools.freeze import BN_TYPES, STAT_TYPES, is_norm_stats_frozen

__all__ = ["fold_bn_weights", "fuse_conv_bn", "FuseReport", "FoldedNorm1d", "NormTracer"]

_FUSABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
            nn.ConvTranspose3d, nn.Linear)
# The reason every BatchNorm starts with; the passes fold it or say what they found.
_UNSEEN = "not found right after a Conv/Linear"


# ----------------------------------------------------------------------------- arithmetic


@torch.no_grad()
def fold_bn_weights(
    weight: Tensor,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    gamma: Tensor | None = None,
    beta: Tensor | None = None,
    *,
    transpose: bool = False,
    groups: int = 1,
) -> tuple[Tensor, Tensor]:
    r"""The weight and bias of a Conv/ConvTranspose/Linear that computes what it computed
    followed by an eval-mode BatchNorm (``torch.nn.utils.fusion.fuse_conv_bn_weights``'s
    arithmetic, also for grouped transposed convolutions). Per output channel, with
    s = γ / √(running_var + ε):

    .. math::
        W' = W \cdot s,\qquad b' = (b - \mu_{running}) \cdot s + \beta

    computed in float64 and returned in ``weight``'s dtype (no autograd history).

    Args:
        weight: (C_out, ...) for Conv/Linear; (C_in, C_out / groups, ...) when ``transpose``.
        bias: (C_out,) or None (zeros).
        running_mean, running_var: (C_out,) BatchNorm statistics; ``eps`` its ε.
        gamma, beta: (C_out,) or None (an affine-less BatchNorm: ones, zeros).
        transpose: ``weight`` is a ConvTranspose's; ``groups`` its group count.

    Example:
        >>> import torch
        >>> from sharenorm import fold_bn_weights
        >>> w, b = fold_bn_weights(torch.ones(2, 1), None, torch.tensor([1.0, 0.0]),
        ...                        torch.tensor([4.0, 1.0]), 0.0, torch.tensor([2.0, 1.0]))
        >>> w.flatten().tolist(), b.tolist()
        ([1.0, 1.0], [-1.0, 0.0])
    """
    f64 = torch.float64
    c = running_mean.shape[0]
    w = weight.to(f64)
    gamma = torch.ones(c, dtype=f64, device=w.device) if gamma is None else gamma.to(f64)
    beta = torch.zeros(c, dtype=f64, device=w.device) if beta is None else beta.to(f64)
    b = torch.zeros(c, dtype=f64, device=w.device) if bias is None else bias.to(f64)
    scale = gamma * torch.rsqrt(running_var.to(f64) + eps)
    if transpose:
        # weight (C_in, C_out / groups, *k): output channel g·(C_out/groups) + j is
        # column j of group g's rows.
        shape = (groups, w.shape[0] // groups, w.shape[1]) + w.shape[2:]
        s = scale.reshape((groups, 1, w.shape[1]) + (1,) * (w.dim() - 2))
        new_w = (w.reshape(shape) * s).reshape(w.shape)
    else:
        new_w = w * scale.reshape((-1,) + (1,) * (w.dim() - 1))
    new_b = (b - running_mean.to(f64)) * scale + beta
    return new_w.to(weight.dtype), new_b.to(weight.dtype)


# ----------------------------------------------------------------------------- modules


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


class FoldedNorm1d(nn.Module):
    """What stands where a BatchNorm1d after a Linear was folded into it: what the norm
    applied after itself (its activation), and a check of the rank. The fold is that
    BatchNorm only on (N, features) inputs; on an (N, L, features) one the BatchNorm
    normalized dim 1 (L), which no change of the Linear reproduces.

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


def _out_channels(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _own_forward(m: nn.Module, base: type) -> bool:
    """Whether ``m``'s class replaces the forward of ``base`` (one of its torch.nn bases)."""
    return type(m).forward is not next(c for c in type(m).__mro__ if c in base).forward


def _why_not(prev: nn.Module, bn: nn.Module, refs: dict[int, int]) -> str | None:
    """None if ``bn`` can be folded into ``prev``; the reason otherwise."""
    if not isinstance(prev, _FUSABLE):
        return f"follows a {type(prev).__name__}, not a Conv/ConvTranspose/Linear"
    if _own_forward(prev, _FUSABLE):
        # timm's StdConv2d standardizes its weight in forward: a scale folded into the weight
        # would be standardized away
        return (f"the layer before it, a {type(prev).__name__}, computes its own forward (it "
                "may transform its weight, as weight standardization does)")
    if prev._forward_pre_hooks or prev._forward_hooks:
        return ("the layer before it has forward hooks (torch.nn.utils.weight_norm and "
                "spectral_norm recompute its weight in one)")
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


def _after(bn: nn.Module) -> nn.Module:
    """What the norm applies after normalizing, as the module that takes its place: a
    sharenorm ``act=`` as :class:`Activation`, another library's (timm's) ``drop`` and
    ``act`` modules as they are, nothing as ``nn.Identity``."""
    post = post_modules(bn)
    if post is None:
        act = getattr(bn, "act", None)
        return nn.Identity() if act is None else Activation(act, getattr(bn, "act_param", None))
    drop, act = post
    if isinstance(drop, nn.Identity):
        return act
    return nn.Sequential(OrderedDict(drop=drop, act=act))


def _fold(prev: nn.Module, bn: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(the folded copy of ``prev``, what replaces ``bn``)."""
    new_w, new_b = fold_bn_weights(
        prev.weight, prev.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias,
        transpose=isinstance(prev, nn.modules.conv._ConvTransposeNd),
        groups=getattr(prev, "groups", 1),
    )
    fused = copy.deepcopy(prev)
    trainable = prev.weight.requires_grad
    fused.weight = nn.Parameter(new_w, requires_grad=trainable)
    fused.bias = nn.Parameter(new_b, requires_grad=trainable)
    after = _after(bn)
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
        # a subclass with its own forward (timm's SequentialAppendList keeps every
        # intermediate output) need not chain its children: the fx pass reads what it does
        if not isinstance(seq, nn.Sequential) or _own_forward(seq, (nn.Sequential,)):
            continue
        keys = list(seq._modules)
        for prev_key, bn_key in zip(keys, keys[1:], strict=False):
            bn, prev = seq._modules[bn_key], seq._modules[prev_key]
            if not isinstance(bn, BN_TYPES):
                continue
            bn_name = f"{seq_name}.{bn_key}" if seq_name else bn_key
            why = _why_not(prev, bn, refs)
            if why is not None:
                reasons[bn_name] = why
                continue
            seq._modules[prev_key], seq._modules[bn_key] = _fold(prev, bn)
            report.fused.append((f"{seq_name}.{prev_key}" if seq_name else prev_key, bn_name))
            reasons.pop(bn_name, None)


# ----------------------------------------------------------------------------- torch.fx


class NormTracer(fx.Tracer):
    """A ``torch.fx`` tracer that keeps every norm layer as a leaf, one ``call_module``
    node each: torch.nn's and sharenorm's (which ``fx.Tracer`` records as one node too), and
    subclasses of torch.nn's BatchNorm, InstanceNorm and GroupNorm from other libraries
    (timm's ``BatchNormAct2d``), which ``fx.Tracer`` would trace into and leave no layer to
    fold.

    Example:
        >>> import torch, torch.fx as fx, torch.nn as nn, sharenorm as sn
        >>> from sharenorm.norm.tools import NormTracer
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 1), sn.BatchNorm2d(4, act="relu"))
        >>> gm = fx.GraphModule(net, NormTracer().trace(net))
        >>> [n.target for n in gm.graph.nodes if n.op == "call_module"]
        ['0', '1']
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (_NormBase, GroupNorm, nn.GroupNorm) + STAT_TYPES) or (
            super().is_leaf_module(m, module_qualified_name)
        )


def _symbolic_trace(model: nn.Module) -> fx.GraphModule:
    """``fx.symbolic_trace`` with every norm as a leaf (:class:`NormTracer`)."""
    graph = NormTracer().trace(model)
    return fx.GraphModule(model, graph, model.__class__.__name__)


def _generic(reason: str) -> bool:
    """Whether ``reason`` is a guess a closer look may replace (not a found obstacle)."""
    return reason.startswith((_UNSEEN, "follows"))


def _not_called(name: str, graph: fx.Graph) -> str:
    """Why the traced graph has no call of the layer ``name``."""
    inside = [n.target for n in graph.nodes
              if n.op in ("get_attr", "call_module") and str(n.target).startswith(name + ".")]
    if inside:
        return (f"the model's forward uses its parts ({', '.join(map(str, inside[:3]))}) "
                "instead of calling the layer, so the torch.fx graph has no layer to fold")
    return "the model's forward never calls it (torch.fx trace)"


def _fold_in_graph(
    owner: nn.Module, graph: fx.Graph, prefix: str, refs: dict[int, int],
    report: FuseReport, reasons: dict[str, str],
) -> list[fx.Node]:
    """Fold, in ``owner`` (the module ``graph`` was traced from, at ``prefix`` in the model),
    every BatchNorm call whose input is only a foldable layer's output; give the others
    their reason. Returns the BatchNorm nodes folded into a plain ``nn.Identity``."""
    modules = dict(owner.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for name in [n[len(prefix):] for n in reasons if n.startswith(prefix)]:
        if name not in calls and reasons[prefix + name].startswith(_UNSEEN):
            reasons[prefix + name] = _not_called(name, graph)
    erasable = []
    for node in list(graph.nodes):
        if node.op != "call_module" or prefix + node.target not in reasons:
            continue
        key = prefix + node.target
        bn = modules[node.target]
        src = node.args[0] if node.args else None
        # A reason found by the Sequential pass (shared, training, ...) stays; the graph
        # only replaces a guess.
        generic = _generic(reasons[key])
        if not (isinstance(src, fx.Node) and src.op == "call_module"):
            if generic and prefix and isinstance(src, fx.Node) and src.op == "placeholder":
                reasons[key] = (f"its input comes from outside {prefix[:-1]}, the largest part "
                                "of the model that torch.fx could trace")
            elif generic:
                reasons[key] = "its input does not come straight from a module (torch.fx)"
            continue
        why = _why_not(modules[src.target], bn, refs)
        if why is None and (
            len(src.users) != 1 or calls.get(src.target, 0) != 1 or calls.get(node.target, 0) != 1
        ):
            why = f"{prefix}{src.target}'s output is also used elsewhere, or a layer is called twice"
        if why is not None:
            if generic or not why.startswith("follows"):
                reasons[key] = why
            continue
        fused, after = _fold(modules[src.target], bn)
        _set_submodule(owner, src.target, fused)
        _set_submodule(owner, node.target, after)
        if isinstance(after, nn.Identity):
            erasable.append(node)
        report.fused.append((prefix + src.target, key))
        del reasons[key]
    return erasable


def _fuse_parts(
    module: nn.Module, prefix: str, refs: dict[int, int], report: FuseReport,
    reasons: dict[str, str],
) -> None:
    """For a model torch.fx cannot trace as a whole (a Hugging Face model checks its
    input's shape in Python): fold inside each largest part that it can trace, in place,
    keeping every module's class (the untraced code around may use them)."""
    for child_name, child in module.named_children():
        qual = prefix + child_name
        if isinstance(child, BN_TYPES) or not any(n.startswith(qual + ".") for n in reasons):
            continue
        try:
            graph = NormTracer().trace(child)
        except Exception:  # noqa: BLE001 - look inside it instead
            _fuse_parts(child, qual + ".", refs, report, reasons)
            continue
        _fold_in_graph(child, graph, qual + ".", refs, report, reasons)


def _fuse_fx(model: nn.Module, report: FuseReport, reasons: dict[str, str]) -> nn.Module:
    refs = _reference_counts(model)
    try:
        gm = _symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "not as a whole"
        msg = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        _fuse_parts(model, "", refs, report, reasons)
        for name, why in reasons.items():
            untraced = f"torch.fx could not trace the model ({msg}), nor a part of it that holds"
            if why == _UNSEEN:
                reasons[name] = f"{untraced} this layer, to find the layer before it"
            elif _generic(why):
                reasons[name] = f"{why}; {untraced} it"
        return model
    folded_before = len(report.fused)
    erasable = _fold_in_graph(gm, gm.graph, "", refs, report, reasons)
    if len(report.fused) == folded_before:
        return model  # nothing folded here: the model keeps its class
    for node in erasable:
        node.replace_all_uses_with(node.args[0])
        gm.graph.erase_node(node)
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
    ConvTranspose1d/2d/3d or Linear into that layer, for inference
    (:func:`fold_bn_weights`: W' = W·s, b' = (b − μ)·s + β with s = γ/√(σ² + ε), in float64,
    stored in the layer's dtype).

    The BN layer becomes ``nn.Identity``, or what it applied after normalizing: a sharenorm
    ``act=`` as :class:`~sharenorm.norm.post.Activation`, another library's (timm's
    ``BatchNormAct2d``) ``drop`` and ``act`` modules as they are; after a Linear,
    :class:`FoldedNorm1d` around that, which refuses inputs other than (N, features),
    where the fold would not be the BatchNorm. Pairs are found in two ways: consecutive
    children of an ``nn.Sequential`` (the model keeps its type); then, for BN layers left
    over (``method="auto"``), in the ``torch.fx`` graph of the model traced with
    :class:`NormTracer` (the result is then a ``torch.fx.GraphModule``); where the model
    cannot be traced as a whole (a Hugging Face model's Python checks of its input), in
    the graph of each largest part that can be, folded in place (every class kept).

    Not folded, and reported with the reason: BN in training mode (unless frozen), BN
    without running statistics, a preceding layer that is not Conv/Linear, that is
    shared (the same module or weight used elsewhere: folding would change the other
    use) or parametrized (a tie), whose output also goes elsewhere, a channel mismatch,
    a model torch.fx cannot trace, or a BN whose forward the model does not call.

    Args:
        model: the model (in eval mode).
        inplace: fold into ``model`` itself; by default a deep copy is fused and
            ``model`` is untouched. Pairs only the torch.fx pass finds are folded in the
            ``GraphModule`` it returns: use ``report.model`` either way.
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
    check_module(model, "fuse_conv_bn")
    if method not in ("auto", "sequential", "fx"):
        raise ValueError(f"method must be 'auto', 'sequential' or 'fx', got {method!r}")
    if not inplace:
        try:
            model = copy.deepcopy(model)
        except RuntimeError as e:  # a hook-based weight_norm's computed weight, outside no_grad
            raise RuntimeError(
                f"fuse_conv_bn cannot copy the model ({e}); pass inplace=True, or run it "
                "under torch.no_grad()") from None
    report = FuseReport(model)
    reasons = {name: _UNSEEN for name, m in model.named_modules() if isinstance(m, BN_TYPES)}
    if method in ("auto", "sequential"):
        _fuse_sequential(model, report, reasons)
    if method in ("auto", "fx") and reasons:
        report.model = _fuse_fx(model, report, reasons)
    if method == "sequential":
        for name, why in reasons.items():
            if why == _UNSEEN:
                reasons[name] = (f"{_UNSEEN} in an nn.Sequential, the only place "
                                 "method='sequential' looks (method='auto' also reads the "
                                 "torch.fx graph)")
    report.skipped = sorted(reasons.items())
    return report
