"""The one place the models read a norm name: canonical kind, and whether a bias before it is redundant."""

from __future__ import annotations

from sharenorm.norm.factory import canonical_kind, default_num_groups

__all__ = ["canonical_kind", "norm_removes_bias"]


def norm_removes_bias(kind: str, channels: int, num_groups: int | None = None) -> bool:
    """True when the norm after a layer cancels that layer's per-channel bias ``b_c``.

    BatchNorm (and its sync/renorm variants) subtracts each channel's mean over the batch and
    InstanceNorm each channel's mean per sample: ``b_c`` shifts that mean by exactly ``b_c``
    and is removed. GroupNorm subtracts a group's mean, which moves by the group's average of
    ``b``: ``b_c`` is removed only with one channel per group (``C / G == 1``). LayerNorm (one
    group) and no norm keep it, so the layer needs its bias there.

    Example:
        >>> norm_removes_bias("BN", 32), norm_removes_bias("gn", 32, 8), norm_removes_bias("layer", 32)
        (True, False, False)
    """
    kind = canonical_kind(kind)
    if kind in ("batch", "sync", "renorm", "instance"):
        return True
    if kind == "group":
        return channels // (num_groups or default_num_groups(channels)) == 1
    return False
