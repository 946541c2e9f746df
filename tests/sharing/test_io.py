"""save/load: one copy per stored tensor, tie manifest, save_model interop, atomic writes and
clear errors for wrong architectures and damaged files."""

from __future__ import annotations

import json
import os
import struct
import subprocess

import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from torch import nn
from torch.nn.utils import prune

import sharenorm as sn
from sharenorm.sharing import io as sio


def header_bytes(path):
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def unique_bytes(model):
    return sn.parameter_report(model).unique_bytes + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )


def test_roundtrip_stores_each_tensor_once_and_recreates_ties(tmp_path):
    torch.manual_seed(0)
    ae = sn.TiedAutoencoder([20, 8, 4], tied=True)
    path = tmp_path / "ae.safetensors"
    sn.save(ae, path)
    with safe_open(path, "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert keys == {
        "encoder.0.weight",
        "encoder.0.bias",
        "encoder.1.weight",
        "encoder.1.bias",
        "decoder.0.bias",
        "decoder.1.bias",
    }
    manifest = json.loads(meta["sharenorm.ties"])
    assert {
        "target": "decoder.1.weight",
        "source": "encoder.0.weight",
        "transform": "transpose",
        "how": "tie",
    } in manifest
    # Checkpoint bytes = unique tensor bytes + the header, exactly.
    assert os.path.getsize(path) == unique_bytes(ae) + header_bytes(path)
    x = torch.randn(3, 20)
    for tied in (True, False):  # into a tied model and into a freshly built untied one
        fresh = sn.TiedAutoencoder([20, 8, 4], tied=tied)
        sn.load(fresh, path)
        torch.testing.assert_close(fresh(x), ae(x), rtol=0, atol=0)
        assert sn.count_parameters(fresh) == sn.count_parameters(ae)
        sn.verify_ties(fresh)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_roundtrip_shared_stack_and_plain_torch_sharing(tmp_path):
    torch.manual_seed(1)
    stack = sn.SharedStack(nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6)), 5, unshared=("1",))
    stack(torch.randn(4, 6))  # non-trivial running stats
    sn.save(stack, tmp_path / "s.safetensors")
    assert os.path.getsize(tmp_path / "s.safetensors") == unique_bytes(stack) + header_bytes(
        tmp_path / "s.safetensors"
    )
    fresh = sn.SharedStack(nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6)), 5, unshared=("1",))
    sn.load(fresh, tmp_path / "s.safetensors")
    stack.eval(), fresh.eval()
    x = torch.randn(2, 6)
    torch.testing.assert_close(fresh(x), stack(x), rtol=0, atol=0)
    # Plain torch sharing (one Parameter in two modules) is stored once and re-created as a tie.
    lm = nn.ModuleDict({"embed": nn.Embedding(10, 4), "head": nn.Linear(4, 10, bias=False)})
    lm.head.weight = lm.embed.weight
    sn.save(lm, tmp_path / "lm.safetensors")
    with safe_open(tmp_path / "lm.safetensors", "pt") as f:
        assert set(f.keys()) == {"embed.weight"}
    fresh_lm = nn.ModuleDict({"embed": nn.Embedding(10, 4), "head": nn.Linear(4, 10, bias=False)})
    sn.load(fresh_lm, tmp_path / "lm.safetensors")
    assert fresh_lm.head.weight is fresh_lm.embed.weight
    assert torch.equal(fresh_lm.embed.weight, lm.embed.weight)


