"""A seeded differential test against torch.nn over a space no hand-made table covers:
random layer (BN/IN/GN, 1-d to 3-d), sizes, dtype (float64 to float16), input layout
(contiguous, channels-last, transposed, strided, expanded), output gradient layout
(contiguous, channels-last, a view of a channels-last one), training or eval, affine,
tracked statistics, momentum, fused activation and ``memory_efficient``.

Each case runs torch.nn's layer (then the activation) and sharenorm's on the same input
and output gradient, and judges both against torch.nn in float64: sharenorm's error in the
output, dx, dγ and dβ must be within 2× torch's own (plus a few units of the dtype), the
running statistics equal torch's (BatchNorm; InstanceNorm's differ by design, see the
README), and an input torch refuses must be refused too."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sharenorm as sn

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
ACTS = [None, None, "relu", "silu", "gelu", "leaky_relu", "elu", "tanh", "sigmoid"]
CASES = 1000


def _layout(x: torch.Tensor, kind: str) -> torch.Tensor:
    """``x``'s values in another memory layout."""
    if kind == "channels_last" and x.dim() in (4, 5):
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        return x.contiguous(memory_format=fmt)
    if kind == "transposed" and x.dim() >= 3:
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if kind == "strided":
        big = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
        big[..., ::2] = x
        return big[..., ::2]
    if kind == "expanded":
        return x[:1].expand(x.shape)
    return x


def _grad_layout(g: torch.Tensor, kind: str) -> torch.Tensor:
    """The output gradient in a layout the ops after a layer may hand it: contiguous,
    channels-last, or (a batch of one) a view of a channels-last one, whose batch stride is
    not the canonical one."""
    if kind == "contiguous" or g.dim() not in (4, 5):
        return g
    g = _layout(g, "channels_last")
    return g.view(g.shape) if kind == "channels_last_view" else g


def _case(seed: int) -> dict:
    rng = random.Random(seed)
    kind = rng.choice(["batch", "instance", "group"])
    dims = rng.choice([0, 1, 2, 3]) if kind == "group" else rng.choice([1, 2, 3])
    c = rng.choice([1, 2, 3, 4, 6, 8, 12])
    spatial = [rng.choice([1, 2, 3, 5, 7]) for _ in range(dims)]
    if kind == "batch" and dims == 1 and rng.random() < 0.3:
        spatial = []  # (N, C) features
    return {
        "kind": kind, "dims": max(dims, 1), "c": c, "n": rng.choice([1, 2, 3, 5]),
        "spatial": spatial, "dtype": rng.choice(DTYPES), "act": rng.choice(ACTS),
        "me": rng.random() < 0.4, "affine": rng.random() < 0.7, "track": rng.random() < 0.6,
        "momentum": rng.choice([0.1, None, 0.5]), "training": rng.random() < 0.7,
        "groups": rng.choice([g for g in range(1, c + 1) if c % g == 0]),
        "layout": rng.choice(["contiguous", "channels_last", "transposed", "strided",
                              "expanded"]),
        "scale": rng.choice([1.0, 100.0]), "shift": rng.choice([0.0, 10.0]),
        "grad_layout": rng.choice(["contiguous", "channels_last", "channels_last_view"]),
    }


def _make(case: dict, module, **extra):
    kind, c = case["kind"], case["c"]
    if kind == "group":
        return module.GroupNorm(case["groups"], c, affine=case["affine"], **extra)
    name = {"batch": "BatchNorm", "instance": "InstanceNorm"}[kind] + f"{case['dims']}d"
    return getattr(module, name)(c, affine=case["affine"], track_running_stats=case["track"],
                                 momentum=case["momentum"], **extra)


def _activation(act):
    if act is None:
        return lambda t: t
    return getattr(torch, act) if act in ("tanh", "sigmoid") else getattr(F, act)


def _worst_rstd(case: dict, x: torch.Tensor, running_var: torch.Tensor) -> float:
    """The largest r = 1/√(σ² + ε) the layer divides by (its statistics in float64)."""
    x = x.double()
    n, c = x.shape[:2]
    uses_running = not case["training"] and case["track"] and case["kind"] != "group"
    if uses_running:
        var = running_var
    elif case["kind"] == "batch":
        var = x.transpose(0, 1).reshape(c, -1).var(1, unbiased=False)
    elif case["kind"] == "instance":
        var = x.reshape(n * c, -1).var(1, unbiased=False)
    else:
        var = x.reshape(n * case["groups"], -1).var(1, unbiased=False)
    return float((var + 1e-5).rsqrt().max())


