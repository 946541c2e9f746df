"""Hard parameter tying: ``tie`` / ``untie`` / ``ties`` / ``verify_ties``.

After ``tie(model, "decoder.weight", "encoder.weight", transform="transpose")`` the decoder's
weight is *computed from* the encoder's on every access (``encoder.weight.T``): one stored
tensor, gradients of both uses accumulate into it, ``parameters()`` yields it once and an
optimizer steps it once.

How it works, and why this mechanism
------------------------------------
The target parameter is removed from its module's ``_parameters`` and the module's class is
swapped for a small subclass (``TiedLinear`` for an ``nn.Linear``) with a ``property`` of that
name. The property reads the *source module's* attribute at access time and applies the
transform. The tie is described by a ``_Link(source_module, source_name, transform)`` kept in the
target module's ``__dict__``; the source module is referenced as a plain attribute, not as a
submodule, so it is not visited twice by ``.to()``/``named_modules()`` and no module cycle forms.

Because the target is resolved from the source *module* on every access, the tie survives every
operation that replaces or converts the source tensor in its own module:

* ``.to(dtype/device)``, ``.half()``, ``to_empty()`` (which replaces meta parameters by new
  objects), ``load_state_dict(..., assign=True)``: the source module gets a new tensor, the target
  reads it.
* ``copy.deepcopy`` and ``pickle``/``torch.save`` of the whole model: the link is ordinary state;
  the memo of deepcopy/pickle maps the source module to its copy. The swapped class is rebuilt by
  ``__reduce_ex__`` from (base class, tied names), so no dynamically created class needs to be
  importable. ``deepcopy`` of a part of the model (a submodule, a list of modules, any object
  holding modules: attributes, ``__slots__``, containers, ``functools.partial``) keeps a tie
  when the object copied holds the source module too, in any order; a target module copied
  without its source owns its tensor in the copy (a contiguous copy of ``T(source)``, as a copy
  of torch's identity-tied weight does), and the source is not copied.
* ``torch.compile``: the property is plain Python that dynamo inlines.

Re-initialising: a tied module's ``reset_parameters()`` re-initialises only what the module
stores; its tied attributes read a scratch tensor meanwhile. So ``to_empty()`` followed by
``reset_parameters()`` of every module (in module order, with the same seed) rebuilds exactly the
model that construction + ``tie`` gave: the source keeps its own module's init.

Alternatives considered: assigning the same ``nn.Parameter`` to two modules (torch's identity
tie) cannot express a transpose and breaks under ``to_empty()`` and ``assign=True``;
``torch.nn.utils.parametrize`` keeps an extra ``original`` tensor and refuses ``torch.save`` of
the whole model; a forward pre-hook leaves a stale tensor outside ``forward``.

state_dict convention
---------------------
Like torch's identity-tied weights (e.g. tied LM heads), **both keys appear** in ``state_dict()``:
the target key holds ``T(source)`` (a view, no copy). So the state_dict of a tied model loads
into the same architecture built without ties. Loading a state_dict into a tied model
(``strict``/``assign`` as usual): the target key is checked against ``T(source)`` from the same
state_dict and dropped; if the values differ the load fails with a message naming the tie (a
tie never silently picks one of two different values; this holds for ``strict=False`` too); if
only the target key is present the source is set to ``T⁻¹(value)``. As torch does for one
``nn.Parameter`` under two names, a key the state_dict lacks is in ``missing_keys`` even when the
other name of the tie gave its value (so a state_dict with one name of a tie needs
``strict=False``; ``safetensors.torch.load_model`` relies on this). A source that is not a
state_dict entry of its own (parametrized by ``weight_norm``/``spectral_norm``, pruned, or a
non-persistent buffer) is derived from state its module loads itself: the target key is then
ignored on load. A parametrized attribute can be a tie's source, not its target: ``tie`` refuses
a parametrized target, but ``weight_norm``/``spectral_norm``/pruning applied *after* tying to a
tied target fail inside torch (it finds no parameter of that name: "does not have a parameter",
``KeyError``, ``TypeError``), and pruning leaves the module half-changed (the source's tensor
registered as ``weight_orig``); apply them to the source, or ``untie`` the target first.

Limits: a module whose attribute is tied gets a subclass (``type(m) is nn.Linear`` is False,
``isinstance`` still holds). ``safetensors.torch.save_model``/``load_model`` work for identity
ties, not for a transposed one: ``save_model`` rejects its non-contiguous view, and
``load_model`` into a model with a transposed tie fails inside safetensors with "view size is
not compatible with input tensor's size and stride"; use :func:`sharenorm.save` and
:func:`sharenorm.load`. Optimizers built before ``tie`` still hold the target's old tensor:
build them after tying.
``pickle``/``torch.save`` of a tied target module *alone* cannot see the model around it: the
unpickled module follows a private copy of its source that no model or optimizer holds
(:func:`verify_ties` says so); deepcopy it instead, or ``untie`` it first.
``torch.func.functional_call`` follows ties when given the *source* name (passing the target
name raises, as assigning to it does). ``nn.DataParallel`` is refused when it replicates a tied
module (a replica cannot find its source's replica); use ``DistributedDataParallel``.
TorchScript (``torch.jit.script``) is not supported; ``torch.compile`` is.
"""

from __future__ import annotations

import copy
import difflib
import gc
import sys
import types
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = ["TieError", "TieGroup", "tie", "untie", "ties", "verify_ties", "TRANSFORMS"]

#: Tie transforms: ``None`` (identity) and ``"transpose"`` (swap the first two dimensions; ``W.T``
#: for a matrix). Both are involutions, so each is its own inverse.
TRANSFORMS: tuple[str | None, ...] = (None, "transpose")