def test_loads_files_written_by_safetensors_save_model(tmp_path):
    torch.manual_seed(2)
    # A plain-torch tied LM: save_model keeps one name of the shared pair.
    lm = nn.ModuleDict({"embed": nn.Embedding(10, 4), "head": nn.Linear(4, 10)})
    lm.head.weight = lm.embed.weight
    safetensors.torch.save_model(lm, tmp_path / "lm.safetensors")
    for build_tied in ("torch", "sharenorm"):
        fresh = nn.ModuleDict({"embed": nn.Embedding(10, 4), "head": nn.Linear(4, 10)})
        if build_tied == "torch":
            fresh.head.weight = fresh.embed.weight
        else:
            sn.tie(fresh, "head.weight", "embed.weight")
        sn.load(fresh, tmp_path / "lm.safetensors")
        assert torch.equal(fresh.head.weight, lm.head.weight)
        assert torch.equal(fresh.head.bias, lm.head.bias)
    # save_model of a plain model holding tied values (both names stored) into a tied model;
    # save_model itself cannot write a transposed tie (it cannot handle non-contiguous views).
    ae = sn.TiedAutoencoder([9, 4], tied=True)
    plain = sn.TiedAutoencoder([9, 4], tied=False)
    plain.load_state_dict(ae.state_dict())
    safetensors.torch.save_model(plain, tmp_path / "ae.safetensors")
    fresh_ae = sn.TiedAutoencoder([9, 4], tied=True)
    sn.load(fresh_ae, tmp_path / "ae.safetensors")
    x = torch.randn(2, 9)
    torch.testing.assert_close(fresh_ae(x), ae(x), rtol=0, atol=0)
    # ... and values that contradict the tie are refused, naming it.
    with torch.no_grad():
        plain.decoder[0].weight.mul_(2)
    safetensors.torch.save_model(plain, tmp_path / "bad.safetensors")
    with pytest.raises(RuntimeError, match="'decoder.0.weight' is tied to 'encoder.0.weight'"):
        sn.load(fresh_ae, tmp_path / "bad.safetensors")


def test_architecture_and_manifest_mismatch_errors(tmp_path):
    path = tmp_path / "ae.safetensors"
    sn.save(sn.TiedAutoencoder([20, 8, 4]), path)
    with pytest.raises(
        ValueError,
        match=r"shapes differ: encoder.0.weight: file \(8, 20\), model "
        r"\(8, 21\)",
    ):
        sn.load(sn.TiedAutoencoder([21, 8, 4]), path)
    with pytest.raises(ValueError, match="another architecture.*model has no 'encoder.1.weight'"):
        sn.load(sn.TiedAutoencoder([20, 8]), path)
    with pytest.raises(ValueError, match="not in the model"):
        sn.load(nn.Linear(20, 8), path)
    # The model ties decoder.1.weight differently from the file.
    m = sn.TiedAutoencoder([20, 8, 4], tied=False)
    m.decoder[1] = nn.Linear(8, 20)
    m.extra = nn.Linear(8, 20)
    sn.tie(m, "decoder.1.weight", "extra.weight")
    with pytest.raises(ValueError, match=r"but the model ties it to extra.weight"):
        sn.load(m, path)
    # Nothing was changed by a refused load.
    fresh = sn.TiedAutoencoder([21, 8, 4], tied=False)
    with pytest.raises(ValueError):
        sn.load(fresh, path)
    assert sn.ties(fresh) == []


def test_corrupted_truncated_and_missing_files(tmp_path):
    path = tmp_path / "ae.safetensors"
    ae = sn.TiedAutoencoder([20, 8])
    sn.save(ae, path)
    data = path.read_bytes()
    cases = {
        "truncated": data[: len(data) - 7],
        "header": data[:8] + b"#" + data[9:],  # broken JSON header
        "tiny": data[:5],
    }
    for name, blob in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(blob)
        with pytest.raises(ValueError, match="corrupted or truncated"):
            sn.load(sn.TiedAutoencoder([20, 8]), bad)
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF  # inside the tensor data: safetensors cannot see it, the checksum can
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="checksum"):
        sn.load(sn.TiedAutoencoder([20, 8]), tmp_path / "flip.safetensors")
    with pytest.raises(FileNotFoundError):
        sn.load(ae, tmp_path / "nope.safetensors")
    # A hand-edited manifest that points at a tensor the file lacks.
    tensors = {k: v.contiguous() for k, v in ae.state_dict().items() if k.startswith("encoder")}
    man = json.dumps(
        [{"target": "decoder.0.weight", "source": "x", "transform": None, "how": "tie"}]
    )
    safetensors.torch.save_file(tensors, tmp_path / "m.safetensors", {"sharenorm.ties": man})
    with pytest.raises(ValueError, match="does not contain"):
        sn.load(sn.TiedAutoencoder([20, 8]), tmp_path / "m.safetensors")
    safetensors.torch.save_file(tensors, tmp_path / "j.safetensors", {"sharenorm.ties": "[{"})
    with pytest.raises(ValueError, match="corrupted tie manifest"):
        sn.load(sn.TiedAutoencoder([20, 8]), tmp_path / "j.safetensors")