@pytest.mark.parametrize("seed", range(CASES))
def test_against_torch_nn(seed):
    case = _case(seed)
    dtype, c = case["dtype"], case["c"]
    gen = torch.Generator().manual_seed(seed)
    # BatchNorm keeps float32 parameters and statistics for 16-bit inputs (as under autocast)
    pdtype = torch.float32 if case["kind"] == "batch" and dtype.itemsize == 2 else dtype
    w = torch.randn(c, generator=gen, dtype=torch.float64)
    b = torch.randn(c, generator=gen, dtype=torch.float64)
    rm = torch.randn(c, generator=gen, dtype=torch.float64)
    rv = torch.rand(c, generator=gen, dtype=torch.float64) + 0.5
    x = torch.randn(case["n"], c, *case["spatial"], generator=gen, dtype=torch.float64)
    x = _layout((x * case["scale"] + case["shift"]).to(dtype), case["layout"])
    g = _grad_layout(torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype),
                     case["grad_layout"])
    act = _activation(case["act"])

    def run(layer, param_dtype, inp, with_act, grad=g):
        layer = layer.to(param_dtype).train(case["training"])
        with torch.no_grad():
            if case["affine"]:
                layer.weight.copy_(w)
                layer.bias.copy_(b)
            if getattr(layer, "running_mean", None) is not None:
                layer.running_mean.copy_(rm)
                layer.running_var.copy_(rv)
        inp = inp.detach().clone().requires_grad_(True)
        try:
            y = layer(inp)
        except (ValueError, RuntimeError) as e:
            return None, e
        y = with_act(y)
        y.backward(grad.to(y.dtype))  # .to keeps the strides
        grads = [inp.grad] + ([layer.weight.grad, layer.bias.grad] if case["affine"] else [])
        return (layer, y.detach(), grads), None

    theirs, their_error = run(_make(case, nn), pdtype, x, act)
    ours, our_error = run(_make(case, sn, act=case["act"], memory_efficient=case["me"]), pdtype,
                          x, lambda t: t)
    assert (their_error is None) == (our_error is None), (case, their_error, our_error)
    if their_error is not None:
        return
    # The judge: torch.nn in float64 on contiguous tensors (the values do not depend on the
    # layout; torch's kernels do, for some gradient layouts: see test_grad_layouts.py)
    exact, _ = run(_make(case, nn), torch.float64, x.double().contiguous(), act,
                   g.double().contiguous())

    # Rounding bounds, in units of the dtype, from r = 1/√(σ² + ε) of the worst-conditioned
    # group: the output within a few units of γ·x̂'s scale, dx of |dy|·γ·r·x̂'s, dγ and dβ
    # (sums over the n·spatial elements of a channel) of that many |dy|·γ·x̂. In float64 the judge is torch's own float64 result, rounded as much as ours:
    # there only errors far above rounding count.
    unit = torch.finfo(dtype).eps if dtype != torch.float64 else 1e-9
    g_max = float(g.double().abs().max()) if g.numel() else 0.0
    per_channel = x.numel() // max(c, 1)
    r_max = _worst_rstd(case, x, rv) if x.numel() else 1.0
    gamma = max(1.0, float(w.abs().max()))
    # x − μ rounds to a unit of |x|: x̂ = (x − μ)·r carries up to |x|·r units (the rounding
    # an input far from its mean, or a group of equal values, cannot avoid)
    x_hat = 4.0 + (float(x.double().abs().max()) * r_max if x.numel() else 0.0)
    scales = {
        "output": float(exact[1].abs().max()) + 1.0 + gamma * x_hat,
        "dx": float(exact[2][0].abs().max()) + g_max * gamma * r_max * x_hat,
        # (through a curved activation x̂'s rounding reaches dβ too)
        "dγ": per_channel * g_max * gamma * x_hat + 1.0,
        "dβ": per_channel * g_max * gamma * x_hat + 1.0,
    }
    names = ["output", "dx", "dγ", "dβ"][: 1 + len(exact[2])]
    for name, t, o, e in zip(names, [theirs[1]] + theirs[2], [ours[1]] + ours[2],
                             [exact[1]] + exact[2], strict=True):
        err_t = float((t.double() - e).abs().max()) if e.numel() else 0.0
        err_o = float((o.double() - e).abs().max()) if e.numel() else 0.0
        # torch's error counts only up to a rounding size: where its kernel is wrong (far
        # beyond rounding), sharenorm still has to be right
        rounding = 16 * unit * scales[name]
        bound = 2 * min(err_t, 64 * rounding) + rounding
        assert err_o <= bound, (name, err_t, err_o, bound, case)
    if case["kind"] == "batch" and case["track"]:
        for buf in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(ours[0], buf), getattr(theirs[0], buf),
                                       msg=lambda m, buf=buf: f"{buf}: {m} {case}")
