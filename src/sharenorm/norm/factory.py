"""Build a norm layer from a string, and swap every norm layer of a model for another kind:
``make_norm("gn", 64)`` plugs a norm into a model, ``convert_norm(model, "group")`` tries
GroupNorm instead of BatchNorm in one line, ``convert_norm(model, "sync")`` (or
``convert_sync_batchnorm``) readies a model for SyncBatchNorm training.

Example:
    >>> import torch.nn as nn, sharenorm as sn
    >>> net = nn.Sequential(nn.Conv2d(3, 32, 3), nn.BatchNorm2d(32), nn.ReLU())
    >>> report = sn.convert_norm(net, "group", num_groups=8)
    >>> type(net[1]).__name__, net[1].num_groups, len(report)
    ('GroupNorm', 8, 1)
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sharenorm._checks import as_count, check_module
from sharenorm.norm._replace import replace_modules
from sharenorm.norm.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm
from sharenorm.norm.batchrenorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d, _BatchRenorm
from sharenorm.norm.groupnorm import GroupNorm
from sharenorm.norm.instancenorm import (
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    _InstanceNorm,
)
from sharenorm.norm.post import Activation, NormAct, activation_name, post_modules
from sharenorm.norm.syncbatchnorm import SyncBatchNorm
from sharenorm.norm.tools.freeze import (
    freeze_norm_stats,
    has_running_stats,
    is_freeze_hook,
    is_norm_stats_frozen,
)
from sharenorm.sharing.tie import iter_links

__all__ = [
    "make_norm",
    "convert_norm",
    "convert_sync_batchnorm",
    "ConversionReport",
    "Activation",
    "NORM_KINDS",
]

# alias -> canonical kind
_KINDS = {
    "batch": "batch",
    "bn": "batch",
    "batchnorm": "batch",
    "instance": "instance",
    "in": "instance",
    "instancenorm": "instance",
    "group": "group",
    "gn": "group",
    "groupnorm": "group",
    "layer": "layer",
    "ln": "layer",
    "layernorm": "layer",
    "none": "none",
    "identity": "none",
    # BatchNorm variants; not in NORM_KINDS, which lists the seeds' norms.
    "sync": "sync",
    "syncbn": "sync",
    "syncbatch": "sync",
    "syncbatchnorm": "sync",
    "renorm": "renorm",
    "brn": "renorm",
    "batchrenorm": "renorm",
}
NORM_KINDS = ("batch", "instance", "group", "layer", "none")
_BATCH = {1: BatchNorm1d, 2: BatchNorm2d, 3: BatchNorm3d}
_RENORM = {1: BatchRenorm1d, 2: BatchRenorm2d, 3: BatchRenorm3d}
_INSTANCE = {1: InstanceNorm1d, 2: InstanceNorm2d, 3: InstanceNorm3d}
# The torch.nn layers convert_norm recognises (channel-first norms; nn.LayerNorm
# normalizes trailing dims and is left alone).
_TORCH_BATCH = (nn.modules.batchnorm._BatchNorm,)
_TORCH_INSTANCE = (nn.modules.instancenorm._InstanceNorm,)


def canonical_kind(kind: str) -> str:
    """ "bn" → "batch", … ; unknown names get a ValueError with close matches."""
    key = str(kind).lower().replace("_", "").replace("-", "")
    if key not in _KINDS:
        close = difflib.get_close_matches(key, list(_KINDS), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown norm kind {kind!r}; choose one of 'batch'|'bn', 'instance'|'in', "
            f"'group'|'gn', 'layer'|'ln', 'none', 'sync'|'syncbn' (SyncBatchNorm), "
            f"'renorm'|'brn' (BatchRenorm).{hint}"
        )
    return _KINDS[key]


def default_num_groups(num_channels: int, target: int = 32) -> int:
    """The GN paper's G = 32, or the largest divisor of C below it when 32 does not divide C."""
    return max(g for g in range(1, min(target, num_channels) + 1) if num_channels % g == 0)