def test_atomic_write_keeps_previous_checkpoint_on_crash(tmp_path, monkeypatch):
    path = tmp_path / "ae.safetensors"
    good = sn.TiedAutoencoder([20, 8])
    sn.save(good, path)
    before = path.read_bytes()

    def crash_mid_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")  # half a file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(sio, "save_file", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        sn.save(sn.TiedAutoencoder([20, 8]), path)
    monkeypatch.undo()

    def crash_on_rename(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(sio.os, "replace", crash_on_rename)
    with pytest.raises(OSError, match="disk full"):
        sn.save(sn.TiedAutoencoder([20, 8]), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ae.safetensors"]  # no temp files left
    sn.load(sn.TiedAutoencoder([20, 8]), path)
    # Permissions as for a normally created file (mkstemp's 0600 is not kept).
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_save_refuses_meta_tensors(tmp_path):
    with torch.device("meta"):
        ae = sn.TiedAutoencoder([5, 2])
    with pytest.raises(ValueError, match="meta device"):
        sn.save(ae, tmp_path / "x.safetensors")


def test_load_into_meta_model_with_assign_and_save_a_submodule(tmp_path):
    torch.manual_seed(3)
    ae = sn.TiedAutoencoder([10, 4], tied=True)
    sn.save(ae, tmp_path / "ae.safetensors")
    with torch.device("meta"):
        fresh = sn.TiedAutoencoder([10, 4], tied=False)  # untied and without storage
    sn.load(fresh, tmp_path / "ae.safetensors", assign=True)
    x = torch.randn(2, 10)
    torch.testing.assert_close(fresh(x), ae(x), rtol=0, atol=0)
    sn.verify_ties(fresh)
    # A submodule whose tie source lies outside it: its computed weight is stored as a copy,
    # and save says the tie is not in the file.
    with pytest.warns(UserWarning, match=r"cannot record the tie\(s\) 0.weight ← encoder.0.weight"):
        sn.save(ae.decoder, tmp_path / "dec.safetensors")
    dec = nn.ModuleList([nn.Linear(4, 10)])
    sn.load(dec, tmp_path / "dec.safetensors")
    assert torch.equal(dec[0].weight, ae.encoder[0].weight.T)
    # strict=False tolerates names the model lacks (shapes are still checked).
    sn.load(
        nn.ModuleList([nn.Linear(4, 10, bias=False)]), tmp_path / "dec.safetensors", strict=False
    )


class EncDec(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 3)
        self.dec = nn.Linear(3, 4)
        self.register_buffer("scale", torch.linspace(0, 1, 12).view(3, 4), persistent=False)
        self.register_buffer("scale_t", torch.rand(4, 3))

    def forward(self, x):
        return self.dec(torch.tanh(self.enc(x))) + (x @ self.scale_t).sum()


P = nn.utils.parametrizations


def parametrized_pair(kind):
    """EncDec with dec.weight = enc.weightᵀ, enc.weight not a state_dict key."""
    m = EncDec()
    if kind == "weight_norm first":  # the source is a parametrized attribute when tied
        P.weight_norm(m.enc)
    sn.tie(m, "dec.weight", "enc.weight", "transpose")
    if kind == "weight_norm":
        P.weight_norm(m.enc)
    elif kind == "spectral_norm":
        P.spectral_norm(m.enc)
    elif kind == "old weight_norm":
        nn.utils.weight_norm(m.enc)
    elif kind == "prune":
        prune.l1_unstructured(m.enc, "weight", amount=0.5)
    elif kind == "non-persistent source":
        sn.tie(m, "scale_t", "scale", "transpose")
    return m


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm.*:FutureWarning")
@pytest.mark.parametrize(
    "kind",
    [
        "weight_norm",
        "weight_norm first",
        "spectral_norm",
        "old weight_norm",
        "prune",
        "non-persistent source",
    ],
)
def test_source_that_is_not_a_state_dict_key_roundtrips(kind, tmp_path):
    torch.manual_seed(0)
    m = parametrized_pair(kind)
    with torch.no_grad():  # values the fresh model does not have
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    m.eval()
    x = torch.randn(2, 4)
    ref = m(x)
    assert [g.names for g in sn.ties(m) if "dec.weight" in g.names] == [
        ("enc.weight", "dec.weight")
    ]
    for load in ("load_state_dict", "sn.load"):
        torch.manual_seed(1)
        fresh = parametrized_pair(kind).eval()
        if load == "load_state_dict":
            fresh.load_state_dict(m.state_dict())
        else:
            with pytest.warns(UserWarning, match="the file cannot record the tie"):
                sn.save(m, tmp_path / "p.safetensors")
            sn.load(fresh, tmp_path / "p.safetensors")
        torch.testing.assert_close(fresh(x), ref, rtol=0, atol=0)
        assert torch.equal(fresh.dec.weight, fresh.enc.weight.T)
        sn.verify_ties(fresh)


def test_a_tie_the_file_cannot_record_is_said_at_save_and_restored_by_tying_again(tmp_path):
    """A source computed by a parametrization has no key in the file to name: the target is
    stored as its value. save warns (silent, a model built without the tie would load two
    separate tensors that drift apart in training); tying again after load restores it."""
    m = parametrized_pair("weight_norm first")
    with pytest.warns(UserWarning, match="call sharenorm.tie again after sharenorm.load"):
        sn.save(m, tmp_path / "p.safetensors")
    fresh = EncDec()
    P.weight_norm(fresh.enc)
    sn.load(fresh, tmp_path / "p.safetensors")
    assert torch.equal(fresh.dec.weight, m.dec.weight) and not sn.ties(fresh)
    sn.tie(fresh, "dec.weight", "enc.weight", "transpose")
    assert torch.equal(fresh.dec.weight, m.dec.weight)
    # a model whose ties the file records gets no warning
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sn.save(sn.TiedAutoencoder([6, 3]), tmp_path / "ae.safetensors")


def test_parametrized_attribute_can_be_a_source_but_not_a_target():
    m = EncDec()
    P.weight_norm(m.dec)
    with pytest.raises(ValueError, match="parametrized.*remove_parametrizations"):
        sn.tie(m, "dec.weight", "enc.weight", "transpose")
    sn.SoftTie(m, [("dec.weight", "enc.weight", "transpose")]).penalty().backward()
    sn.tie(m, "enc.weight", "dec.weight", "transpose")
    assert torch.equal(m.enc.weight, m.dec.weight.T)
    m(torch.randn(2, 4)).sum().backward()
    assert m.dec.parametrizations.weight.original1.grad is not None


def test_non_strict_load_skips_ties_the_model_lacks(tmp_path):
    torch.manual_seed(4)
    ae = sn.TiedAutoencoder([6, 4, 2])
    sn.save(ae, tmp_path / "ae.safetensors")
    enc = nn.Module()
    enc.encoder = nn.ModuleList([nn.Linear(6, 4), nn.Linear(4, 2)])
    sn.load(enc, tmp_path / "ae.safetensors", strict=False)
    assert torch.equal(enc.encoder[1].weight, ae.encoder[1].weight)
    # Only the targets: their values are still derived from the file's sources.
    dec = nn.Module()
    dec.decoder = nn.ModuleList([nn.Linear(2, 4), nn.Linear(4, 6)])
    sn.load(dec, tmp_path / "ae.safetensors", strict=False)
    assert torch.equal(dec.decoder[1].weight, ae.encoder[0].weight.T)
    assert sn.ties(dec) == []
    with pytest.raises(ValueError, match="model has no 'decoder.0.weight'"):
        sn.load(enc, tmp_path / "ae.safetensors")


@pytest.mark.parametrize("names", [("emb", "head"), ("wte", "lm_head")])
def test_safetensors_save_model_then_load_model_of_an_identity_tie(names, tmp_path):
    # save_model keeps the sorted-first name of the shared pair: the source for emb/head, the
    # target for wte/lm_head; load_model then needs the other name reported missing.
    source, target = names

    def build():
        m = nn.ModuleDict({source: nn.Embedding(7, 5), target: nn.Linear(5, 7, bias=False)})
        return sn.tie(m, f"{target}.weight", f"{source}.weight")

    a, b = build(), build()
    safetensors.torch.save_model(a, tmp_path / "lm.safetensors")
    missing, unexpected = safetensors.torch.load_model(b, tmp_path / "lm.safetensors")
    assert (missing, unexpected) == (set(), [])
    assert torch.equal(b[source].weight, a[source].weight)
    sn.verify_ties(b)


@pytest.mark.parametrize("share", ["identity", "storage"])
def test_load_refuses_values_that_contradict_plain_torch_sharing(share, tmp_path):
    # A file of an untied model: emb and head differ. A model sharing them the torch way cannot
    # hold both; loading must not silently keep one (as it does not for an sn.tie model).
    def build():
        return nn.ModuleDict({"emb": nn.Embedding(7, 5), "head": nn.Linear(5, 7, bias=False)})

    torch.manual_seed(0)
    sn.save(build(), tmp_path / "untied.safetensors")
    model = build()
    if share == "identity":
        model.head.weight = model.emb.weight
    else:
        model.head.weight = nn.Parameter(model.emb.weight.data)
    before = model.emb.weight.detach().clone()
    with pytest.raises(ValueError, match=r"sharenorm.untie\(model, 'head.weight'\)"):
        sn.load(model, tmp_path / "untied.safetensors")
    assert torch.equal(model.emb.weight, before)  # refused before loading anything
    # Consistent values load.
    consistent = build()
    consistent.head.weight = consistent.emb.weight
    sn.save(consistent, tmp_path / "tied.safetensors")
    sn.load(model, tmp_path / "tied.safetensors")
    assert torch.equal(model.head.weight, consistent.emb.weight)
    # One module used at two places: untie cannot help, the message says what can.
    lin = nn.Linear(3, 3)
    sn.save(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3)), tmp_path / "two.safetensors")
    with pytest.raises(ValueError, match="a module of its own at each place"):
        sn.load(nn.Sequential(lin, lin), tmp_path / "two.safetensors")


