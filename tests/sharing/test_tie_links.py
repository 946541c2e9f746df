"""iter_links, the tie's owner (the lowest common ancestor of both ends) and deepcopy through
the memo: the public view of the tie mechanism."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import sharenorm as sn
import sharenorm.sharing as sharing
from sharenorm.norm._replace import replace_modules


def nested():
    """model.a.{x, y}: y.weight = x.weightᵀ, tied from the model (two levels above)."""
    torch.manual_seed(0)
    model = nn.Module()
    model.a = nn.ModuleDict({"x": nn.Linear(4, 3), "y": nn.Linear(3, 4)})
    model.b = nn.Linear(2, 2)
    return sn.tie(model, "a.y.weight", "a.x.weight", "transpose")


def test_iter_links_names_every_tied_name_and_its_source():
    assert sn.iter_links is sharing.iter_links
    ae = sn.TiedAutoencoder([6, 4, 2])
    got = [(t.target, t.source, t.transform) for t in sn.iter_links(ae)]
    assert got == [
        ("decoder.0.weight", "encoder.1.weight", "transpose"),
        ("decoder.1.weight", "encoder.0.weight", "transpose"),
    ]
    for t in sn.iter_links(ae):
        assert torch.equal(t.link.value(), ae.get_parameter(t.source).T)
        assert t.link.tensor() is ae.get_parameter(t.source)
    # A module used at two places: both names; a view of the model without the source: None.
    lin = nn.Linear(3, 3)
    m = sn.tie(nn.ModuleDict({"b": lin, "c": lin, "a": nn.Linear(3, 3)}), "b.weight", "a.weight")
    assert [(t.target, t.source) for t in sn.iter_links(m)] == [
        ("b.weight", "a.weight"),
        ("c.weight", "a.weight"),
    ]
    assert [(t.target, t.source) for t in sn.iter_links(m.b)] == [("weight", None)]
    assert list(sn.iter_links(nn.Linear(2, 2))) == []


def test_a_tie_is_owned_by_the_lowest_common_ancestor_of_its_ends():
    # Made from the model, it is verified from model.a too (the module that holds both ends).
    model = nested()
    sn.verify_ties(model.a)
    model.a.y = nn.Linear(3, 4)
    with pytest.raises(sn.TieError, match=r"'y.weight' \(tied to 'x.weight'\) is no longer tied"):
        sn.verify_ties(model.a)
    with pytest.raises(sn.TieError, match=r"'a.y.weight' \(tied to 'a.x.weight'\)"):
        sn.verify_ties(model)
    # ... and a load rooted at model.a holds both ends: checked against each other.
    model = nested()
    sd = nested().a.state_dict()
    sd["y.weight"] = sd["y.weight"] + 1
    with pytest.raises(RuntimeError, match="'y.weight' is tied to 'x.weight'"):
        model.a.load_state_dict(sd)


def test_deepcopy_in_several_calls_sharing_one_memo_keeps_the_tie():
    # The memo is what relates the copies: the target's copy is tied to its source's copy
    # when that is made later with the same memo, in another deepcopy call.
    model = nested()
    memo: dict = {}
    y = copy.deepcopy(model.a.y, memo)
    assert type(y) is nn.Linear  # on its own so far: it owns a copy of its weight
    x = copy.deepcopy(model.a.x, memo)
    assert y.__dict__["_sharenorm_links"]["weight"].module is x
    assert [n for n, _ in y.named_parameters()] == ["bias"]
    with torch.no_grad():
        x.weight.add_(1)
    assert torch.equal(y.weight, x.weight.T)
    assert not torch.equal(x.weight, model.a.x.weight)


def test_deepcopy_of_the_whole_model_keeps_the_owner_and_its_record():
    model = nested()
    clone = copy.deepcopy(model)
    sn.verify_ties(clone)
    clone.a.y = nn.Linear(3, 4)  # the copy's record is the copy's: it sees this
    with pytest.raises(sn.TieError, match="no longer tied"):
        sn.verify_ties(clone)
    sn.verify_ties(model)


def test_identity_ties_and_transposed_ties_use_one_mechanism():
    # An identity tie yields the source's Parameter itself (torch's sharing, seen from outside)
    # and keeps it through to_empty, where torch's own sharing would come apart.
    with torch.device("meta"):
        m = nn.ModuleDict({"emb": nn.Embedding(7, 5), "head": nn.Linear(5, 7, bias=False)})
        plain = nn.ModuleDict({"emb": nn.Embedding(7, 5), "head": nn.Linear(5, 7, bias=False)})
    plain.head.weight = plain.emb.weight
    sn.tie(m, "head.weight", "emb.weight")
    m.to_empty(device="cpu")
    plain.to_empty(device="cpu")
    assert m.head.weight is m.emb.weight
    assert plain.head.weight is not plain.emb.weight  # why identity ties are links too


def test_replace_modules_keeps_a_tie_made_from_above_its_owner():
    model = nested()
    replace_modules(model, {id(model.b): nn.Linear(2, 2)})  # not involved: untouched
    sn.verify_ties(model)
    net = nn.ModuleDict({"bn": nn.BatchNorm1d(3), "lin": nn.Linear(3, 3)})
    sn.tie(net, "lin.bias", "bn.bias")
    new = sn.BatchNorm1d(3)
    replace_modules(net, {id(net.bn): new})
    assert net.bn is new and net.lin.bias is new.bias
    sn.verify_ties(net)
    assert [(t.target, t.source) for t in sn.iter_links(net)] == [("lin.bias", "bn.bias")]


def test_verify_ties_of_a_view_of_a_deep_copy_is_not_taken_for_an_unpickled_target():
    # A view without the source (the target module alone) verifies as the original's does; only
    # a target unpickled without its source follows a private copy.
    model = nested()
    sn.verify_ties(model.a.y)
    clone = copy.deepcopy(model)
    sn.verify_ties(clone.a.y)
    sn.verify_ties(copy.deepcopy(clone).a.y)


def test_untie_of_a_target_tied_to_a_parametrized_source_gives_back_a_parameter():
    # weight_norm computes the source (a plain tensor): the target was a parameter before the tie
    # and is one again after untie, as after a deepcopy of the target alone.
    m = nn.ModuleDict({"enc": nn.Linear(4, 3), "dec": nn.Linear(3, 4)})
    torch.nn.utils.parametrizations.weight_norm(m.enc)
    sn.tie(m, "dec.weight", "enc.weight", "transpose")
    assert isinstance(copy.deepcopy(m.dec).weight, nn.Parameter)
    sn.untie(m, "dec.weight")
    assert [n for n, _ in m.dec.named_parameters()] == ["weight", "bias"]
    assert m.dec.weight.requires_grad and torch.equal(m.dec.weight, m.enc.weight.T)
