"""tie/untie/ties/verify_ties: the tie holds through everything users do to a model."""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import gc
import io
import pickle

import pytest
import torch
from torch import nn

import sharenorm as sn


def pair_model(transform="transpose"):
    """enc: Linear(6→3); dec: Linear(3→6) (transposed tie) or Linear(6→3) (identity tie)."""
    torch.manual_seed(0)
    dec = nn.Linear(3, 6) if transform == "transpose" else nn.Linear(6, 3)
    model = nn.Sequential()
    model.add_module("enc", nn.Linear(6, 3))
    model.add_module("dec", dec)
    return sn.tie(model, "dec.weight", "enc.weight", transform=transform)


def expected_weight(model, transform):
    w = model.enc.weight
    return w.T if transform == "transpose" else w


def assert_tied(model, transform="transpose"):
    """One stored tensor, the target computed from it, and verify_ties agrees."""
    w_dec, w_enc = model.dec.weight, model.enc.weight
    assert torch.equal(w_dec, expected_weight(model, transform))
    assert w_dec.untyped_storage().data_ptr() == w_enc.untyped_storage().data_ptr()
    names = [n for n, _ in model.named_parameters()]
    assert "dec.weight" not in names and names.count("enc.weight") == 1
    sn.verify_ties(model)


TRANSFORMS = [None, "transpose"]


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_tie_basics_and_gradient_accumulation(transform):
    model = pair_model(transform)
    assert_tied(model, transform)
    assert len(list(model.parameters())) == 3  # enc.weight, enc.bias, dec.bias
    # Gradient of the stored weight = sum of the gradients of both uses (reference: two
    # independent leaves with the same values).
    x = torch.randn(5, 6)
    w = model.enc.weight.detach().clone().requires_grad_()
    w2 = expected_weight(model, transform).detach().clone().requires_grad_()
    h = x @ w.T + model.enc.bias
    if transform == "transpose":
        ref = h @ w2.T + model.dec.bias
        model(x).pow(2).sum().backward()
    else:  # identity tie: enc and dec both map 6 -> 3, apply them to the same x
        ref = h + (x @ w2.T + model.dec.bias)
        (model.enc(x) + model.dec(x)).pow(2).sum().backward()
    ref.pow(2).sum().backward()
    other = w2.grad.T if transform == "transpose" else w2.grad
    torch.testing.assert_close(model.enc.weight.grad, w.grad + other)
    if transform is None:
        assert model.dec.weight is model.enc.weight  # identity: the very same Parameter
    else:
        assert not model.dec.weight.is_leaf  # a view computed from the stored weight


