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
    BatchRenorm1d,
    BatchRenorm2d,
    BatchRenorm3d,
    ConversionReport,
    FuseReport,
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    NormTracer,
    SyncBatchNorm,
    convert_norm,
    convert_sync_batchnorm,
    fold_bn_weights,
    freeze_norm_stats,
    fuse_conv_bn,
    is_norm_stats_frozen,
    make_norm,
    recalibrate_norm_stats,
    unfreeze_norm_stats,
)

# --- sharing and tying (sharenorm.sharing) ---
from sharenorm.sharing import (
    LocallyConnected1d,
    LocallyConnected2d,
    ParameterReport,
    SharedRNN,
    SharedStack,
    SoftTie,
    TiedAutoencoder,
    TieError,
    TieGroup,
    UnsharedRNN,
    count_parameters,
    iter_links,
    load,
    parameter_report,
    save,
    tie,
    ties,
    untie,
    verify_ties,
)

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
    "SyncBatchNorm",
    "convert_sync_batchnorm",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "freeze_norm_stats",
    "unfreeze_norm_stats",
    "is_norm_stats_frozen",
    "recalibrate_norm_stats",
    "fuse_conv_bn",
    "fold_bn_weights",
    "FuseReport",
    "NormTracer",
    # sharing and tying
    "tie",
    "untie",
    "ties",
    "verify_ties",
    "iter_links",
    "TieGroup",
    "TieError",
    "count_parameters",
    "parameter_report",
    "ParameterReport",
    "SoftTie",
    "SharedStack",
    "LocallyConnected1d",
    "LocallyConnected2d",
    "SharedRNN",
    "UnsharedRNN",
    "TiedAutoencoder",
    "save",
    "load",
]
