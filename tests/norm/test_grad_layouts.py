"""Gradients whatever the layout of the gradient that reaches a norm layer.

torch 2.13's CPU kernels get the input gradient (and dγ) wrong, silently, for a batch of one
sample when the output gradient's layout is not the input's:

* ``torch.batch_norm`` (training and eval) on a contiguous input, when the output gradient
  is channels-last with a batch stride other than the canonical one (a size-1 dimension's
  stride is free; a ``view`` of a channels-last gradient gives such a one);
* ``torch.instance_norm`` when the output gradient is channels-last at all: it views the
  gradient as ``(1, N·C, *)``, which for N = 1 gives the stride above.

sharenorm keeps a channels-last input's layout (torch.nn's InstanceNorm returns a contiguous
output), so the op after a layer hands it a channels-last gradient: a channels-last model
with a batch of one meets these kernels' failures. Here every layer and path is checked
against the float64 formulas of :mod:`sharenorm.norm.reference` for each gradient layout,
and torch's kernels are shown failing beside it (so that the day torch fixes them shows)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from norm_testing import assert_close

import sharenorm as sn
from sharenorm.norm import reference

C = 6

# (id, factory of the layer, float64 formula of its output; "eval" layers run in eval mode)
LAYERS = [
    ("bn_train", lambda **kw: sn.BatchNorm2d(C, **kw),
     lambda x, m: reference.batch_norm(x, m.weight, m.bias)[0]),
    ("bn_eval", lambda **kw: sn.BatchNorm2d(C, **kw).eval(),
     lambda x, m: reference.batch_norm_eval(x, m.running_mean, m.running_var, m.weight, m.bias)),
    ("in_track", lambda **kw: sn.InstanceNorm2d(C, affine=True, track_running_stats=True, **kw),
     lambda x, m: reference.instance_norm(x, m.weight, m.bias)[0]),
    ("in", lambda **kw: sn.InstanceNorm2d(C, affine=True, **kw),
     lambda x, m: reference.instance_norm(x, m.weight, m.bias)[0]),
    ("in_eval", lambda **kw: sn.InstanceNorm2d(C, affine=True, track_running_stats=True,
                                               **kw).eval(),
     lambda x, m: reference.batch_norm_eval(x, m.running_mean, m.running_var, m.weight, m.bias)),
    ("gn", lambda **kw: sn.GroupNorm(3, C, **kw),
     lambda x, m: reference.group_norm(x, 3, m.weight, m.bias)),
]


def grad_in_layout(g: torch.Tensor, layout: str) -> torch.Tensor:
    """``g``'s values in ``layout``: "nchw", "nhwc" (canonical channels-last) or "nhwc-view"
    (channels-last with the batch stride a view of a batch of one gives: C)."""
    if layout == "nchw":
        return g.contiguous()
    g = g.contiguous(memory_format=torch.channels_last)
    if layout == "nhwc-view":
        assert g.shape[0] == 1
        g = g.view(1, -1, *g.shape[2:])  # strides (C, 1, W·C, C)
        assert g.stride()[0] == C and g.is_contiguous(memory_format=torch.channels_last)
    return g


def _layer(make, act, memory_efficient):
    gen = torch.Generator().manual_seed(0)
    m = make(act=act, memory_efficient=memory_efficient).double()
    with torch.no_grad():
        m.weight.copy_(torch.rand(C, generator=gen, dtype=torch.float64) + 0.5)
        m.bias.copy_(torch.randn(C, generator=gen, dtype=torch.float64) * 0.1)
        if getattr(m, "running_mean", None) is not None:
            m.running_mean.copy_(torch.randn(C, generator=gen, dtype=torch.float64))
            m.running_var.copy_(torch.rand(C, generator=gen, dtype=torch.float64) + 0.5)
    return m


# (batch, gradient layout): a batch stride is free only for a batch of one
BATCH_AND_GRADIENT = [(1, "nchw"), (1, "nhwc"), (1, "nhwc-view"), (2, "nchw"), (2, "nhwc")]


@pytest.mark.parametrize(("n", "grad_layout"), BATCH_AND_GRADIENT)
@pytest.mark.parametrize("input_layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("act", [None, "relu"])
@pytest.mark.parametrize("memory_efficient", [False, True], ids=["plain", "me"])
@pytest.mark.parametrize(("name", "make", "formula"), LAYERS, ids=[lay[0] for lay in LAYERS])
def test_gradients_for_every_gradient_layout(name, make, formula, memory_efficient, act, n,
                                             input_layout, grad_layout):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, C, 5, 4, generator=gen, dtype=torch.float64) * 2 + 1
    if input_layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    m = _layer(make, act, memory_efficient)
    ref = _layer(make, None, False)

    xs = x.clone().requires_grad_(True)
    m(xs).backward(grad_in_layout(g, grad_layout))
    xr = x.clone().requires_grad_(True)
    y_ref = formula(xr, ref)
    (F.relu(y_ref) if act == "relu" else y_ref).backward(g)
    what = f"{name} {input_layout} input, {grad_layout} gradient, N={n}"
    assert_close(xs.grad, xr.grad, 1e-10, 1e-10, f"{what}: dx")
    assert_close(m.weight.grad, ref.weight.grad, 1e-10, 1e-10, f"{what}: dγ")
    assert_close(m.bias.grad, ref.bias.grad, 1e-10, 1e-10, f"{what}: dβ")


@pytest.mark.parametrize("grad_layout", ["nchw", "nhwc", "nhwc-view"])
@pytest.mark.parametrize("input_layout", ["nchw", "nhwc"])
def test_synchronised_batchnorm_for_every_gradient_layout(input_layout, grad_layout):
    """SyncBatchNorm's own backward (a group of one: the same Function, no communication)."""
    from sharenorm.norm.syncbatchnorm import sync_batch_norm_train

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, C, 5, 4, generator=gen, dtype=torch.float64) * 2 + 1
    if input_layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    m, ref = _layer(lambda **kw: sn.SyncBatchNorm(C, **kw), None, False), _layer(
        lambda **kw: sn.SyncBatchNorm(C, **kw), None, False)
    xs = x.clone().requires_grad_(True)
    sync_batch_norm_train(m, xs, None, 1).backward(grad_in_layout(g, grad_layout))
    xr = x.clone().requires_grad_(True)
    reference.batch_norm(xr, ref.weight, ref.bias)[0].backward(g)
    assert_close(xs.grad, xr.grad, 1e-10, 1e-10, "dx")
    assert_close(m.weight.grad, ref.weight.grad, 1e-10, 1e-10, "dγ")


