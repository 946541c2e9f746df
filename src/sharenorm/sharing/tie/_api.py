"""``tie`` and ``untie``: check a tie completely, then make it (or undo it)."""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

from sharenorm._checks import check_module
from sharenorm.sharing.tie._inspect import _same_storage, iter_links
from sharenorm.sharing.tie._link import _OWNED, Link, links_of, tensor_kind
from sharenorm.sharing.tie._names import _join, _module_paths, resolve
from sharenorm.sharing.tie._state_dict import owner_load_pre_hook
from sharenorm.sharing.tie._tied_class import base_class, link_attr, own_attr
from sharenorm.sharing.tie._transforms import check_transform, compose, transformed_shape


def tie(model: nn.Module, target: str, source: str, transform: str | None = None) -> nn.Module:
    r"""Make ``target`` computed from ``source``: ``target = T(source)``, one stored tensor.

    ``T`` is the identity (``transform=None``) or ``"transpose"`` (``W.T`` for a matrix; swaps the
    first two dimensions otherwise). After the call ``model.<target>`` is ``T(model.<source>)``
    at every access, gradients of both uses accumulate into the source, ``parameters()`` yields
    the tensor once, so an optimizer steps it once. The target takes the source's values (its
    own are discarded). Create optimizers *after* tying. The tie survives ``.to()``, ``deepcopy``,
    pickling, ``state_dict`` both ways, ``to_empty()``, ``torch.compile``, DDP and FSDP2 with
    both ends in one ``fully_shard`` unit (how: docs/design/tying.md). Prune or parametrize
    (``weight_norm``, ``spectral_norm``) the source: the target follows. The target stores no
    tensor of its own: pruning it raises a ValueError that names the source, and torch's
    parametrizations fail on it inside torch (``ValueError``, ``KeyError`` for the old APIs).

    Args:
        model: the module both names are relative to.
        target: dotted name of the parameter (or buffer) that becomes computed, e.g.
            ``"decoder.weight"``.
        source: dotted name of the tensor it is computed from. If ``source`` is itself tied,
            ``target`` is tied to that tie's source with the composed transform.
        transform: ``None`` or ``"transpose"``.

    Returns:
        ``model`` (for chaining).

    Raises:
        ValueError: unknown names (with close names suggested), a tensor tied to itself, a cycle,
            a target that is already tied, shapes/dtypes/devices that do not match, a parameter
            tied to a buffer, a transposed tie into an embedding with ``sparse=True``.

    Example:
        >>> import torch, sharenorm as sn
        >>> ae = torch.nn.ModuleDict({"enc": torch.nn.Linear(6, 2), "dec": torch.nn.Linear(2, 6)})
        >>> _ = sn.tie(ae, "dec.weight", "enc.weight", transform="transpose")
        >>> torch.equal(ae.dec.weight, ae.enc.weight.T), sn.count_parameters(ae)
        (True, 20)
    """
    _make(model, _plan(model, target, source, transform))
    return model


# Ties not yet made, {id(module): {attribute: link}}, over the modules' own (sharenorm.load
# checks a whole manifest against it before changing anything).
_Overlay = dict[int, dict[str, Link]]
# A checked tie: (target, its module, its attribute, the link that will compute it, and the
# ties that read the target now, as (module path, module, attribute, link)).
_Plan = tuple[str, nn.Module, str, Link, list[tuple[str, nn.Module, str, Link]]]


def _links_of(module: nn.Module, overlay: _Overlay | None = None) -> dict[str, Link]:
    extra = overlay.get(id(module)) if overlay else None
    return {**links_of(module), **extra} if extra else links_of(module)


