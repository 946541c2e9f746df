"""``replace_modules``: swap submodules of a model, keeping the ties and sharing around them."""

from __future__ import annotations

from torch import nn

from sharenorm.sharing.tie import iter_links, tie, ties, untie

__all__ = ["replace_modules"]


def replace_modules(model: nn.Module, new_of: dict[int, nn.Module]) -> None:
    """Put ``new_of[id(old)]`` at every place of each submodule ``old`` of ``model``, keeping
    the ties and the sharing that involve the old modules (what :func:`sharenorm.convert_norm`
    does with each norm layer).

    A module used at several places is replaced at all of them by the one new module. A tie
    (:func:`sharenorm.tie`) whose target or source lies in a replaced module is made again
    between the same names; a tensor that several names share (torch's sharing: one
    ``nn.Parameter`` under two names) is shared again, the new module's tensor under every
    name. A tie or shared tensor whose names all go away with the old modules (the running
    statistics of a BatchNorm replaced by a GroupNorm) goes with them. No replaced module may
    contain another.

    Raises:
        ValueError: before anything changes, for a tie or sharing only one side of which
            survives, or a tie whose other side lies outside ``model`` (naming the fix).

    Example:
        >>> import torch.nn as nn, sharenorm as sn
        >>> net = nn.ModuleDict({"a": nn.BatchNorm1d(3), "b": nn.BatchNorm1d(3)})
        >>> _ = sn.tie(net, "b.weight", "a.weight")
        >>> replace_modules(net, {id(net.a): sn.BatchNorm1d(3)})
        >>> [(t.target, t.source) for t in sn.iter_links(net)]
        [('b.weight', 'a.weight')]
    """
    if not new_of:
        return
    if id(model) in new_of:
        raise ValueError("replace_modules replaces submodules; the model itself has no place")
    places: dict[int, list[str]] = {}
    for path, m in model.named_modules(remove_duplicate=False):
        if id(m) in new_of:
            places.setdefault(id(m), []).append(path)

    def module_of(name: str) -> tuple[nn.Module, nn.Module, str]:
        """(module now, module after the replacement, attribute) of a dotted name."""
        mpath, _, attr = name.rpartition(".")
        now = model.get_submodule(mpath)
        return now, new_of.get(id(now), now), attr

    def survives(name: str) -> bool:
        now, after, attr = module_of(name)
        if after is now:
            return True  # not replaced: the name stays what it is
        return after._parameters.get(attr) is not None or after._buffers.get(attr) is not None

    def check(kind: str, target: str, source: str) -> bool:
        """Whether the pair is kept (False: it goes with the old modules)."""
        kept = survives(target), survives(source)
        if all(kept):
            return True
        if any(kept):
            gone = source if kept[0] else target
            raise ValueError(
                f"cannot keep the {kind} of {target!r} to {source!r}: the module that replaces "
                f"{gone.rpartition('.')[0]!r} ({type(module_of(gone)[1]).__name__}) has no "
                f"{gone.rpartition('.')[2]!r}; sharenorm.untie(model, {target!r}) first"
            )
        return False

    # 1. Check everything and plan, before changing anything.
    reties, undo, seen = [], [], set()
    for target, source, transform, link in iter_links(model):
        if id(link) in seen:
            continue  # a second name of a reused target module: one tie
        seen.add(id(link))
        tmod = module_of(target)[0]
        if id(tmod) not in new_of and id(link.module) not in new_of:
            continue
        if source is None:
            raise ValueError(
                f"cannot keep the tie of {target!r} to {link.hint}: the source lies outside "
                f"the model given; pass the model that holds both, or "
                f"sharenorm.untie(model, {target!r}) first"
            )
        undo.append(target)
        if check("tie", target, source):
            reties.append((target, source, transform))
    shares = []
    for group in ties(model):
        now_s, after_s, attr_s = module_of(group.source)
        for name, transform, how in group.members:
            now_t, after_t, attr_t = module_of(name)
            replaced = after_t is not now_t or after_s is not now_s
            if how == "tie" or not replaced or (after_t is after_s and attr_t == attr_s):
                continue  # a tie (above), not touched, or one module at two places
            if check("sharing", name, group.source):
                if transform is not None:
                    raise ValueError(
                        f"cannot keep the sharing of {name!r} with {group.source!r}ᵀ (one memory "
                        f"seen transposed); tie them instead: sharenorm.tie(model, {name!r}, "
                        f"{group.source!r}, transform='transpose')"
                    )
                shares.append((after_t, attr_t, after_s, attr_s))

    # 2. Undo the ties that involve old modules, replace, then share and tie again.
    for target in undo:
        untie(model, target)
    for mid, ps in places.items():
        for path in ps:
            parent, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent), child, new_of[mid])
    for after_t, attr_t, after_s, attr_s in shares:
        tensor = getattr(after_s, attr_s)
        (after_t._parameters if attr_t in after_t._parameters else after_t._buffers)[attr_t] = tensor
    for target, source, transform in reties:
        tie(model, target, source, transform)