def test_training_keeps_exact_tie_and_matches_functional_reference():
    """Adam on the tied autoencoder == Adam on (W, biases) with W used twice, step for step."""
    torch.manual_seed(1)
    ae = sn.TiedAutoencoder([8, 5], tied=True).double()
    W = ae.encoder[0].weight.detach().clone().requires_grad_()
    b1 = ae.encoder[0].bias.detach().clone().requires_grad_()
    b2 = ae.decoder[0].bias.detach().clone().requires_grad_()
    opt = torch.optim.Adam(ae.parameters(), lr=1e-2)
    opt_ref = torch.optim.Adam([W, b1, b2], lr=1e-2)
    assert len(opt.param_groups[0]["params"]) == 3  # the optimizer sees the tied weight once
    for _ in range(150):
        x = torch.randn(16, 8, dtype=torch.float64)
        opt.zero_grad()
        ((ae(x) - x) ** 2).mean().backward()
        opt.step()
        opt_ref.zero_grad()
        # The seed's formula: code = W x + b1 (no activation on the code), x̂ = Wᵀ code + b2.
        (((x @ W.T + b1) @ W + b2 - x) ** 2).mean().backward()
        opt_ref.step()
    assert torch.equal(ae.decoder[0].weight, ae.encoder[0].weight.T)  # exactly transposed
    torch.testing.assert_close(ae.encoder[0].weight, W, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_survives_dtype_and_device_moves(transform):
    model = pair_model(transform)
    model.to(torch.float64)
    assert model.dec.weight.dtype == torch.float64
    assert_tied(model, transform)
    model.half()
    assert_tied(model, transform)
    # torch's alternative conversion paths replace (or swap) the parameter objects.
    for future in ("overwrite_module_params_on_conversion", "swap_module_params_on_conversion"):
        setter = getattr(torch.__future__, f"set_{future}")
        setter(True)
        try:
            model.float()
        finally:
            setter(False)
        assert model.dec.weight.dtype == torch.float32
        assert_tied(model, transform)
    if torch.cuda.is_available():
        model.cuda()
        assert model.dec.weight.is_cuda
        assert_tied(model, transform)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_survives_deepcopy_and_pickle(transform):
    model = pair_model(transform)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert_tied(clone, transform)
        assert clone.enc.weight.data_ptr() != model.enc.weight.data_ptr()
        with torch.no_grad():
            clone.enc.weight.add_(1.0)  # the copy's target follows the copy's source only
        assert torch.equal(clone.dec.weight, expected_weight(clone, transform))
        assert not torch.equal(model.dec.weight, expected_weight(clone, transform))
        assert type(clone.dec).__name__ == "TiedLinear" and isinstance(clone.dec, nn.Linear)
        # The copy's load_state_dict is tie-aware too (its hook acts on the copy).
        clone.load_state_dict(model.state_dict())
        assert torch.equal(clone.enc.weight, model.enc.weight)
        bad = model.state_dict()
        bad["dec.weight"] = bad["dec.weight"] + 1
        with pytest.raises(RuntimeError, match="'dec.weight' is tied to 'enc.weight'"):
            clone.load_state_dict(bad)


def test_survives_torch_save_load_of_whole_model():
    model = sn.TiedAutoencoder([7, 4, 2], tied=True)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x = torch.randn(3, 7)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    sn.verify_ties(loaded)
    assert sn.count_parameters(loaded) == sn.count_parameters(model)
    assert torch.equal(loaded.decoder[1].weight, loaded.encoder[0].weight.T)


def test_state_dict_has_both_keys_and_loads_into_plain_and_tied_models():
    tied = sn.TiedAutoencoder([7, 4], tied=True)
    plain = sn.TiedAutoencoder([7, 4], tied=False)
    sd = tied.state_dict()
    assert set(sd) == set(plain.state_dict())  # both keys, as torch's identity-tied weights
    assert torch.equal(sd["decoder.0.weight"], sd["encoder.0.weight"].T)
    plain.load_state_dict(sd)  # tied -> plain
    fresh = sn.TiedAutoencoder([7, 4], tied=True)
    fresh.load_state_dict(plain.state_dict())  # consistent plain -> tied
    assert torch.equal(fresh.encoder[0].weight, tied.encoder[0].weight)
    assert_ae_tied(fresh)
    # Inconsistent values: refused with a message that names the tie.
    with torch.no_grad():
        plain.decoder[0].weight.add_(0.5)
    with pytest.raises(RuntimeError, match=r"'decoder.0.weight' is tied to 'encoder.0.weight'"):
        fresh.load_state_dict(plain.state_dict())
    # Only the target key given: the source is derived from it, and its key reported missing
    # (as torch does for a shared parameter), so strict=False.
    sd_only_target = {k: v for k, v in plain.state_dict().items() if k != "encoder.0.weight"}
    assert fresh.load_state_dict(sd_only_target, strict=False).missing_keys == ["encoder.0.weight"]
    assert torch.equal(fresh.encoder[0].weight, plain.decoder[0].weight.T)
    assert_ae_tied(fresh)


def assert_ae_tied(ae):
    for j, layer in enumerate(ae.decoder):
        assert torch.equal(layer.weight, ae.encoder[len(ae.encoder) - 1 - j].weight.T)
    sn.verify_ties(ae)


def test_load_state_dict_assign_keeps_tie():
    src = sn.TiedAutoencoder([7, 4, 3], tied=True)
    with torch.device("meta"):
        model = sn.TiedAutoencoder([7, 4, 3], tied=True)
    model.load_state_dict(src.state_dict(), assign=True)
    assert_ae_tied(model)
    assert model.encoder[0].weight.device.type == "cpu"
    torch.testing.assert_close(model(torch.ones(2, 7)), src(torch.ones(2, 7)))
    # Loading a submodule alone checks the target against the current source.
    model.decoder.load_state_dict(src.decoder.state_dict())
    bad = src.decoder.state_dict()
    bad["0.weight"] = bad["0.weight"] + 1
    with pytest.raises(RuntimeError, match="'0.weight' is tied to encoder.1.weight"):
        model.decoder.load_state_dict(bad)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_pruning_a_target_is_refused_naming_the_source_and_pruning_the_source_carries_over(
        transform):
    """torch's prune keeps the pruned tensor as "<name>_orig"; a tied target stores none, so
    pruning it is refused with an error naming the source (not torch's KeyError 'weight' or
    TypeError from inside). The refusal leaves the model as it was; pruning the source masks
    the target too."""
    from torch.nn.utils import prune

    model = pair_model(transform)
    for method in (lambda m: prune.l1_unstructured(m, "weight", 0.5),
                   lambda m: prune.ln_structured(m, "weight", 0.5, n=2, dim=0)):
        with pytest.raises(ValueError, match="tied to enc.weight .* prune the source"):
            method(model.dec)
        assert_tied(model, transform)
        assert not model.dec._forward_pre_hooks
    prune.l1_unstructured(model.enc, "weight", 0.5)
    assert torch.equal(model.dec.weight, expected_weight(model, transform))
    assert (model.dec.weight == 0).sum() == model.enc.weight.numel() // 2
    x = torch.randn(2, model.dec.in_features)
    torch.testing.assert_close(model.dec(x), x @ expected_weight(model, transform).T
                               + model.dec.bias)


def test_meta_to_empty_then_reinit():
    with torch.device("meta"):
        model = sn.SharedStack(nn.Sequential(nn.Linear(5, 5), nn.LayerNorm(5)), 3, unshared=("1",))
        ae = sn.TiedAutoencoder([6, 4, 3], tied=True)
    for m in (model, ae):
        m.to_empty(device="cpu")
        torch.manual_seed(0)
        for sub in m.modules():
            if hasattr(sub, "reset_parameters"):
                sub.reset_parameters()
        sn.verify_ties(m)
    assert model.blocks[2][0].weight is model.blocks[0][0].weight
    assert model.blocks[2][1].weight is not model.blocks[0][1].weight
    assert_ae_tied(ae)
    # A tied module re-initialises only what it stores, so meta -> to_empty -> re-init in module
    # order gives exactly the model built directly (source keeps its own module's init).
    torch.manual_seed(0)
    ref = sn.TiedAutoencoder([6, 4, 3], tied=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(ae.state_dict()[k], v), k


def test_torch_compile_forward_and_backward_equal_eager():
    # aot_eager runs dynamo + AOTAutograd (the tracing that must see through the tie) without
    # inductor's C++ compile, which takes ~45 s on 2 cores; fullgraph=True: no graph breaks.
    torch.manual_seed(2)
    model = sn.TiedAutoencoder([12, 6, 3], tied=True)
    x = torch.randn(4, 12)
    y_eager = model(x)
    y_eager.pow(2).sum().backward()
    g_eager = model.encoder[0].weight.grad.clone()
    model.zero_grad()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    y_comp = compiled(x)
    y_comp.pow(2).sum().backward()
    torch.testing.assert_close(y_comp, y_eager)
    torch.testing.assert_close(model.encoder[0].weight.grad, g_eager)


def test_language_model_embedding_and_conv_ties():
    lm = nn.ModuleDict({"embed": nn.Embedding(11, 4), "head": nn.Linear(4, 11, bias=False)})
    sn.tie(lm, "head.weight", "embed.weight")
    assert lm.head.weight is lm.embed.weight
    assert sn.count_parameters(lm) == 44
    conv = nn.ModuleDict({"down": nn.Conv2d(3, 8, 3), "up": nn.ConvTranspose2d(8, 3, 3)})
    sn.tie(conv, "up.weight", "down.weight")  # both (8, 3, 3, 3): the adjoint pair
    x = torch.randn(1, 3, 6, 6)
    torch.testing.assert_close(
        conv.up(conv.down(x)),
        nn.functional.conv_transpose2d(conv.down(x), conv.down.weight, conv.up.bias),
    )


def test_chains_and_repointing():
    m = nn.ModuleDict({k: nn.Linear(4, 4) for k in "abcx"})
    sn.tie(m, "b.weight", "a.weight", "transpose")
    sn.tie(m, "c.weight", "b.weight", "transpose")  # c = (aᵀ)ᵀ = a
    assert m.c.weight is m.a.weight
    sn.tie(m, "a.weight", "x.weight")  # a becomes computed: b and c now follow x
    assert torch.equal(m.b.weight, m.x.weight.T) and m.c.weight is m.x.weight
    groups = sn.ties(m)
    assert len(groups) == 1 and groups[0].source == "x.weight"
    assert set(groups[0].members) == {
        ("a.weight", None, "tie"),
        ("b.weight", "transpose", "tie"),
        ("c.weight", None, "tie"),
    }
    assert sn.count_parameters(m) == 16 + 4 * 4
    sn.verify_ties(m)


def test_ties_finds_identity_and_storage_sharing():
    m = nn.ModuleDict({k: nn.Linear(3, 3) for k in "abcd"})
    m.b.weight = m.a.weight
    m.c.weight = nn.Parameter(m.a.weight.data.T)
    sn.tie(m, "d.weight", "a.weight", "transpose")
    (group,) = sn.ties(m)
    assert group.source == "a.weight"
    assert group.transform_of("b.weight") is None
    assert dict((n, (t, h)) for n, t, h in group.members) == {
        "b.weight": (None, "identity"),
        "c.weight": ("transpose", "storage"),
        "d.weight": ("transpose", "tie"),
    }
    assert sn.ties(nn.Linear(2, 2)) == []


def test_untie_restores_own_copy():
    model = pair_model("transpose")
    value = model.dec.weight.detach().clone()
    sn.untie(model, "dec.weight")
    assert isinstance(model.dec.weight, nn.Parameter) and type(model.dec) is nn.Linear
    assert torch.equal(model.dec.weight, value) and model.dec.weight.is_contiguous()
    with torch.no_grad():
        model.enc.weight.add_(1)
    assert torch.equal(model.dec.weight, value)  # independent now
    assert sn.ties(model) == []
    sn.verify_ties(model)  # the declaration is gone too
    # Plain torch sharing can be untied as well.
    m = nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)})
    m.b.weight = m.a.weight
    sn.untie(m, "b.weight")
    assert m.b.weight is not m.a.weight and torch.equal(m.b.weight, m.a.weight)


