"""The layers under torch.func transforms, as torch.nn's work there: model ensembling with
``stack_module_state`` + ``vmap(functional_call)`` (forward, and ``vmap(grad(...))`` with its
per-model gradients and running statistics) and ``jacrev``. Inside a transform no value may
be read on the host (no ``.item()``, no data pointers, no ``.data``, and vmap cannot even
query a channels-last layout: "querying is_contiguous inside of vmap"), and autograd.Functions
need torch.func rules the memory_efficient ones lack: the layers take their branch-free,
plain paths there. The oracle is each model run alone, eagerly (itself checked against
torch.nn and the float64 reference in the other files)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, stack_module_state, vmap

import sharenorm as sn

LAYERS = {
    "bn_train": (lambda: sn.BatchNorm2d(8), True),
    "bn_eval": (lambda: sn.BatchNorm2d(8), False),
    "bn_no_stats": (lambda: sn.BatchNorm2d(8, track_running_stats=False), True),
    "bn_relu_lean": (lambda: sn.BatchNorm2d(8, act="relu", memory_efficient=True), True),
    "gn_silu": (lambda: sn.GroupNorm(2, 8, act="silu"), True),
    "gn_silu_lean": (lambda: sn.GroupNorm(2, 8, act="silu", memory_efficient=True), True),
    "in_stats": (lambda: sn.InstanceNorm2d(8, affine=True, track_running_stats=True), True),
}


def _ensemble(name, k=3):
    make, training = LAYERS[name]
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Conv2d(8, 8, 3), make()).train(training) for _ in range(k)]
    with torch.no_grad():  # running statistics away from 0/1, so eval uses them visibly
        for m in models:
            for b in m.buffers():
                if b.is_floating_point():
                    b.copy_(torch.rand_like(b) + 0.5)
    return models


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_an_ensemble_under_vmap_matches_each_model(name):
    models = _ensemble(name)
    refs = copy.deepcopy(models)
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    x = torch.randn(3, 4, 8, 5, 5)

    def loss(p, b, xi):
        return functional_call(base, (p, b), (xi,)).square().mean()

    out = vmap(lambda p, b, xi: functional_call(base, (p, b), (xi,)))(params, buffers, x)
    want = torch.stack([m(xi) for m, xi in zip(copy.deepcopy(refs), x, strict=True)])
    torch.testing.assert_close(out, want, atol=1e-6, rtol=1e-5)
    # per-model gradients, and the running statistics each model's own step leaves
    params, buffers = stack_module_state(copy.deepcopy(refs))
    grads = vmap(grad(loss))(params, buffers, x)
    for k, (m, xi) in enumerate(zip(refs, x, strict=True)):
        m(xi).square().mean().backward()
        for n, p in m.named_parameters():
            torch.testing.assert_close(grads[n][k], p.grad, atol=1e-6, rtol=1e-5, msg=n)
        for n, b in m.named_buffers():
            torch.testing.assert_close(buffers[n][k], b, atol=1e-6, rtol=1e-5, msg=n)


def test_jacrev_of_group_norm_matches_torch():
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    ours, theirs = sn.GroupNorm(2, 4).double(), nn.GroupNorm(2, 4).double()
    torch.testing.assert_close(jacrev(ours)(x), jacrev(theirs)(x), atol=0, rtol=0)
