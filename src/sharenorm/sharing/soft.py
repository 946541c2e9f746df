r"""Soft tying: a penalty that pulls weights together instead of forcing them equal.

.. math:: \Omega = \lambda \sum_{(A, B, T)} \lVert w_A - T(w_B) \rVert_2^2

Added to the loss, it is the regulariser view of tying: ``λ = 0`` is untied training, a large
``λ`` drives the pair towards a hard tie (:func:`sharenorm.tie`), values in between let the data
decide how different the two may be.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from sharenorm.sharing.tie import apply_transform, check_transform, resolve, transformed_shape

__all__ = ["SoftTie"]


class SoftTie:
    r"""``penalty() = strength · Σ ‖w_A − T(w_B)‖²`` over named pairs of ``model``.

    Names are resolved on every call, so the penalty follows the model through ``.to()``,
    ``load_state_dict(assign=True)`` and the like. The gradient of the penalty w.r.t. ``w_A`` is
    ``2λ(w_A − T(w_B))`` and w.r.t. ``w_B`` its negative (transposed back).

    Args:
        model: the module the names are relative to.
        pairs: ``(a, b)`` or ``(a, b, transform)`` with ``transform`` None or ``"transpose"``.
        strength: λ ≥ 0 (may be changed later through ``.strength``).

    Raises:
        ValueError: unknown names (close names suggested), a name paired with itself, shapes or
            dtypes that do not match after the transform, a negative strength.

    Example:
        >>> import torch, sharenorm as sn
        >>> ae = sn.TiedAutoencoder([6, 3], tied=False)
        >>> soft = sn.SoftTie(ae, [("decoder.0.weight", "encoder.0.weight", "transpose")], 1e-3)
        >>> loss = ((ae(torch.randn(4, 6)) - 1) ** 2).mean() + soft.penalty()
        >>> loss.backward()
    """

    def __init__(
        self,
        model: nn.Module,
        pairs: Iterable[Sequence],
        strength: float = 1e-3,
    ) -> None:
        self.model = model
        self.strength = strength
        checked = []
        if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Iterable):
            raise ValueError(f"pairs must be a list of (a, b) or (a, b, transform) pairs, got "
                             f"{pairs!r}")
        for pair in pairs:
            if not isinstance(pair, (tuple, list)) or len(pair) not in (2, 3):
                raise ValueError(f"each pair must be (a, b) or (a, b, transform), got {pair!r}")
            a, b = pair[0], pair[1]
            transform = check_transform(pair[2] if len(pair) == 3 else None)
            if a == b:
                raise ValueError(f"cannot soft-tie {a!r} to itself; name two different tensors")
            wa, wb = self._get(a, "a"), self._get(b, "b")
            if transform == "transpose" and wb.dim() < 2:
                raise ValueError(
                    f"transform='transpose' needs at least 2 dimensions, {b!r} has shape "
                    f"{tuple(wb.shape)}"
                )
            shape_b = transformed_shape(tuple(wb.shape), transform)
            if tuple(wa.shape) != shape_b:
                hint = ""
                if wa.dim() >= 2 and tuple(wa.shape) == transformed_shape(shape_b, "transpose"):
                    pair = f"({a!r}, {b!r})" if transform else f"({a!r}, {b!r}, 'transpose')"
                    hint = f" (use transform={'None' if transform else repr('transpose')}: {pair})"
                raise ValueError(
                    f"cannot soft-tie {a!r} (shape {tuple(wa.shape)}) to "
                    f"{b + 'ᵀ' if transform else b!r} (shape {shape_b}); the shapes must be "
                    f"equal{hint}"
                )
            if wa.dtype != wb.dtype:
                raise ValueError(
                    f"cannot soft-tie {a!r} ({wa.dtype}) to {b!r} ({wb.dtype}); use one dtype"
                )
            if wa.device != wb.device:  # penalty() would fail with torch's device error
                raise ValueError(
                    f"cannot soft-tie {a!r} ({wa.device}) to {b!r} ({wb.device}); put both on "
                    "one device (model.to(device))"
                )
            if not (wa.is_floating_point() or wa.is_complex()):
                raise ValueError(
                    f"cannot soft-tie {a!r} and {b!r} ({wa.dtype}): a penalty on their distance "
                    "needs floating-point (or complex) tensors; integer and bool buffers such "
                    "as num_batches_tracked are counts, not weights"
                )
            checked.append((a, b, transform))
        if not checked:
            raise ValueError("pairs is empty; give at least one (a, b) pair")
        self.pairs: tuple[tuple[str, str, str | None], ...] = tuple(checked)

    @property
    def strength(self) -> float:
        return self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        # Any real number type (numpy's scalars too), not a bool; NaN fails value >= 0, and
        # an infinite strength makes the penalty (and every gradient after it) inf or NaN.
        if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0
                or not math.isfinite(value)):
            raise ValueError(f"strength must be a finite real number >= 0, got {value!r}; for "
                             "tensors that must stay equal, tie them: sharenorm.tie")
        self._strength = float(value)

    def _get(self, name: str, role: str) -> Tensor:
        module, attr = resolve(self.model, name, role)
        return getattr(module, attr)

    def distances(self) -> list[Tensor]:
        """``‖w_A − T(w_B)‖²`` for each pair (without λ), differentiable.

        Accumulated in at least float32: for float16/bfloat16 weights the sum of squares easily
        passes float16's maximum (65504) although λ times it does not.
        """
        out = []
        for a, b, transform in self.pairs:
            diff = self._get(a, "a") - apply_transform(self._get(b, "b"), transform)
            if diff.is_complex():  # ‖d‖² = Σ |d|², real (d² would be complex)
                diff = diff.abs()
            out.append(diff.to(torch.promote_types(diff.dtype, torch.float32)).pow(2).sum())
        return out

    def penalty(self) -> Tensor:
        """``strength · Σ ‖w_A − T(w_B)‖²``: add it to the loss (in the weights' dtype, the
        promoted one when pairs differ)."""
        total = sum(self.distances()) * self._strength
        dtypes = [self._get(name, role).dtype for a, b, _ in self.pairs
                  for name, role in ((a, "a"), (b, "b"))]
        dtype = functools.reduce(torch.promote_types, dtypes)
        return total.to(dtype.to_real() if dtype.is_complex else dtype)

    __call__ = penalty

    def __repr__(self) -> str:
        shown = ", ".join(f"({a!r}, {b!r}{', ' + repr(t) if t else ''})" for a, b, t in self.pairs)
        return f"SoftTie([{shown}], strength={self._strength:g})"
