"""BatchRenorm against a float64 transcription of Ioffe (2017), Algorithm 1 (outputs, input
and γ/β gradients, running statistics over several steps, with clips active); equal to
BatchNorm when r_max = 1, d_max = 0; the warm-up schedule; eval; errors."""

from __future__ import annotations

import pytest
import torch
from norm_testing import make_input, randomize_affine
from torch import nn

import sharenorm as sn
from sharenorm.norm import reference


def paper_step(x, gamma, beta, running_mean, running_var, r_max, d_max, eps, momentum):
    """One training step of Batch Renormalization as the paper writes it, in float64.
    Returns y (differentiable in x, γ, β), r, d and the new running statistics. σ is
    √(running_var + ε) (the running variance is kept as in BatchNorm, see the module)."""
    dims = (0,) + tuple(range(2, x.dim()))
    shape = (1, -1) + (1,) * (x.dim() - 2)
    m = x.numel() // x.shape[1]
    mu_b = x.mean(dims)
    var_b = ((x - mu_b.reshape(shape)) ** 2).mean(dims)  # biased
    sigma_b = torch.sqrt(var_b + eps)
    sigma = torch.sqrt(running_var + eps)
    r = torch.clamp(sigma_b / sigma, 1.0 / r_max, r_max).detach()  # stop-gradient
    d = torch.clamp((mu_b - running_mean) / sigma, -d_max, d_max).detach()
    x_hat = (x - mu_b.reshape(shape)) / sigma_b.reshape(shape) * r.reshape(shape) + d.reshape(
        shape
    )
    y = gamma.reshape(shape) * x_hat + beta.reshape(shape)
    new_mean = running_mean + momentum * (mu_b.detach() - running_mean)
    new_var = running_var + momentum * (var_b.detach() * m / (m - 1) - running_var)
    return y, r, d, new_mean, new_var


# (module, shape, channels_last, dtype, atol)
CASES = [
    (sn.BatchRenorm1d, (6, 4), False, torch.float64, 1e-12),  # (N, C)
    (sn.BatchRenorm1d, (5, 4, 7), False, torch.float64, 1e-12),  # odd length
    (sn.BatchRenorm2d, (3, 4, 5, 3), False, torch.float64, 1e-12),
    (sn.BatchRenorm2d, (3, 4, 5, 3), True, torch.float64, 1e-12),  # channels-last
    (sn.BatchRenorm3d, (2, 4, 2, 3, 3), False, torch.float64, 1e-12),
    (sn.BatchRenorm2d, (4, 4, 5, 5), False, torch.float32, 2e-5),
]


@pytest.mark.parametrize("cls,shape,channels_last,dtype,atol", CASES)
def test_matches_paper_formulas_with_active_clips(cls, shape, channels_last, dtype, atol):
    c = shape[1]
    r_max, d_max, eps, momentum = 1.5, 0.5, 1e-5, 0.3
    m = cls(c, momentum=momentum, r_max=r_max, d_max=d_max, r_warmup=(0, 0),
            d_warmup=(0, 0)).to(dtype)
    randomize_affine(m)
    gamma = m.weight.detach().double().requires_grad_(True)
    beta = m.bias.detach().double().requires_grad_(True)
    rm, rv = m.running_mean.double().clone(), m.running_var.double().clone()
    # Per-channel scales and shifts around the running statistics' (0, 1): some channels
    # inside the clips, some outside, on both sides.
    scale = torch.tensor([0.5, 1.0, 1.3, 3.0], dtype=torch.float64).reshape(
        (1, c) + (1,) * (len(shape) - 2))
    shift = torch.tensor([-2.0, 0.1, 0.0, 1.0], dtype=torch.float64).reshape(scale.shape)
    clipped_r = clipped_d = free = 0
    for step in range(3):
        x = (make_input(shape, torch.float64, channels_last, scale=1.0, shift=0.0) * scale
             + shift).to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        g = torch.randn(shape, dtype=torch.float64)
        xm = x.detach().clone().requires_grad_(True)
        y = m(xm)
        y.backward(g.to(dtype))
        xr = x.detach().double().requires_grad_(True)
        yr, r, d, rm, rv = paper_step(xr, gamma, beta, rm, rv, r_max, d_max, eps, momentum)
        yr.backward(g)
        clipped_r += int(((r == r_max) | (r == 1 / r_max)).sum())
        clipped_d += int((d.abs() == d_max).sum())
        free += int(((r > 1 / r_max) & (r < r_max) & (d.abs() < d_max)).sum())
        for what, got, want, tol in (
            ("y", y, yr, atol),
            ("dx", xm.grad, xr.grad, atol * 10),
            ("dγ", m.weight.grad, gamma.grad, atol * 10),
            ("dβ", m.bias.grad, beta.grad, atol * 10),
        ):
            torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol,
                                       msg=lambda e, w=what, s=step: f"{w} step {s}: {e}")
        torch.testing.assert_close(m.running_mean.double(), rm, atol=atol, rtol=atol)
        torch.testing.assert_close(m.running_var.double(), rv, atol=atol, rtol=atol)
        if channels_last:
            assert y.is_contiguous(memory_format=torch.channels_last)
        m.weight.grad = m.bias.grad = gamma.grad = beta.grad = None
    assert clipped_r and clipped_d and free, "the test must exercise both clips and no clip"
    assert m.num_batches_tracked.item() == 3
    m.eval()
    x = make_input(shape, dtype)
    ref = reference.batch_norm_eval(x, m.running_mean, m.running_var, m.weight, m.bias)
    torch.testing.assert_close(m(x).double(), ref, atol=atol, rtol=atol)


