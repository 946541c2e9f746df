"""PerRankBatchNorm against what it stands for: W separate forwards of b samples through the
layer it replaces, each from the same step-start buffers, rank 0's update kept (float64,
outputs, input and weight gradients, running statistics), and its stacked form."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import sharenorm as sn
from sharenorm.lab.batched import stack_inputs, stack_models, unstack_into
from sharenorm.lab.per_rank import PerRankBatchNorm, per_rank_norms


def _layer(kind: str, c: int, dim: int) -> nn.Module:
    if kind == "torch":
        return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dim](c, dtype=torch.float64)
    if kind == "renorm":
        cls = {1: sn.BatchRenorm1d, 2: sn.BatchRenorm2d, 3: sn.BatchRenorm3d}[dim]
        # clips in force from the first step, tight enough that r and d are clipped
        return cls(c, r_max=1.2, d_max=0.3, r_warmup=(0, 0), d_warmup=(0, 0), act="relu",
                   dtype=torch.float64)
    cls = {1: sn.BatchNorm1d, 2: sn.BatchNorm2d, 3: sn.BatchNorm3d}[dim]
    return cls(c, act="relu" if kind == "fused" else None, affine=kind != "no_affine",
               dtype=torch.float64)


def _ranks(layer: nn.Module, x: torch.Tensor, world: int) -> torch.Tensor:
    """What W DDP ranks compute: each chunk from the step-start buffers, rank 0 last (its
    update is the one that survives)."""
    start = {k: v.clone() for k, v in layer.named_buffers()}
    b = x.shape[0] // world
    out = [None] * world
    for r in [*range(1, world), 0]:
        for k, v in start.items():
            layer._buffers[k] = v.clone()
        out[r] = layer(x[r * b:(r + 1) * b])
    return torch.cat(out)


SHAPES = [(6, 3), (6, 3, 7), (8, 5, 3, 2), (4, 2, 3, 2, 2), (9, 1, 5)]


@pytest.mark.parametrize("kind", ["sharenorm", "fused", "no_affine", "renorm", "torch"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_equals_w_forwards_of_b_samples(kind, shape):
    world = 3 if shape[0] % 3 == 0 else 2
    dim = {2: 1, 3: 1, 4: 2, 5: 3}[len(shape)]
    torch.manual_seed(0)
    ref = _layer(kind, shape[1], dim)
    with torch.no_grad():
        ref.running_mean.normal_()
        ref.running_var.uniform_(0.5, 2.0)
        if ref.weight is not None:
            ref.weight.normal_()
            ref.bias.normal_()
    mine = PerRankBatchNorm(copy.deepcopy(ref), world)
    x = torch.randn(shape, dtype=torch.float64) * 2 + 1
    for _ in range(3):  # the running statistics carry over
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = mine(xa), _ranks(ref, xb, world)
        torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
        gy = torch.randn_like(ya)
        ya.backward(gy)
        yb.backward(gy)
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-12)
        for name, p in ref.named_parameters():
            torch.testing.assert_close(getattr(mine, name).grad, p.grad, rtol=1e-10, atol=1e-12)
        for name, b in ref.named_buffers():
            torch.testing.assert_close(getattr(mine, name), b, rtol=1e-12, atol=1e-12)
        x = x.roll(1, 0)
    mine.eval(), ref.eval()
    torch.testing.assert_close(mine(x), ref(x), rtol=1e-12, atol=1e-12)


def test_world_one_is_the_layer_itself():
    torch.manual_seed(0)
    ref = sn.BatchNorm1d(4, dtype=torch.float64)
    mine = PerRankBatchNorm(copy.deepcopy(ref), 1)
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(mine(x), ref(x))
    torch.testing.assert_close(mine.running_var, ref.running_var)


def test_a_non_finite_chunk_zero_channel_keeps_its_running_statistics():
    mine = PerRankBatchNorm(sn.BatchNorm1d(3), 2)
    x = torch.randn(4, 3, 5)
    x[0, 1, 0] = float("nan")  # rank 0's channel 1
    mine(x)
    assert mine.running_mean[1] == 0 and mine.running_var[1] == 1
    assert mine.running_mean[0] != 0 and mine.running_mean[2] != 0


def test_bad_uses_name_the_fix():
    with pytest.raises(ValueError, match="momentum"):
        PerRankBatchNorm(sn.BatchNorm1d(3, momentum=None), 2)
    with pytest.raises(ValueError, match="running statistics"):
        PerRankBatchNorm(nn.BatchNorm1d(3, track_running_stats=False), 2)
    with pytest.raises(ValueError, match="positive number of ranks"):
        PerRankBatchNorm(sn.BatchNorm1d(3), 0)
    with pytest.raises(ValueError, match="multiple of 4"):
        PerRankBatchNorm(sn.BatchNorm1d(3), 4)(torch.randn(6, 3))


def test_per_rank_norms_keeps_the_state_dict():
    from sharenorm.models import ConvNet

    net = ConvNet((1, 16), 4, width=8, norm="batch")
    keys = list(net.state_dict())
    per_rank_norms(net, 2)
    assert list(net.state_dict()) == keys
    assert sum(isinstance(m, PerRankBatchNorm) for m in net.modules()) == 3


@pytest.mark.parametrize("renorm", [False, True])
def test_stacked_members_are_the_members(renorm):
    torch.manual_seed(0)
    k, world = 3, 2
    if renorm:
        layers = [sn.BatchRenorm1d(4, r_max=1.2, d_max=0.3, r_warmup=(0, 0), d_warmup=(0, 0),
                                   dtype=torch.float64) for _ in range(k)]
    else:
        layers = [sn.BatchNorm1d(4, act="relu", dtype=torch.float64) for _ in range(k)]
    members = [PerRankBatchNorm(m, world) for m in layers]
    for m in members:
        with torch.no_grad():
            m.weight.normal_()
            m.running_var.uniform_(0.5, 2.0)
    stacked = stack_models(members)
    alone = copy.deepcopy(members)
    xs = torch.randn(k, 6, 4, 5, dtype=torch.float64)
    for _ in range(2):
        y = stacked(stack_inputs(xs)).view(6, k, 4, 5)
        for j in range(k):
            torch.testing.assert_close(y[:, j], alone[j](xs[j]), rtol=1e-12, atol=1e-12)
    unstack_into(stacked, members)
    for j in range(k):
        for (name, a), b in zip(alone[j].state_dict().items(), members[j].state_dict().values(),
                                strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