def test_verify_ties_reports_what_broke():
    model = pair_model("transpose")
    model.dec = nn.Linear(3, 6)  # the tied module replaced by a plain one
    with pytest.raises(sn.TieError, match=r"'dec.weight' \(tied to 'enc.weight'\) is no longer"):
        sn.verify_ties(model)
    model = pair_model("transpose")
    model.enc = nn.Linear(6, 3)  # the source module replaced: the target follows the old one
    with pytest.raises(sn.TieError, match="no longer model.enc.weight"):
        sn.verify_ties(model)
    model = pair_model("transpose")
    model.enc.weight = nn.Parameter(torch.zeros(4, 6))  # source reshaped behind the tie's back
    with pytest.raises(sn.TieError, match=r"shape is now \(6, 4\), was \(6, 3\)"):
        sn.verify_ties(model)
    # The naive torch idiom has nothing to verify; a declared tie inside a submodule is found.
    outer = nn.Sequential(pair_model("transpose"))
    sn.verify_ties(outer)
    outer[0].dec = nn.Linear(3, 6)
    with pytest.raises(sn.TieError, match="'0.dec.weight'"):
        sn.verify_ties(outer)


def test_tie_errors():
    m = nn.ModuleDict(
        {"a": nn.Linear(4, 3), "b": nn.Linear(4, 3), "c": nn.Linear(3, 4), "bn": nn.BatchNorm1d(3)}
    )
    with pytest.raises(ValueError, match=r"did you mean 'a.weight'"):
        sn.tie(m, "b.weight", "a.wieght")
    with pytest.raises(ValueError, match="itself"):
        sn.tie(m, "a.weight", "a.weight")
    with pytest.raises(
        ValueError,
        match=r"\(shape \(4, 3\)\) to 'a.weight' \(shape \(3, 4\).*"
        r"transform='transpose'",
    ):
        sn.tie(m, "c.weight", "a.weight")
    with pytest.raises(
        ValueError,
        match=r"\(shape \(3, 4\)\) to 'a.weightᵀ' \(shape \(4, 3\), "
        r"the transpose of \(3, 4\)\)",
    ):
        sn.tie(m, "b.weight", "a.weight", "transpose")
    with pytest.raises(ValueError, match="transform must be"):
        sn.tie(m, "b.weight", "a.weight", "T")
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        sn.tie(m, "b.bias", "a.bias", "transpose")
    with pytest.raises(ValueError, match="is a module"):
        sn.tie(m, "b", "a")
    with pytest.raises(ValueError, match="parameter 'bn.bias' to buffer"):
        sn.tie(m, "bn.bias", "bn.running_mean")
    m.b.double()
    with pytest.raises(ValueError, match="dtype torch.float64"):
        sn.tie(m, "b.weight", "a.weight")
    m.b.float()
    sn.tie(m, "b.weight", "a.weight")
    with pytest.raises(ValueError, match="already tied to a.weight; call sharenorm.untie"):
        sn.tie(m, "b.weight", "a.weight")
    with pytest.raises(ValueError, match="cycle"):
        sn.tie(m, "a.weight", "b.weight")
    with pytest.raises(AttributeError, match="untie"):
        m.b.weight = nn.Parameter(torch.zeros(3, 4))
    rnns = nn.ModuleDict({"a": nn.GRU(3, 3), "b": nn.GRU(3, 3)})
    with pytest.raises(ValueError, match="_flat_weights"):
        sn.tie(rnns, "b.weight_hh_l0", "a.weight_hh_l0")
    with pytest.raises(ValueError, match="not tied or shared"):
        sn.untie(m, "c.weight")
    with pytest.raises(ValueError, match="did you mean"):
        sn.untie(m, "c.wieght")