@pytest.mark.parametrize("warmup", [(0, 0), (5000, 40000)])
def test_equals_batchnorm_when_clips_are_one_and_zero(warmup):
    """r_max = 1, d_max = 0 (or the warm-up's first phase) is BatchNorm, bit for bit."""
    m = sn.BatchRenorm2d(3, r_max=1.0 if warmup == (0, 0) else 3.0,
                         d_max=0.0 if warmup == (0, 0) else 5.0, r_warmup=warmup,
                         d_warmup=warmup)
    bn = nn.BatchNorm2d(3)
    randomize_affine(m, bn)
    for _ in range(3):
        x = make_input((4, 3, 5, 5))
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ya, yb = m(xa), bn(xb)
        g = torch.randn_like(ya)
        ya.backward(g), yb.backward(g)
        assert torch.equal(ya, yb) and torch.equal(xa.grad, xb.grad)
        assert torch.equal(m.weight.grad, bn.weight.grad)
        assert torch.equal(m.bias.grad, bn.bias.grad)
    assert torch.equal(m.running_mean, bn.running_mean)
    assert torch.equal(m.running_var, bn.running_var)
    assert torch.equal(m.state_dict()["num_batches_tracked"], bn.num_batches_tracked)
    # A BatchRenorm checkpoint is a BatchNorm checkpoint.
    bn2 = nn.BatchNorm2d(3)
    bn2.load_state_dict(m.state_dict())


def test_affine_false_bias_false_and_act():
    x = make_input((6, 3, 4))
    for kw in ({"affine": False}, {"bias": False}, {"act": "relu"}):
        m = sn.BatchRenorm1d(3, r_max=2.0, d_max=1.0, r_warmup=(0, 0), d_warmup=(0, 0),
                             momentum=0.5, **kw)
        m(x + 1)  # running stats away from (0, 1)
        xr = x.double()
        gamma = m.weight.double() if m.weight is not None else torch.ones(3, dtype=torch.float64)
        beta = m.bias.double() if m.bias is not None else torch.zeros(3, dtype=torch.float64)
        yr = paper_step(xr, gamma, beta, m.running_mean.double().clone(),
                        m.running_var.double().clone(), 2.0, 1.0, 1e-5, 0.5)[0]
        if kw.get("act"):
            yr = torch.relu(yr)
        torch.testing.assert_close(m(x).double(), yr, atol=2e-5, rtol=1e-4, msg=str(kw))


def test_warmup_schedule():
    m = sn.BatchRenorm1d(2, r_max=3.0, d_max=5.0, r_warmup=(2, 6), d_warmup=(1, 3))
    expected = {0: (1.0, 0.0), 1: (1.0, 0.0), 2: (1.0, 2.5), 3: (1.5, 5.0), 4: (2.0, 5.0),
                6: (3.0, 5.0), 100: (3.0, 5.0)}
    for step, clips in expected.items():
        assert m.clips(step) == pytest.approx(clips), step
    # The paper's default: BN for the first 5000 steps, full clips at 40k (r) and 25k (d).
    d = sn.BatchRenorm2d(2)
    assert d.clips(0) == (1.0, 0.0) and d.clips(5000) == (1.0, 0.0)
    assert d.clips(25000) == pytest.approx((1 + 2 * 20 / 35, 5.0))
    assert d.clips(40000) == (3.0, 5.0)
    # The forward follows num_batches_tracked.
    x = make_input((8, 2))
    for _ in range(3):
        m(x)
    assert m.clips() == pytest.approx(expected[3])
    assert "r_max=3.0" in repr(m) and "r_warmup=(2, 6)" in repr(m)


