"""Batch, Instance and Group Normalization: modules, functional API, factory, tools."""

from sharenorm.norm.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from sharenorm.norm.factory import ConversionReport, convert_norm, make_norm
from sharenorm.norm.groupnorm import GroupNorm
from sharenorm.norm.instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d

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
]
