"""The transforms a tie may apply: identity (``None``) and ``"transpose"``, each its own inverse."""

from __future__ import annotations

from typing import Any

from torch import Tensor

#: ``None`` (identity) and ``"transpose"`` (swap the first two dimensions: ``W.T`` for a matrix).
TRANSFORMS: tuple[str | None, ...] = (None, "transpose")


def check_transform(transform: Any) -> str | None:
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be None (identity) or 'transpose', got {transform!r}")
    return transform


def apply_transform(t: Tensor, transform: str | None) -> Tensor:
    """``T(t)``: ``t`` itself for identity, ``t.transpose(0, 1)`` (a view) for transpose."""
    return t if transform is None else t.transpose(0, 1)


def transformed_shape(shape: tuple[int, ...], transform: str | None) -> tuple[int, ...]:
    """The shape of ``T(t)`` for a tensor ``t`` of ``shape``."""
    shape = tuple(shape)
    if transform is None:
        return shape
    if len(shape) < 2:
        raise ValueError(
            f"transform='transpose' swaps the first two dimensions: it needs at least 2 "
            f"dimensions, shape {shape} has {len(shape)} dimension(s) (use transform=None)"
        )
    return (shape[1], shape[0], *shape[2:])


def compose(first: str | None, then: str | None) -> str | None:
    """The transform equal to applying ``first`` and then ``then``."""
    return "transpose" if (first == "transpose") != (then == "transpose") else None
