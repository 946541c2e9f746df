"""The class of a module with tied attributes (``TiedLinear`` for an ``nn.Linear``): a property
per tied name, reading its :class:`Link`, and the methods of :class:`_Tied`, which keep the tie
through setattr, state_dict, deepcopy, pickle and reset_parameters."""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from torch import Tensor, nn

from sharenorm.sharing.tie._link import _LINKS, Link, links_of
from sharenorm.sharing.tie._names import _in_state_dict
from sharenorm.sharing.tie._state_dict import TiedStateDict

_TIED_CLASSES: dict[tuple[type, tuple[str, ...]], type] = {}


def base_class(module: nn.Module) -> type:
    return getattr(type(module), "_sharenorm_base", type(module))


def set_links(module: nn.Module, links: dict[str, Link]) -> None:
    """Give ``module`` these links and the class that matches them (its base class for none)."""
    base = base_class(module)
    if links:
        module.__dict__[_LINKS] = links
        module.__class__ = tied_class(base, tuple(sorted(links)))
    else:
        module.__dict__.pop(_LINKS, None)
        module.__class__ = base


def link_attr(module: nn.Module, name: str, link: Link) -> None:
    """Make ``module``'s ``name`` computed by ``link``, dropping the tensor it stores."""
    links = links_of(module)
    first = next(iter(links.values()), None)
    link.order = link.order or (first.order if first else (*module._parameters, *module._buffers))
    module._parameters.pop(name, None)
    module._buffers.pop(name, None)
    module._non_persistent_buffers_set.discard(name)
    set_links(module, {**links, name: link})


def own_attr(module: nn.Module, name: str, tensor: Tensor, link: Link) -> None:
    """Make ``module`` store ``tensor`` as ``name`` again, at its place from before the tie."""
    set_links(module, {k: v for k, v in links_of(module).items() if k != name})
    if isinstance(tensor, nn.Parameter):
        module.register_parameter(name, tensor)
    else:
        module.register_buffer(name, tensor, persistent=link.persistent)
    rank = {n: i for i, n in enumerate(link.order)}
    for d in (module._parameters, module._buffers):
        items = sorted(d.items(), key=lambda kv: rank.get(kv[0], len(rank)))
        d.clear()
        d.update(items)


def _own_copy(link: Link, memo: dict) -> Tensor:
    """A contiguous copy of ``T(source)``, for a target copied without its source. One copy of
    the source per memo, so targets copied together still share it (so does the source, if it
    is copied later)."""
    src, parameter = link.tensor(), link.kind() == "parameter"
    stored = _in_state_dict(link.module, link.name)
    own = memo.get(id(src)) if stored else None
    if own is None:
        own = src.detach().clone(memory_format=torch.contiguous_format)
        if parameter:
            own = nn.Parameter(own, requires_grad=src.requires_grad)
        if stored:
            memo[id(src)] = own
            memo.setdefault(id(memo), []).append(src)  # as copy._keep_alive: ids stay unique
    if link.transform is not None:
        value = own.detach().transpose(0, 1).contiguous()
        own = nn.Parameter(value, requires_grad=own.requires_grad) if parameter else value
    return own


class _AwaitSources(list):
    """deepcopy's keep-alive list (``memo[id(memo)]``), to which ``copy.deepcopy`` appends every
    object it has copied: a target's copy waiting for its source's copy is tied to it then."""

    def __init__(self, items: Any, memo: dict) -> None:
        super().__init__(items)
        self.memo = memo
        self.waiting: dict[int, list[tuple[nn.Module, str, Link]]] = {}

    def append(self, x: Any) -> None:
        super().append(x)
        for y, name, link in self.waiting.pop(id(x), ()):
            link_attr(y, name, copy.deepcopy(link, self.memo))


def _rebuild_tied(base: type, names: tuple[str, ...]) -> nn.Module:
    """Unpickling entry point: an empty instance of the tied class."""
    cls = tied_class(base, names)
    return cls.__new__(cls)


