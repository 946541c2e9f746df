"""Triton GPU kernels for norm + activation (optional: ``pip install sharenorm[triton]``).

Importing this package never fails: without Triton, ``HAS_TRITON`` is False and
:func:`available` says no, so callers fall back to the torch path. Which module holds what
(kernels, launchers, ``torch.library`` ops, entry points): docs/design/triton-kernels.md.
"""

from __future__ import annotations

import os

import torch

__all__ = ["HAS_TRITON", "TRITON_DTYPES", "available", "interpreting", "load_ops"]

try:
    import triton  # noqa: F401
except ImportError:  # Triton is an optional extra
    HAS_TRITON = False
else:
    HAS_TRITON = True

# The dtypes the kernels are written and tested for (fp32 statistics for all of them).
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available(device: torch.device) -> bool:
    """Whether the Triton kernels can run on ``device``: Triton is installed and the
    device is CUDA, or the interpreter is on (then CPU tensors work, slowly).

    Example:
        >>> import torch
        >>> from sharenorm.norm import kernels
        >>> kernels.available(torch.device("cpu")) == (kernels.HAS_TRITON and kernels.interpreting())
        True
        >>> kernels.available(torch.device("cuda")) == kernels.HAS_TRITON
        True
    """
    return HAS_TRITON and (device.type == "cuda" or interpreting())


def load_ops():
    """The module holding the custom ops (registers them on first call)."""
    if not HAS_TRITON:
        raise ImportError(
            "the Triton kernels need Triton: pip install 'sharenorm[triton]' (or pass "
            "backend='torch')"
        )
    from sharenorm.norm.kernels import ops

    return ops


# Register the custom ops (and their autograd) now where the kernels can run, outside any
# torch.compile trace: registering during a trace is not possible. On a CPU-only machine
# without the interpreter this imports nothing more.
if HAS_TRITON and (interpreting() or torch.cuda.is_available()):
    load_ops()
