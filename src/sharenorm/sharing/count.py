"""Counting parameters the way memory sees them: every stored tensor once.

``sum(p.numel() for p in model.parameters())`` counts a tensor twice when two ``nn.Parameter``
objects share memory, and counts nothing of a tie's second use; ``count_parameters`` counts
*stored* elements (each storage region once), and ``parameter_report`` puts that next to the
"total" count a model without sharing would have, with bytes and optimizer-state bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sharenorm._checks import check_module
from sharenorm.sharing.tie import iter_links

__all__ = ["count_parameters", "parameter_report", "ParameterReport", "ModuleRow"]


def _runs(t: Tensor) -> tuple[int, list[tuple[int, int]]]:
    """How ``t``'s elements lie in its storage: runs of ``length`` consecutive elements, the
    first at ``t.storage_offset()``, repeated along each ``(stride, size)`` of ``repeats``.

    Dimensions sorted by stride form one run as long as each stride equals the length of the
    run so far (a contiguous, transposed or permuted tensor is one run, ``repeats`` empty);
    each remaining dimension repeats the run at its stride (a column slice ``W[:, :k]`` is one
    run of ``k`` per row). Size-1 and stride-0 (expanded) dimensions add no element.
    """
    dims = sorted((s, n) for n, s in zip(t.shape, t.stride(), strict=True) if n > 1 and s != 0)
    length, i = 1, 0
    while i < len(dims) and dims[i][0] == length:
        length *= dims[i][1]
        i += 1
    return length, dims[i:]


def _span_if_no_overlap(t: Tensor) -> tuple[int, int] | None:
    """``t``'s byte range [first, last + 1) in its storage when no two of its elements share
    memory (each stride, in increasing order, passes the extent of the dims below it), else
    None."""
    dims = sorted((s, n) for n, s in zip(t.shape, t.stride(), strict=True) if n > 1)
    extent = 0  # Σ (n − 1)·s of the dims so far: the offset of their last element
    for s, n in dims:
        if s <= extent:
            return None
        extent += (n - 1) * s
    start = t.storage_offset() * t.element_size()
    return start, start + (extent + 1) * t.element_size()


def _disjoint(group: list[Tensor]) -> bool:
    """Whether no tensor of ``group`` overlaps itself and no two of their byte spans meet."""
    spans = []
    for t in group:
        span = _span_if_no_overlap(t)
        if span is None:
            return False
        spans.append(span)
    spans.sort()
    return all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))


def _run_starts(t: Tensor, repeats: list[tuple[int, int]]) -> Tensor:
    """The storage offsets (in elements) at which ``t``'s runs start."""
    starts = torch.tensor([t.storage_offset()])
    for stride, n in repeats:
        starts = (starts[:, None] + torch.arange(n) * stride).reshape(-1)
    return starts


def _union_length(starts: Tensor, stops: Tensor) -> int:
    """``|∪ [starts_i, stops_i)|``: sorted by start, interval i adds what reaches past every
    interval before it, ``max(0, reach_i − max(start_i, reach_{i−1}))`` with
    ``reach_i = max_{j ≤ i} stop_j``."""
    order = starts.argsort()
    starts, stops = starts[order], stops[order]
    reach = stops.cummax(0).values
    before = torch.cat([starts[:1], reach[:-1]])
    return int((reach - torch.maximum(starts, before)).clamp_min(0).sum())


def _unique_numel_bytes(tensors: Iterable[Tensor]) -> tuple[int, int]:
    """(elements, bytes) stored by ``tensors``, each storage element counted once.

    Tensors are grouped by storage; within a storage the bytes their elements cover are
    united exactly, so identical tensors, views and transposes count once, disjoint slices
    each count, and a strided view counts its elements, not the gaps between them. Elements of
    a storage seen in several dtypes are counted in the largest element size. Meta tensors have
    no storage: they are deduplicated by identity.
    """
    by_storage: dict[object, list[Tensor]] = {}
    for t in tensors:
        if t.numel() == 0:
            continue
        key = (
            ("id", id(t))
            if t.device.type == "meta"
            else (str(t.device), t.untyped_storage().data_ptr())
        )
        by_storage.setdefault(key, []).append(t)
    numel = nbytes = 0
    for key, group in by_storage.items():
        es = max(t.element_size() for t in group)
        runs = [_runs(t) for t in group]
        if key[0] == "id":
            covered = group[0].numel() * es
        elif len(group) == 1 and not runs[0][1]:
            covered = runs[0][0] * es  # alone in its storage, one run: the common case
        elif _disjoint(group):
            # no tensor overlaps itself or another (slices of one flat buffer, a strided view
            # alone): its elements, without listing its runs (W[:, ::2] has one per element)
            covered = sum(t.numel() * t.element_size() for t in group)
        else:
            starts, stops = [], []
            for t, (length, repeats) in zip(group, runs, strict=True):
                first = _run_starts(t, repeats) * t.element_size()
                starts.append(first)
                stops.append(first + length * t.element_size())
            covered = _union_length(torch.cat(starts), torch.cat(stops))
        nbytes += covered
        numel += covered // es
    return numel, nbytes


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """The number of parameter elements ``model`` stores, each stored tensor counted once.

    Tied targets (:func:`sharenorm.tie`) are computed, not stored, so they add nothing; one
    ``nn.Parameter`` under two names, or two parameters over the same memory, count once.

    Args:
        model: any module.
        trainable_only: count only parameters with ``requires_grad=True``.

    Example:
        >>> import sharenorm as sn
        >>> sn.count_parameters(sn.TiedAutoencoder([784, 64], tied=True))  # 784·64 + 64 + 784
        51024
    """
    check_module(model, "count_parameters")
    params = [
        p
        for _, p in model.named_parameters(remove_duplicate=False)
        if p.requires_grad or not trainable_only
    ]
    return _unique_numel_bytes(params)[0]


