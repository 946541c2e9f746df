"""Cross-layer sharing (ALBERT-style): one block's weights used ``depth`` times."""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable
from typing import Any

from torch import nn

from sharenorm._checks import as_count
from sharenorm.sharing.tie import tie

__all__ = ["SharedStack"]


class SharedStack(nn.Module):
    r"""Apply one block ``depth`` times with the same weights: ``x ↦ f_θ(f_θ(…f_θ(x)))``.

    The stack holds ``depth`` copies of ``block`` in ``blocks`` (so names, hooks and
    ``state_dict`` look like an ordinary stack of layers), and every parameter and buffer of
    copies ``1…depth-1`` is :func:`sharenorm.tie`\ d to copy 0. Names listed in ``unshared``
    (a submodule such as ``"norm"``, or a single tensor such as ``"norm.weight"``) are left out
    of the ties: each repetition gets its own copy, initialised from ``block``. Parameters scale
    with 1 (plus the unshared part times ``depth``), not with ``depth``.

    With ``unshared=()`` this computes exactly ``for _ in range(depth): x = block(x)``,
    buffers included (a shared BatchNorm updates one set of running statistics ``depth`` times).

    Args:
        block: the module to repeat; it becomes ``blocks[0]``.
        depth: number of repetitions (>= 1).
        unshared: names inside ``block`` whose tensors each repetition owns.

    Shape:
        Whatever ``block`` maps; its output must be a valid input. Extra positional/keyword
        arguments of ``forward`` are passed to every repetition.

    Example:
        >>> import torch, sharenorm as sn
        >>> block = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
        >>> stack = sn.SharedStack(block, depth=12, unshared=("1",))
        >>> sn.count_parameters(stack)             # 72 shared + 12 × 16 LayerNorm
        264
        >>> stack(torch.randn(2, 8)).shape
        torch.Size([2, 8])
    """

    def __init__(self, block: nn.Module, depth: int, unshared: Iterable[str] = ()) -> None:
        super().__init__()
        if not isinstance(block, nn.Module):
            raise TypeError(f"block must be an nn.Module, got {type(block).__name__}")
        depth = as_count(depth, "depth", "")
        if isinstance(unshared, str):
            unshared = (unshared,)
        if not isinstance(unshared, Iterable) or not all(isinstance(u, str) for u in unshared):
            raise TypeError(f"unshared must be names inside block (a str or a list of str), "
                            f"got {unshared!r}")
        self.depth = depth
        self.unshared = tuple(unshared)
        tensors = [n for n, _ in block.named_parameters(remove_duplicate=False)]
        tensors += [n for n, _ in block.named_buffers(remove_duplicate=False)]
        known = set(tensors) | {n for n, _ in block.named_modules(remove_duplicate=False) if n}
        for name in self.unshared:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.5)
                hint = (
                    f"; did you mean {', '.join(map(repr, close))}?"
                    if close
                    else f"; choose from {sorted(known)}"
                )
                raise ValueError(
                    f"unshared name {name!r} is not a submodule, parameter or buffer of the "
                    f"block{hint}"
                )
        lookup = dict(block.named_parameters(remove_duplicate=False))
        lookup.update(block.named_buffers(remove_duplicate=False))
        # One tensor under several names (a module used twice in the block, or plain sharing
        # inside it) is one tensor in every copy: shared by all names or owned by all.
        names_of: dict[int, list[str]] = {}
        for name in dict.fromkeys(tensors):
            names_of.setdefault(id(lookup[name]), []).append(name)
        for names in names_of.values():
            owned = [n for n in names if self.is_unshared(n)]
            if owned and len(owned) < len(names):
                others = [n for n in names if n not in owned]
                raise ValueError(
                    f"the block holds one tensor as {', '.join(map(repr, names))} (one module "
                    f"used twice, or one parameter in two modules), and unshared covers only "
                    f"{', '.join(map(repr, owned))}: add {', '.join(map(repr, others))} (or "
                    f"the module that holds it) to unshared, or leave both out"
                )
        shared = [n for n in dict.fromkeys(tensors) if not self.is_unshared(n)]
        # Copies reuse the shared tensors themselves (deepcopy memo), so building the stack never
        # allocates depth × the block; tie() then turns that plain sharing into declared ties,
        # once per (module, attribute): a module used twice is one module in each copy too.
        keep = {id(lookup[n]): lookup[n] for n in shared}
        copies = [copy.deepcopy(block, memo=dict(keep)) for _ in range(depth - 1)]
        self.blocks = nn.ModuleList([block, *copies])
        to_tie: dict[tuple[int, str], str] = {}
        for name in shared:
            mpath, _, attr = name.rpartition(".")
            to_tie.setdefault((id(block.get_submodule(mpath)), attr), name)
        for i in range(1, depth):
            for name in to_tie.values():
                tie(self, f"blocks.{i}.{name}", f"blocks.0.{name}")

    def is_unshared(self, name: str) -> bool:
        """Whether the block's tensor ``name`` is owned by each repetition."""
        return any(name == u or name.startswith(u + ".") for u in self.unshared)

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        for block in self.blocks:
            x = block(x, *args, **kwargs)
        return x

    def extra_repr(self) -> str:
        return f"depth={self.depth}, unshared={self.unshared}"
