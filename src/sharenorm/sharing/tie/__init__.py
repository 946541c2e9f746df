"""Hard parameter tying: ``tie`` / ``untie`` / ``ties`` / ``verify_ties`` / ``iter_links``.

After ``tie(model, "decoder.weight", "encoder.weight", transform="transpose")`` the decoder's
weight is *computed from* the encoder's on every access (``encoder.weight.T``): one stored
tensor, gradients of both uses accumulate into it, ``parameters()`` yields it once. The tie
survives ``.to()``, ``deepcopy``, pickling, ``state_dict`` both ways (also ``assign=True``),
``to_empty()``, ``torch.compile`` and DDP. How and why, and its limits: docs/design/tying.md.
"""

from sharenorm.sharing.tie._api import tie, untie
from sharenorm.sharing.tie._inspect import (
    TieError,
    TieGroup,
    TieLink,
    iter_links,
    ties,
    verify_ties,
)
from sharenorm.sharing.tie._link import Link
from sharenorm.sharing.tie._names import resolve
from sharenorm.sharing.tie._transforms import (
    TRANSFORMS,
    apply_transform,
    check_transform,
    compose,
    transformed_shape,
)

__all__ = [
    "tie", "untie", "ties", "verify_ties", "iter_links", "TieError", "TieGroup", "TieLink", "Link",
    "TRANSFORMS", "apply_transform", "check_transform", "compose", "transformed_shape", "resolve",
]