def _parameter_uses(model: nn.Module) -> list[Tensor]:
    """Every use of a parameter in ``model``: each module's own, and each tied name whose
    source is a parameter (or a parametrization of parameters, which computes a plain
    tensor). A module reused in two places counts twice (as two separate copies would)."""
    uses = [p for _, p in model.named_parameters(remove_duplicate=False)]
    for t in iter_links(model):
        if t.link.kind() == "parameter":
            uses.append(t.link.tensor())
    return uses


def _total(module: nn.Module) -> tuple[int, int]:
    """(elements, bytes) as if every use of a parameter were stored separately."""
    uses = _parameter_uses(module)
    return sum(t.numel() for t in uses), sum(t.numel() * t.element_size() for t in uses)


@dataclass(frozen=True)
class ModuleRow:
    """One module's subtree: stored (unique) and as-if-unshared (total) parameters."""

    name: str
    type: str
    unique: int
    total: int
    unique_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class ParameterReport:
    """Parameters, bytes and optimizer-state bytes, stored vs as-if-unshared.

    ``unique*`` count what is stored (each tensor once); ``total*`` count every use of a
    parameter as if it had its own tensor (a model without sharing/tying). Optimizer state is
    what torch keeps per stored trainable parameter: SGD with momentum one buffer
    (``momentum_buffer``, 1× the parameter bytes), Adam/AdamW two (``exp_avg``, ``exp_avg_sq``,
    2×); Adam's per-tensor scalar ``step`` is left out.
    """

    unique: int
    total: int
    trainable: int
    unique_bytes: int
    total_bytes: int
    sgd_momentum_state_bytes: int
    adam_state_bytes: int
    sgd_momentum_state_bytes_unshared: int
    adam_state_bytes_unshared: int
    rows: tuple[ModuleRow, ...] = field(default=())

    @property
    def saved_fraction(self) -> float:
        """1 − unique/total: the share of parameters that sharing saves."""
        return 0.0 if self.total == 0 else 1.0 - self.unique / self.total

    def format(self, max_depth: int = 2) -> str:
        """A plain-text table of the rows up to ``max_depth`` dots deep, then the totals."""
        lines = [f"{'module':<40} {'type':<18} {'unique':>12} {'total':>12} {'unique MB':>10}"]
        for r in self.rows:
            if r.name.count(".") + (1 if r.name else 0) > max_depth:
                continue
            lines.append(
                f"{r.name or '(model)':<40} {r.type[:18]:<18} {r.unique:>12,} {r.total:>12,} "
                f"{r.unique_bytes / 2**20:>10.3f}"
            )
        lines.append(
            f"parameters: {self.unique:,} stored / {self.total:,} without sharing "
            f"(saves {self.saved_fraction:.1%}); {self.unique_bytes:,} B stored; optimizer state: "
            f"SGD-momentum {self.sgd_momentum_state_bytes:,} B, Adam {self.adam_state_bytes:,} B "
            f"(without sharing {self.adam_state_bytes_unshared:,} B)"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def parameter_report(model: nn.Module) -> ParameterReport:
    """Per-module unique/total parameters and bytes, and optimizer-state bytes.

    Example:
        >>> import sharenorm as sn
        >>> r = sn.parameter_report(sn.TiedAutoencoder([784, 64], tied=True))
        >>> r.unique, r.total, r.adam_state_bytes == 2 * r.unique_bytes
        (51024, 101200, True)
    """
    check_module(model, "parameter_report")
    rows = []
    for name, m in model.named_modules():
        unique, unique_bytes = _unique_numel_bytes(
            p for _, p in m.named_parameters(remove_duplicate=False)
        )
        total, total_bytes = _total(m)
        rows.append(ModuleRow(name, type(m).__name__, unique, total, unique_bytes, total_bytes))
    params = [p for _, p in model.named_parameters(remove_duplicate=False)]
    trainable, trainable_bytes = _unique_numel_bytes(p for p in params if p.requires_grad)
    # As-if-unshared optimizer state counts every trainable use.
    train_total_bytes = sum(
        t.numel() * t.element_size() for t in _parameter_uses(model) if t.requires_grad
    )
    top = rows[0]
    return ParameterReport(
        unique=top.unique,
        total=top.total,
        trainable=trainable,
        unique_bytes=top.unique_bytes,
        total_bytes=top.total_bytes,
        sgd_momentum_state_bytes=trainable_bytes,
        adam_state_bytes=2 * trainable_bytes,
        sgd_momentum_state_bytes_unshared=train_total_bytes,
        adam_state_bytes_unshared=2 * train_total_bytes,
        rows=tuple(rows),
    )