def make_norm(kind: str, num_channels: int, *, dim: int = 2, **kw) -> nn.Module:
    """A norm layer for ``num_channels`` channels from a name.

    Args:
        kind: "batch"|"bn", "instance"|"in", "group"|"gn", "layer"|"ln" (GroupNorm
            with one group: statistics over (C, *) per sample), "none"; and the
            BatchNorm variants "sync"|"syncbn" (SyncBatchNorm) and "renorm"|"brn"
            (BatchRenorm1d/2d/3d).
        num_channels: C.
        dim: spatial dims of the input (1, 2 or 3) for batch/instance kinds; 0 means
            ``(N, C)`` features (BatchNorm1d).
        **kw: passed to the layer (eps, momentum, affine, num_groups, group_size, act, ...).
            For "group" without ``num_groups``/``group_size``, G = 32 or the largest
            divisor of C below 32.

    Example:
        >>> import sharenorm as sn
        >>> sn.make_norm("gn", 48)
        GroupNorm(24, 48, eps=1e-05, affine=True, bias=True)
    """
    kind = canonical_kind(kind)
    if dim not in (0, 1, 2, 3):
        raise ValueError(f"dim must be 0, 1, 2 or 3 spatial dims, got {dim!r}")
    if kind == "none":
        act, act_param = kw.pop("act", None), kw.pop("act_param", None)
        return nn.Identity() if act is None else Activation(act, act_param)
    if kind == "batch":
        return _BATCH[max(dim, 1)](num_channels, **kw)
    if kind == "sync":
        return SyncBatchNorm(num_channels, **kw)
    if kind == "renorm":
        return _RENORM[max(dim, 1)](num_channels, **kw)
    if kind == "instance":
        if dim == 0:
            raise ValueError("instance norm needs spatial dims (dim 1, 2 or 3); got dim=0")
        return _INSTANCE[dim](num_channels, **kw)
    if kind == "layer":
        if kw.get("num_groups", 1) != 1 or "group_size" in kw:
            raise ValueError("kind='layer' is GroupNorm with one group; use kind='group' for G > 1")
        kw.pop("num_groups", None)
        return GroupNorm(1, num_channels, **kw)
    if "num_groups" not in kw and "group_size" not in kw:
        num_channels = as_count(num_channels, "num_channels", " (the channel count C)")
        kw["num_groups"] = default_num_groups(num_channels)
    return GroupNorm(num_channels=num_channels, **kw)


@dataclass
class Change:
    """One swapped layer: its qualified name, the old and new layer descriptions, and
    what was carried over."""

    name: str
    old: str
    new: str
    kept: tuple[str, ...]
    note: str = ""


@dataclass
class ConversionReport:
    """What :func:`convert_norm` changed. ``model`` is the converted model (the same
    object, unless the model itself was a norm layer)."""

    model: nn.Module
    changes: list[Change] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why), left as is

    def __len__(self) -> int:
        return len(self.changes)

    def __iter__(self):
        return iter(self.changes)

    def __str__(self) -> str:
        if not self.changes and not self.skipped:
            return "convert_norm: no norm layer found"
        lines = [f"convert_norm: {len(self.changes)} layer(s) changed"]
        for c in self.changes:
            kept = ", ".join(c.kept) if c.kept else "nothing"
            note = f"; {c.note}" if c.note else ""
            lines.append(f"  {c.name or '<model>'}: {c.old} -> {c.new} (kept {kept}{note})")
        if self.skipped:
            lines.append(f"{len(self.skipped)} norm layer(s) left as they are:")
            lines += [f"  {name or '<model>'}: {why}" for name, why in self.skipped]
        return "\n".join(lines)


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, (_BatchNorm, _InstanceNorm, GroupNorm, nn.GroupNorm)) or isinstance(
        m, _TORCH_BATCH + _TORCH_INSTANCE
    )


_NORM_STATE = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}