_LINKS = "_sharenorm_links"  # in a target module's __dict__: {attr name: _Link}
_DECLARED = "_sharenorm_declared"  # in the module tie() was called on: {target: _Record}
_ROOT_HOOK = "_sharenorm_root_hook"  # marker: the load_state_dict pre-hook is registered
_SCRATCH = "_sharenorm_scratch"  # set only while a tied module runs reset_parameters()
_ORDER = "_sharenorm_order"  # in a target module's __dict__: its tensor names before tying
_COPY_REACH = "_sharenorm_copy_reach"  # in a deepcopy memo: ids of the modules the copy holds


class TieError(RuntimeError):
    """A declared tie no longer holds (raised by :func:`verify_ties`)."""


def check_transform(transform: Any) -> str | None:
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be None (identity) or 'transpose', got {transform!r}")
    return transform


def apply_transform(t: Tensor, transform: str | None) -> Tensor:
    """``T(t)``: ``t`` itself for identity, ``t.transpose(0, 1)`` (a view) for transpose."""
    if transform is None:
        return t
    return t.transpose(0, 1)


def transformed_shape(shape: tuple[int, ...], transform: str | None) -> tuple[int, ...]:
    """The shape of ``T(t)`` for a tensor ``t`` of ``shape``."""
    shape = tuple(shape)
    if transform is None:
        return shape
    if len(shape) < 2:
        raise ValueError(
            f"transform='transpose' swaps the first two dimensions; a tensor of shape {shape} "
            f"has {len(shape)} dimension(s) (use transform=None)"
        )
    return (shape[1], shape[0], *shape[2:])


def compose(first: str | None, then: str | None) -> str | None:
    """The transform equal to applying ``first`` and then ``then``."""
    flips = (first == "transpose") + (then == "transpose")
    return "transpose" if flips % 2 else None


class _Link:
    """``target = transform(getattr(module, name))``, resolved at every access."""

    # True for a link rebuilt by unpickling: if the module it was pickled with did not hold its
    # source, it follows a private copy of it (verify_ties reports that).
    unpickled = False

    def __init__(
        self,
        module: nn.Module,
        name: str,
        transform: str | None,
        hint: str,
        persistent: bool = True,
    ) -> None:
        self.module = module
        self.name = name
        self.transform = transform
        self.hint = hint  # the source's name when the tie was made (for messages only)
        self.persistent = persistent  # False for a tied non-persistent buffer: not in state_dict

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.unpickled = True

    def source(self) -> Tensor:
        return getattr(self.module, self.name)

    def value(self) -> Tensor:
        # Fast path for the common case (a parameter): skips nn.Module.__getattr__.
        t = self.module._parameters.get(self.name)
        if t is None:
            t = getattr(self.module, self.name)
        return t if self.transform is None else t.transpose(0, 1)


@dataclass(frozen=True)
class _Record:
    """What ``tie`` declared, kept on the model it was called on, for :func:`verify_ties`."""

    source: str
    transform: str | None
    shape: tuple[int, ...]


# ---------------------------------------------------------------------------------------------
# The swapped class of a module that has tied attributes.

_TIED_CLASSES: dict[tuple[type, tuple[str, ...]], type] = {}


def _base_class(module: nn.Module) -> type:
    return getattr(type(module), "_sharenorm_base", type(module))


def _rebuild_tied(base: type, names: tuple[str, ...]) -> nn.Module:
    """Unpickling/deepcopy entry point: an empty instance of the tied class."""
    cls = _tied_class(base, names)
    return cls.__new__(cls)


def _tied_reduce_ex(self: nn.Module, protocol: int) -> Any:
    cls = type(self)
    return (_rebuild_tied, (cls._sharenorm_base, cls._sharenorm_names), self.__getstate__())


def _tied_setattr(self: nn.Module, name: str, value: Any) -> None:
    links = self.__dict__.get(_LINKS)
    if links is not None and name in links:
        raise AttributeError(
            f"'{name}' of this {self._sharenorm_base.__name__} is tied to {links[name].hint} "
            f"and is computed from it; change the source, or call "
            f"sharenorm.untie(model, '...{name}') first to give it its own tensor"
        )
    self._sharenorm_base.__setattr__(self, name, value)


def _tied_delattr(self: nn.Module, name: str) -> None:
    links = self.__dict__.get(_LINKS)
    if links is not None and name in links:
        raise AttributeError(
            f"'{name}' is tied to {links[name].hint}; call sharenorm.untie(model, '...{name}')"
        )
    self._sharenorm_base.__delattr__(self, name)


def _tied_save_to_state_dict(
    self: nn.Module, destination: dict, prefix: str, keep_vars: bool
) -> None:
    own: dict[str, Any] = {}
    self._sharenorm_base._save_to_state_dict(self, own, prefix, keep_vars)
    # Both keys appear, as for torch's identity-tied weights: the target holds T(source), at
    # the place the target had before it was tied (torch's key order).
    links = self.__dict__[_LINKS]
    for name in (*self.__dict__.get(_ORDER, ()), *links):
        key = prefix + name
        if key in own:
            destination[key] = own.pop(key)
        elif name in links and links[name].persistent and key not in destination:
            value = links[name].value()
            destination[key] = value if keep_vars else value.detach()
    destination.update(own)  # what was registered after tying, and the extra state