def test_channels_last_model_with_a_batch_of_one_trains_as_a_contiguous_one():
    """A conv → tracked InstanceNorm → relu → conv model converted to channels-last gets the
    contiguous model's gradients with a batch of one."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, C, 3, padding=1),
        sn.InstanceNorm2d(C, affine=True, track_running_stats=True, act="relu"),
        torch.nn.Conv2d(C, 4, 3, padding=1),
    ).double()
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 6, 5, dtype=torch.float64)
    model(x).pow(2).sum().backward()
    cl(x.contiguous(memory_format=torch.channels_last)).pow(2).sum().backward()
    for (name, p), q in zip(model.named_parameters(), cl.parameters(), strict=True):
        assert_close(q.grad, p.grad, 1e-10, 1e-10, name)


@pytest.mark.parametrize(("op", "grad_layout"), [("batch_norm", "nhwc-view"),
                                                 ("instance_norm", "nhwc")])
def test_torch_kernels_beside_it(op, grad_layout):
    """torch's own kernels on the same inputs: wrong today (if this fails, torch fixed them,
    and the layout handling sharenorm added may go)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, C, 5, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    call = {"batch_norm": lambda t: torch.batch_norm(t, None, None, None, None, True, 0.1,
                                                     1e-5, False),
            "instance_norm": lambda t: torch.instance_norm(t, None, None, None, None, True, 0.1,
                                                           1e-5, False)}[op]
    a = x.clone().requires_grad_(True)
    call(a).backward(grad_in_layout(g, grad_layout))
    b = x.clone().requires_grad_(True)
    call(b).backward(g)
    assert (a.grad - b.grad).abs().max() > 1e-3
