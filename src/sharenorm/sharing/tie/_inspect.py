"""Looking at a model's ties: ``iter_links``, ``ties`` (tie groups) and ``verify_ties``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor, nn

from sharenorm._checks import check_module
from sharenorm.sharing.tie._link import _OWNED, Link, links_of
from sharenorm.sharing.tie._names import _in_state_dict, _join, _module_paths
from sharenorm.sharing.tie._transforms import transformed_shape


class TieError(RuntimeError):
    """A declared tie no longer holds (raised by :func:`verify_ties`)."""

    __module__ = "sharenorm.sharing.tie"  # its public home (tracebacks, pickling)


class TieLink(NamedTuple):
    """One tied name of a model, as :func:`iter_links` yields it.

    Attributes:
        target: the computed name (dotted, relative to the model).
        source: the stored tensor's name, or None when it lies outside the model.
        transform: ``None`` or ``"transpose"``: ``target = transform(source)``.
        link: the tie itself (``link.module``/``link.name``: where the source is stored,
            ``link.tensor()``: the source tensor, ``link.value()``: the target's value).
    """

    target: str
    source: str | None
    transform: str | None
    link: Link


def iter_links(model: nn.Module) -> Iterator[TieLink]:
    """Every name of ``model`` computed by a tie (:func:`tie`), with its source.

    A module used at several places yields each of its names.

    Example:
        >>> import sharenorm as sn
        >>> ae = sn.TiedAutoencoder([6, 3])
        >>> [(t.target, t.source, t.transform) for t in sn.iter_links(ae)]
        [('decoder.0.weight', 'encoder.0.weight', 'transpose')]
    """
    check_module(model, "iter_links")
    paths = _module_paths(model)
    for mpath, m in model.named_modules(remove_duplicate=False):
        for name, link in links_of(m).items():
            spath = paths.get(id(link.module))
            source = None if spath is None else _join(spath, link.name)
            yield TieLink(_join(mpath, name), source, link.transform, link)


@dataclass(frozen=True)
class TieGroup:
    """Names that hold one stored tensor.

    Attributes:
        source: the name the tensor is stored under (the one ``named_parameters()`` yields).
        members: ``(name, transform, how)`` for every other name; ``how`` is ``"tie"``
            (declared with :func:`tie`), ``"identity"`` (the same ``nn.Parameter`` object under two
            names) or ``"storage"`` (different tensor objects over the same memory).
    """

    source: str
    members: tuple[tuple[str, str | None, str], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return (self.source, *(m[0] for m in self.members))

    def transform_of(self, name: str) -> str | None:
        return None if name == self.source else {n: t for n, t, _ in self.members}[name]


def _same_storage(a: Tensor, b: Tensor) -> bool:
    if a is b:
        return True
    if a.device != b.device or a.device.type == "meta" or a.numel() == 0 or b.numel() == 0:
        return False
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _view_transform(base: Tensor, other: Tensor) -> str | None | bool:
    """How ``other`` relates to ``base`` over the same storage: None, 'transpose', or False."""
    if base.storage_offset() != other.storage_offset() or base.dtype != other.dtype:
        return False
    if base.shape == other.shape and base.stride() == other.stride():
        return None
    if base.dim() >= 2 and tuple(other.shape) == transformed_shape(tuple(base.shape), "transpose"):
        if other.stride() == transformed_shape(base.stride(), "transpose"):
            return "transpose"
    return False


def ties(model: nn.Module) -> list[TieGroup]:
    """The tie groups of ``model``: names that hold one tensor, each with its transform.

    Found from declared ties (:func:`tie`), by identity (one ``nn.Parameter`` under several
    names, torch's usual sharing) and by shared storage (different tensor objects over the same
    memory, e.g. ``nn.Parameter(a.weight.data)``). Storage views that are neither equal nor the
    transpose are not reported (they are not ties). Parameters and buffers are both covered.

    Example:
        >>> import torch, sharenorm as sn
        >>> m = torch.nn.ModuleDict({"a": torch.nn.Linear(3, 3), "b": torch.nn.Linear(3, 3)})
        >>> m.b.weight = m.a.weight            # plain torch sharing
        >>> sn.ties(m)
        [TieGroup(source='a.weight', members=(('b.weight', None, 'identity'),))]
    """
    check_module(model, "ties")
    named = [*model.named_parameters(remove_duplicate=False)]
    named += model.named_buffers(remove_duplicate=False)
    groups: list[tuple[str, Tensor, list[tuple[str, str | None, str]]]] = []
    for name, t in named:
        for _, base, members in groups:
            how = None if t is base else _same_storage(t, base) and _view_transform(base, t)
            if how is not False:
                members.append((name, how, "identity" if t is base else "storage"))
                break
        else:
            groups.append((name, t, []))
    by_tensor = {id(base): members for _, base, members in groups}
    for target, source, transform, link in iter_links(model):
        if source is None:
            continue
        src = link.tensor()
        members = by_tensor.get(id(src))
        if members is None and not _in_state_dict(link.module, link.name):
            # A derived source (parametrized, pruned, ...): its computed tensor is new at every
            # access, so the group is named after the source attribute.
            members = by_tensor[id(src)] = []
            groups.append((source, src, members))
        if members is not None and (target, transform, "tie") not in members:
            members.append((target, transform, "tie"))
    return [TieGroup(g, tuple(members)) for g, _, members in groups if members]


def verify_ties(model: nn.Module) -> None:
    """Raise :class:`TieError` if a tie declared with :func:`tie` has silently broken.

    Checks, for every tie owned in ``model`` (each tie is owned by the lowest common ancestor of
    its two ends): the target is still computed (its module was not replaced, nor given its own
    tensor), it still follows the module that sits at the source's name (that module was not
    replaced or copied away), the shapes still agree, and under FSDP2 both ends share one
    ``fully_shard`` unit.

    Example:
        >>> import torch, sharenorm as sn
        >>> m = torch.nn.ModuleDict({"a": torch.nn.Linear(3, 3), "b": torch.nn.Linear(3, 3)})
        >>> _ = sn.tie(m, "b.weight", "a.weight")
        >>> sn.verify_ties(m)                       # fine
        >>> m["b"] = torch.nn.Linear(3, 3)          # replaces the tied module
        >>> sn.verify_ties(m)
        Traceback (most recent call last):
        ...
        sharenorm.sharing.tie.TieError: 1 tie(s) broken: 'b.weight' (tied to 'a.weight') is no longer tied: ...
    """
    check_module(model, "verify_ties")
    problems, seen = [], set()
    for t in iter_links(model):
        if t.source is None and t.link.unpickled and id(t.link) not in seen:
            seen.add(id(t.link))
            problems.append(
                f"{t.target!r} is computed from an unpickled {t.link.hint} that this model does "
                f"not hold: its module was unpickled without its tie source, so it follows a "
                f"private copy no optimizer or .to() sees (verify the whole unpickled model, "
                f"or sharenorm.untie(model, {t.target!r}) to give it its own tensor)"
            )
    for opath, owner in model.named_modules():
        for link in owner.__dict__.get(_OWNED, ()):  # the ties it is the lowest ancestor of
            target, source = _join(opath, link.target), _join(opath, link.source)
            problems.append(_broken(model, target, source, link))
    problems = [p for p in problems if p]
    if problems:
        raise TieError(f"{len(problems)} tie(s) broken: " + "; ".join(problems))


def _broken(model: nn.Module, target: str, source: str, declared: Link) -> str:
    """What no longer holds of the tie ``declared`` (``target`` from ``source``), or ''."""
    what = f"{target!r} (tied to {source!r})"
    (tpath, _, tattr), (spath, _, sattr) = target.rpartition("."), source.rpartition(".")
    try:
        tmod, smod = model.get_submodule(tpath), model.get_submodule(spath)
    except AttributeError as e:
        return f"{what}: a module on its path no longer exists ({e})"
    link = links_of(tmod).get(tattr)
    if link is None:
        stored = tattr in tmod._parameters or tattr in tmod._buffers
        own = "holds its own tensor" if stored else "is missing"
        return (
            f"{what} is no longer tied: it {own} (module {tpath or 'model'!r} was replaced, or "
            f"the tensor was re-assigned); re-tie with sharenorm.tie"
        )
    if link.module is not smod or link.name != sattr:
        return (
            f"{what} follows a module that is no longer model.{source} (the source module was "
            f"replaced, or the target module was copied alone)"
        )
    if link.transform != declared.transform:
        return f"{what}: transform is {link.transform!r}, declared {declared.transform!r}"
    src = getattr(smod, sattr, None)
    if not isinstance(src, Tensor):
        return f"{what}: the source {source!r} is no longer a tensor"
    try:
        shape = transformed_shape(tuple(src.shape), declared.transform)
    except ValueError as e:
        return f"{what}: {e}"
    if shape != declared.shape:
        return f"{what}: shape is now {shape}, was {declared.shape} when tied"
    tunit, sunit = _fsdp_unit(model, tpath), _fsdp_unit(model, spath)
    if tunit != sunit:
        # the unit that holds one end without the other is the one to give up
        alone = " and ".join(repr(u) for u, other in ((tunit, spath), (sunit, tpath))
                             if u is not None and not _within(other, u))
        return (
            f"{what}: its ends are in different FSDP units (the target in "
            f"{_unit_name(tunit)}, the source in {_unit_name(sunit)}); a unit reshards its "
            f"parameters after its forward, so the target would read a shard (torch: \"mixed "
            f"torch.Tensor and DTensor\"). Keep both in one unit: fully_shard a module that "
            f"holds both, not {alone} on its own"
        )
    return ""


def _fsdp_unit(model: nn.Module, path: str) -> str | None:
    """The FSDP2 unit (``fully_shard``) that manages the module at ``path``: the deepest such
    module on the way to it ("" for ``model`` itself), or None."""
    fsdp = sys.modules.get("torch.distributed.fsdp")  # not imported: nothing is sharded
    if fsdp is None or not hasattr(fsdp, "FSDPModule"):
        return None
    parts = path.split(".") if path else []
    unit = None
    for i in range(len(parts) + 1):
        prefix = ".".join(parts[:i])
        if isinstance(model.get_submodule(prefix), fsdp.FSDPModule):
            unit = prefix
    return unit


def _within(path: str, unit: str) -> bool:
    """Whether the module at ``path`` lies inside the module at ``unit``."""
    return unit == "" or path == unit or path.startswith(unit + ".")


def _unit_name(unit: str | None) -> str:
    return "no unit" if unit is None else "the whole model" if unit == "" else repr(unit)
