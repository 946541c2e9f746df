"""``torch.export`` and ``torch.jit.trace`` of the layers, which take torch.nn's layers as they
are: the exported or traced layer against the torch.nn composition with the same state
(outputs and running statistics). Where no value may be read on the host, the layers take
their branch-free paths: export lifts a ``.data`` alias as a constant and refuses the fake
tensor in it ("a fake tensor in the exported program constant's list"), and jit.trace turns
shapes into tensors."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import sharenorm as sn

# sharenorm layer, the torch.nn composition it stands for
LAYERS = {
    "bn": (lambda: sn.BatchNorm2d(8), lambda: nn.BatchNorm2d(8)),
    "bn_relu_lean": (lambda: sn.BatchNorm2d(8, act="relu", memory_efficient=True),
                     lambda: nn.Sequential(nn.BatchNorm2d(8), nn.ReLU())),
    "gn_silu": (lambda: sn.GroupNorm(2, 8, act="silu"),
                lambda: nn.Sequential(nn.GroupNorm(2, 8), nn.SiLU())),
    "in_stats": (lambda: sn.InstanceNorm2d(8, affine=True, track_running_stats=True),
                 lambda: nn.InstanceNorm2d(8, affine=True, track_running_stats=True)),
}
X = torch.randn(4, 8, 5, 5, generator=torch.Generator().manual_seed(0)) * 2 + 1


def _pair(name, training):
    torch.manual_seed(0)
    ours, theirs = (make().train(training) for make in LAYERS[name])
    norm = theirs[0] if isinstance(theirs, nn.Sequential) else theirs
    with torch.no_grad():  # γ, β and running statistics away from their 1/0 defaults
        for t in ours.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5)
    norm.load_state_dict(ours.state_dict())
    return ours, theirs, norm


def _same_statistics(ours, norm):
    for key in ("running_mean", "running_var"):  # (InstanceNorm's counter differs by design)
        if getattr(norm, key, None) is not None:
            torch.testing.assert_close(getattr(ours, key), getattr(norm, key), atol=1e-6,
                                       rtol=1e-5, msg=key)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_export_matches_torch_nn(name, training):
    ours, theirs, norm = _pair(name, training)
    program = torch.export.export(ours, (X,)).module()
    torch.testing.assert_close(program(X), theirs(X), atol=1e-5, rtol=1e-5)
    # the exported program moves its buffers as a torch.nn step moves torch's
    _same_statistics(program, norm)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_exported_layers_differentiate_like_torch_nn(name, training):
    # the restore of the running statistics after a batch (in-place, traced) bumped the
    # version of the buffers ATen's batch norm saved for backward: "modified by an inplace
    # operation" at the first backward of an exported BatchNorm in training
    ours, theirs, _ = _pair(name, training)
    program = torch.export.export(ours, (X,)).module()
    grads = []
    for model in (program, theirs):
        x = X.clone().requires_grad_(True)
        model(x).square().sum().backward()
        grads.append((x.grad, *(p.grad for p in model.parameters())))
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_an_exported_batchnorm_keeps_its_statistics_through_a_nan_batch():
    ours, _, _ = _pair("bn", True)
    program = torch.export.export(ours, (X,)).module()
    before = (program.running_mean.clone(), program.running_var.clone())
    bad = X.clone()
    bad[0, 0, 0, 0] = float("nan")
    program(bad)
    torch.testing.assert_close(program.running_mean, before[0], rtol=0, atol=0)
    torch.testing.assert_close(program.running_var, before[1], rtol=0, atol=0)
    program(X)  # a finite batch updates them
    assert not torch.equal(program.running_mean, before[0])


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_jit_trace_matches_torch_nn(name):
    ours, theirs, _ = _pair(name, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python values in the trace
        traced = torch.jit.trace(ours, X)
    torch.testing.assert_close(traced(X), theirs(X), atol=1e-5, rtol=1e-5)