def _own_additions(m: nn.Module) -> str | None:
    """Why a norm layer of another library's subclass cannot be replaced by a plain norm:
    its class holds modules, tensors or forward arguments that a norm does not, which its
    forward may use (Hugging Face's BitGroupNormActivation applies an activation module,
    timm's SplitBatchNorm2d splits the batch over auxiliary BNs, a masked GroupNorm takes a
    mask); None for torch.nn's and sharenorm's classes and timm's norm-act convention
    (``drop`` and ``act`` modules, which the conversion keeps)."""
    if type(m).__module__.startswith(("torch.nn.", "sharenorm.")):
        return None
    post = ("drop", "act") if post_modules(m) is not None else ()
    modules = [n for n, _ in m.named_children() if n not in post]
    tensors = [n for n, _ in (*m.named_parameters(recurse=False), *m.named_buffers(recurse=False))
               if n not in _NORM_STATE]
    try:
        args = list(inspect.signature(type(m).forward).parameters)[2:]
    except (TypeError, ValueError):  # no signature to read: judged by its state alone
        args = []
    what = [f"modules {modules}" if modules else "", f"tensors {tensors}" if tensors else "",
            f"forward arguments {args}" if args else ""]
    what = [w for w in what if w]
    if not what:
        return None
    return (f"its class {type(m).__name__} holds {' and '.join(what)} that a norm layer does "
            "not, which its forward may use; a plain norm in its place would drop them")


def _spatial_dims(m: nn.Module) -> int | None:
    """The spatial rank a layer's class names (BatchNorm2d: 2), None where it takes any
    (GroupNorm, SyncBatchNorm)."""
    name = type(m).__name__
    for d in (1, 2, 3):
        if name.endswith(f"{d}d"):
            return d
    return None


def _same_kind(old: nn.Module, kind: str) -> bool:
    """Whether ``old`` and a new layer of ``kind`` are the same norm (BN and its variants,
    or IN), so running statistics and their tracking carry over."""
    return (
        kind in ("batch", "sync", "renorm") and isinstance(old, _TORCH_BATCH + (_BatchNorm,))
    ) or (kind == "instance" and isinstance(old, _TORCH_INSTANCE + (_InstanceNorm,)))


def _post_settings(old: nn.Module, kw: dict) -> tuple[dict, tuple[nn.Module, nn.Module] | None, str]:
    """What ``old`` applies after normalizing, for the new layer: ``act``/``act_param``
    settings, the modules to keep running after the new norm (``None``: none), and a
    note. A sharenorm layer's ``act`` is a name; another library's (timm's) ``drop`` and
    ``act`` are modules, which become the new layer's ``act=`` where one computes the same
    (no drop, an activation :func:`activation_name` knows), and are kept as modules
    (:class:`NormAct`) otherwise."""
    post = post_modules(old)
    if post is None:
        return {k: getattr(old, k) for k in ("act", "act_param") if hasattr(old, k)}, None, ""
    drop, act = post
    if isinstance(drop, nn.Identity) and isinstance(act, nn.Identity):
        return {}, None, ""  # nothing after the norm: an act= given in kw applies
    if "act" in kw or "act_param" in kw:
        raise ValueError(
            f"this {type(old).__name__} applies {type(drop).__name__} and {type(act).__name__} "
            "after its norm, which convert_norm keeps; pass no act=/act_param=, or set the "
            "layer's .act to the activation you want before converting"
        )
    named = activation_name(act) if isinstance(drop, nn.Identity) else None
    if named is not None:
        name, param = named
        return ({"act": name, "act_param": param},
                None, f"its {type(act).__name__} runs as act={name!r}")
    return ({}, (drop, act),
            f"its {type(drop).__name__} and {type(act).__name__} run after the new norm "
            "(NormAct; the norm's state_dict keys gain '.norm')")