class WithExtraState(nn.Linear):
    def __init__(self, extra):
        super().__init__(3, 3)
        self.extra = extra

    def get_extra_state(self):
        return self.extra

    def set_extra_state(self, state):
        self.extra = state


def test_save_of_extra_state(tmp_path):
    # safetensors stores tensors only (its metadata is str -> str): non-tensor extra state is
    # refused with the key and the fix; tensor extra state is a tensor like any other.
    with pytest.raises(ValueError, match=r"'0._extra_state'.*get_extra_state.*torch.save"):
        sn.save(nn.Sequential(WithExtraState({"step": 3})), tmp_path / "x.safetensors")
    assert not os.path.exists(tmp_path / "x.safetensors")
    sn.save(nn.Sequential(WithExtraState(torch.arange(3))), tmp_path / "t.safetensors")
    fresh = nn.Sequential(WithExtraState(torch.zeros(3)))
    sn.load(fresh, tmp_path / "t.safetensors")
    assert torch.equal(fresh[0].extra, torch.arange(3))


def test_save_then_load_of_torch_shared_tensors_holding_nan(tmp_path):
    m = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    m[1].weight = m[0].weight
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    sn.save(m, tmp_path / "m.safetensors")
    sn.load(m, tmp_path / "m.safetensors")
    assert m[1].weight is m[0].weight and m[0].weight[0, 0].isnan()


