"""convert_norm, convert_sync_batchnorm and fuse_conv_bn on real timm models (random
weights, nothing downloaded), compared with the unconverted model in float64."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from third_party import import_timm
from torch import nn

import sharenorm as sn
from sharenorm.norm.post import NormAct

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    # These models run thousands of tiny float64 depthwise-convolution calls, each an
    # OpenMP parallel region: on a loaded machine two threads wait on each other in every
    # one (5 s per forward against 0.15 s with one thread).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def _timm_model(name: str) -> nn.Module:
    """``name`` built with random weights and random running statistics, float64, eval."""
    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).to(F64)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                c = m.weight.shape[0]
                m.weight.copy_(torch.rand(c, dtype=F64) + 0.5)
                m.bias.copy_(torch.randn(c, dtype=F64) * 0.2)
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.copy_(torch.randn(c, dtype=F64) * 0.2)
                    m.running_var.copy_(torch.rand(c, dtype=F64) + 0.5)
    return model.eval()


def _model(name: str) -> nn.Module:
    return copy.deepcopy(_timm_model(name))


def _x(size: int = 16) -> torch.Tensor:
    return torch.randn(2, 3, size, size, dtype=F64, generator=torch.Generator().manual_seed(1))


def _act_types(model: nn.Module) -> dict[str, str]:
    """Qualified norm name -> its activation class name (timm's modules)."""
    return {n: type(m.act).__name__ for n, m in model.named_modules()
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm))
            and isinstance(getattr(m, "act", None), nn.Module)}


_SN_ACT = {"SiLU": "silu", "ReLU": "relu", "Identity": None}

# (timm model, kind, the layers' class, what a layer's activation must become)
CONVERT_CASES = [
    ("efficientnet_b0", "batch", "BatchNormAct2d"),  # SiLU and Identity
    ("efficientnet_b0_gn", "group", "GroupNormAct"),  # GroupNormAct, SiLU
    ("resnetv2_50x1_bit", "group", "GroupNormAct"),  # BiT: GroupNormAct + ReLU, pre-act
    ("resnet50_gn", "group", "GroupNorm"),  # torch's GroupNorm, no act
    ("mobilenetv3_small_050", "batch", "BatchNormAct2d"),  # Hardswish: no act= for it
]


@pytest.mark.parametrize("name,kind,cls", CONVERT_CASES, ids=[c[0] for c in CONVERT_CASES])
def test_convert_keeps_a_timm_models_output(name, kind, cls):
    model = _model(name)
    assert any(type(m).__name__ == cls for m in model.modules())
    acts = _act_types(model)
    x = _x()
    with torch.no_grad():
        expected = model(x)
        report = sn.convert_norm(model, kind)
        got = model(x)
    assert len(report) > 0 and not any(
        isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) for m in model.modules()
    )
    for layer, act in acts.items():
        new = model.get_submodule(layer)
        if act in _SN_ACT:
            assert new.act == _SN_ACT[act], layer
        else:  # kept as a module after the new norm
            assert isinstance(new, NormAct) and type(new.act).__name__ == act, layer
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


def test_convert_timm_batchnorm_to_groupnorm_keeps_the_activation():
    model = _model("efficientnet_b0")
    acts = _act_types(model)
    sn.convert_norm(model, "group")
    for layer, act in acts.items():
        new = model.get_submodule(layer)
        assert type(new) is sn.GroupNorm and new.act == _SN_ACT[act], layer
    assert model(_x()).shape == (2, 1000)


@pytest.mark.parametrize("name", ["efficientnet_b0", "regnetx_002", "densenet121", "mixnet_s"])
def test_timm_builders_map_a_norm_layer_to_their_own_class_convert_norm_does_not(name):
    """README "Classes": these builders take ``norm_layer=sn.BatchNorm2d`` and build timm's
    ``BatchNormAct2d`` from it (by the class's name); converting the built model is the way."""
    timm = import_timm()
    model = timm.create_model(name, pretrained=False, num_classes=3, norm_layer=sn.BatchNorm2d)
    assert not any(isinstance(m, sn.BatchNorm2d) for m in model.modules())
    assert any(type(m).__name__ == "BatchNormAct2d" for m in model.modules())
    sn.convert_norm(model, "batch")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, sn.BatchNorm2d) for m in model.modules())


def test_convert_sync_batchnorm_of_a_timm_model():
    model = _model("efficientnet_b0")
    x = _x()
    with torch.no_grad():
        expected = model(x)
        converted = sn.convert_sync_batchnorm(model)
        assert sum(type(m) is sn.SyncBatchNorm for m in converted.modules()) == 49
        torch.testing.assert_close(converted(x), expected, atol=1e-10, rtol=1e-10)


def test_convert_timm_norm_act_layer_with_a_drop_block_in_training():
    """timm's BatchNormAct2d applies drop (here DropBlock) then act after the norm: the
    converted layer does exactly that, also in training (same random mask for a seed)."""
    timm = import_timm()
    from timm.layers import BatchNormAct2d, DropBlock2d

    drop = functools.partial(DropBlock2d, drop_prob=0.3, block_size=3)
    old = BatchNormAct2d(6, act_layer=nn.Hardswish, drop_layer=drop).to(F64).train()
    assert timm  # imported for its layers
    new = sn.convert_norm(copy.deepcopy(old), "batch").model
    assert isinstance(new, NormAct) and isinstance(new.drop, DropBlock2d)
    x = torch.randn(4, 6, 9, 9, dtype=F64)
    torch.manual_seed(3)
    expected = old(x)
    torch.manual_seed(3)
    got = new(x)
    assert (expected == 0).any()  # the DropBlock dropped something
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(new.norm.running_var, old.running_var)


# (timm model, BatchNorms the model has, how many fold)
FUSE_CASES = [
    ("efficientnet_b0", 49, 49),  # BatchNormAct2d (SiLU) after every conv
    ("mobilenetv3_small_050", 34, 34),  # Hardswish after the norm: kept as a module
    ("resnet18", 20, 20),  # torch's BatchNorm2d
]


@pytest.mark.parametrize("name,count,folded", FUSE_CASES, ids=[c[0] for c in FUSE_CASES])
def test_fuse_conv_bn_folds_a_timm_model(name, count, folded):
    model = _model(name)
    x = _x()
    with torch.no_grad():
        expected = model(x)
        report = sn.fuse_conv_bn(model)
        got = report.model(x)
    assert len(report.fused) == folded and len(report.fused) + len(report.skipped) == count, report
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in report.model.modules())
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=1e-10)


def test_fuse_conv_bn_of_a_converted_timm_model():
    model = _model("efficientnet_b0")
    x = _x()
    with torch.no_grad():
        expected = model(x)
        sn.convert_norm(model, "batch")
        report = sn.fuse_conv_bn(model)
        assert len(report.fused) == 49 and report.skipped == []
        torch.testing.assert_close(report.model(x), expected, atol=1e-10, rtol=1e-10)