def _convert_one(
    old: nn.Module, kind: str, dim: int | None, kw: dict, like: Tensor | None
) -> tuple[nn.Module, tuple[str, ...], str]:
    """The new layer, the names carried over, and a note for the report. ``like``: a
    tensor of the model whose device and dtype a layer without tensors of its own takes."""
    if isinstance(old, nn.modules.lazy.LazyModuleMixin) and old.has_uninitialized_params():
        raise ValueError(
            f"{type(old).__name__} is a lazy layer whose channel count is not known yet: run "
            "one forward pass (model(example_input)) first, then convert the model"
        )
    channels = getattr(old, "num_features", None) or old.num_channels
    params, post, notes = _post_settings(old, kw)
    # memory_efficient and backend exist on sharenorm layers only.
    for attr in ("eps", "affine", "memory_efficient", "backend"):
        if hasattr(old, attr):
            params[attr] = getattr(old, attr)
    if getattr(old, "affine", False) and getattr(old, "bias", None) is None:
        params["bias"] = False  # γ without β (bias=False): no β parameter appears
    if kind in ("batch", "instance", "sync", "renorm") and hasattr(old, "momentum"):
        params["momentum"] = old.momentum
    # Tracking running statistics means the same between layers of one kind (BN→BN,
    # IN→IN). BatchRenorm always tracks (it corrects towards the running statistics).
    if _same_kind(old, kind) and kind != "renorm" and hasattr(old, "track_running_stats"):
        params["track_running_stats"] = old.track_running_stats
    # GroupNorm → GroupNorm keeps its group count (the default count would change the
    # layer's output although γ/β are copied).
    if kind == "group" and isinstance(old, (GroupNorm, nn.GroupNorm)):
        if "num_groups" not in kw and "group_size" not in kw:
            params["num_groups"] = old.num_groups
    if kind == "none":
        params = {k: v for k, v in params.items() if k in ("act", "act_param")}
    params.update(kw)
    if params.get("act") == "identity":
        params["act"] = None
    # Its γ or running mean, read through getattr so that a tied one gives its source's
    # dtype and device; else any tensor of its own; else the model's (``like``).
    ref = next(
        (t for t in (getattr(old, "weight", None), getattr(old, "running_mean", None),
                     *old.parameters(recurse=False), *old.buffers(recurse=False))
         if isinstance(t, Tensor) and t.is_floating_point()),
        like,
    )
    note = [notes] if notes else []
    rank = _spatial_dims(old) or dim
    if rank is None:
        rank = 2
        if kind in ("batch", "renorm", "instance"):
            note.append(f"{type(old).__name__} takes any rank: 2-d images assumed, pass dim=1 "
                        "or dim=3 for other inputs")
    new = make_norm(kind, channels, dim=rank, **params)
    if ref is not None:
        new = new.to(device=ref.device, dtype=ref.dtype)
    new.train(old.training)
    kept: list[str] = []
    with torch.no_grad():
        for name in ("weight", "bias"):
            src, dst = getattr(old, name, None), getattr(new, name, None)
            if isinstance(src, Tensor) and isinstance(dst, Tensor) and src.shape == dst.shape:
                _carry(old, new, name, src, dst)
                kept.append(name)
        # Running statistics mean the same thing only between layers of one kind.
        if _same_kind(old, kind):
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                src, dst = getattr(old, name, None), getattr(new, name, None)
                if isinstance(src, Tensor) and isinstance(dst, Tensor) and src.shape == dst.shape:
                    _carry(old, new, name, src, dst)
                    kept.append(name)
    norm = new
    if post is not None:
        new = NormAct(new, *post)
    # a freeze moves with the statistics it froze (not onto fresh ones: BN -> IN)
    kept += _carry_hooks(old, new, norm if "running_mean" in kept else None)
    if hasattr(old, "qconfig"):  # torch.ao's per-layer setting, as torch's converter keeps it
        new.qconfig = old.qconfig
    return new, tuple(kept), "; ".join(note)


def _carry(old: nn.Module, new: nn.Module, name: str, src: Tensor, dst: Tensor) -> None:
    """``new.<name>`` takes ``old.<name>``: the tensor itself where ``old`` holds it (its own
    parameter or buffer, of the new one's dtype and device), as torch's
    ``convert_sync_batchnorm`` does, so that an optimizer built before the conversion keeps
    training the new layer; else (a tied attribute, computed from its source) its value."""
    own = old._parameters if name in old._parameters else old._buffers
    if (own.get(name) is src and src.dtype == dst.dtype and src.device == dst.device
            and isinstance(src, nn.Parameter) == isinstance(dst, nn.Parameter)):
        setattr(new, name, src)
    else:
        dst.copy_(src)
        dst.requires_grad_(src.requires_grad)


# A module's forward and backward hook tables (what register_forward_hook,
# register_forward_pre_hook and register_full_backward_hook fill).
_HOOK_TABLES = (
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_pre_hooks",
    "_backward_hooks",
)