@pytest.mark.parametrize("wrap", ["compile", "data_parallel"])
def test_a_wrapped_model_saves_and_loads_under_the_models_own_names(wrap, tmp_path):
    """torch's wrappers prefix every state_dict name (``_orig_mod.``, ``module.``): a
    checkpoint of the wrapper would not load into the plain model, nor the reverse."""
    def make():
        m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 4))
        sn.tie(m, "2.weight", "0.weight", transform="transpose")
        return m

    def wrapped(m):
        if wrap == "compile":
            return torch.compile(m, backend="eager")
        return nn.DataParallel(m)

    torch.manual_seed(0)
    plain = make()
    sn.save(wrapped(plain), tmp_path / "w.safetensors")
    with safe_open(tmp_path / "w.safetensors", "pt") as f:
        assert set(f.keys()) == {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                 "1.running_var", "1.num_batches_tracked", "2.bias"}
    for target in (make(), wrapped(make())):  # into the plain model, and into a wrapped one
        sn.load(target, tmp_path / "w.safetensors")
        inner = sio.unwrap(target)
        assert torch.equal(inner[0].weight, plain[0].weight)
        assert inner[2].weight.data_ptr() == inner[0].weight.data_ptr()  # the tie
    sn.save(plain, tmp_path / "p.safetensors")
    sn.load(wrapped(make()), tmp_path / "p.safetensors")


