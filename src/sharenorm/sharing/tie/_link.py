"""A tie's one record, :class:`Link`: kept by the target module, listed by the tie's owner
(the lowest common ancestor of both ends, which also carries the load pre-hook)."""

from __future__ import annotations

import copy

from torch import Tensor, nn
from torch.nn.utils import parametrize

_LINKS = "_sharenorm_links"  # in a target module's __dict__: {attribute: Link}
_OWNED = "_sharenorm_owned"  # in a tie's owner's __dict__: [Link, ...]


class Link:
    """``target = transform(getattr(module, name))``, resolved at every access.

    Attributes:
        module, name: where the source tensor is stored (its module, its attribute).
        transform: ``None`` or ``"transpose"``.
        hint: the source's name where the tie was made (for messages).
        persistent: False for a tied non-persistent buffer (not in state_dict).
        order: the target module's tensor names before its first tie (state_dict key order).
        target, source: both ends' names relative to the owner; ``shape``: the target's shape
            when tied (what :func:`~sharenorm.sharing.tie.verify_ties` checks).
        unpickled: True for a link rebuilt by unpickling: if the module it was pickled with did
            not hold its source, it follows a private copy (verify_ties reports that).
    """

    unpickled = False

    def __init__(
        self, module: nn.Module, name: str, transform: str | None, hint: str,
        persistent: bool = True, shape: tuple[int, ...] = (),
    ) -> None:
        self.module, self.name, self.transform, self.hint = module, name, transform, hint
        self.persistent, self.shape = persistent, shape
        self.order: tuple[str, ...] = ()
        self.target = self.source = ""

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.unpickled = True

    def __copy__(self) -> Link:  # not through __setstate__: a copy is not unpickled
        new = object.__new__(Link)
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo: dict) -> Link:
        new = memo[id(self)] = copy.copy(self)
        new.module = copy.deepcopy(self.module, memo)
        return new

    def tensor(self) -> Tensor:
        """The source tensor itself."""
        return getattr(self.module, self.name)

    def kind(self) -> str:
        """'parameter' or 'buffer': what the source is (or what it is computed from)."""
        return tensor_kind(self.module, self.name)

    def value(self) -> Tensor:
        """``T(source)``: the target's value."""
        # Fast path for the common case (a parameter): skips nn.Module.__getattr__.
        t = self.module._parameters.get(self.name)
        if t is None:
            t = getattr(self.module, self.name)
        return t if self.transform is None else t.transpose(0, 1)


def links_of(module: nn.Module) -> dict[str, Link]:
    """``module``'s tied attributes (empty for an untied module)."""
    return module.__dict__.get(_LINKS) or {}


def tensor_kind(module: nn.Module, attr: str) -> str:
    """'parameter' or 'buffer': what ``module``'s ``attr`` is (or what it is computed from)."""
    if attr in module._parameters:
        return "parameter"
    if attr in module._buffers:
        return "buffer"
    if parametrize.is_parametrized(module, attr):  # what its originals are
        return "parameter" if module.parametrizations[attr]._parameters else "buffer"
    return links_of(module)[attr].kind()