def test_buffer_ties_follow_in_place_updates_and_keep_persistence():
    class Stats(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.zeros(3))
            self.register_buffer("scratch", torch.zeros(3), persistent=False)

    m = nn.ModuleDict({"x": Stats(), "y": Stats()})
    sn.tie(m, "y.mean", "x.mean")
    sn.tie(m, "y.scratch", "x.scratch")
    m.y.mean.add_(2.0)  # in-place updates through the target land in the one stored buffer
    assert m.x.mean.eq(2).all()
    assert list(m.state_dict()) == ["x.mean", "y.mean"]  # non-persistent stays out
    assert [n for n, _ in m.named_buffers()] == ["x.mean", "x.scratch"]
    sn.untie(m, "y.scratch")
    assert "scratch" in m.y._non_persistent_buffers_set and "y.scratch" not in m.state_dict()


def test_functional_call_follows_the_tie_through_the_source():
    ae = sn.TiedAutoencoder([6, 3], tied=True).double()
    x = torch.randn(2, 6, dtype=torch.float64)
    W = torch.randn(3, 6, dtype=torch.float64)
    y = torch.func.functional_call(ae, {"encoder.0.weight": W}, (x,))
    ref = (x @ W.T + ae.encoder[0].bias) @ W + ae.decoder[0].bias
    torch.testing.assert_close(y, ref)


