"""sn.load refuses a hostile or contradictory checkpoint before it changes anything: every
refusal leaves the model bit-identical (values, parameter objects, module classes, ties)."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from torch import nn

import sharenorm as sn


def build():
    """a, b, c: Linear(4, 4); bn: BatchNorm1d(4); d: a float64 Linear(4, 4); rnn; sparse emb;
    c.weight tied to a.weight (a tie the model already has)."""
    torch.manual_seed(0)
    m = nn.ModuleDict(
        {
            "a": nn.Linear(4, 4),
            "b": nn.Linear(4, 4),
            "c": nn.Linear(4, 4),
            "bn": nn.BatchNorm1d(4),
            "d": nn.Linear(4, 4).double(),
            "rnn": nn.RNN(4, 4),
            "emb": nn.Embedding(4, 4, sparse=True),
        }
    )
    return sn.tie(m, "c.weight", "a.weight")


def snapshot(model):
    """Everything a refused load must leave as it was."""
    return {
        "values": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "objects": [(n, id(t)) for n, t in model.named_parameters(remove_duplicate=False)]
        + [(n, id(t)) for n, t in model.named_buffers(remove_duplicate=False)],
        "classes": [(n, type(m)) for n, m in model.named_modules(remove_duplicate=False)],
        "ties": sn.ties(model),
    }


def assert_same(before, after):
    assert after["classes"] == before["classes"]
    assert after["objects"] == before["objects"]
    assert after["ties"] == before["ties"]
    assert list(after["values"]) == list(before["values"])
    for k, v in before["values"].items():
        w = after["values"][k]
        # Bit-identical: compare the bytes (NaN-safe, -0.0 distinct from 0.0).
        assert w.dtype == v.dtype and w.shape == v.shape, k
        assert torch.equal(w.reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k


def assert_refused(model, path, error, match, **load_kw):
    """``sn.load(model, path, **load_kw)`` raises ``error`` matching ``match`` and leaves the
    model bit-identical; the exception, for more checks."""
    before = snapshot(model)
    with pytest.raises(error, match=match) as err:
        sn.load(model, path, **load_kw)
    assert_same(before, snapshot(model))
    return err.value


def write(path, model, manifest, change=None):
    """The model's state_dict with ``manifest``'s targets left out (as sn.save does), and
    ``change(tensors)`` applied; the manifest written by hand."""
    # A hostile manifest may derive a name that it also names as a source: that one is stored.
    derived = {e["target"] for e in manifest} - {e["source"] for e in manifest}
    tensors = {
        k: v.detach().clone().contiguous()
        for k, v in model.state_dict().items()
        if k not in derived
    }
    if change is not None:
        change(tensors)
    meta = {"format": "pt", "sharenorm.ties": json.dumps(manifest)}
    safetensors.torch.save_file(tensors, path, meta)
    return path


def entry(target, source, transform=None):
    return {"target": target, "source": source, "transform": transform, "how": "tie"}


VALID = entry("b.weight", "a.weight")  # applied first by a load that checks entry by entry

HOSTILE = {
    "parameter-from-buffer": ([VALID, entry("bn.weight", "bn.running_mean")], "buffer"),
    "two-cycle": ([entry("a.bias", "b.bias"), entry("b.bias", "a.bias")], "cycle"),
    "three-cycle": (
        [entry("a.bias", "b.bias"), entry("b.bias", "bn.bias"), entry("bn.bias", "a.bias")],
        "cycle",
    ),
    "transpose-of-1d": ([VALID, entry("b.bias", "a.bias", "transpose")], "1 dimension"),
    "target-twice": ([VALID, entry("b.weight", "bn.weight")], "ties 'b.weight' twice"),
    "itself": ([VALID, entry("a.bias", "a.bias")], "itself"),
    "dtype": ([VALID, entry("d.weight", "a.weight")], "dtype"),
    "rnn-target": ([VALID, entry("rnn.weight_hh_l0", "a.weight")], "_flat_weights"),
    "sparse-transposed": ([VALID, entry("emb.weight", "a.weight", "transpose")], "sparse=False"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_refused_manifest_leaves_the_model_unchanged(case, tmp_path):
    manifest, match = HOSTILE[case]
    model = build()
    path = write(tmp_path / "m.safetensors", build(), manifest)
    assert_refused(model, path, ValueError, match)


def test_values_that_contradict_an_existing_tie_are_refused_before_loading(tmp_path):
    # A valid manifest tie plus stored values that contradict the model's own tie (c = a):
    # load_state_dict would copy some values before refusing; sn.load checks first.
    model = build()

    def contradict(t):
        t["c.weight"] = t["a.weight"] + 1
        t["a.bias"] = t["a.bias"] + 5  # a value the refused load must not have copied

    path = write(tmp_path / "m.safetensors", build(), [VALID], contradict)
    assert_refused(model, path, RuntimeError, "'c.weight' is tied to 'a.weight'")


def test_the_same_manifest_without_its_bad_entry_loads(tmp_path):
    # The refusals above come from their bad entry, not from the valid one.
    model = build()
    path = write(tmp_path / "m.safetensors", build(), [VALID])
    sn.load(model, path)
    assert model.b.weight is model.a.weight
    sn.verify_ties(model)


def test_transpose_of_a_1d_tensor_is_a_value_error():
    from sharenorm.sharing.tie import transformed_shape

    with pytest.raises(ValueError, match="1 dimension"):
        transformed_shape((4,), "transpose")
    assert transformed_shape((2, 3, 5), "transpose") == (3, 2, 5)


def test_a_manifest_nested_too_deep_for_json_is_a_value_error(tmp_path):
    # json.loads raises RecursionError on deep nesting, not ValueError
    model = build()
    tensors = {k: v.detach().clone().contiguous() for k, v in build().state_dict().items()}
    path = tmp_path / "deep.safetensors"
    safetensors.torch.save_file(tensors, path, {"sharenorm.ties": "[" * 100_000 + "]" * 100_000})
    assert_refused(model, path, ValueError, "corrupted tie manifest")


def test_a_huge_manifest_of_unknown_names_is_refused_quickly_with_a_short_message(tmp_path):
    # 20,000 entries naming keys the model lacks: a difflib search and a message line for
    # each would take 22 s and 2 MB per 10,000
    model = build()
    manifest = [entry(f"no.such.layer{i}.weight", "a.weight") for i in range(20_000)]
    path = write(tmp_path / "m.safetensors", build(), manifest)
    error = assert_refused(model, path, ValueError, "not listed")
    assert len(str(error)) < 5_000
    assert "no.such.layer0.weight" in str(error)


def test_assign_refuses_integer_values_for_trainable_parameters_before_tying(tmp_path):
    # load_state_dict(assign=True) would fail on 'a.bias' only after assigning the others and
    # after the manifest's tie of b.weight had been made
    model = build()

    def integral(t):
        t["b.bias"] = t["b.bias"] + 1  # a value the refused load must not have assigned
        t["a.bias"] = t["a.bias"].round().long()

    path = write(tmp_path / "m.safetensors", build(), [VALID], integral)
    assert_refused(model, path, ValueError, r"assign=True .*'a.bias' \(torch.int64\)",
                   assign=True)
    sn.load(model, path)  # without assign the values are cast, as torch does
    assert model.b.weight is model.a.weight and model.a.bias.dtype == torch.float32
