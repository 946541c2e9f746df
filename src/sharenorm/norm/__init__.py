"""Batch, Instance and Group Normalization: modules, functional API, factory, tools."""

from sharenorm.norm.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from sharenorm.norm.batchrenorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d
from sharenorm.norm.factory import (
    ConversionReport,
    convert_norm,
    convert_sync_batchnorm,
    make_norm,
)
from sharenorm.norm.groupnorm import GroupNorm
from sharenorm.norm.instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from sharenorm.norm.syncbatchnorm import SyncBatchNorm
from sharenorm.norm.tools import (
    FuseReport,
    NormTracer,
    fold_bn_weights,
    freeze_norm_stats,
    fuse_conv_bn,
    is_norm_stats_frozen,
    recalibrate_norm_stats,
    unfreeze_norm_stats,
)

__all__ = [
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
    # beyond one process, small batches, deployment
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
]
