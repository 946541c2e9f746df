"""state_dict of tied modules: both keys saved; on load, a target key is checked, not loaded.

The owner's pre-hook sees a load that holds both ends: it compares the target key with
``T(source key)`` and marks it checked, or derives a missing source from it. A tied module
checks what is left against the source's current value.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sharenorm.sharing.tie._inspect import iter_links
from sharenorm.sharing.tie._link import links_of
from sharenorm.sharing.tie._names import _in_state_dict
from sharenorm.sharing.tie._transforms import apply_transform

# The owner's hook marks a target key it has checked (a view of the value with this attribute),
# and the target module drops it without a second check. Popping it would make it look missing,
# and other load pre-hooks still see a tensor (one that casts it makes an unmarked copy, which
# the target module then checks).
_CHECKED = "_sharenorm_tie_checked"


def _mismatch(value: Any, expected: Tensor) -> str:
    """'' when ``value`` equals ``expected`` exactly (NaN where NaN is: a checkpoint with a
    NaN still matches itself), else what differs."""
    if value is expected:
        return ""
    if not isinstance(value, Tensor):
        return f"got a {type(value).__name__}, not a tensor"
    if tuple(value.shape) != tuple(expected.shape):
        return f"shape {tuple(value.shape)} vs expected {tuple(expected.shape)}"
    if "meta" in (value.device.type, expected.device.type):
        return ""
    other, expected = value.detach().to(expected.device, expected.dtype), expected.detach()
    if expected.is_floating_point() and expected.element_size() == 1:
        # float8 has no equality kernel; float32 holds every float8 value exactly
        other, expected = other.float(), expected.float()
    if torch.equal(other, expected):
        return ""
    if other.is_floating_point() or other.is_complex():
        if bool(((other == expected) | (other.isnan() & expected.isnan())).all()):
            return ""
    return f"max |difference| = {(other.double() - expected.double()).abs().max().item():.3g}"


def owner_load_pre_hook(
    module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
    missing_keys: list, unexpected_keys: list, error_msgs: list,
) -> None:
    """Check every tie below ``module`` whose both ends this load holds."""
    for target, source, transform, link in iter_links(module):  # every name of a reused module
        tkey = prefix + target
        if source is None or tkey not in state_dict or getattr(state_dict[tkey], _CHECKED, False):
            continue  # source outside this load (the target module checks it), absent, or done
        value = state_dict[tkey]
        if isinstance(value, Tensor):
            state_dict[tkey] = value.view_as(value)
            setattr(state_dict[tkey], _CHECKED, True)
        if not _in_state_dict(link.module, link.name):
            continue  # derived source (parametrized, pruned, non-persistent): its module loads it
        skey = prefix + source
        if skey in state_dict:
            problem = _mismatch(value, apply_transform(state_dict[skey], transform))
            if problem:
                error_msgs.append(
                    f"'{tkey}' is tied to '{skey}' (transform={transform!r}) but the state_dict "
                    f"holds different values for them ({problem}); load it into an untied model, "
                    f"drop '{tkey}' to keep '{skey}', or sharenorm.untie first"
                )
        elif isinstance(value, Tensor):
            # Only the target was stored (a file written under the pair's other name): the source
            # is T⁻¹(value) = T(value), still reported missing, as torch does for a shared one.
            state_dict[skey] = apply_transform(value, transform).contiguous()
            if strict:
                missing_keys.append(skey)


class TiedStateDict:
    """A tied class's state_dict methods (copied into it; ``_sharenorm_base``: its base class)."""

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        # Both keys appear, as for torch's identity-tied weights: the target holds T(source), at
        # the place the target had before it was tied (torch's key order).
        links, own = links_of(self), {}
        self._sharenorm_base._save_to_state_dict(self, own, prefix, keep_vars)
        for name in (*next(iter(links.values())).order, *links):
            key = prefix + name
            if key in own:
                destination[key] = own.pop(key)
            elif name in links and links[name].persistent and key not in destination:
                value = links[name].value()
                destination[key] = value if keep_vars else value.detach()
        destination.update(own)  # what was registered after tying, and the extra state

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        # After the base method, which runs this module's pre-hooks (the owner's, if it owns a
        # tie) and back-fills keys of old checkpoints (BatchNorm's num_batches_tracked): a tied
        # key is not unexpected; unless the owner checked it, it is checked against the source.
        self._sharenorm_base._load_from_state_dict(self, state_dict, prefix, *args)
        _, strict, missing_keys, unexpected_keys, error_msgs = args
        for name, link in links_of(self).items():
            key = prefix + name
            if key not in state_dict:
                if link.persistent and strict:  # missing, as torch reports a shared parameter's
                    missing_keys.append(key)  # absent name (safetensors' load_model needs it)
                continue
            while key in unexpected_keys:
                unexpected_keys.remove(key)
            value = state_dict[key]
            problem = "" if getattr(value, _CHECKED, False) else _mismatch(value, link.value())
            if problem:
                error_msgs.append(
                    f"'{key}' is tied to {link.hint} (transform={link.transform!r}) but the "
                    f"state_dict value differs from it ({problem}); drop the key and load with "
                    f"strict=False to keep the source's value, or sharenorm.untie the target first"
                )
