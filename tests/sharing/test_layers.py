"""LocallyConnected1d/2d against a per-position loop and against Conv; SharedRNN/UnsharedRNN
against nn.RNN and a per-step loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import sharenorm as sn

# (C_in, C_out, input_size, kernel, stride, padding, dilation)
LC2D_CASES = [
    (1, 4, (5, 5), 3, 1, 0, 1),  # plain valid conv
    (3, 2, (7, 6), (3, 2), (2, 1), (1, 0), 1),  # non-square everything, odd sizes
    (2, 3, (6, 6), 2, 2, 1, 2),  # dilation with padding
    (1, 1, (4, 4), 4, 1, 0, 1),  # one output position (a dense layer)
    (2, 5, (3, 5), 1, 1, 0, 1),  # 1x1 kernel
]


def lc2d_loop(x, weight, bias, k, s, p, d, out_hw):
    """Per-position reference: slice the padded input, dot with that position's filter."""
    kh, kw = k
    xp = F.pad(x, (p[1], p[1], p[0], p[0])).double()
    n, o = x.shape[0], weight.shape[1]
    y = torch.zeros(n, o, *out_hw, dtype=torch.float64)
    for i in range(out_hw[0]):
        for j in range(out_hw[1]):
            rows = [i * s[0] + u * d[0] for u in range(kh)]
            cols = [j * s[1] + v * d[1] for v in range(kw)]
            patch = xp[:, :, rows][:, :, :, cols].reshape(n, -1)  # (N, C*kh*kw), (c, u, v)
            w = weight[i * out_hw[1] + j].double()  # (O, C*kh*kw)
            y[:, :, i, j] = patch @ w.T
            if bias is not None:
                y[:, :, i, j] += bias[:, i * out_hw[1] + j].double()
    return y


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@pytest.mark.parametrize("case", LC2D_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_lc2d_matches_loop_reference(case, bias):
    torch.manual_seed(0)
    c, o, size, k, s, p, d = case
    lc = sn.LocallyConnected2d(c, o, size, k, s, p, d, bias=bias).double()
    x = torch.randn(3, c, *size, dtype=torch.float64)
    ref = lc2d_loop(x, lc.weight, lc.bias, _pair(k), _pair(s), _pair(p), _pair(d), lc.output_size)
    torch.testing.assert_close(lc(x), ref, rtol=1e-12, atol=1e-12)
    # Unbatched input gives the batched result's first item.
    torch.testing.assert_close(lc(x[0]), ref[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", LC2D_CASES)
def test_lc2d_equals_conv2d_when_filters_are_shared(case):
    torch.manual_seed(1)
    c, o, size, k, s, p, d = case
    conv = nn.Conv2d(c, o, k, s, p, d)
    lc = sn.LocallyConnected2d.from_conv(conv, size)
    x = torch.randn(2, c, *size, requires_grad=True)
    y_conv, y_lc = conv(x), lc(x)
    torch.testing.assert_close(y_lc, y_conv, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y_conv)
    (gx_conv,) = torch.autograd.grad(y_conv, x, g)
    gx_lc, gw_lc = torch.autograd.grad(y_lc, (x, lc.weight), g)
    torch.testing.assert_close(gx_lc, gx_conv, rtol=1e-5, atol=1e-5)
    # The conv weight gradient is the sum over positions of the per-position gradients.
    (gw_conv,) = torch.autograd.grad(conv(x), conv.weight, g)
    torch.testing.assert_close(gw_lc.sum(0).reshape_as(gw_conv), gw_conv, rtol=1e-4, atol=1e-5)


# (C_in, C_out, L, kernel, stride, padding, dilation)
LC1D_CASES = [
    (1, 3, 10, 3, 1, 0, 1),
    (2, 2, 11, 4, 3, 2, 1),  # odd length, stride 3
    (3, 1, 9, 2, 1, 1, 3),  # dilation
]


@pytest.mark.parametrize("case", LC1D_CASES)
def test_lc1d_matches_conv1d_and_loop(case):
    torch.manual_seed(2)
    c, o, n_in, k, s, p, d = case
    conv = nn.Conv1d(c, o, k, s, p, d)
    lc = sn.LocallyConnected1d.from_conv(conv, n_in)
    x = torch.randn(4, c, n_in)
    torch.testing.assert_close(lc(x), conv(x), rtol=1e-5, atol=1e-6)
    # Different filters per position: the 2-D loop with height 1 is the reference.
    nn.init.normal_(lc.weight)
    ref = lc2d_loop(
        x[:, :, None], lc.weight, lc.bias, (1, k), (1, s), (0, p), (1, d), (1, lc.output_size[0])
    )
    torch.testing.assert_close(lc(x).double(), ref[:, :, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lc(x[1]), lc(x)[1])
    assert lc.output_size == conv(x).shape[2:]


def test_lc_parameter_count_and_init():
    conv = nn.Conv2d(1, 8, 3, padding=1)
    lc = sn.LocallyConnected2d(1, 8, 28, 3, padding=1)
    n_conv = sum(p.numel() for p in conv.parameters())
    # Every one of the 28*28 positions has its own filter and bias.
    assert sn.count_parameters(lc) == 28 * 28 * n_conv
    bound = 1 / 3  # 1/sqrt(fan_in = 1*3*3), the same bound Conv2d's default init has
    assert lc.weight.abs().max() <= bound and lc.weight.abs().max() > 0.9 * bound
    assert "input_size=(28, 28)" in repr(lc)


def test_lc_errors():
    with pytest.raises(ValueError, match="output would be empty"):
        sn.LocallyConnected2d(1, 1, 3, 5)
    with pytest.raises(ValueError, match="kernel_size"):
        sn.LocallyConnected2d(1, 1, 8, 0)
    with pytest.raises(ValueError, match="in_channels"):
        sn.LocallyConnected1d(0, 1, 8, 3)
    lc = sn.LocallyConnected2d(2, 1, (6, 6), 3)
    with pytest.raises(ValueError, match=r"input_size="):
        lc(torch.randn(1, 2, 7, 6))  # spatial size fixed at construction
    with pytest.raises(ValueError, match="4-D"):
        lc(torch.randn(2, 6, 6, 1, 1))
    with pytest.raises(ValueError, match="groups=1"):
        sn.LocallyConnected2d.from_conv(nn.Conv2d(2, 2, 3, groups=2), 6)


# ------------------------------------------------------------------------------------ RNN


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
def test_shared_rnn_equals_nn_rnn(nonlinearity, bias, batch_first):
    torch.manual_seed(3)
    ref = nn.RNN(3, 5, nonlinearity=nonlinearity, bias=bias, batch_first=batch_first)
    rnn = sn.SharedRNN.from_torch(ref)
    x = torch.randn(2, 7, 3) if batch_first else torch.randn(7, 2, 3)
    h0 = torch.randn(1, 2, 5)
    for args in [(x,), (x, h0)]:
        out, h = rnn(*args)
        out_ref, h_ref = ref(*args)
        torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-6)
    # Unbatched input, as nn.RNN accepts it.
    out, h = rnn(x[0] if batch_first else x[:, 0])
    out_ref, h_ref = ref(x[0] if batch_first else x[:, 0])
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-6)


def test_unshared_rnn_matches_per_step_loop():
    torch.manual_seed(4)
    rnn = sn.UnsharedRNN(3, 4, seq_len=6).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)  # shorter than seq_len: first 5 steps' weights
    h = torch.zeros(2, 4, dtype=torch.float64)
    outs = []
    for t in range(5):
        h = torch.tanh(
            x[t] @ rnn.weight_ih[t].T + rnn.bias_ih[t] + h @ rnn.weight_hh[t].T + rnn.bias_hh[t]
        )
        outs.append(h)
    out, h_n = rnn(x)
    torch.testing.assert_close(out, torch.stack(outs), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h_n[0], h, rtol=1e-12, atol=1e-12)


def test_unshared_from_shared_equals_shared_and_scales_with_length():
    torch.manual_seed(5)
    shared = sn.SharedRNN(3, 4, batch_first=True)
    unshared = sn.UnsharedRNN.from_shared(shared, seq_len=9)
    x = torch.randn(2, 9, 3)
    for a, b in zip(shared(x), unshared(x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert sn.count_parameters(unshared) == 9 * sn.count_parameters(shared)
    # Gradients: each step's weights get only that step's gradient; their sum is the shared one.
    g_sh = torch.autograd.grad(shared(x)[0].sum(), shared.weight_hh)[0]
    g_un = torch.autograd.grad(unshared(x)[0].sum(), unshared.weight_hh)[0]
    torch.testing.assert_close(g_un.sum(0), g_sh, rtol=1e-4, atol=1e-5)


def test_rnn_errors():
    with pytest.raises(ValueError, match="seq_len >= 8"):
        sn.UnsharedRNN(3, 4, seq_len=6)(torch.randn(8, 1, 3))
    with pytest.raises(ValueError, match="nonlinearity"):
        sn.SharedRNN(3, 4, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="feature size 3"):
        sn.SharedRNN(3, 4)(torch.randn(5, 2, 2))
    with pytest.raises(ValueError, match=r"hx must have shape \(1, 2, 4\)"):
        sn.SharedRNN(3, 4)(torch.randn(5, 2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="one-layer"):
        sn.SharedRNN.from_torch(nn.RNN(3, 4, num_layers=2))
    with pytest.raises(TypeError, match="Tensor or a PackedSequence.*torch.as_tensor"):
        sn.SharedRNN(3, 4)([[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="at least one step"):
        sn.UnsharedRNN(3, 4, seq_len=5)(torch.randn(0, 2, 3))
    with pytest.raises(ValueError, match=r"dtype \(torch.float64\).*input.to\(torch.float32\)"):
        sn.SharedRNN(3, 4)(torch.randn(5, 2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"dtype \(torch.int64\)"):
        sn.UnsharedRNN(3, 4, seq_len=5)(torch.ones(5, 2, 3, dtype=torch.long))


@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_packed_sequences_as_nn_rnn(enforce_sorted, with_hx, nonlinearity):
    """A PackedSequence of different lengths gives nn.RNN's packed output and h_n (each
    sequence's state after its own last step) and its gradients; the unshared RNN built from
    it gives the same."""
    torch.manual_seed(0)
    ref = nn.RNN(3, 4, nonlinearity=nonlinearity).double()
    shared = sn.SharedRNN.from_torch(ref)
    unshared = sn.UnsharedRNN.from_shared(shared, seq_len=6)
    lengths = [6, 4, 4, 1] if enforce_sorted else [4, 6, 1, 4]
    padded = torch.randn(6, 4, 3, dtype=torch.float64)
    hx = torch.randn(1, 4, 4, dtype=torch.float64) if with_hx else None
    results = []
    for rnn in (ref, shared, unshared):
        x = padded.clone().requires_grad_(True)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
        out, h_n = rnn(packed, hx)
        assert isinstance(out, nn.utils.rnn.PackedSequence)
        (out.data.pow(2).sum() + h_n.sum()).backward()
        results.append((out, h_n, x.grad))
    want_out, want_h, want_dx = results[0]
    for out, h_n, dx in results[1:]:
        torch.testing.assert_close(out.data, want_out.data)
        assert torch.equal(out.batch_sizes, want_out.batch_sizes)
        for a, b in ((out.sorted_indices, want_out.sorted_indices),
                     (out.unsorted_indices, want_out.unsorted_indices)):
            assert (a is None and b is None) or torch.equal(a, b)
        torch.testing.assert_close(h_n, want_h)
        torch.testing.assert_close(dx, want_dx)
    torch.testing.assert_close(shared.weight_hh.grad, ref.weight_hh_l0.grad)


@settings(max_examples=25, deadline=None)
@given(
    c=st.integers(1, 3),
    o=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    k=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    s=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    p=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    d=st.tuples(st.integers(1, 2), st.integers(1, 2)),
)
def test_lc2d_from_conv_equals_conv_for_any_geometry(c, o, h, w, k, s, p, d):
    # Only geometries whose output is non-empty (as for Conv2d); others must raise ValueError.
    out_h = (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    out_w = (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    conv = nn.Conv2d(c, o, k, s, p, d).double()
    if out_h < 1 or out_w < 1:
        with pytest.raises(ValueError, match="empty"):
            sn.LocallyConnected2d.from_conv(conv, (h, w))
        return
    lc = sn.LocallyConnected2d.from_conv(conv, (h, w))
    x = torch.randn(2, c, h, w, dtype=torch.float64)
    torch.testing.assert_close(lc(x), conv(x), rtol=1e-10, atol=1e-12)


def test_sizes_accept_any_integer_type():
    # numpy ints are ints to torch.nn (operator.index); the layers and SharedStack agree.
    np = pytest.importorskip("numpy")
    lc = sn.LocallyConnected2d(np.int64(2), 3, (np.int32(6), 6), np.int64(3), stride=np.int64(1))
    assert lc(torch.randn(1, 2, 6, 6)).shape == (1, 3, 4, 4)
    assert type(lc.in_channels) is int and lc.kernel_size == (3, 3)
    stack = sn.SharedStack(nn.Linear(2, 2), np.int64(3))
    assert type(stack.depth) is int and stack.depth == 3
    for bad in (2.0, True, (1, 2, 3)):
        with pytest.raises(ValueError, match="kernel_size must be an int"):
            sn.LocallyConnected2d(2, 3, 6, bad)