def test_make_norm_and_convert():
    m = sn.make_norm("brn", 4, dim=2, r_max=2.0)
    assert type(m) is sn.BatchRenorm2d and m.r_max == 2.0
    net = nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4))
    net[1](torch.randn(5, 4, 3) + 2)
    report = sn.convert_norm(net, "renorm", dim=1)
    assert type(net[1]) is sn.BatchRenorm1d and "running_mean" in report.changes[0].kept


def test_errors():
    with pytest.raises(ValueError, match="track_running_stats=True"):
        sn.BatchRenorm2d(3, track_running_stats=False)
    with pytest.raises(ValueError, match="r_max must be"):
        sn.BatchRenorm2d(3, r_max=0.5)
    with pytest.raises(ValueError, match="d_max must be"):
        sn.BatchRenorm2d(3, d_max=-1.0)
    with pytest.raises(ValueError, match="r_warmup must be a pair"):
        sn.BatchRenorm2d(3, r_warmup=(10, 5))
    with pytest.raises(ValueError, match="d_warmup must be a pair"):
        sn.BatchRenorm2d(3, d_warmup=5)
    m = sn.BatchRenorm2d(3, r_warmup=(0, 0), d_warmup=(0, 0))
    with pytest.raises(ValueError, match="4-d input"):
        m(torch.randn(4, 3))
    with pytest.raises(ValueError, match="3 channels"):
        m(torch.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match="more than one value per channel"):
        m(torch.randn(1, 3, 1, 1))


@pytest.mark.parametrize("warmup", [(0, 0), (3, 3), (2, 10), (0, 7)])
def test_the_clip_schedule_as_a_tensor_equals_the_float_one(warmup):
    from sharenorm.norm.batchrenorm import _ramp, _ramp_tensor

    for step in range(0, 14):
        want = _ramp(step, warmup, 1.0, 3.0)
        got = _ramp_tensor(torch.tensor(step), warmup, 1.0, 3.0)
        assert float(got) == want, (step, warmup)


@pytest.mark.parametrize("step", [0, 4, 9, 30])
def test_export_and_vmap_in_training_match_eager_along_the_warm_up(step):
    """Under torch.export and torch.func.vmap the step cannot be read on the host (export
    refuses the data-dependent value, vmap the .item()): the clips are computed as tensors."""
    import copy

    from torch.func import functional_call, stack_module_state, vmap

    def make():
        m = sn.BatchRenorm2d(4, r_max=2.0, d_max=0.5, r_warmup=(2, 12), d_warmup=(5, 5))
        with torch.no_grad():
            m.num_batches_tracked.fill_(step)
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
        return m

    torch.manual_seed(0)
    x = torch.randn(6, 4, 3, 3) * 1.5 + 0.3
    layer = make()
    eager = copy.deepcopy(layer)
    program = torch.export.export(layer, (x,)).module()
    torch.testing.assert_close(program(x), eager(x), atol=1e-6, rtol=1e-5)
    for (n, a), b in zip(eager.named_buffers(), program.buffers(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=n)
    models = [make() for _ in range(2)]
    refs = copy.deepcopy(models)
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    xs = torch.stack([x, x.flip(0)])
    out = vmap(lambda p, b, xi: functional_call(base, (p, b), (xi,)))(params, buffers, xs)
    torch.testing.assert_close(out, torch.stack([m(xi) for m, xi in zip(refs, xs, strict=True)]),
                               atol=1e-6, rtol=1e-5)


def test_an_empty_batch_is_batchnorms_without_a_warning():
    # torch.var_mean of no elements warned "degrees of freedom is <= 0"
    import warnings

    m = sn.BatchRenorm2d(3, r_warmup=(0, 0), d_warmup=(0, 0))
    m(torch.randn(4, 3, 2, 2))
    before = (m.running_mean.clone(), m.running_var.clone())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = m(torch.randn(0, 3, 2, 2))
    assert y.shape == (0, 3, 2, 2)
    assert torch.equal(m.running_mean, before[0]) and torch.equal(m.running_var, before[1])