def _plan(
    model: nn.Module, target: str, source: str, transform: str | None,
    overlay: _Overlay | None = None,
) -> _Plan:
    """Every check of :func:`tie`, changing nothing (also against the ties of ``overlay``)."""
    check_transform(transform)
    check_module(model, "tie")
    if target == source:
        raise ValueError(f"cannot tie {target!r} to itself; name two different tensors")
    tmod, tattr = resolve(model, target, "target")
    smod, sattr = resolve(model, source, "source")
    if tmod is smod and tattr == sattr:
        raise ValueError(
            f"{target!r} and {source!r} are already the same tensor (one module used in two "
            f"places); there is nothing to tie"
        )
    tlinks = _links_of(tmod, overlay)
    if tattr in tlinks:
        raise ValueError(
            f"target {target!r} is already tied to {tlinks[tattr].hint}; call "
            f"sharenorm.untie(model, {target!r}) first to re-tie it"
        )
    # Follow a tied source to the tensor that is actually stored (ties stay one level deep).
    root_mod, root_attr, root_transform, root_hint = smod, sattr, transform, source
    link = _links_of(smod, overlay).get(sattr)
    if link is not None:
        root_mod, root_attr = link.module, link.name
        root_transform = compose(link.transform, transform)
        path = _module_paths(model).get(id(link.module))
        root_hint = link.hint if path is None else _join(path, link.name)
    if root_mod is tmod and root_attr == tattr:
        raise ValueError(
            f"tying {target!r} to {source!r} would make a cycle: {source!r} is itself computed "
            f"from {target!r}; untie one of them first"
        )
    if isinstance(tmod, nn.RNNBase):
        raise ValueError(
            f"cannot make {target!r} computed: torch's {type(tmod).__name__} keeps its own list of "
            f"weight references (_flat_weights) that a tie cannot keep current; use it as the "
            f"source of the tie instead, or sharenorm.SharedRNN"
        )
    _check_sparse(tmod, target, root_transform)
    tkind, skind = tensor_kind(tmod, tattr), tensor_kind(root_mod, root_attr)
    if tkind != skind:
        raise ValueError(
            f"cannot tie {tkind} {target!r} to {skind} {source!r}; tie parameters to parameters "
            f"and buffers to buffers"
        )
    old, src = getattr(tmod, tattr), getattr(root_mod, root_attr)
    expected = transformed_shape(tuple(src.shape), root_transform)
    if tuple(old.shape) != expected:
        what, detail, hint = source, "", ""
        if transform == "transpose":
            what, detail = f"{source}ᵀ", f", the transpose of {tuple(src.shape)}"
        elif old.dim() >= 2 and transformed_shape(tuple(old.shape), "transpose") == expected:
            hint = " (use transform='transpose' for a transposed tie)"
        raise ValueError(
            f"cannot tie {target!r} (shape {tuple(old.shape)}) to {what!r} (shape {expected}"
            f"{detail}); the shapes must be equal{hint}"
        )
    for what, a, b, fix in (
        ("dtype", old.dtype, src.dtype, f"convert one of them first, e.g. model.to({src.dtype})"),
        ("device", old.device, src.device, "move the model to one device first"),
    ):
        if a != b:
            raise ValueError(
                f"cannot tie {target!r} ({what} {a}) to {source!r} ({what} {b}); {fix}"
            )
    # Other ties that read the target (it was a source) will read the target's new source.
    readers = [
        (mpath, m, name, link)
        for mpath, m in model.named_modules()
        for name, link in _links_of(m, overlay).items()
        if link.module is tmod and link.name == tattr
    ]
    for mpath, m, name, link in readers:
        _check_sparse(m, _join(mpath, name), compose(root_transform, link.transform))
    persistent = tattr not in tmod._non_persistent_buffers_set
    root = Link(root_mod, root_attr, root_transform, root_hint, persistent, tuple(old.shape))
    return target, tmod, tattr, root, readers


def _simulate(plan: _Plan, overlay: _Overlay) -> None:
    """Record ``plan``'s links in ``overlay``, as :func:`_make` would make them."""
    _, tmod, tattr, root, readers = plan
    for _, m, name, link in readers:
        overlay.setdefault(id(m), {})[name] = _repoint(copy.copy(link), root)
    overlay.setdefault(id(tmod), {})[tattr] = root


def _repoint(link: Link, root: Link) -> Link:
    """``link``, made to read ``root``'s source (the transforms composed)."""
    link.module, link.name, link.hint = root.module, root.name, root.hint
    link.transform = compose(root.transform, link.transform)
    return link


def _make(model: nn.Module, plan: _Plan) -> None:
    """Make the tie that :func:`_plan` checked."""
    target, tmod, tattr, root, readers = plan
    for mpath, _, name, link in readers:  # their owner may change
        _disown(model, link)
        _own(model, _repoint(link, root), _join(mpath, name))
    link_attr(tmod, tattr, root)
    _own(model, root, target)


