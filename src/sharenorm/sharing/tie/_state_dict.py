"""state_dict of tied modules: both keys saved; on load, a target key checked and dropped.

The owner's pre-hook sees a load that holds both ends: it compares the target key with
``T(source key)`` and marks it checked, or derives a missing source from it. A tied module's
``_load_from_state_dict`` checks what is left against the source's current value.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sharenorm.sharing.tie._link import _OWNED, links_of
from sharenorm.sharing.tie._names import _in_state_dict, _join, _module_paths
from sharenorm.sharing.tie._transforms import apply_transform


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


# The owner's hook marks the target keys it has checked, and the target module then drops them
# without a second check. A plain pop would make the key look absent, i.e. missing; the load
# passes sub-dicts down, so a mark on the value is what reaches the module. The mark is a view
# of the value with an attribute: other load pre-hooks still see a tensor (one that casts it
# makes an unmarked copy, which then gets the module-level check).
_CHECKED_ATTR = "_sharenorm_tie_checked"


def _marked_checked(value: Any) -> Any:
    if not isinstance(value, Tensor):
        return value
    view = value.view_as(value)
    setattr(view, _CHECKED_ATTR, True)
    return view


def _is_checked(value: Any) -> bool:
    return getattr(value, _CHECKED_ATTR, False) is True


def owner_load_pre_hook(
    module: nn.Module,
    state_dict: dict,
    prefix: str,
    local_metadata: dict,
    strict: bool,
    missing_keys: list,
    unexpected_keys: list,
    error_msgs: list,
) -> None:
    """Check every tie below ``module`` whose both ends this load holds."""
    paths = _module_paths(module)
    # Every name of a reused target module is a key of its own to check.
    for mpath, m in module.named_modules(remove_duplicate=False):
        for name, link in links_of(m).items():
            spath = paths.get(id(link.module))
            if spath is None:  # the source lives outside this load: the module-level check runs
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


def make_owner(module: nn.Module) -> list:
    """``module``'s list of owned links, created (with the load pre-hook) on first use."""
    owned = module.__dict__.get(_OWNED)
    if owned is None:
        owned = module.__dict__[_OWNED] = []
        module.register_load_state_dict_pre_hook(owner_load_pre_hook)
    return owned


def tied_save_to_state_dict(
    self: nn.Module, destination: dict, prefix: str, keep_vars: bool
) -> None:
    own: dict[str, Any] = {}
    self._sharenorm_base._save_to_state_dict(self, own, prefix, keep_vars)
    # Both keys appear, as for torch's identity-tied weights: the target holds T(source), at
    # the place the target had before it was tied (torch's key order).
    links = links_of(self)
    order = next(iter(links.values())).order if links else ()
    for name in (*order, *links):
        key = prefix + name
        if key in own:
            destination[key] = own.pop(key)
        elif name in links and links[name].persistent and key not in destination:
            value = links[name].value()
            destination[key] = value if keep_vars else value.detach()
    destination.update(own)  # what was registered after tying, and the extra state


def tied_load_from_state_dict(
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
    # when this module owns a tie (among its own tensors), run the owner's hook first (it is
    # idempotent: keys it has checked are marked). What is left unmarked (the source lies
    # outside the module being loaded) is checked against the source's current value. Both are
    # then dropped so that they are not "unexpected keys".
    if _OWNED in self.__dict__:
        args = (local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        owner_load_pre_hook(self, state_dict, prefix, *args)
    links = links_of(self)
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
