"""Whether values can be read on the host here.

Under ``torch.compile``'s tracing (``torch.export`` too), inside a ``torch.func`` transform
(``vmap``, ``grad``, ``jacrev``, …) and under ``torch.jit.trace`` a norm must not read a
tensor's values on the host (``.item()``, a data-dependent branch, the C loops' data pointers;
``jit.trace`` even turns shapes into tensors): it takes its branch-free path instead, as it
does on GPUs.
"""

from __future__ import annotations

import torch

__all__ = ["tracing", "in_transform"]


def tracing() -> bool:
    """True while torch.compile (or torch.export) or torch.jit.trace traces, or a torch.func
    transform is active.

    Example:
        >>> import torch
        >>> from sharenorm.norm._tracing import tracing
        >>> tracing()
        False
        >>> bool(torch.func.vmap(lambda x: x * tracing())(torch.ones(2)).all())
        True
    """
    return torch.compiler.is_compiling() or in_transform() or torch.jit.is_tracing()


def in_transform() -> bool:
    """True inside a torch.func transform (vmap, grad, jacrev, …)."""
    return torch._C._are_functorch_transforms_active()