def _own(model: nn.Module, link: Link, target: str) -> None:
    """List ``link`` (``target`` from ``link.hint``, names in ``model``) at its owner: the lowest
    common ancestor in ``model`` of every place of both ends (``model`` if one is outside)."""
    tmod = model.get_submodule(target.rpartition(".")[0])
    places: dict[int, list[list[str]]] = {id(tmod): [], id(link.module): []}
    for path, m in model.named_modules(remove_duplicate=False):
        if id(m) in places:
            places[id(m)].append(path.split(".") if path else [])
    opath = ""
    if all(places.values()):  # the common prefix of every place (commonprefix works on lists)
        opath = ".".join(os.path.commonprefix([p for ps in places.values() for p in ps]))
    cut = len(opath) + 1 if opath else 0
    link.target, link.source = target[cut:], link.hint[cut:]
    owner = model.get_submodule(opath)
    if _OWNED not in owner.__dict__:
        owner.__dict__[_OWNED] = []
        owner.register_load_state_dict_pre_hook(owner_load_pre_hook)
    owner.__dict__[_OWNED].append(link)


def _disown(model: nn.Module, link: Link) -> None:
    """Remove ``link`` from its owner's list (wherever in ``model`` that is)."""
    for m in model.modules():
        owned = m.__dict__.get(_OWNED)
        if owned and any(x is link for x in owned):
            owned[:] = [x for x in owned if x is not link]


def _check_sparse(module: nn.Module, target: str, transform: str | None) -> None:
    """Refuse a transposed tie into an embedding with ``sparse=True``: its sparse gradient
    cannot flow back through the transpose (torch fails inside backward)."""
    if transform == "transpose" and getattr(module, "sparse", False) is True:
        raise ValueError(
            f"cannot make {target!r} a transposed tie target: its {base_class(module).__name__} "
            f"has sparse=True, and a sparse gradient cannot flow back through a transpose; tie "
            f"it without transform (to a tensor of its own shape), or build it with sparse=False"
        )


def untie(model: nn.Module, target: str) -> nn.Module:
    """Give ``target`` its own tensor again, equal to its current (tied) value.

    Works for ties made by :func:`tie` and for plain sharing (one ``nn.Parameter`` assigned to
    two modules). The new tensor is a contiguous copy with the source's ``requires_grad``: an
    optimizer built before does not hold it (build it after untying, or
    ``opt.add_param_group({"params": [new tensor]})``), or the target stays fixed.

    Raises:
        ValueError: ``target`` does not exist (close names suggested) or is not tied/shared.

    Example:
        >>> import torch, sharenorm as sn
        >>> m = torch.nn.ModuleDict({"a": torch.nn.Linear(3, 3), "b": torch.nn.Linear(3, 3)})
        >>> _ = sn.untie(sn.tie(m, "b.weight", "a.weight"), "b.weight")
        >>> sn.count_parameters(m)
        24
    """
    tmod, tattr = resolve(model, target, "target")
    link = links_of(tmod).get(tattr)
    current = getattr(tmod, tattr)
    if link is None:  # plain sharing, or a mistake
        named = [*model.named_parameters(remove_duplicate=False)]
        named += model.named_buffers(remove_duplicate=False)
        if not any(n != target and _same_storage(t, current) for n, t in named):
            targets = list(dict.fromkeys(
                t.target for t in iter_links(model)
                if t.link.module is tmod and t.link.name == tattr
            ))
            if targets:
                raise ValueError(
                    f"{target!r} is the source of the tie of {', '.join(map(repr, targets))}: it "
                    f"holds the tensor itself; untie the target instead, e.g. "
                    f"sharenorm.untie(model, {targets[0]!r})"
                )
            raise ValueError(
                f"{target!r} is not tied or shared; sharenorm.ties(model) lists the tie groups"
            )
        parameter, requires_grad = tattr in tmod._parameters, current.requires_grad
    else:  # a parameter if its source is one, or is computed from them (a parametrization)
        parameter, requires_grad = link.kind() == "parameter", link.tensor().requires_grad
    own = current.detach().clone(memory_format=torch.contiguous_format)
    if parameter:
        own = nn.Parameter(own, requires_grad=requires_grad)
    if link is None:
        (tmod._parameters if tattr in tmod._parameters else tmod._buffers)[tattr] = own
    else:
        own_attr(tmod, tattr, own, link)
        _disown(model, link)
    return model
