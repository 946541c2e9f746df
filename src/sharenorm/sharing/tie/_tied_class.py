"""The class of a module with tied attributes: ``TiedLinear`` for an ``nn.Linear``.

A subclass of the module's class with a property per tied name (reading its :class:`Link`)
and the overrides that keep a tie through setattr, state_dict, deepcopy, pickle,
reset_parameters and ``nn.DataParallel`` (refused). Built once per (class, names).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from sharenorm.sharing.tie._link import _LINKS, _SCRATCH, Link, links_of, tensor_kind
from sharenorm.sharing.tie._names import _in_state_dict
from sharenorm.sharing.tie._state_dict import tied_load_from_state_dict, tied_save_to_state_dict
from sharenorm.sharing.tie._transforms import apply_transform

_TIED_CLASSES: dict[tuple[type, tuple[str, ...]], type] = {}


def base_class(module: nn.Module) -> type:
    return getattr(type(module), "_sharenorm_base", type(module))


def _rebuild_tied(base: type, names: tuple[str, ...]) -> nn.Module:
    """Unpickling entry point: an empty instance of the tied class."""
    cls = tied_class(base, names)
    return cls.__new__(cls)


def _tied_reduce_ex(self: nn.Module, protocol: int) -> Any:
    cls = type(self)
    return (_rebuild_tied, (cls._sharenorm_base, cls._sharenorm_names), self.__getstate__())


def _tied_setattr(self: nn.Module, name: str, value: Any) -> None:
    links = links_of(self)
    if name in links:
        raise AttributeError(
            f"'{name}' of this {self._sharenorm_base.__name__} is tied to {links[name].hint} "
            f"and is computed from it; change the source, or call "
            f"sharenorm.untie(model, '...{name}') first to give it its own tensor"
        )
    self._sharenorm_base.__setattr__(self, name, value)


def _tied_delattr(self: nn.Module, name: str) -> None:
    links = links_of(self)
    if name in links:
        raise AttributeError(
            f"'{name}' is tied to {links[name].hint}; call sharenorm.untie(model, '...{name}')"
        )
    self._sharenorm_base.__delattr__(self, name)


# deepcopy: a tie is copied as a tie when its source module is copied in the same call, in
# either order. Source first: the memo holds its copy. Target first: the copy owns a tensor
# (as a copy of torch's identity-tied weight does) and waits on the memo's keep-alive list,
# to which copy.deepcopy appends every object it has copied; when the source's copy is
# appended, the target's copy is tied to it. A source never copied leaves the copy owning it.


class _AwaitSources(list):
    """``memo[id(memo)]`` (deepcopy's keep-alive list) while target copies wait on sources."""

    def __init__(self, items: Any, memo: dict) -> None:
        super().__init__(items)
        self.memo = memo
        self.waiting: dict[int, list[tuple[nn.Module, str, Link]]] = {}

    def append(self, x: Any) -> None:
        super().append(x)
        for y, name, link in self.waiting.pop(id(x), ()):
            _retie_copy(y, name, copy.deepcopy(link, self.memo))


def _await_source(memo: dict, y: nn.Module, name: str, link: Link) -> None:
    keep = memo.get(id(memo))
    if not isinstance(keep, _AwaitSources):
        keep = memo[id(memo)] = _AwaitSources(keep or (), memo)
    keep.waiting.setdefault(id(link.module), []).append((y, name, link))


def _retie_copy(y: nn.Module, name: str, link: Link) -> None:
    """Make the copy ``y``'s own ``name`` computed by ``link`` again."""
    y._parameters.pop(name, None)
    y._buffers.pop(name, None)
    y._non_persistent_buffers_set.discard(name)
    y.__dict__[_LINKS] = {**links_of(y), name: link}
    set_class(y)


def _own_copy(y: nn.Module, name: str, link: Link, memo: dict) -> None:
    """Give the copy ``y`` its own ``name``: a contiguous copy of ``T(source)``."""
    src = link.tensor()
    parameter = tensor_kind(link.module, link.name) == "parameter"
    stored = _in_state_dict(link.module, link.name)
    # One copy per source tensor in this deepcopy, so targets copied together without their
    # source still share it (and so does the source module if it is copied later).
    own = memo.get(id(src)) if stored else None
    if own is None:
        own = src.detach().clone(memory_format=torch.contiguous_format)
        if parameter:
            own = nn.Parameter(own, requires_grad=src.requires_grad)
        if stored:
            memo[id(src)] = own
            memo.setdefault(id(memo), []).append(src)  # as copy._keep_alive: ids stay unique
    if link.transform is not None:
        value = apply_transform(own.detach(), link.transform).contiguous()
        own = nn.Parameter(value, requires_grad=own.requires_grad) if parameter else value
    if parameter:
        y._parameters[name] = own
    else:
        y._buffers[name] = own
        if not link.persistent:
            y._non_persistent_buffers_set.add(name)
    restore_order(y, link.order)


def _tied_deepcopy(self: nn.Module, memo: dict) -> nn.Module:
    base = self._sharenorm_base
    y = base.__new__(base)
    memo[id(self)] = y
    state = {k: v for k, v in self.__getstate__().items() if k != _LINKS}
    y.__setstate__(copy.deepcopy(state, memo))
    kept = {}
    for name, link in links_of(self).items():
        if id(link.module) in memo:  # the source was copied (before, or inside this module)
            kept[name] = copy.deepcopy(link, memo)
        else:
            _own_copy(y, name, link, memo)
            _await_source(memo, y, name, link)
    if kept:
        y.__dict__[_LINKS] = kept
        set_class(y)
    return y


def _tied_replicate_for_data_parallel(self: nn.Module) -> nn.Module:
    # torch.nn.parallel.replicate (nn.DataParallel) copies __dict__ shallowly and re-points
    # each replica's children and parameters through a map it keeps to itself: the replica's
    # link would still read the original source on the first device, and nothing here can
    # find the source's replica. Refuse rather than crash on a device mismatch (or read the
    # original parameter instead of the replica's broadcast copy).
    names = ", ".join(map(repr, links_of(self)))
    raise ValueError(
        f"nn.DataParallel cannot replicate a tied {self._sharenorm_base.__name__} ({names} "
        f"computed from another module): its replicas would read the source on the first "
        f"device; use torch.nn.parallel.DistributedDataParallel (one process per device, ties "
        f"train correctly under it), or sharenorm.untie the target first"
    )


def _tied_extra_repr(self: nn.Module) -> str:
    base = self._sharenorm_base.extra_repr(self)
    desc = ", ".join(
        f"{n}=tied({link.hint}{'ᵀ' if link.transform == 'transpose' else ''})"
        for n, link in links_of(self).items()
    )
    return f"{base}, {desc}" if base else desc


def _tied_reset_parameters(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    # A module re-initialises only what it stores: tied attributes read a scratch tensor
    # meanwhile, so re-initialising every module (e.g. after to_empty()) gives the source the
    # source module's own init, exactly as when the model was built and then tied.
    self.__dict__[_SCRATCH] = {
        n: torch.empty_like(link.value(), memory_format=torch.contiguous_format)
        for n, link in links_of(self).items()
    }
    try:
        return self._sharenorm_base.reset_parameters(self, *args, **kwargs)
    finally:
        del self.__dict__[_SCRATCH]


def _tied_property(name: str) -> property:
    def fget(self: nn.Module) -> Tensor:
        scratch = self.__dict__.get(_SCRATCH)
        if scratch is not None:
            return scratch[name]
        return self.__dict__[_LINKS][name].value()

    return property(fget, doc=f"'{name}', computed from its tie source (sharenorm.tie)")


def tied_class(base: type, names: tuple[str, ...]) -> type:
    """The subclass of ``base`` whose attributes ``names`` are computed from their links."""
    key = (base, names)
    cls = _TIED_CLASSES.get(key)
    if cls is None:
        namespace: dict[str, Any] = {name: _tied_property(name) for name in names}
        namespace.update(
            _sharenorm_base=base,
            _sharenorm_names=names,
            __reduce_ex__=_tied_reduce_ex,
            __deepcopy__=_tied_deepcopy,
            __setattr__=_tied_setattr,
            __delattr__=_tied_delattr,
            _save_to_state_dict=tied_save_to_state_dict,
            _load_from_state_dict=tied_load_from_state_dict,
            extra_repr=_tied_extra_repr,
            _replicate_for_data_parallel=_tied_replicate_for_data_parallel,
            __module__=base.__module__,
        )
        if callable(getattr(base, "reset_parameters", None)):
            namespace["reset_parameters"] = _tied_reset_parameters
        cls = type(f"Tied{base.__name__}", (base,), namespace)
        _TIED_CLASSES[key] = cls
    return cls


def restore_order(module: nn.Module, order: tuple[str, ...]) -> None:
    """Put ``module``'s parameters and buffers back in their ``order`` from before tying."""
    rank = {name: i for i, name in enumerate(order)}
    for d in (module._parameters, module._buffers):
        items = sorted(d.items(), key=lambda kv: rank.get(kv[0], len(rank)))
        d.clear()
        d.update(items)


def set_class(module: nn.Module) -> None:
    """Swap ``module``'s class to match its current links (the base class when none)."""
    base = base_class(module)
    links = links_of(module)
    if links:
        module.__class__ = tied_class(base, tuple(sorted(links)))
    else:
        module.__dict__.pop(_LINKS, None)
        module.__class__ = base