@pytest.mark.parametrize("bn", [nn.BatchNorm1d, sn.BatchNorm1d])
def test_tied_batchnorm_loads_from_a_plain_dict(bn, tmp_path):
    # A plain dict has no _metadata, so BatchNorm sees version None and back-fills
    # num_batches_tracked; for a tied one that key must not come back as unexpected.
    def build():
        return sn.SharedStack(nn.Sequential(nn.Linear(4, 4), bn(4)), 2)

    torch.manual_seed(0)
    a, b = build(), build()
    a(torch.randn(5, 4))
    b.load_state_dict(dict(a.state_dict()))
    assert torch.equal(b.blocks[1][1].running_mean, a.blocks[0][1].running_mean)
    assert torch.equal(b.blocks[1][1].num_batches_tracked, a.blocks[0][1].num_batches_tracked)
    sn.verify_ties(b)
    sn.save(a, tmp_path / "s.safetensors")
    c = build()
    sn.load(c, tmp_path / "s.safetensors")
    assert torch.equal(c.blocks[0][1].running_var, a.blocks[0][1].running_var)
    # An untied num_batches_tracked missing from an old checkpoint is still back-filled.
    d = sn.SharedStack(nn.Sequential(nn.Linear(4, 4), bn(4)), 2, unshared=("1",))
    sd = {k: v for k, v in d.state_dict().items() if not k.endswith("num_batches_tracked")}
    d.load_state_dict(sd)


class TwoMatrices(nn.Module):
    """A tie between two parameters of the same module (the model itself)."""

    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(3, 4))
        self.w2 = nn.Parameter(torch.randn(4, 3))

    def forward(self, x):
        return x @ self.w1 @ self.w2


class DecBeforeEnc(nn.Module):
    """The target's module is registered before the source's."""

    def __init__(self):
        super().__init__()
        self.dec = nn.Linear(3, 4)
        self.enc = nn.Linear(4, 3)


def test_load_own_state_dict_when_the_tie_is_on_the_root_or_declared_above():
    a = sn.tie(TwoMatrices(), "w2", "w1", "transpose")
    b = sn.tie(TwoMatrices(), "w2", "w1", "transpose")
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.w1, a.w1) and torch.equal(b.w2, a.w1.T)
    bad = a.state_dict()
    bad["w2"] = bad["w2"] + 1
    with pytest.raises(RuntimeError, match="'w2' is tied to 'w1'"):
        b.load_state_dict(bad)

    # The tie is declared on the outer model; a submodule is loaded on its own.
    def build():
        return sn.tie(nn.Sequential(DecBeforeEnc()), "0.dec.weight", "0.enc.weight", "transpose")

    src, dst = build(), build()
    dst[0].load_state_dict(src[0].state_dict())
    assert torch.equal(dst[0].enc.weight, src[0].enc.weight)
    assert torch.equal(dst[0].dec.weight, src[0].enc.weight.T)
    dst.load_state_dict(build().state_dict())
    sn.verify_ties(dst)
    # Deepcopy, pickle and torch.save keep the hooks working.
    for clone in (copy.deepcopy(dst), pickle.loads(pickle.dumps(dst))):
        clone[0].load_state_dict(src[0].state_dict())
        assert torch.equal(clone[0].dec.weight, src[0].enc.weight.T)
        sn.verify_ties(clone)
    buf = io.BytesIO()
    torch.save(b, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    loaded.load_state_dict(a.state_dict())
    assert torch.equal(loaded.w2, a.w1.T)


def test_state_dict_key_order_is_torchs_and_untie_restores_parameter_order():
    def build():
        return nn.ModuleDict({"enc": nn.Linear(4, 3), "dec": nn.Linear(3, 4)})

    plain = build()
    order = list(plain.state_dict())  # ['enc.weight', 'enc.bias', 'dec.weight', 'dec.bias']
    m = sn.tie(build(), "dec.weight", "enc.weight", "transpose")
    assert list(m.state_dict()) == order
    # Buffers too (BatchNorm: running_mean before running_var before num_batches_tracked).
    stack = sn.SharedStack(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), 2)
    keys = [k for k in stack.state_dict() if k.startswith("blocks.1.")]
    assert keys == ["blocks.1." + k for k in stack.blocks[0].state_dict()]
    sn.untie(m, "dec.weight")
    assert list(m.state_dict()) == order
    assert [n for n, _ in m.named_parameters()] == [n for n, _ in plain.named_parameters()]


def nested_pair():
    """model.pair.{enc, dec} with dec.weight = enc.weightᵀ, and model.other beside them."""
    torch.manual_seed(0)
    model = nn.Module()
    model.pair = nn.ModuleDict({"enc": nn.Linear(4, 3), "dec": nn.Linear(3, 4)})
    model.other = nn.Linear(2, 2)
    return sn.tie(model, "pair.dec.weight", "pair.enc.weight", "transpose")