def _tied_load_from_state_dict(
    self: nn.Module,
    state_dict: dict,
    prefix: str,
    local_metadata: dict,
    strict: bool,
    missing_keys: list,
    unexpected_keys: list,
    error_msgs: list,
) -> None:
    # torch runs load pre-hooks inside the base _load_from_state_dict, i.e. after this override:
    # when this module carries the model-level hook (a tie among its own tensors), run it first
    # (it is idempotent: keys it has checked are marked, _marked_checked). The model-level hook has then
    # compared target keys with source keys of the same state_dict. What is left (the source
    # lies outside the module being loaded) is checked against the source's current value. Both
    # are then dropped so that they are not "unexpected keys".
    if self.__dict__.get(_ROOT_HOOK):
        args = (local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        _root_load_pre_hook(self, state_dict, prefix, *args)
    links = self.__dict__[_LINKS]
    absent = []
    for name, link in links.items():
        key = prefix + name
        if key not in state_dict:
            if link.persistent and strict:  # torch's condition for reporting a missing key
                absent.append(key)
            continue
        value = state_dict.pop(key)
        problem = "" if _is_checked(value) else _mismatch(value, link.value())
        if problem:
            error_msgs.append(
                f"'{key}' is tied to {link.hint} (transform={link.transform!r}) but the "
                f"state_dict value differs from it ({problem}); drop the key and load with "
                f"strict=False to keep the source's value, or sharenorm.untie the target first"
            )
    self._sharenorm_base._load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    )
    for name in links:
        key = prefix + name
        if key in state_dict:
            # A base class may back-fill a key that old checkpoints lack (BatchNorm adds
            # num_batches_tracked when the state_dict has no version, e.g. a plain dict). For a
            # tied name that value is the source's business: forget it, do not report it.
            del state_dict[key]
            while key in unexpected_keys:
                unexpected_keys.remove(key)
        elif key in absent:
            # As torch reports the absent name of a shared parameter: missing, even though the
            # value follows the source (safetensors.torch.load_model relies on this).
            missing_keys.append(key)


# Not followed when looking for what a deepcopy holds: what deepcopy keeps as is (types,
# functions, modules, ...), tensors (no modules inside) and tie links (a target's link names its
# source, but the source is not part of the target: the copy keeps it only if it is held too).
_NOT_COPIED = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.CodeType,
    weakref.ref,
    property,
    Tensor,
    _Link,
)


