"""``torch.export`` and ``torch.jit.trace`` of the layers, which take torch.nn's layers as they
are. Before, exporting a BatchNorm in training failed ("a fake tensor in the exported
program constant's list": the non-finite guard's ``.data`` alias was lifted as a constant),
and tracing a GroupNorm/InstanceNorm failed (jit.trace turns shapes into tensors, and the CPU
accuracy check looked them up in a dict)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import sharenorm as sn

LAYERS = {
    "bn": lambda: sn.BatchNorm2d(8),
    "bn_relu_lean": lambda: sn.BatchNorm2d(8, act="relu", memory_efficient=True),
    "gn_silu": lambda: sn.GroupNorm(2, 8, act="silu"),
    "in_stats": lambda: sn.InstanceNorm2d(8, affine=True, track_running_stats=True),
}
X = torch.randn(4, 8, 5, 5, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_export_matches_eager_with_its_buffers(name, training):
    torch.manual_seed(0)
    layer = LAYERS[name]().train(training)
    eager = copy.deepcopy(layer)
    program = torch.export.export(layer, (X,)).module()
    torch.testing.assert_close(program(X), eager(X), atol=1e-6, rtol=1e-5)
    # the running statistics (and num_batches_tracked) move as one eager step moves them
    for (n, a), b in zip(eager.named_buffers(), program.buffers(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=n)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_jit_trace_matches_eager(name):
    layer = LAYERS[name]().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python values in the trace
        traced = torch.jit.trace(layer, X)
    torch.testing.assert_close(traced(X), layer(X), atol=0, rtol=0)