def test_deepcopy_of_a_tie_whose_target_module_is_parametrized():
    # torch deep-copies a parametrized module through its __dict__ (its class refuses
    # __getstate__); the tied class must copy the same way
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    m = nn.ModuleDict({"a": weight_norm(nn.Linear(4, 4)), "b": weight_norm(nn.Linear(4, 4))})
    sn.tie(m, "b.bias", "a.bias")
    c = copy.deepcopy(m)
    sn.verify_ties(c)
    with torch.no_grad():
        c.a.bias.add_(1)
    assert torch.equal(c.b.bias, c.a.bias) and not torch.equal(c.a.bias, m.a.bias)
    x = torch.randn(2, 4)
    torch.testing.assert_close(c.b(x), m.b(x) + 1)
    stack = sn.SharedStack(nn.Sequential(weight_norm(nn.Linear(4, 4)), nn.Tanh()), 2)
    torch.testing.assert_close(copy.deepcopy(stack)(x), stack(x))


def test_deepcopy_keeps_a_tie_inside_the_copy_and_owns_one_that_is_not():
    model = nested_pair()
    # The whole model and the subtree holding both ends (the common ancestor): tie kept.
    for clone, pair in ((c := copy.deepcopy(model), c.pair), (p := copy.deepcopy(model.pair), p)):
        assert torch.equal(pair.dec.weight, pair.enc.weight.T)
        assert pair.dec.__dict__["_sharenorm_links"]["weight"].module is pair.enc
        assert [n for n, _ in pair.dec.named_parameters()] == ["bias"]
        with torch.no_grad():
            pair.enc.weight.add_(1)
        assert torch.equal(pair.dec.weight, pair.enc.weight.T)
        assert not torch.equal(pair.enc.weight, model.pair.enc.weight)
        sn.verify_ties(clone)
    # The target module alone: it owns its weight (as a copy of torch's identity tie does).
    dec = copy.deepcopy(model.pair.dec)
    assert type(dec) is nn.Linear
    assert [n for n, _ in dec.named_parameters()] == ["weight", "bias"]
    assert torch.equal(dec.weight, model.pair.enc.weight.T) and dec.weight.is_contiguous()
    assert dec.weight.requires_grad
    before = dec.weight.detach().clone()
    opt = torch.optim.SGD(dec.parameters(), lr=0.1)
    dec(torch.randn(2, 3)).sum().backward()
    opt.step()
    assert not torch.equal(dec.weight, before)
    assert torch.equal(model.pair.dec.weight, model.pair.enc.weight.T)  # original untouched
    assert dec.to(torch.float64)(torch.randn(2, 3, dtype=torch.float64)).dtype == torch.float64
    # A subtree holding the target but not the source.
    sub = nn.Sequential(model.pair.dec, model.other)
    clone = copy.deepcopy(sub)
    assert [n for n, _ in clone.named_parameters()] == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
    ]
    # Two modules of a shared stack copied without their source keep sharing one weight, as
    # torch's identity ties do under one deepcopy.
    stack = sn.SharedStack(nn.Linear(3, 3), 3)
    pair = copy.deepcopy(nn.Sequential(stack.blocks[1], stack.blocks[2]))
    assert pair[0].weight is pair[1].weight and isinstance(pair[0].weight, nn.Parameter)
    # After pickling the whole model, the copies behave the same.
    loaded = pickle.loads(pickle.dumps(model))
    assert type(copy.deepcopy(loaded.pair.dec)) is nn.Linear
    assert copy.deepcopy(loaded.pair).dec.__dict__["_sharenorm_links"]["weight"].module


@pytest.mark.parametrize("order", ["target first", "source first"])
@pytest.mark.parametrize("container", [nn.Sequential, list])
def test_deepcopy_keeps_a_tie_whose_source_is_copied_in_the_same_call(order, container):
    # The copy visits the target before or after its source: the tie is kept either way.
    model = nested_pair()
    mods = [model.pair.dec, model.pair.enc]
    if order == "source first":
        mods.reverse()
    clone = copy.deepcopy(container(mods) if container is list else container(*mods))
    dec, enc = (clone[0], clone[1]) if order == "target first" else (clone[1], clone[0])
    assert dec.__dict__["_sharenorm_links"]["weight"].module is enc
    with torch.no_grad():
        enc.weight.add_(1)
    assert torch.equal(dec.weight, enc.weight.T)
    assert not torch.equal(enc.weight, model.pair.enc.weight)


def test_verify_ties_accepts_a_target_whose_model_is_gone():
    # The module that declared the tie is collected; the target still follows the live source.
    model = nested_pair()
    dec, enc = model.pair.dec, model.pair.enc
    del model
    gc.collect()
    sn.verify_ties(nn.Sequential(dec))
    assert dec.__dict__["_sharenorm_links"]["weight"].module is enc


