"""Tools for training and deploying models with norm layers: freeze the running statistics
for fine-tuning (freeze.py), recompute them exactly after training (recalibrate.py), fold
BatchNorm into the layer before it for inference (fuse.py). They work on torch.nn and
sharenorm layers alike."""

from sharenorm.norm.tools.freeze import freeze_norm_stats, is_norm_stats_frozen, unfreeze_norm_stats
from sharenorm.norm.tools.fuse import (
    FoldedNorm1d,
    FuseReport,
    NormTracer,
    fold_bn_weights,
    fuse_conv_bn,
)
from sharenorm.norm.tools.recalibrate import recalibrate_norm_stats

__all__ = [
    "freeze_norm_stats",
    "unfreeze_norm_stats",
    "is_norm_stats_frozen",
    "recalibrate_norm_stats",
    "fold_bn_weights",
    "fuse_conv_bn",
    "FuseReport",
    "FoldedNorm1d",
    "NormTracer",
]
