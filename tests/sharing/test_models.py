"""TiedAutoencoder, SharedStack, SoftTie and count_parameters/parameter_report against plain
torch references and formulas."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

import sharenorm as sn

# ------------------------------------------------------------------------ TiedAutoencoder


@pytest.mark.parametrize("sizes", [[6, 3], [10, 7, 4], [9, 8, 5, 2]])
def test_tied_autoencoder_equals_plain_mlp_with_transposed_weights(sizes):
    torch.manual_seed(0)
    ae = sn.TiedAutoencoder(sizes, tied=True, out_activation="sigmoid").double()
    enc = [(layer.weight, layer.bias) for layer in ae.encoder]
    x = torch.randn(4, sizes[0], dtype=torch.float64)
    # Reference: the seed's formula written out, W_dec = W_enc^T.
    h = x
    for i, (w, b) in enumerate(enc):
        h = h @ w.T + b
        h = torch.relu(h) if i < len(enc) - 1 else h
    for j, layer in enumerate(ae.decoder):
        w_enc = enc[len(enc) - 1 - j][0]
        h = h @ w_enc + layer.bias  # (W_enc^T)^T = W_enc
        h = torch.relu(h) if j < len(enc) - 1 else torch.sigmoid(h)
    torch.testing.assert_close(ae(x), h, rtol=1e-12, atol=1e-12)
    # Gradient of a tied weight = gradient of its encoder use + of its decoder use.
    untied = sn.TiedAutoencoder(sizes, tied=False, out_activation="sigmoid").double()
    untied.load_state_dict(ae.state_dict())  # the tied model's state_dict loads into the plain one
    torch.testing.assert_close(untied(x), ae(x), rtol=1e-12, atol=1e-12)
    ae(x).pow(2).sum().backward()
    untied(x).pow(2).sum().backward()
    k = len(sizes) - 1
    for i in range(k):
        expected = untied.encoder[i].weight.grad + untied.decoder[k - 1 - i].weight.grad.T
        torch.testing.assert_close(ae.encoder[i].weight.grad, expected, rtol=1e-10, atol=1e-12)


def test_tied_autoencoder_halves_weight_parameters():
    sizes = [784, 128, 32]
    weights = 784 * 128 + 128 * 32
    biases_enc, biases_dec = 128 + 32, 128 + 784
    tied = sn.TiedAutoencoder(sizes, tied=True)
    untied = sn.TiedAutoencoder(sizes, tied=False)
    assert sn.count_parameters(tied) == weights + biases_enc + biases_dec
    assert sn.count_parameters(untied) == 2 * weights + biases_enc + biases_dec
    assert len(list(tied.parameters())) == 2 + 2 + 2  # enc W,b ×2 and dec b ×2
    assert sorted(tied.state_dict()) == sorted(untied.state_dict())


def test_tied_autoencoder_errors():
    with pytest.raises(ValueError, match="at least two positive ints"):
        sn.TiedAutoencoder([5])
    with pytest.raises(ValueError, match="unknown act"):
        sn.TiedAutoencoder([5, 2], activation="relux")
    for bad in ([5, 2.0], [5, True], [5, 0]):
        with pytest.raises(ValueError, match="at least two positive ints"):
            sn.TiedAutoencoder(bad)
    ae = sn.TiedAutoencoder([5, 3, 2])
    with pytest.raises(ValueError, match=r"encode expects \(\*, 5\), got \(4, 6\)"):
        ae(torch.randn(4, 6))
    with pytest.raises(ValueError, match=r"decode expects \(\*, 2\), got \(4, 3\)"):
        ae.decode(torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"expects \(\*, 5\), got list"):
        ae([1.0] * 5)


def test_tied_autoencoder_accepts_numpy_ints():
    np = pytest.importorskip("numpy")
    ae = sn.TiedAutoencoder([np.int64(6), np.int32(4)])
    assert ae.sizes == (6, 4) and all(type(s) is int for s in ae.sizes)
    assert ae.decoder[0].weight.shape == (6, 4)


# ------------------------------------------------------------------------------ SharedStack


def test_shared_stack_equals_calling_block_depth_times():
    torch.manual_seed(1)
    block = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Tanh())
    ref = copy.deepcopy(block)
    stack = sn.SharedStack(block, depth=4)
    x = torch.randn(5, 6)
    y_ref = x
    for _ in range(4):
        y_ref = ref(y_ref)
    torch.testing.assert_close(stack(x), y_ref)
    # The shared BatchNorm updated one set of running stats 4 times, like the plain loop.
    torch.testing.assert_close(stack.blocks[3][1].running_mean, ref[1].running_mean)
    assert stack.blocks[2][1].num_batches_tracked.item() == 4
    # Gradients of all 4 uses accumulate into the one stored weight.
    stack(x).sum().backward()
    y = x
    for _ in range(4):
        y = ref(y)
    y.sum().backward()
    torch.testing.assert_close(stack.blocks[0][0].weight.grad, ref[0].weight.grad)
    assert sn.count_parameters(stack) == sn.count_parameters(ref)


def test_shared_stack_unshared_norms_scale_with_depth():
    block = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8))
    per_block = 8 * 8 + 8
    stack = sn.SharedStack(block, depth=12, unshared=("1",))
    assert sn.count_parameters(stack) == per_block + 12 * 16
    # Each repetition owns its LayerNorm: changing one changes nothing else.
    with torch.no_grad():
        stack.blocks[5][1].weight.fill_(2.0)
    assert stack.blocks[4][1].weight.eq(1).all()
    assert stack.blocks[5][0].weight is stack.blocks[0][0].weight
    # A single tensor name works too.
    s2 = sn.SharedStack(nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8)), 3, unshared="1.bias")
    assert sn.count_parameters(s2) == per_block + 8 + 3 * 8


def test_shared_stack_errors():
    block = nn.Sequential(OrderedDict(lin=nn.Linear(2, 2), norm=nn.LayerNorm(2)))
    with pytest.raises(ValueError, match="did you mean 'norm'"):
        sn.SharedStack(block, 2, unshared=("nrom",))
    with pytest.raises(ValueError, match=r"choose from \['lin'"):
        sn.SharedStack(block, 2, unshared=("x",))
    with pytest.raises(ValueError, match="depth"):
        sn.SharedStack(nn.Linear(2, 2), 0)


def test_shared_stack_of_a_block_that_uses_one_module_twice():
    # torch's own way to share inside a block: the same Linear at two places
    torch.manual_seed(2)
    lin = nn.Linear(4, 4)
    block = nn.Sequential(lin, nn.Tanh(), lin)
    ref = copy.deepcopy(block)
    stack = sn.SharedStack(block, depth=3)
    assert stack.blocks[2][0] is stack.blocks[2][2]  # still one module in each copy
    assert sn.count_parameters(stack) == 20
    x = torch.randn(3, 4, requires_grad=True)
    y_ref = ref(ref(ref(x)))
    torch.testing.assert_close(stack(x), y_ref)
    torch.autograd.grad(stack(x).sum(), x)
    stack(x).sum().backward()
    y_ref.sum().backward()
    torch.testing.assert_close(stack.blocks[0][0].weight.grad, ref[0].weight.grad)
    sn.verify_ties(stack)
    # owning one of its two names per repetition cannot be: both, or neither
    with pytest.raises(ValueError, match="covers only '0.weight': add '2.weight'"):
        sn.SharedStack(nn.Sequential(lin, nn.Tanh(), lin), 2, unshared=("0",))
    own = sn.SharedStack(nn.Sequential(lin, nn.Tanh(), lin), 2, unshared=("0", "2"))
    assert own.blocks[1][0] is own.blocks[1][2] and own.blocks[1][0] is not lin
    assert sn.count_parameters(own) == 40


# --------------------------------------------------------------------------------- SoftTie


def test_soft_tie_penalty_and_gradient_match_formula():
    torch.manual_seed(2)
    ae = sn.TiedAutoencoder([5, 3], tied=False).double()
    pairs = [
        ("decoder.0.weight", "encoder.0.weight", "transpose"),
        ("decoder.0.bias", "encoder.0.bias"),
    ]
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        sn.SoftTie(ae, pairs, 0.1)  # biases have shapes 5 and 3
    soft = sn.SoftTie(ae, pairs[:1], strength=0.3)
    wa, wb = ae.decoder[0].weight, ae.encoder[0].weight
    expected = 0.3 * ((wa - wb.T) ** 2).sum()
    torch.testing.assert_close(soft.penalty(), expected, rtol=1e-12, atol=0)
    ga, gb = torch.autograd.grad(soft.penalty(), (wa, wb))
    torch.testing.assert_close(ga, 2 * 0.3 * (wa - wb.T))
    torch.testing.assert_close(gb, -2 * 0.3 * (wa - wb.T).T)
    soft.strength = 0.0
    assert soft.penalty().item() == 0.0  # strength 0 is untied training


def test_soft_tie_of_complex_weights_is_the_real_squared_distance():
    # d.pow(2) of a complex d is complex (and backward then fails); ‖d‖² = Σ |d|²
    torch.manual_seed(0)
    m = nn.ModuleDict({"a": nn.Linear(3, 2, dtype=torch.complex128),
                       "b": nn.Linear(3, 2, dtype=torch.complex128)})
    soft = sn.SoftTie(m, [("a.weight", "b.weight")], strength=0.5)
    d = m.a.weight - m.b.weight
    p = soft.penalty()
    assert p.dtype == torch.float64
    torch.testing.assert_close(p, 0.5 * (d.real ** 2 + d.imag ** 2).sum())
    (ga,) = torch.autograd.grad(p, m.a.weight)
    torch.testing.assert_close(ga, 2 * 0.5 * d)  # torch's convention for a real loss


def test_soft_tie_refuses_integer_and_bool_tensors():
    # a num_batches_tracked pair would give a penalty of tensor(0) (the float result cast
    # back to int64), a bool pair a torch error at the first penalty()
    bn = nn.ModuleDict({"x": nn.BatchNorm1d(3), "y": nn.BatchNorm1d(3)})
    with pytest.raises(ValueError, match="needs floating-point .* counts, not weights"):
        sn.SoftTie(bn, [("x.num_batches_tracked", "y.num_batches_tracked")], 1e-3)


def test_soft_tie_large_strength_approaches_hard_tie():
    torch.manual_seed(3)
    ae = sn.TiedAutoencoder([6, 3], tied=False)
    soft = sn.SoftTie(ae, [("decoder.0.weight", "encoder.0.weight", "transpose")], strength=10.0)
    opt = torch.optim.SGD(ae.parameters(), lr=0.01)
    before = soft.distances()[0].item()
    for _ in range(100):
        opt.zero_grad()
        ((ae(torch.randn(8, 6)) ** 2).mean() + soft.penalty()).backward()
        opt.step()
    assert soft.distances()[0].item() < 1e-3 * before


def test_soft_tie_errors():
    m = nn.ModuleDict({"a": nn.Linear(3, 3), "b": nn.Linear(3, 3)})
    with pytest.raises(ValueError, match="did you mean 'a.weight'"):
        sn.SoftTie(m, [("a.wieght", "b.weight")])
    with pytest.raises(ValueError, match="itself"):
        sn.SoftTie(m, [("a.weight", "a.weight")])
    with pytest.raises(ValueError, match="strength"):
        sn.SoftTie(m, [("a.weight", "b.weight")], strength=-1)
    with pytest.raises(ValueError, match="transform"):
        sn.SoftTie(m, [("a.weight", "b.weight", "flip")])
    with pytest.raises(ValueError, match="empty"):
        sn.SoftTie(m, [])
    c = nn.ModuleDict({"enc": nn.Linear(5, 3), "dec": nn.Linear(3, 5)})
    with pytest.raises(ValueError, match="use transform='transpose'"):
        sn.SoftTie(c, [("dec.weight", "enc.weight")])
    for bad in (True, "0.1", float("nan"), torch.tensor(0.1)):
        with pytest.raises(ValueError, match="strength"):
            sn.SoftTie(m, [("a.weight", "b.weight")], strength=bad)
    # inf: the penalty and every gradient after it would be inf or NaN
    with pytest.raises(ValueError, match="finite.*sharenorm.tie"):
        sn.SoftTie(m, [("a.weight", "b.weight")], strength=float("inf"))
    for bad in ("a.weight", None):  # a string would be read as pairs of characters
        with pytest.raises(ValueError, match="pairs must be a list"):
            sn.SoftTie(m, bad)


def test_soft_tie_strength_accepts_numpy_scalars():
    np = pytest.importorskip("numpy")
    m = nn.ModuleDict({"a": nn.Linear(3, 3), "b": nn.Linear(3, 3)})
    for strength in (np.float32(0.25), np.float64(0.25), np.int64(2), 2):
        soft = sn.SoftTie(m, [("a.weight", "b.weight")], strength=strength)
        assert type(soft.strength) is float and soft.strength == float(strength)
        want = float(strength) * (m.a.weight - m.b.weight).square().sum()
        torch.testing.assert_close(soft.penalty(), want)


# ------------------------------------------------------------------------------- counting


def test_count_parameters_counts_each_storage_once():
    m = nn.ModuleDict({"a": nn.Linear(4, 3), "b": nn.Linear(4, 3), "c": nn.Linear(3, 4)})
    plain = sum(p.numel() for p in m.parameters())
    assert sn.count_parameters(m) == plain == 15 + 15 + 16
    m.b.weight = m.a.weight  # identity sharing (torch's way)
    assert sn.count_parameters(m) == 46 - 12
    m.c.weight = nn.Parameter(m.a.weight.data.T)  # another Parameter over the same memory
    assert sum(p.numel() for p in m.parameters()) == 46 - 12  # torch's idiom counts it twice
    assert sn.count_parameters(m) == 46 - 24
    m.c.bias.requires_grad_(False)
    assert sn.count_parameters(m, trainable_only=True) == 46 - 24 - 4
    # Disjoint slices of one storage are two parameters, not one.
    big = torch.zeros(10)
    m.a.bias = nn.Parameter(big[:3])
    m.b.bias = nn.Parameter(big[5:8])
    assert sn.count_parameters(m) == 46 - 24


def distinct_elements(tensors):
    """Oracle: the storage elements the tensors cover, each element enumerated."""
    seen = set()
    for t in tensors:
        index = torch.arange(t.untyped_storage().nbytes() // t.element_size())
        offsets = index.as_strided(t.shape, t.stride(), t.storage_offset())
        seen.update((t.untyped_storage().data_ptr(), o) for o in offsets.flatten().tolist())
    return len(seen)


@pytest.mark.parametrize(
    "views",
    [
        lambda b: [b[:, :2]],  # a column slice: rows with gaps between them
        lambda b: [b[:, 0:1], b[:, 3:4]],  # two disjoint columns
        lambda b: [b[:2], b[:, :2]],  # a row block and a column block that overlap
        lambda b: [b[::2, 1::2], b.T],  # strided and transposed
        lambda b: [b[0].expand(3, 4)],  # one row seen three times (stride 0)
        lambda b: [b.as_strided((3, 3), (1, 1))],  # overlapping windows: offsets 0..4
        lambda b: [b.as_strided((3, 3), (2, 1), 5), b[3]],  # windows and a row past them
    ],
    ids=[
        "columns",
        "two-columns",
        "rows-and-columns",
        "strided-transposed",
        "expanded",
        "windows",
        "windows-and-row",
    ],
)
def test_count_parameters_counts_the_distinct_elements_of_strided_views(views):
    base = torch.randn(4, 4)
    m = nn.Module()
    tensors = views(base)
    for i, t in enumerate(tensors):
        m.register_parameter(f"p{i}", nn.Parameter(t))
    assert sn.count_parameters(m) == distinct_elements(tensors)
    assert sn.parameter_report(m).unique_bytes == 4 * distinct_elements(tensors)


def test_parameter_report_matches_real_optimizer_state():
    torch.manual_seed(4)
    model = sn.TiedAutoencoder([20, 8, 4], tied=True)
    rep = sn.parameter_report(model)
    assert rep.unique == sn.count_parameters(model)
    assert rep.total == sn.count_parameters(sn.TiedAutoencoder([20, 8, 4], tied=False))
    assert rep.unique_bytes == 4 * rep.unique
    for opt_cls, kwargs, field in [
        (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}, "sgd_momentum_state_bytes"),
        (torch.optim.Adam, {"lr": 0.1}, "adam_state_bytes"),
    ]:
        opt = opt_cls(model.parameters(), **kwargs)
        model(torch.randn(3, 20)).sum().backward()
        opt.step()
        state_bytes = sum(
            v.numel() * v.element_size()
            for s in opt.state.values()
            for k, v in s.items()
            if k != "step"  # Adam's scalar step counter is not counted
        )
        assert getattr(rep, field) == state_bytes
    rows = {r.name: r for r in rep.rows}
    assert rows["decoder.0"].unique == 20 - 12 and rows["decoder.0"].total == 8 * 4 + 8
    assert "saves" in str(rep)


def test_soft_tie_penalty_of_a_half_model_does_not_overflow():
    torch.manual_seed(5)
    ae = sn.TiedAutoencoder([784, 64], tied=False)
    with torch.no_grad():
        ae.decoder[0].weight.normal_()
        ae.encoder[0].weight.normal_()
    soft = sn.SoftTie(ae, [("decoder.0.weight", "encoder.0.weight", "transpose")], 1e-3)
    ref = soft.penalty()  # ~ 100: a sum of 50k squares ~ 2 each, past float16's max 65504
    ae.half()
    half = soft.penalty()
    assert half.dtype == torch.float16 and torch.isfinite(half)
    torch.testing.assert_close(half.float(), ref, rtol=2e-3, atol=0)
    assert soft.distances()[0].dtype == torch.float32
    half.backward()
    assert ae.decoder[0].weight.grad.dtype == torch.float16


def test_parameter_report_counts_every_use_of_a_reused_module():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    rep = sn.parameter_report(model)
    assert (rep.unique, rep.total) == (20, 40) and rep.saved_fraction == 0.5
    assert rep.adam_state_bytes_unshared == 2 * 40 * 4
    # The same count as torch's identity sharing of two separate modules.
    other = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    other[2].weight, other[2].bias = other[0].weight, other[0].bias
    assert sn.parameter_report(other).total == 40
    # And as a declared tie inside a reused module.
    pair = sn.tie(
        nn.ModuleDict({"a": nn.Linear(4, 4), "b": nn.Linear(4, 4)}), "b.weight", "a.weight"
    )
    assert sn.parameter_report(nn.Sequential(pair, pair)).total == 2 * 40


def test_parameter_report_counts_a_tie_to_a_parametrized_source():
    # weight_norm stores g (3×1) and v (3×4) for enc.weight; dec.weight = enc.weightᵀ is one
    # more use of 12 parameters, which the tie saves.
    m = nn.ModuleDict({"enc": nn.Linear(4, 3), "dec": nn.Linear(3, 4)})
    torch.nn.utils.parametrizations.weight_norm(m.enc)
    sn.tie(m, "dec.weight", "enc.weight", "transpose")
    rep = sn.parameter_report(m)
    assert rep.unique == 3 + 12 + 3 + 4  # g, v, enc.bias, dec.bias
    assert rep.total == rep.unique + 12
    assert rep.adam_state_bytes_unshared == 2 * 4 * rep.total


def test_soft_tie_penalty_of_pairs_in_different_dtypes_has_the_promoted_dtype():
    m = nn.ModuleDict({"a": nn.Linear(3, 3), "b": nn.Linear(3, 3),
                       "c": nn.Linear(3, 3).double(), "d": nn.Linear(3, 3).double()})
    soft = sn.SoftTie(m, [("a.weight", "b.weight"), ("c.weight", "d.weight")], strength=0.5)
    pen = soft.penalty()
    want = 0.5 * ((m.a.weight.double() - m.b.weight.double()).square().sum()
                  + (m.c.weight - m.d.weight).square().sum())
    assert pen.dtype == torch.float64
    torch.testing.assert_close(pen, want, rtol=1e-6, atol=0)


def test_count_parameters_does_not_list_the_runs_of_views_that_do_not_overlap(monkeypatch):
    """W[:, ::2] has one run per element: when no view overlaps itself or another, the count
    is their elements, without building the runs (which took seconds and GBs for 8192²)."""
    from sharenorm.sharing import count

    def no_runs(*args):
        raise AssertionError("the runs were listed")

    monkeypatch.setattr(count, "_run_starts", no_runs)
    base = torch.randn(64, 64)
    strided = nn.Module()
    strided.p = nn.Parameter(base[:, ::2])
    assert sn.count_parameters(strided) == 64 * 32
    slices = nn.Module()
    slices.a, slices.b = nn.Parameter(base[:16]), nn.Parameter(base[16:48:2])
    assert sn.count_parameters(slices) == 16 * 64 + 16 * 64


def test_soft_tie_refuses_a_pair_on_two_devices():
    # accepted, the pair would fail at penalty() with torch's device error naming neither
    m = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2, device="meta")})
    with pytest.raises(ValueError, match="one device"):
        sn.SoftTie(m, [("a.weight", "b.weight")], 1e-3)
