"""Tied layers on torch's own module test material: for every ``module_db`` sample of the
layers below, a copy of the layer whose every parameter is :func:`sharenorm.tie`\\ d to a
twin's (the class-swapped ``Tied…`` module, reading the twin's tensors) computes what the
plain layer computes, and the gradients land in the twin's parameters, equal to the plain
layer's. Material we did not write: no-batch-dim inputs, ``bias=False``, padding modes,
grouped and transposed convolutions, attention masks, ``padding_idx``, … A layer that keeps
its own list of weight references (torch's LSTM and GRU) is refused by ``tie``, naming the way
out."""

from __future__ import annotations

import copy

import pytest
import torch
from norm_testing import import_torch_test_material
from torch import nn

import sharenorm as sn

common_modules = import_torch_test_material("common_modules")

NAMES = ["nn.Linear", "nn.Bilinear", "nn.Conv1d", "nn.Conv2d", "nn.Conv3d",
         "nn.ConvTranspose1d", "nn.ConvTranspose2d", "nn.Embedding", "nn.MultiheadAttention",
         "nn.PReLU", "nn.LayerNorm", "nn.GroupNorm", "nn.BatchNorm2d", "nn.RMSNorm"]
INFOS = {info.name: info for info in common_modules.module_db if info.name in NAMES}


def test_every_layer_has_torch_test_material():
    assert set(INFOS) == set(NAMES)


def _clone(v):
    if isinstance(v, torch.Tensor):
        return v.detach().clone().requires_grad_(v.requires_grad)
    return v


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", NAMES)
def test_a_layer_tied_to_its_twin_computes_what_the_layer_computes(name, training):
    info = INFOS[name]
    torch.manual_seed(0)
    samples = info.module_inputs_func(info, device="cpu", dtype=torch.float64,
                                      requires_grad=True, training=training)
    compared = 0
    for sample in samples:
        c_args, c_kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
        torch.manual_seed(0)
        plain = info.module_cls(*c_args, **c_kwargs).double().train(training)
        params = [n for n, _ in plain.named_parameters()]
        if not params:
            continue
        holder = nn.Module()
        holder.twin, holder.tied = copy.deepcopy(plain), copy.deepcopy(plain)
        for p in params:
            sn.tie(holder, f"tied.{p}", f"twin.{p}")
        assert sn.count_parameters(holder) == sn.count_parameters(plain)  # one set
        args, kwargs = sample.forward_input.args, sample.forward_input.kwargs
        want = _first(plain(*[_clone(a) for a in args], **kwargs))
        got = _first(holder.tied(*[_clone(a) for a in args], **kwargs))
        where = f"{name} {c_args} {c_kwargs} training={training}"
        torch.testing.assert_close(got, want, msg=lambda m, w=where: f"{w}: {m}")
        if want.requires_grad:
            dy = torch.randn_like(want)
            want.backward(dy)
            got.backward(dy)
            for p in params:
                torch.testing.assert_close(holder.twin.get_parameter(p).grad,
                                           plain.get_parameter(p).grad,
                                           msg=lambda m, w=where, p=p: f"{w} grad {p}: {m}")
        compared += 1
    assert compared


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_torch_rnns_refuse_a_computed_weight_naming_the_way_out(cls):
    holder = nn.Module()
    holder.a, holder.b = cls(3, 4), cls(3, 4)
    with pytest.raises(ValueError, match="_flat_weights.*source of the tie.*SharedRNN"):
        sn.tie(holder, "b.weight_ih_l0", "a.weight_ih_l0")
