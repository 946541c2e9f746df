"""sharenorm: Batch/Instance/Group normalization and parameter sharing/tying for PyTorch.

Example:
    >>> import torch, sharenorm as sn
    >>> bn = sn.BatchNorm2d(8, act="relu")
    >>> bn(torch.randn(4, 8, 5, 5)).shape
    torch.Size([4, 8, 5, 5])
"""

from sharenorm import functional

# --- normalization (sharenorm.norm) ---
from sharenorm.norm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    ConversionReport,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    convert_norm,
    make_norm,
)

# --- sharing and tying (sharenorm.sharing) ---

__version__ = "0.1.0"

__all__ = [
    "functional",
    # normalization
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "GroupNorm",
    "make_norm",
    "convert_norm",
    "ConversionReport",
    # sharing and tying
]
