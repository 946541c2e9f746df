"""Ties on real Hugging Face transformers models (tiny configs, random weights, nothing
downloaded): GPT-2 ties its LM head to the token embedding by plain attribute sharing, and
``save_pretrained`` / ``from_pretrained`` store it once. sharenorm must see that tie, count it
once, save and load it both ways, and its own ties must survive what users do to such a model
(dtype casts, deepcopy, optimizer steps, ``resize_token_embeddings``)."""

from __future__ import annotations

import copy

import pytest
import torch

import sharenorm as sn

transformers = pytest.importorskip("transformers", reason="pip install -e '.[test]'")


def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


IDS = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(0))
HEAD, EMB = "lm_head.weight", "transformer.wte.weight"
FC0, FC1 = "transformer.h.0.mlp.c_fc.weight", "transformer.h.1.mlp.c_fc.weight"


def test_the_models_own_tie_is_seen_and_counted_once():
    m = _gpt2()
    assert [(g.source, [n for n, *_ in g.members]) for g in sn.ties(m)] == [(EMB, [HEAD])]
    assert sn.count_parameters(m) == m.num_parameters()
    report = sn.parameter_report(m)
    assert report.unique < report.total  # the head's 3,200 shared elements counted once


def test_save_and_load_both_ways_with_hugging_face(tmp_path):
    m = _gpt2()
    want = m(IDS).logits
    sn.save(m, tmp_path / "sn.safetensors")
    m.save_pretrained(tmp_path / "hf")
    # sharenorm reads its own file and Hugging Face's; the tie stays one tensor
    for path in (tmp_path / "sn.safetensors", tmp_path / "hf" / "model.safetensors"):
        torch.manual_seed(1)
        other = transformers.GPT2LMHeadModel(m.config).eval()
        sn.load(other, path)
        assert torch.equal(other(IDS).logits, want), path
        assert other.lm_head.weight is other.transformer.wte.weight
    # Hugging Face reads sharenorm's file (the tie stored once, under the source's name)
    (tmp_path / "hf" / "model.safetensors").write_bytes((tmp_path / "sn.safetensors").read_bytes())
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert torch.equal(back(IDS).logits, want)


def test_a_sharenorm_tie_survives_what_users_do_to_the_model(tmp_path):
    m = _gpt2()
    before = sn.count_parameters(m)
    sn.tie(m, FC1, FC0)
    assert sn.count_parameters(m) == m.num_parameters() == before - m.get_parameter(FC0).numel()
    m.to(torch.float64)
    sn.verify_ties(m)
    clone = copy.deepcopy(m)
    sn.verify_ties(clone)
    assert len(sn.ties(clone)) == 2
    # an optimizer step moves source and target together
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m(IDS, labels=IDS).loss.backward()
    opt.step()
    m.eval()  # no dropout from here on
    assert torch.equal(m.get_parameter(FC1), m.get_parameter(FC0))
    assert m.lm_head.weight is m.transformer.wte.weight
    # Hugging Face's resize re-ties its own pair; ours is untouched
    m.resize_token_embeddings(120)
    sn.verify_ties(m)
    assert m.lm_head.weight is m.transformer.wte.weight and m.lm_head.weight.shape[0] == 120
    # sharenorm's file keeps both ties; a fresh model gets them back on load
    sn.save(m, tmp_path / "m.safetensors")
    fresh = copy.deepcopy(m)
    sn.untie(fresh, FC1)
    sn.load(fresh, tmp_path / "m.safetensors")
    assert torch.equal(fresh(IDS).logits, m(IDS).logits)
    assert sorted(g.source for g in sn.ties(fresh)) == sorted(g.source for g in sn.ties(m))


def test_hugging_face_save_pretrained_refuses_a_tie_it_does_not_declare(tmp_path):
    # Documented limit (README): save_pretrained knows only the ties the model class declares,
    # and refuses other shared tensors; sharenorm.save writes them.
    m = _gpt2()
    sn.tie(m, FC1, FC0)
    with pytest.raises(RuntimeError, match="shared tensors"):
        m.save_pretrained(tmp_path / "hf")
    sn.save(m, tmp_path / "m.safetensors")  # fine