def _carry_hooks(old: nn.Module, new: nn.Module, norm: nn.Module | None) -> list[str]:
    """Give ``new`` ``old``'s forward and backward hooks (the same tables, so the handles the
    user holds still remove them), and keep a frozen layer frozen (:func:`freeze_norm_stats`)
    on ``norm``, the new norm layer that took the old running statistics (None: it took
    none, and a freeze of fresh statistics would normalize with 0 and 1). Returns what
    the report lists: "hooks" (the user's), "frozen". A feature extractor's or a logger's
    hook on a norm layer keeps firing after the conversion."""
    kept = []
    tables = [getattr(old, t) for t in _HOOK_TABLES if hasattr(old, t)]
    if any(tables):
        for t in _HOOK_TABLES:
            if hasattr(old, t):
                setattr(new, t, getattr(old, t))
        new._is_full_backward_hook = getattr(old, "_is_full_backward_hook", None)
        if any(not is_freeze_hook(h) for table in tables for h in table.values()
               if callable(h)):
            kept.append("hooks")
    # A freeze acts on the norm itself (its hooks switch its `training` for each call),
    # not on a NormAct around it; without the flag the moved freeze hooks do nothing.
    if norm is not None and is_norm_stats_frozen(old) and has_running_stats(norm):
        freeze_norm_stats(norm)
        kept.append("frozen")
    return kept


def _describe(m: nn.Module) -> str:
    return f"{type(m).__name__}({m.extra_repr()})" if m.extra_repr() else type(m).__name__


def convert_norm(model: nn.Module, kind: str, *, dim: int | None = None, **kw) -> ConversionReport:
    """Swap every channel-first norm layer in ``model`` (torch.nn or sharenorm BatchNorm,
    InstanceNorm, GroupNorm; nested anywhere, in Sequential/ModuleList/ModuleDict) for
    ``kind``, in place.

    γ/β are kept when the new layer has them with the same shape (a layer without β,
    ``bias=False``, gives one without β); running statistics and
    ``track_running_stats`` are kept between layers of the same kind (BN→BN, IN→IN;
    BatchRenorm always tracks them). Kept tensors are the old layer's own Parameters and
    buffers (as torch's ``convert_sync_batchnorm``: an optimizer built before the
    conversion keeps training them), copied only where tied or of another dtype; the old
    layer's forward and backward hooks move to the new one, and a layer frozen by
    :func:`freeze_norm_stats` stays frozen where its running statistics go. ``eps``, ``affine``,
    ``momentum``, ``act``, ``memory_efficient`` and ``backend`` carry over unless given in
    ``kw``, and so does a
    GroupNorm's ``num_groups`` when the new layer is one. The new layer is placed on the
    old one's device and dtype (a layer with no tensors, like InstanceNorm without
    ``affine``, takes the model's first floating tensor's) and in its train/eval mode.
    A BatchNorm/InstanceNorm layer made keeps the old layer's spatial rank (BatchNorm1d:
    1); for old layers that take any rank (GroupNorm, SyncBatchNorm) it is ``dim`` (1, 2
    or 3), and when ``dim`` is not given 2-d images are assumed and the report says so.
    ``nn.LayerNorm`` (trailing-dims norm) is not touched, nor is another library's norm
    subclass whose class holds modules, tensors or forward arguments a norm does not (its
    forward may use them: Hugging Face's BitGroupNormActivation applies an activation, timm's
    SplitBatchNorm2d splits the batch over auxiliary BNs, which are converted): the report
    lists those in ``skipped`` with the reason. timm's norm-act layers (``drop`` and ``act``
    modules) are converted, keeping what they apply after the norm.

    A layer used at several places is converted once (one report entry, under its first name)
    and the new layer is put at every place. Ties (:func:`sharenorm.tie`, e.g. a
    :class:`sharenorm.SharedStack`'s copies) and torch's sharing that involve a converted layer
    are kept between the same names in the new layers; those whose names the new kind lacks on
    both sides (BN's running statistics in a GroupNorm) go with the old layers. A tie that would
    keep only one side, or whose source lies outside ``model``, raises a ``ValueError`` naming
    the fix, before anything changes.

    Returns a :class:`ConversionReport`; ``report.model`` is the converted model (a new
    object only when ``model`` itself is a norm layer).

    Example:
        >>> import torch.nn as nn, sharenorm as sn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
        >>> report = sn.convert_norm(net, "bn")  # torch.nn BN -> sharenorm BN, stats kept
        >>> type(net[1]).__module__, report.changes[0].kept[-1]
        ('sharenorm.norm.batchnorm', 'num_batches_tracked')
    """
    return _convert(model, canonical_kind(kind), _is_norm, dim, kw, "convert_norm")