def test_verify_ties_flags_a_target_pickled_without_its_source():
    model = nested_pair()
    sn.verify_ties(model.pair.dec)  # a view of the model: its source is still the model's
    lone = pickle.loads(pickle.dumps(model.pair.dec))
    with pytest.raises(sn.TieError, match="unpickled without its tie source"):
        sn.verify_ties(lone)


def test_messages_for_untie_of_a_source_and_a_module_used_twice():
    m = pair_model("transpose")
    with pytest.raises(ValueError, match=r"'enc.weight' is the source of the tie of 'dec.weight'"):
        sn.untie(m, "enc.weight")
    lin = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="already the same tensor"):
        sn.tie(nn.Sequential(lin, lin), "1.weight", "0.weight")


def lm(source="emb", target="head", share=None):
    """An embedding and an LM head; ``share``: None, "tie" (sharenorm) or "torch" (one object)."""
    m = nn.ModuleDict({source: nn.Embedding(7, 5), target: nn.Linear(5, 7, bias=False)})
    if share == "tie":
        sn.tie(m, f"{target}.weight", f"{source}.weight")
    elif share == "torch":
        m[target].weight = m[source].weight
    return m


@pytest.mark.parametrize(
    "keys", [(), ("emb.weight",), ("head.weight",), ("emb.weight", "head.weight")]
)
def test_load_state_dict_reports_missing_keys_as_torch_does_for_shared_parameters(keys):
    # torch's oracle: one nn.Parameter under both names. A key the state_dict lacks is missing,
    # also when the other name of the pair gave its value (safetensors' load_model relies on it).
    values = lm(share="torch").state_dict()
    sd = {k: values[k] for k in keys}
    want = lm(share="torch").load_state_dict(sd, strict=False)
    got = lm(share="tie").load_state_dict(sd, strict=False)
    assert sorted(got.missing_keys) == sorted(want.missing_keys)
    assert got.unexpected_keys == want.unexpected_keys == []
    # The same for a load of the target module alone (its source lies outside it).
    want = lm(share="torch").head.load_state_dict({}, strict=False)
    got = lm(share="tie").head.load_state_dict({}, strict=False)
    assert got.missing_keys == want.missing_keys == ["weight"]


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_load_state_dict_of_a_target_module_reused_under_a_name_before_the_source(
    transform, tmp_path
):
    # "c" is the tied module "b" again, and both come before the source "a": the model-level
    # check must see c.weight too (torch's named_modules() skips the second name by default).
    def build():
        b = nn.Linear(4, 4)
        m = nn.ModuleDict({"b": b, "c": b, "a": nn.Linear(4, 4)})
        return sn.tie(m, "b.weight", "a.weight", transform)

    torch.manual_seed(0)
    m1, m2 = build(), build()
    m1.load_state_dict(m2.state_dict())
    w = m2.a.weight
    assert torch.equal(m1.a.weight, w)
    assert torch.equal(m1.c.weight, w if transform is None else w.T)
    bad = m2.state_dict()
    bad["c.weight"] = bad["c.weight"] + 1
    with pytest.raises(RuntimeError, match="'c.weight' is tied to 'a.weight'"):
        m1.load_state_dict(bad)
    # sn.save derives both names from the stored source (it stored c.weight instead of a.weight
    # and wrote a manifest that derived b.weight from the missing a.weight).
    sn.save(m2, tmp_path / "m.safetensors")
    m3 = build()
    sn.load(m3, tmp_path / "m.safetensors")
    assert torch.equal(m3.a.weight, w)


def test_verify_ties_after_an_outer_tie_repoints_one_declared_inside_a_submodule():
    # ae declares decoder.0.weight = encoder.0.weightᵀ; the outer tie makes encoder.0.weight
    # follow pre.weight, outside ae: the inner declaration now belongs to the outer model.
    outer = nn.ModuleDict({"ae": sn.TiedAutoencoder([6, 4]), "pre": nn.Linear(6, 4)})
    sn.tie(outer, "ae.encoder.0.weight", "pre.weight")
    assert torch.equal(outer.ae.decoder[0].weight, outer.pre.weight.T)
    sn.verify_ties(outer)
    sn.verify_ties(outer.ae)  # a view of the model: nothing declared there is broken
    outer.ae.decoder[0] = nn.Linear(4, 6)  # ... and a real break is still reported
    with pytest.raises(sn.TieError, match=r"'ae.decoder.0.weight' \(tied to 'pre.weight'\)"):
        sn.verify_ties(outer)


class SlotsHolder:
    __slots__ = ("dec", "enc")

    def __init__(self, dec, enc):
        self.dec, self.enc = dec, enc


@dataclasses.dataclass(slots=True)
class DataclassHolder:
    dec: nn.Module
    enc: nn.Module