def _modules_in_copy(memo: dict) -> set[int] | None:
    """The ids of the modules that the running ``copy.deepcopy`` will copy: those reachable
    from the object it was called on, which is the ``x`` of the outermost ``copy.deepcopy``
    frame sharing ``memo``. None when no such frame exists (``__deepcopy__`` called by hand).
    Found once per copy.

    Reachable means through the references the garbage collector sees
    (``gc.get_referents``): what deepcopy copies (a ``__dict__``, ``__slots__``, a
    ``functools.partial``'s arguments, any container) without a list of container types."""
    reach = memo.get(_COPY_REACH)
    if reach is not None:
        return reach
    root, found = None, False
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is copy.deepcopy.__code__ and frame.f_locals.get("memo") is memo:
            root, found = frame.f_locals.get("x"), True  # keep going: the outermost one wins
        frame = frame.f_back
    if not found:
        return None
    reach, seen, todo = set(), set(), [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or isinstance(obj, _NOT_COPIED):
            continue
        seen.add(id(obj))
        if isinstance(obj, nn.Module):
            reach.add(id(obj))
        todo.extend(gc.get_referents(obj))
    memo[_COPY_REACH] = reach  # a str key: never an id()
    return reach


def _tied_deepcopy(self: nn.Module, memo: dict) -> nn.Module:
    # A tie is copied as a tie when its source module is copied too, i.e. when the object
    # deepcopy was called on holds it (whatever the order the copy visits the two in).
    # Otherwise the copy owns the target, as a copy of torch's identity-tied weight does: a
    # contiguous copy of T(source) with the source's requires_grad, and the source module is
    # not copied at all (a hidden copy of it would be a weight no optimizer or .to() sees).
    links = self.__dict__[_LINKS]
    reach = _modules_in_copy(memo)
    inside, outside = {}, {}
    for name, link in links.items():
        copied = reach is None or id(link.module) in reach or id(link.module) in memo
        (inside if copied else outside)[name] = link
    base = self._sharenorm_base
    cls = _tied_class(base, tuple(sorted(inside))) if inside else base
    y = cls.__new__(cls)
    memo[id(self)] = y
    state = {k: v for k, v in self.__getstate__().items() if k != _LINKS}
    y.__setstate__(copy.deepcopy(state, memo))
    if inside:
        y.__dict__[_LINKS] = {
            name: _Link(copy.deepcopy(link.module, memo), link.name, link.transform, link.hint,
                        link.persistent)
            for name, link in inside.items()
        }
    for name, link in outside.items():
        src = link.source()
        parameter = _kind(link.module, link.name) == "parameter"
        stored = _in_state_dict(link.module, link.name)
        # One copy per source tensor in this deepcopy, so targets copied together without their
        # source still share it (and so would the source module, copied later in the same call).
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
    _restore_order(y)
    return y


def _tied_replicate_for_data_parallel(self: nn.Module) -> nn.Module:
    # torch.nn.parallel.replicate (nn.DataParallel) copies __dict__ shallowly and re-points
    # each replica's children and parameters through a map it keeps to itself: the replica's
    # link would still read the original source on the first device, and nothing here can
    # find the source's replica. Refuse rather than crash on a device mismatch (or read the
    # original parameter instead of the replica's broadcast copy).
    names = ", ".join(map(repr, self.__dict__[_LINKS]))
    raise ValueError(
        f"nn.DataParallel cannot replicate a tied {self._sharenorm_base.__name__} ({names} "
        f"computed from another module): its replicas would read the source on the first "
        f"device; use torch.nn.parallel.DistributedDataParallel (one process per device, ties "
        f"train correctly under it), or sharenorm.untie the target first"
    )


def _tied_extra_repr(self: nn.Module) -> str:
    base = self._sharenorm_base.extra_repr(self)
    links = self.__dict__.get(_LINKS, {})
    desc = ", ".join(
        f"{n}=tied({link.hint}{'ᵀ' if link.transform == 'transpose' else ''})"
        for n, link in links.items()
    )
    return f"{base}, {desc}" if base else desc


def _tied_reset_parameters(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    # A module re-initialises only what it stores: tied attributes read a scratch tensor
    # meanwhile, so re-initialising every module (e.g. after to_empty()) gives the source the
    # source module's own init, exactly as when the model was built and then tied.
    links = self.__dict__[_LINKS]
    self.__dict__[_SCRATCH] = {
        n: torch.empty_like(link.value(), memory_format=torch.contiguous_format)
        for n, link in links.items()
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


def _tied_class(base: type, names: tuple[str, ...]) -> type:
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
            _save_to_state_dict=_tied_save_to_state_dict,
            _load_from_state_dict=_tied_load_from_state_dict,
            extra_repr=_tied_extra_repr,
            _replicate_for_data_parallel=_tied_replicate_for_data_parallel,
            __module__=base.__module__,
        )
        if callable(getattr(base, "reset_parameters", None)):
            namespace["reset_parameters"] = _tied_reset_parameters
        cls = type(f"Tied{base.__name__}", (base,), namespace)
        _TIED_CLASSES[key] = cls
    return cls


def _restore_order(module: nn.Module) -> None:
    """Put ``module``'s parameters and buffers back in their order from before tying."""
    rank = {name: i for i, name in enumerate(module.__dict__.get(_ORDER, ()))}
    for d in (module._parameters, module._buffers):
        items = sorted(d.items(), key=lambda kv: rank.get(kv[0], len(rank)))
        d.clear()
        d.update(items)
    if not module.__dict__.get(_LINKS):
        module.__dict__.pop(_ORDER, None)


def _set_class(module: nn.Module) -> None:
    """Swap ``module``'s class to match its current links (the base class when none)."""
    base = _base_class(module)
    links = module.__dict__.get(_LINKS) or {}
    if links:
        module.__class__ = _tied_class(base, tuple(sorted(links)))
    else:
        module.__dict__.pop(_LINKS, None)
        module.__class__ = base


# ---------------------------------------------------------------------------------------------
# The model-level load_state_dict pre-hook (registered once on the model tie() is called on).


def _mismatch(value: Any, expected: Tensor) -> str:
    """'' when ``value`` equals ``expected`` exactly (NaN where NaN is: a checkpoint with a
    NaN still matches itself), else what differs."""
    if value is expected:
        return ""
    if not isinstance(value, Tensor):
        return f"got a {type(value).__name__}, not a tensor"
    if tuple(value.shape) != tuple(expected.shape):
        return f"shape {tuple(value.shape)} vs expected {tuple(expected.shape)}"
    if value.device.type == "meta" or expected.device.type == "meta":
        return ""
    other = value.detach().to(device=expected.device, dtype=expected.dtype)
    if torch.equal(other, expected.detach()):
        return ""
    if other.is_floating_point() or other.is_complex():
        same = (other == expected) | (other.isnan() & expected.detach().isnan())
        if bool(same.all()):
            return ""
    diff = (other.double() - expected.detach().double()).abs().max().item()
    return f"max |difference| = {diff:.3g}"


# The model-level hook marks the target keys it has checked, and the target module then drops
# them without a second check. A plain pop would make the key look absent, i.e. missing; the
# load passes sub-dicts down, so a mark on the value is what reaches the module. The mark is a
# view of the value with an attribute: other load pre-hooks still see a tensor (one that casts
# it makes an unmarked copy, which then gets the module-level check).
_CHECKED_ATTR = "_sharenorm_tie_checked"


def _marked_checked(value: Any) -> Any:
    if not isinstance(value, Tensor):
        return value
    view = value.view_as(value)
    setattr(view, _CHECKED_ATTR, True)
    return view


def _is_checked(value: Any) -> bool:
    return getattr(value, _CHECKED_ATTR, False) is True


def _root_load_pre_hook(
    module: nn.Module,
    state_dict: dict,
    prefix: str,
    local_metadata: dict,
    strict: bool,
    missing_keys: list,
    unexpected_keys: list,
    error_msgs: list,
) -> None:
    paths = _module_paths(module)
    # Every name of a reused target module is a key of its own to check.
    for mpath, m in module.named_modules(remove_duplicate=False):
        for name, link in (m.__dict__.get(_LINKS) or {}).items():
            spath = paths.get(id(link.module))
            if spath is None:  # the source lives outside this model: the module-level check runs
                continue
            tkey = prefix + _join(mpath, name)
            skey = prefix + _join(spath, link.name)
            if tkey not in state_dict or _is_checked(state_dict[tkey]):
                continue  # absent (the target module reports it), or checked above
            value = state_dict[tkey]
            state_dict[tkey] = _marked_checked(value)  # dropped without a second check
            if not _in_state_dict(link.module, link.name):
                # The source is derived state (a parametrization's originals, a pruning mask,
                # or a non-persistent buffer): its module loads what it is computed from.
                continue
            if skey in state_dict:
                problem = _mismatch(value, apply_transform(state_dict[skey], link.transform))
                if problem:
                    error_msgs.append(
                        f"'{tkey}' is tied to '{skey}' (transform={link.transform!r}) but the "
                        f"state_dict holds different values for them ({problem}); load it into "
                        f"an untied model, drop '{tkey}' to keep '{skey}', or sharenorm.untie first"
                    )
            elif isinstance(value, Tensor):
                # Only the target was stored (e.g. a file written with the other name of a
                # shared pair): the source is T⁻¹(value); both transforms are involutions. Its
                # key is still reported missing, as torch does for a shared parameter.
                state_dict[skey] = apply_transform(value, link.transform).contiguous()
                if strict:
                    missing_keys.append(skey)


def _in_state_dict(module: nn.Module, name: str) -> bool:
    """Whether ``module``'s tensor ``name`` is a state_dict entry of its own (not derived)."""
    if module._parameters.get(name) is not None:
        return True
    return module._buffers.get(name) is not None and name not in module._non_persistent_buffers_set


# ---------------------------------------------------------------------------------------------
# Name resolution with helpful errors.


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _module_paths(model: nn.Module) -> dict[int, str]:
    """id(module) -> its first path in ``model`` ('' for the model itself)."""
    paths: dict[int, str] = {}
    for path, m in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(m), path)
    return paths


def tensor_names(model: nn.Module) -> list[str]:
    """Every name a tie can refer to: parameters, buffers and tied (computed) attributes."""
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    names += [n for n, _ in model.named_buffers(remove_duplicate=False)]
    for mpath, m in model.named_modules(remove_duplicate=False):
        names += [_join(mpath, n) for n in m.__dict__.get(_LINKS) or {}]
    return names


def _unknown_name(model: nn.Module, name: str, role: str) -> ValueError:
    names = tensor_names(model)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    if not close:
        shown = ", ".join(repr(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
        hint = f"; the model has {shown or 'no parameters'}"
    return ValueError(f"{role} {name!r} is not a parameter or buffer of the model{hint}")


def resolve(model: nn.Module, name: str, role: str = "name") -> tuple[nn.Module, str]:
    """The (module, attribute) that the dotted ``name`` refers to, with a helpful error."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"{role} must be a dotted name such as 'decoder.weight', got {name!r}")
    mpath, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(mpath) if mpath else model
    except AttributeError:
        raise _unknown_name(model, name, role) from None
    if attr in module._parameters and module._parameters[attr] is not None:
        return module, attr
    if attr in module._buffers and module._buffers[attr] is not None:
        return module, attr
    if attr in (module.__dict__.get(_LINKS) or {}):
        return module, attr
    if parametrize.is_parametrized(module, attr):
        if role == "target":
            raise ValueError(
                f"target {name!r} is parametrized ({type(module).__name__}, e.g. by weight_norm) "
                f"and is computed by its parametrization; tie it as the source instead, or call "
                f"torch.nn.utils.parametrize.remove_parametrizations(module, {attr!r}) first"
            )
        return module, attr
    if attr in module._modules:
        raise ValueError(
            f"{role} {name!r} is a module, not a tensor; name one of its parameters, e.g. "
            f"'{name}.weight'"
        )
    raise _unknown_name(model, name, role)


def _kind(module: nn.Module, attr: str) -> str:
    if attr in module._parameters:
        return "parameter"
    if attr in module._buffers:
        return "buffer"
    if parametrize.is_parametrized(module, attr):  # what its originals are
        return "parameter" if module.parametrizations[attr]._parameters else "buffer"
    link = module.__dict__[_LINKS][attr]
    return _kind(link.module, link.name)


def _full_name(model: nn.Module, module: nn.Module, attr: str) -> str | None:
    path = _module_paths(model).get(id(module))
    return None if path is None else _join(path, attr)


# ---------------------------------------------------------------------------------------------
# Public API.


def tie(model: nn.Module, target: str, source: str, transform: str | None = None) -> nn.Module:
    r"""Make ``target`` computed from ``source``: ``target = T(source)``, one stored tensor.

    ``T`` is the identity (``transform=None``) or ``"transpose"`` (``W.T`` for a matrix; swaps the
    first two dimensions otherwise). After the call ``model.<target>`` is ``T(model.<source>)``
    at every access, gradients of both uses accumulate into the source, ``parameters()`` yields
    the tensor once, so an optimizer steps it once. The target takes the source's values (its
    own are discarded). Create optimizers *after* tying.

    Ties survive ``.to()``, ``deepcopy``, ``state_dict``/``load_state_dict`` (also
    ``assign=True``), ``torch.save`` of the whole model, ``to_empty()``, ``torch.compile`` and
    :func:`sharenorm.save`/:func:`sharenorm.load`; see the module docstring for how.

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
            a target that is already tied, shapes/dtypes/devices that do not match (both shapes
            shown), a parameter tied to a buffer, a transposed tie into an embedding with
            ``sparse=True`` (its sparse gradient cannot flow back through a transpose).

    Example:
        >>> import torch, sharenorm as sn
        >>> ae = torch.nn.ModuleDict({"enc": torch.nn.Linear(6, 2), "dec": torch.nn.Linear(2, 6)})
        >>> _ = sn.tie(ae, "dec.weight", "enc.weight", transform="transpose")
        >>> torch.equal(ae.dec.weight, ae.enc.weight.T), sn.count_parameters(ae)
        (True, 20)
    """
    plan = _plan(model, target, source, transform)
    _make(model, plan)
    return model


@dataclass
class _Plan:
    """A checked tie, not yet made: ``target = transform(root)``, where ``root`` is the stored
    tensor at the end of ``source``'s chain; ``readers`` are the links that now read the
    target and will read ``root`` instead."""

    target: str
    tmod: nn.Module
    tattr: str
    root: _Link
    shape: tuple[int, ...]
    readers: list[tuple[str, nn.Module, str, _Link]]


# A simulation of ties not yet made: {id(module): {attribute: link}}, consulted before the
# module's own links (sharenorm.load checks a whole manifest against it before applying it).
_Overlay = dict[int, dict[str, _Link]]


def _links_of(module: nn.Module, overlay: _Overlay | None = None) -> dict[str, _Link]:
    links = module.__dict__.get(_LINKS) or {}
    extra = overlay.get(id(module)) if overlay else None
    return {**links, **extra} if extra else links


def _plan(
    model: nn.Module,
    target: str,
    source: str,
    transform: str | None,
    overlay: _Overlay | None = None,
) -> _Plan:
    """Every check of :func:`tie`, changing nothing (also against the ties of ``overlay``)."""
    check_transform(transform)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
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
    slinks = _links_of(smod, overlay)
    if sattr in slinks:
        link = slinks[sattr]
        root_mod, root_attr = link.module, link.name
        root_transform = compose(link.transform, transform)
        root_hint = _full_name(model, link.module, link.name) or link.hint
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
    tkind, skind = _kind(tmod, tattr), _kind(root_mod, root_attr)
    if tkind != skind:
        raise ValueError(
            f"cannot tie {tkind} {target!r} to {skind} {source!r}; tie parameters to parameters "
            f"and buffers to buffers"
        )
    old = getattr(tmod, tattr)
    src = getattr(root_mod, root_attr)
    if transform == "transpose" and src.dim() < 2:
        raise ValueError(
            f"transform='transpose' needs a source with at least 2 dimensions, {source!r} has "
            f"shape {tuple(src.shape)} ({src.dim()} dimension(s)); use transform=None"
        )
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
    if old.dtype != src.dtype:
        raise ValueError(
            f"cannot tie {target!r} (dtype {old.dtype}) to {source!r} (dtype {src.dtype}); "
            f"convert one of them first, e.g. model.to({src.dtype})"
        )
    if old.device != src.device:
        raise ValueError(
            f"cannot tie {target!r} (device {old.device}) to {source!r} (device {src.device}); "
            f"move the model to one device first"
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
    root = _Link(root_mod, root_attr, root_transform, root_hint, persistent)
    return _Plan(target, tmod, tattr, root, tuple(old.shape), readers)


def _simulate(plan: _Plan, overlay: _Overlay) -> None:
    """Record ``plan``'s links in ``overlay``, as :func:`_make` would make them."""
    root = plan.root
    for _, m, name, link in plan.readers:
        overlay.setdefault(id(m), {})[name] = _Link(
            root.module, root.name, compose(root.transform, link.transform), root.hint,
            link.persistent,
        )
    overlay.setdefault(id(plan.tmod), {})[plan.tattr] = root


def _make(model: nn.Module, plan: _Plan) -> None:
    """Make the tie that :func:`_plan` checked."""
    target, tmod, tattr, root = plan.target, plan.tmod, plan.tattr, plan.root
    root_mod, root_attr, root_transform, root_hint = (
        root.module, root.name, root.transform, root.hint
    )
    readers = plan.readers
    # Other ties that read the target (it was a source) now read the target's new source,
    # and their declarations say so.
    paths = _module_paths(model)
    for mpath, _, _, link in readers:
        link.module, link.name = root_mod, root_attr
        link.transform = compose(root_transform, link.transform)
        link.hint = root_hint
        _register_root_hooks(_path_to_common_ancestor(model, mpath, paths[id(root_mod)]))
    moved = {}
    for mpath, m in model.named_modules():
        declared = m.__dict__.get(_DECLARED)
        if not declared:
            continue
        updated = {}
        for rel, rec in declared.items():
            if _join(mpath, rec.source) == target:
                transform = compose(root_transform, rec.transform)
                if mpath and not root_hint.startswith(mpath + "."):
                    # The new source lies outside the submodule that declared the tie: only
                    # the model around both can name it, so the declaration moves up to it.
                    moved[_join(mpath, rel)] = _Record(root_hint, transform, rec.shape)
                    continue
                new_source = root_hint[len(mpath) + 1 :] if mpath else root_hint
                rec = _Record(new_source, transform, rec.shape)
            updated[rel] = rec
        m.__dict__[_DECLARED] = updated

    # Replace the stored target by the computed attribute.
    tmod.__dict__.setdefault(_ORDER, (*tmod._parameters, *tmod._buffers))
    if tattr in tmod._parameters:
        del tmod._parameters[tattr]
    else:
        del tmod._buffers[tattr]
        tmod._non_persistent_buffers_set.discard(tattr)
    chain = _path_to_common_ancestor(model, paths[id(tmod)], paths[id(root_mod)])
    links = dict(tmod.__dict__.get(_LINKS) or {})
    links[tattr] = root
    tmod.__dict__[_LINKS] = links
    _set_class(tmod)

    # Remember what was declared (verify_ties) and make load_state_dict tie-aware.
    declared = dict(model.__dict__.get(_DECLARED) or {})
    declared.update(moved)
    declared[target] = _Record(root_hint, root_transform, plan.shape)
    model.__dict__[_DECLARED] = declared
    _register_root_hooks(chain)


def _check_sparse(module: nn.Module, target: str, transform: str | None) -> None:
    """Refuse a transposed tie into an embedding with ``sparse=True``: its backward makes a
    sparse gradient for the weight, which cannot flow back through the transpose (torch fails
    inside backward with "sparse transpose: transposed dimensions must be sparse")."""
    if transform == "transpose" and getattr(module, "sparse", False) is True:
        raise ValueError(
            f"cannot make {target!r} a transposed tie target: its {_base_class(module).__name__} "
            f"has sparse=True, and a sparse gradient cannot flow back through a transpose; tie "
            f"it without transform (to a tensor of its own shape), or build it with sparse=False"
        )


def _register_root_hooks(chain: list[nn.Module]) -> None:
    # Every module from model down to the lowest common ancestor of the two modules gets the
    # hook, so a load rooted anywhere there sees both keys (below it, the source is outside the
    # load and the target is checked against the source's current value).
    for m in chain:
        if not m.__dict__.get(_ROOT_HOOK):
            m.register_load_state_dict_pre_hook(_root_load_pre_hook)
            m.__dict__[_ROOT_HOOK] = True


def _path_to_common_ancestor(model: nn.Module, a: str, b: str) -> list[nn.Module]:
    """``model`` and each module below it down to the common ancestor of paths ``a``, ``b``."""
    common: list[str] = []
    for x, y in zip(a.split(".") if a else [], b.split(".") if b else [], strict=False):
        if x != y:
            break
        common.append(x)
    modules, m = [model], model
    for part in common:
        m = m.get_submodule(part)
        modules.append(m)
    return modules


def untie(model: nn.Module, target: str) -> nn.Module:
    """Give ``target`` its own tensor again, equal to its current (tied) value.

    Works for ties made by :func:`tie` and for plain sharing (one ``nn.Parameter`` assigned to
    two modules). The new tensor is a contiguous copy with the source's ``requires_grad``.

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
    links = tmod.__dict__.get(_LINKS) or {}
    if tattr in links:
        link = links[tattr]
        src = link.source()
        value = link.value().detach().clone(memory_format=torch.contiguous_format)
        links = {k: v for k, v in links.items() if k != tattr}
        tmod.__dict__[_LINKS] = links
        _set_class(tmod)
        if isinstance(src, nn.Parameter):
            tmod.register_parameter(tattr, nn.Parameter(value, requires_grad=src.requires_grad))
        else:
            tmod.register_buffer(tattr, value, persistent=link.persistent)
        _restore_order(tmod)
        # Forget the declaration, wherever in the model it was made.
        for mpath, m in model.named_modules():
            declared = m.__dict__.get(_DECLARED)
            if not declared:
                continue
            if not mpath:
                rel = target
            elif target.startswith(mpath + "."):
                rel = target[len(mpath) + 1 :]
            else:
                continue
            if rel in declared:
                m.__dict__[_DECLARED] = {k: v for k, v in declared.items() if k != rel}
        return model
    current = getattr(tmod, tattr)
    shared = [
        n
        for n, t in list(model.named_parameters(remove_duplicate=False))
        + list(model.named_buffers(remove_duplicate=False))
        if n != target and _same_storage(t, current)
    ]
    if not shared:
        targets = [
            _join(mpath, name)
            for mpath, m in model.named_modules()
            for name, link in (m.__dict__.get(_LINKS) or {}).items()
            if link.module is tmod and link.name == tattr
        ]
        if targets:
            raise ValueError(
                f"{target!r} is the source of the tie of {', '.join(map(repr, targets))}: it "
                f"holds the tensor itself; untie the target instead, e.g. "
                f"sharenorm.untie(model, {targets[0]!r})"
            )
        raise ValueError(
            f"{target!r} is not tied or shared; sharenorm.ties(model) lists the tie groups"
        )
    own = current.detach().clone(memory_format=torch.contiguous_format)
    if tattr in tmod._parameters:
        tmod._parameters[tattr] = nn.Parameter(own, requires_grad=current.requires_grad)
    else:
        tmod._buffers[tattr] = own
    return model


def replace_modules(model: nn.Module, new_of: dict[int, nn.Module]) -> None:
    """Put ``new_of[id(old)]`` at every place of each submodule ``old`` of ``model``, keeping
    the ties and the sharing that involve the old modules (what :func:`sharenorm.convert_norm`
    does with each norm layer).

    A module used at several places is replaced at all of them by the one new module. A tie
    (:func:`tie`) whose target or source lies in a replaced module is made again between the
    same names, on the module that declared it; a tensor that several names share (torch's
    sharing: one ``nn.Parameter`` under two names) is shared again, the new module's tensor
    under every name. A tie or shared tensor whose names all go away with the old modules (the
    running statistics of a BatchNorm replaced by a GroupNorm) goes with them. No replaced module
    may contain another.

    Raises:
        ValueError: before anything changes, for a tie or sharing only one side of which
            survives, or a tie whose other side lies outside ``model`` (naming the fix).
    """
    if not new_of:
        return
    if id(model) in new_of:
        raise ValueError("replace_modules replaces submodules; the model itself has no place")
    places: dict[int, list[str]] = {}
    for path, m in model.named_modules(remove_duplicate=False):
        if id(m) in new_of:
            places.setdefault(id(m), []).append(path)
    paths = _module_paths(model)

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

    # Where each tie was declared:
    # {(id(target module), attribute): (declaring module, its path, target relative to it)}.
    declared_at: dict[tuple[int, str], tuple[nn.Module, str, str]] = {}
    for dpath, d in model.named_modules():
        for rel in d.__dict__.get(_DECLARED) or {}:
            tpath, _, tattr = _join(dpath, rel).rpartition(".")
            try:
                declared_at[(id(model.get_submodule(tpath)), tattr)] = (d, dpath, rel)
            except AttributeError:  # a stale declaration (verify_ties reports it)
                continue

    # 1. Check everything and plan, before changing anything.
    reties, drops = [], []
    for mpath, m in model.named_modules():
        for attr, link in (m.__dict__.get(_LINKS) or {}).items():
            if id(m) not in new_of and id(link.module) not in new_of:
                continue
            target, spath = _join(mpath, attr), paths.get(id(link.module))
            if spath is None:
                raise ValueError(
                    f"cannot keep the tie of {target!r} to {link.hint}: the source lies outside "
                    f"the model given; pass the model that holds both, or "
                    f"sharenorm.untie(model, {target!r}) first"
                )
            source = _join(spath, link.name)
            d, dpath, rel = declared_at.get((id(m), attr), (model, "", target))
            if dpath and not source.startswith(dpath + "."):  # its declarer no longer holds both
                d, dpath, rel = model, "", target
            entry = (d, rel, source[len(dpath) + 1 :] if dpath else source, link.transform)
            (reties if check("tie", target, source) else drops).append(entry)
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

    # 2. Replace, then share and tie again; forget the declarations of what went away.
    for mid, ps in places.items():
        for path in ps:
            parent, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent), child, new_of[mid])
    for after_t, attr_t, after_s, attr_s in shares:
        tensor = getattr(after_s, attr_s)
        (after_t._parameters if attr_t in after_t._parameters else after_t._buffers)[attr_t] = tensor
    for d, rel, source, transform in reties:
        tmod, tattr = resolve(d, rel, "target")
        if tattr in (tmod.__dict__.get(_LINKS) or {}):  # its source was replaced: re-point it
            untie(d, rel)
        tie(d, rel, source, transform)
    for d, rel, _, _ in drops:
        declared = d.__dict__.get(_DECLARED) or {}
        d.__dict__[_DECLARED] = {k: v for k, v in declared.items() if k != rel}


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
        for n, t, _ in self.members:
            if n == name:
                return t
        if name == self.source:
            return None
        raise KeyError(name)


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
    named: list[tuple[str, Tensor]] = list(model.named_parameters(remove_duplicate=False))
    named += list(model.named_buffers(remove_duplicate=False))
    groups: list[tuple[str, Tensor, list[tuple[str, str | None, str]]]] = []
    for name, t in named:
        for _, base, members in groups:
            if t is base:
                members.append((name, None, "identity"))
                break
            if _same_storage(t, base):
                how = _view_transform(base, t)
                if how is not False:
                    members.append((name, how, "storage"))
                    break
        else:
            groups.append((name, t, []))
    by_tensor = {id(base): members for _, base, members in groups}
    paths = _module_paths(model)
    for mpath, m in model.named_modules(remove_duplicate=False):
        for attr, link in (m.__dict__.get(_LINKS) or {}).items():
            spath = paths.get(id(link.module))
            if spath is None:
                continue
            src = link.source()
            members = by_tensor.get(id(src))
            if members is None and not _in_state_dict(link.module, link.name):
                # A derived source (parametrized, pruned, ...): its computed tensor is new at
                # every access, so the group is named after the source attribute.
                members = []
                groups.append((_join(spath, link.name), src, members))
                by_tensor[id(src)] = members
            if members is None:
                continue
            entry = (_join(mpath, attr), link.transform, "tie")
            if entry not in members:
                members.append(entry)
    return [TieGroup(g, tuple(members)) for g, _, members in groups if members]


def verify_ties(model: nn.Module) -> None:
    """Raise :class:`TieError` if a tie declared with :func:`tie` has silently broken.

    Checks, for every declared tie in ``model`` (also ties declared on submodules): the target
    is still computed (its module was not replaced, nor given its own tensor), it still follows
    the module that sits at the source's name (that module was not replaced or copied away), with
    the declared transform, and the shapes still agree.

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
    problems = []
    count = 0
    paths = _module_paths(model)
    for mpath, m in model.named_modules():
        for name, link in (m.__dict__.get(_LINKS) or {}).items():
            if id(link.module) not in paths and link.unpickled:
                target = _join(mpath, name)
                problems.append(
                    f"{target!r} is computed from an unpickled {link.hint} that this model does "
                    f"not hold: its module was unpickled without its tie source, so it follows a "
                    f"private copy no optimizer or .to() sees (verify the whole unpickled model, "
                    f"or sharenorm.untie(model, {target!r}) to give it its own tensor)"
                )
    for mpath, m in model.named_modules():
        for rel_target, rec in (m.__dict__.get(_DECLARED) or {}).items():
            count += 1
            target, source = _join(mpath, rel_target), _join(mpath, rec.source)
            what = f"{target!r} (tied to {source!r})"
            tpath, _, tattr = target.rpartition(".")
            spath, _, sattr = source.rpartition(".")
            try:
                tmod = model.get_submodule(tpath)
            except AttributeError:
                problems.append(f"{what}: module {tpath!r} no longer exists")
                continue
            link = (tmod.__dict__.get(_LINKS) or {}).get(tattr)
            if link is None:
                stored = tattr in tmod._parameters or tattr in tmod._buffers
                own = "holds its own tensor" if stored else "is missing"
                problems.append(
                    f"{what} is no longer tied: it {own} (module {tpath or 'model'!r} was "
                    f"replaced, or the tensor was re-assigned); re-tie with sharenorm.tie"
                )
                continue
            try:
                smod = model.get_submodule(spath)
            except AttributeError:
                problems.append(f"{what}: source module {spath!r} no longer exists")
                continue
            if link.module is not smod or link.name != sattr:
                problems.append(
                    f"{what} follows a module that is no longer model.{source} (the source "
                    f"module was replaced, or the target module was copied alone)"
                )
                continue
            if link.transform != rec.transform:
                problems.append(
                    f"{what}: transform is {link.transform!r}, declared {rec.transform!r}"
                )
                continue
            src = getattr(smod, sattr, None)
            if not isinstance(src, Tensor):
                problems.append(f"{what}: the source {source!r} is no longer a tensor")
                continue
            if rec.transform is not None and src.dim() < 2:
                problems.append(f"{what}: the source is now {src.dim()}-d, it has no transpose")
                continue
            shape = transformed_shape(tuple(src.shape), rec.transform)
            if shape != rec.shape:
                problems.append(f"{what}: shape is now {shape}, was {rec.shape} when tied")
    if problems:
        raise TieError(f"{len(problems)} tie(s) broken: " + "; ".join(problems))