def _is_plain_batchnorm(m: nn.Module) -> bool:
    """A BatchNorm that SyncBatchNorm replaces: not already one, not BatchRenorm (whose
    correction SyncBatchNorm does not make)."""
    return isinstance(m, _TORCH_BATCH + (_BatchNorm,)) and not isinstance(
        m, (SyncBatchNorm, _BatchRenorm)
    )


def convert_sync_batchnorm(module: nn.Module, process_group: Any = None) -> nn.Module:
    """``convert_norm(module, "sync", process_group=...)`` for BatchNorm layers only, in
    torch.nn.SyncBatchNorm.convert_sync_batchnorm's spelling (its argument names too): every
    torch.nn or sharenorm BatchNorm1d/2d/3d (and torch's SyncBatchNorm) becomes a
    :class:`SyncBatchNorm` keeping everything :func:`convert_norm` keeps (and a ``qconfig``);
    BatchRenorm, InstanceNorm and GroupNorm are left alone. Returns the model (a new module
    only when ``module`` itself is a BatchNorm).

    Example:
        >>> import torch.nn as nn, sharenorm as sn
        >>> net = sn.convert_sync_batchnorm(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)))
        >>> type(net[1]).__name__
        'SyncBatchNorm'
    """
    kw = {"process_group": process_group}
    return _convert(module, "sync", _is_plain_batchnorm, None, kw, "convert_sync_batchnorm").model


# torch.nn.SyncBatchNorm's spelling of the same; set here, where conversion lives, so that
# syncbatchnorm.py needs nothing from this file.
SyncBatchNorm.convert_sync_batchnorm = staticmethod(convert_sync_batchnorm)


def _convert(
    model: nn.Module, kind: str, select: Callable[[nn.Module], bool], dim: int | None,
    kw: dict, caller: str,
) -> ConversionReport:
    """Every layer of ``model`` that ``select`` picks, converted to ``kind`` in place."""
    check_module(model, caller)
    report = ConversionReport(model)
    if select(model) and (why := _own_additions(model)) is not None:
        report.skipped.append(("", why))
        return report
    if select(model):
        outside = next((t for t in iter_links(model) if t.source is None), None)
        if outside is not None:
            raise ValueError(
                f"cannot convert this {type(model).__name__} alone: its {outside.target!r} is "
                f"tied to {outside.link.hint}, which lies outside it; convert the model that "
                f"holds both, or sharenorm.untie(model, '...{outside.target}') first"
            )
        new, kept, note = _convert_one(model, kind, dim, dict(kw), None)
        report.model = new
        report.changes.append(Change("", _describe(model), _describe(new), kept, note))
        return report
    # Each norm once (a module used at several places is one layer), by its first name; then
    # replace_modules puts the new layer at every place and keeps the ties and sharing of the
    # old ones (a SharedStack's copies stay tied to copy 0).
    like = next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()),
                None)
    new_of: dict[int, nn.Module] = {}
    left: set[int] = set()
    for name, old in model.named_modules(remove_duplicate=False):
        if not name or not select(old) or id(old) in new_of or id(old) in left:
            continue
        why = _own_additions(old)
        if why is not None:
            left.add(id(old))
            report.skipped.append((name, why))
        else:
            new, kept, note = _convert_one(old, kind, dim, dict(kw), like)
            new_of[id(old)] = new
            report.changes.append(Change(name, _describe(old), _describe(new), kept, note))
    replace_modules(model, new_of)
    return report