@pytest.mark.parametrize(
    "hold,get",
    [
        (SlotsHolder, lambda h: (h.dec, h.enc)),
        (DataclassHolder, lambda h: (h.dec, h.enc)),
        (lambda d, e: functools.partial(print, d, e), lambda h: h.args),
        (
            lambda d, e: functools.partial(print, dec=d, enc=e),
            lambda h: (h.keywords["dec"], h.keywords["enc"]),
        ),
        (lambda d, e: collections.deque([d, e]), tuple),
        (lambda d, e: collections.OrderedDict(dec=d, enc=e), lambda h: tuple(h.values())),
        (
            lambda d, e: {"models": [(d,), {"enc": e}]},
            lambda h: (h["models"][0][0], h["models"][1]["enc"]),
        ),
    ],
    ids=[
        "slots",
        "dataclass-slots",
        "partial-args",
        "partial-keywords",
        "deque",
        "ordereddict",
        "nested",
    ],
)
def test_deepcopy_keeps_a_tie_whose_source_is_held_by_any_container(hold, get):
    # The target is visited before its source (nanoGPT's order: lm_head tied to wte), through
    # whatever object holds the two modules.
    model = nested_pair()
    dec, enc = get(copy.deepcopy(hold(model.pair.dec, model.pair.enc)))
    assert dec.__dict__["_sharenorm_links"]["weight"].module is enc
    assert sn.count_parameters(nn.ModuleList([dec, enc])) == 4 * 3 + 3 + 4
    with torch.no_grad():
        enc.weight.add_(1)
    assert torch.equal(dec.weight, enc.weight.T)
    assert not torch.equal(enc.weight, model.pair.enc.weight)


@pytest.mark.parametrize("cls", [nn.Embedding, nn.EmbeddingBag])
def test_a_sparse_embedding_cannot_be_a_transposed_target(cls):
    # Its sparse gradient cannot flow back through the transpose (a cryptic error in backward).
    m = nn.ModuleDict({"lin": nn.Linear(7, 5), "emb": cls(7, 5, sparse=True)})
    with pytest.raises(ValueError, match="sparse=False"):
        sn.tie(m, "emb.weight", "lin.weight", "transpose")
    assert "weight" in m.emb._parameters  # refused before changing anything
    # ... nor become one when its identity source is later tied transposed.
    m = nn.ModuleDict({"a": nn.Linear(5, 7), "emb": cls(7, 5, sparse=True), "b": nn.Linear(7, 5)})
    sn.tie(m, "emb.weight", "a.weight")
    with pytest.raises(ValueError, match="sparse=False"):
        sn.tie(m, "a.weight", "b.weight", "transpose")
    sn.verify_ties(m)
    # Identity ties work, and a sparse embedding can be a transposed source.
    x = torch.tensor([[1, 2]])
    (m.emb(x).sum() + m.a(torch.randn(2, 5)).sum()).backward()
    m = nn.ModuleDict({"lin": nn.Linear(7, 5), "emb": cls(7, 5, sparse=True)})
    sn.tie(m, "lin.weight", "emb.weight", "transpose")
    (m.emb(x).sum() + m.lin(torch.randn(2, 7)).sum()).backward()


def test_data_parallel_replication_of_a_tied_target_is_refused_naming_the_fix():
    # nn.DataParallel's replicas copy a module's __dict__ shallowly: a tied target's replica
    # would read its source from the original model (on the first device), not from that
    # device's replica, and torch gives the hook no way to find the source's replica.
    model = pair_model("transpose")
    with pytest.raises(ValueError, match="DistributedDataParallel"):
        model.dec._replicate_for_data_parallel()
    model.enc._replicate_for_data_parallel()  # the source is a plain module: replicated as is


@pytest.mark.parametrize("order", ["source_first", "target_first"])
def test_other_load_pre_hooks_see_tensors_for_checked_tie_keys(order):
    """A casting pre-hook on a module between the model and a tie's target sees a tensor
    under the target key (the model-level check marks it, it does not replace it)."""
    names = ("emb", "head") if order == "source_first" else ("zemb", "head")
    m = nn.ModuleDict({names[0]: nn.Embedding(5, 4), "head": nn.Sequential(nn.Linear(4, 5, bias=False))})
    sn.tie(m, "head.0.weight", f"{names[0]}.weight")
    seen = []

    def cast(module, sd, prefix, *args):
        for k in [k for k in sd if k.startswith(prefix)]:
            seen.append(type(sd[k]))
            sd[k] = sd[k].float()

    m["head"].register_load_state_dict_pre_hook(cast)
    sd = {k: v.double() for k, v in m.state_dict().items()}
    m.load_state_dict(sd)
    assert seen and all(issubclass(t, torch.Tensor) for t in seen)
    torch.testing.assert_close(m[names[0]].weight, sd[f"{names[0]}.weight"].float())
    sn.verify_ties(m)


def test_a_state_dict_with_nan_loads_into_its_own_tied_model():
    m = nn.ModuleDict({"emb": nn.Embedding(5, 4), "head": nn.Linear(4, 5, bias=False)})
    sn.tie(m, "head.weight", "emb.weight")
    with torch.no_grad():
        m["emb"].weight[0, 0] = float("nan")
    m.load_state_dict(m.state_dict())
    assert m["head"].weight[0, 0].isnan()