def test_a_folder_fifo_or_device_is_refused_without_opening_it(tmp_path):
    """Opening a FIFO blocks until someone writes to it, and os.replace would put a file in
    place of a FIFO or device: both functions refuse such paths, and a folder, by name."""
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    net = nn.Linear(2, 2)

    # Should the FIFO be opened after all, a writer in another process unblocks it after
    # 10 s: a failure, not a hang (a thread could not: the blocked open holds the GIL).
    writer = subprocess.Popen(["sh", "-c", f"sleep 10; : > '{fifo}'"])
    try:
        _refuse_special_files(net, fifo, tmp_path)
    finally:
        writer.kill()
        writer.wait()
    assert fifo.is_fifo()


def _refuse_special_files(net, fifo, tmp_path):
    for path, kind in ((fifo, r"a FIFO \(named pipe\)"), (tmp_path, "a folder"),
                       ("/dev/null", "a character device")):
        with pytest.raises(ValueError, match=f"is {kind}"):
            sn.load(net, path)
        with pytest.raises(ValueError, match=f"is {kind}: pass the path of a file to write"):
            sn.save(net, path)


def _lm():
    lm = nn.ModuleDict({"embed": nn.Embedding(10, 4), "head": nn.Linear(4, 10, bias=False)})
    lm.head.weight = lm.embed.weight  # torch's plain sharing (nanoGPT, HF's tie_weights)
    return lm


def test_assign_keeps_torch_plain_sharing_one_parameter(tmp_path):
    # load_state_dict(assign=True) alone wraps each name in its own Parameter: two objects
    # over one storage, which the optimizer counts twice and the next .double() splits
    torch.manual_seed(0)
    sn.save(_lm(), tmp_path / "lm.safetensors")
    with torch.device("meta"):
        fresh = _lm()
    sn.load(fresh, tmp_path / "lm.safetensors", assign=True)
    assert fresh.head.weight is fresh.embed.weight
    assert len(list(fresh.parameters())) == 1
    fresh.double()
    assert fresh.head.weight is fresh.embed.weight and fresh.head.weight.dtype == torch.float64


def test_a_float8_tie_loads(tmp_path):
    # the tie checks compare values; float8 has no equality kernel (torch.equal raises)
    ae = sn.TiedAutoencoder([6, 4], tied=True).to(torch.float8_e4m3fn)
    sn.save(ae, tmp_path / "ae.safetensors")
    for tied in (True, False):
        fresh = sn.TiedAutoencoder([6, 4], tied=tied).to(torch.float8_e4m3fn)
        sn.load(fresh, tmp_path / "ae.safetensors")
        sn.verify_ties(fresh)
        assert torch.equal(fresh.encoder[0].weight.view(torch.uint8),
                           ae.encoder[0].weight.view(torch.uint8))
    fresh.load_state_dict(ae.state_dict())  # the tied class's own check, through torch


def test_a_model_that_shares_a_transposed_view_is_loaded_as_it_is(tmp_path):
    # b.weight is a Parameter over a.weight's memory, transposed: the load keeps that sharing
    # (as it keeps plain sharing) instead of turning b into a tied class
    def build():
        m = nn.ModuleDict({"a": nn.Linear(4, 6), "b": nn.Linear(6, 4)})
        m.b.weight = nn.Parameter(m.a.weight.detach().T)
        return m

    torch.manual_seed(0)
    model = build()
    sn.save(model, tmp_path / "m.safetensors")
    fresh = build()
    sn.load(fresh, tmp_path / "m.safetensors")
    assert type(fresh.b) is nn.Linear and len(list(fresh.parameters())) == 4
    assert torch.equal(fresh.b.weight, model.a.weight.T)
    assert fresh.b.weight.untyped_storage().data_ptr() == fresh.a.weight.untyped_storage().data_ptr()