class _Tied:
    """The methods every tied class gets besides a property per tied name (copied into it, not
    inherited: a longer MRO slows every attribute read of the module)."""

    _sharenorm_base: type
    _sharenorm_names: tuple[str, ...]

    def __reduce_ex__(self, protocol: int) -> Any:  # the class is rebuilt, not imported
        cls = type(self)
        return _rebuild_tied, (cls._sharenorm_base, cls._sharenorm_names), self.__getstate__()

    def __setattr__(self, name: str, value: Any) -> None:
        self._refuse_tied(name)
        self._sharenorm_base.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        self._refuse_tied(name)
        self._sharenorm_base.__delattr__(self, name)

    def register_parameter(self, name: str, param: nn.Parameter | None) -> None:
        # torch.nn.utils.prune keeps the pruned tensor as "<name>_orig"; a tied target stores
        # none to keep, and torch would fail inside (KeyError 'weight', or a TypeError)
        base = name[: -len("_orig")] if name.endswith("_orig") else None
        link = links_of(self).get(base) if base else None
        if link is not None:
            raise ValueError(
                f"'{base}' of this {self._sharenorm_base.__name__} is tied to {link.hint} and is "
                f"computed from it, so it cannot be pruned itself: prune the source (the "
                f"target follows it, mask included), or call "
                f"sharenorm.untie(model, '...{base}') first to give it its own tensor"
            )
        self._sharenorm_base.register_parameter(self, name, param)

    def _refuse_tied(self, name: str) -> None:
        link = links_of(self).get(name)
        if link is not None:
            raise AttributeError(
                f"'{name}' of this {self._sharenorm_base.__name__} is tied to {link.hint} and "
                f"is computed from it; change the source, or call "
                f"sharenorm.untie(model, '...{name}') first to give it its own tensor"
            )

    def __deepcopy__(self, memo: dict) -> nn.Module:
        # A tie is copied as a tie when its source module is copied with the same memo, before
        # or after the target (then the target's copy owns a copy of T(source) meanwhile).
        base = self._sharenorm_base
        y = memo[id(self)] = base.__new__(base)
        # __dict__, not __getstate__: a parametrized module's class refuses __getstate__ and
        # copies its __dict__ (torch's parametrize.default_deepcopy)
        state = {k: v for k, v in vars(self).items() if k != _LINKS}
        y.__setstate__(copy.deepcopy(state, memo))
        for name, link in links_of(self).items():
            if id(link.module) in memo:  # the source was copied (before, or inside this module)
                link_attr(y, name, copy.deepcopy(link, memo))
                continue
            own_attr(y, name, _own_copy(link, memo), link)
            keep = memo.get(id(memo))
            if not isinstance(keep, _AwaitSources):
                keep = memo[id(memo)] = _AwaitSources(keep or (), memo)
            keep.waiting.setdefault(id(link.module), []).append((y, name, link))
        return y

    def _replicate_for_data_parallel(self) -> nn.Module:
        # A replica copies __dict__ shallowly: its link would read the source on the first
        # device, and nothing here can find the source's replica.
        raise ValueError(
            f"nn.DataParallel cannot replicate a tied {self._sharenorm_base.__name__} (its "
            f"replicas would read the source on the first device); use "
            f"torch.nn.parallel.DistributedDataParallel, or sharenorm.untie the target first"
        )

    def extra_repr(self) -> str:
        base = self._sharenorm_base.extra_repr(self)
        desc = ", ".join(
            f"{n}=tied({link.hint}{'ᵀ' if link.transform == 'transpose' else ''})"
            for n, link in links_of(self).items()
        )
        return f"{base}, {desc}" if base else desc


def _reset_parameters(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    # A module re-initialises only what it stores; its tied attributes read scratch tensors
    # meanwhile (so to_empty() then reset_parameters() rebuilds the model that tie() made).
    links = self.__dict__[_LINKS]
    scratch = self.__dict__[_LINKS] = {n: copy.copy(link) for n, link in links.items()}
    for link in scratch.values():
        value = torch.empty_like(link.value(), memory_format=torch.contiguous_format)
        link.value = lambda value=value: value
    try:
        return self._sharenorm_base.reset_parameters(self, *args, **kwargs)
    finally:
        self.__dict__[_LINKS] = links


def tied_class(base: type, names: tuple[str, ...]) -> type:
    """The subclass of ``base`` whose attributes ``names`` are computed from their links."""
    cls = _TIED_CLASSES.get((base, names))
    if cls is None:
        namespace: dict[str, Any] = {  # each reads its link (``name=name``: bound now)
            name: property(lambda self, name=name: self.__dict__[_LINKS][name].value())
            for name in names
        }
        for methods in (_Tied, TiedStateDict):
            namespace.update((k, v) for k, v in vars(methods).items() if inspect.isfunction(v))
        namespace.update(_sharenorm_base=base, _sharenorm_names=names, __module__=base.__module__)
        if callable(getattr(base, "reset_parameters", None)):
            namespace["reset_parameters"] = _reset_parameters
        cls = _TIED_CLASSES[(base, names)] = type(f"Tied{base.__name__}", (base,), namespace)
    return cls
