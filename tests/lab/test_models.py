"""The lab's models and training loop against torch references."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import sharenorm as sn
from sharenorm.data import Dataset
from sharenorm.lab.train import TrainConfig, train_classifier
from sharenorm.models import MLP, Autoencoder, ConvNet, LocallyConnectedNet, RNNClassifier, adain
from sharenorm.models.style import StyleEncoder, channel_stats


@pytest.mark.parametrize("in_shape", [(1, 40), (3, 8, 8), (2, 13)])  # signal, image, odd length
@pytest.mark.parametrize("norm", ["batch", "group", "instance", "layer", "none"])
def test_convnet_shapes_and_norms(in_shape, norm):
    net = ConvNet(in_shape, 7, norm=norm, width=8, num_groups=2 if norm == "group" else None)
    assert net(torch.randn(3, *in_shape)).shape == (3, 7)
    kinds = {type(m).__name__ for m in net.modules()}
    expected = {"batch": "BatchNorm", "group": "GroupNorm", "instance": "InstanceNorm",
                "layer": "GroupNorm", "none": None}[norm]
    if expected:
        assert any(k.startswith(expected) for k in kinds)
        assert all(type(m).__module__.startswith("sharenorm") for m in net.modules()
                   if "Norm" in type(m).__name__)  # every norm comes from sharenorm.make_norm


@pytest.mark.parametrize("in_shape", [(1, 40), (1, 8, 8)])
def test_locally_connected_net_equals_convnet_with_copied_filters(in_shape):
    torch.manual_seed(0)
    conv = ConvNet(in_shape, 5, norm="none", width=6)
    lc = LocallyConnectedNet(in_shape, 5, norm="none", width=6)
    with torch.no_grad():
        for cm, lm in zip(conv.features, lc.features, strict=True):
            if isinstance(cm, (nn.Conv1d, nn.Conv2d)):
                ref = type(lm).from_conv(cm, lm.input_size if len(in_shape) == 3
                                         else lm.input_size[0])
                lm.load_state_dict(ref.state_dict())
        lc.head.load_state_dict(conv.head.state_dict())
    x = torch.randn(4, *in_shape)
    torch.testing.assert_close(lc(x), conv(x), atol=1e-5, rtol=1e-5)
    assert sn.count_parameters(lc) > 3 * sn.count_parameters(conv)


def test_mlp_widths_and_batchnorm():
    m = MLP((1, 10), 3, hidden=[7, 5], norm="batch")
    assert [lin.out_features for lin in m.linears] == [7, 5]
    assert all(lin.bias is None for lin in m.linears)  # redundant before BN
    assert m(torch.randn(4, 1, 10)).shape == (4, 3)


def test_rnn_classifier_shared_vs_unshared():
    s, u = RNNClassifier((1, 12), 4, hidden=8), RNNClassifier((1, 12), 4, hidden=8, shared=False)
    x = torch.randn(3, 1, 12)
    assert s(x).shape == u(x).shape == (3, 4)
    assert sn.count_parameters(u.rnn) == 12 * sn.count_parameters(s.rnn)


def test_autoencoder_tied_and_soft_pairs():
    tied, untied = Autoencoder((1, 8, 8), (16, 4)), Autoencoder((1, 8, 8), (16, 4), tied=False)
    assert tied.tie_distance() == 0.0 and untied.tie_distance() > 0
    soft = sn.SoftTie(untied, untied.soft_tie_pairs(), 1.0)
    assert soft.penalty().item() == pytest.approx(untied.tie_distance() ** 2, rel=1e-5)


def test_adain_gives_style_statistics():
    c, s = torch.randn(2, 5, 9, 7), 3 * torch.randn(2, 5, 4, 6) + 2
    m, sd = channel_stats(adain(c, s))
    ms, ss = channel_stats(s)
    torch.testing.assert_close(m, ms, atol=1e-5, rtol=0)
    torch.testing.assert_close(sd, ss, atol=1e-3, rtol=1e-3)


def test_instance_norm_encoder_is_invariant_to_contrast_and_brightness():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 20)
    for norm, invariant in (("instance", True), ("none", False)):
        enc = StyleEncoder(norm, width=8)
        f, f2 = enc.first(x), enc.first(3 * x + 0.5)
        rel = ((f2 - f).norm() / f.norm()).item()
        assert (rel < 1e-3) == invariant, (norm, rel)


def _tiny_ds():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 12, generator=g)
    y = (x.sum((1, 2)) > 0).long()
    return Dataset("tiny", x[:48], y[:48], x[48:], y[48:], 2)


def test_training_learns_and_is_json_clean():
    ds = _tiny_ds()
    torch.manual_seed(0)
    m, t = train_classifier(MLP((1, 12), 2, hidden=16), ds,
                            TrainConfig(steps=60, batch_size=8, lr=0.1, eval_every=20,
                                        target_acc=0.7), 0)
    assert m["train_acc"] > 0.8 and not m["diverged"] and len(m["curve"]) == 3
    json.dumps(m, allow_nan=False)


def test_divergence_is_detected():
    ds = _tiny_ds()
    torch.manual_seed(0)
    m, _ = train_classifier(MLP((1, 12), 2, hidden=16), ds,
                            TrainConfig(steps=50, batch_size=8, lr=1e4), 0)
    assert m["diverged"] and m["test_acc"] is None and m["steps_done"] < 50
    json.dumps(m, allow_nan=False)  # NaN/inf never reach the results file


def test_batch_larger_than_dataset_is_an_error():
    with pytest.raises(ValueError, match="batch_size 100 exceeds the 48 training samples"):
        train_classifier(MLP((1, 12), 2), _tiny_ds(), TrainConfig(steps=1, batch_size=100), 0)


# ------------------------------------------------------------- norm names and conv bias
def _n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("alias", ["none", "identity", "None", "NONE"])
def test_convnet_no_norm_aliases_keep_the_bias(alias):
    net = ConvNet((1, 40), 3, width=8, norm=alias)
    assert net.norm_kind == "none" and net.features[0].bias is not None
    assert not any("Norm" in type(m).__name__ for m in net.modules())


@pytest.mark.parametrize("alias", ["group", "gn", "GN", "GroupNorm", "group_norm"])
def test_group_norm_aliases_honour_num_groups(alias):
    assert ConvNet((1, 40), 3, width=32, norm=alias, num_groups=4).features[1].num_groups == 4
    enc = StyleEncoder(norm=alias, num_groups=8, width=32)
    assert enc.norm1.num_groups == enc.norm2.num_groups == 8


def test_unknown_norm_names_the_choices():
    with pytest.raises(ValueError, match="unknown norm kind 'batchh'.*Did you mean"):
        ConvNet((1, 40), 3, norm="batchh")


# bias before the norm only where the norm cannot remove a per-channel constant: BN and IN
# subtract each channel's mean; GN subtracts a group's mean, which removes a per-channel
# constant only with one channel per group; LN (one group) never does.
@pytest.mark.parametrize("norm, groups, has_bias", [
    ("batch", None, False), ("BN", None, False), ("instance", None, False),
    ("group", 8, False),    # C/G = 1: per-channel statistics
    ("group", None, False),  # default G = 8 for 8 channels
    ("group", 2, True),     # C/G = 4: the group mean does not cancel b_c
    ("layer", None, True), ("none", None, True),
])
def test_convnet_bias_only_where_the_norm_does_not_remove_it(norm, groups, has_bias):
    net = ConvNet((1, 40), 3, width=8, norm=norm, num_groups=groups)
    convs = [m for m in net.features if isinstance(m, nn.Conv1d)]
    assert all((c.bias is not None) == has_bias for c in convs)


def test_group_norm_removes_a_per_channel_bias_only_with_one_channel_per_group():
    # the math behind the rule above, checked on the layers themselves
    x, b = torch.randn(4, 8, 10), torch.randn(1, 8, 1)
    for groups, removed in ((8, True), (2, False), (1, False)):
        gn = sn.GroupNorm(groups, 8)
        assert torch.allclose(gn(x + b), gn(x), atol=1e-5) == removed
    bn, inorm = sn.BatchNorm1d(8), sn.InstanceNorm1d(8)
    assert torch.allclose(bn(x + b), bn(x), atol=1e-5)
    assert torch.allclose(inorm(x + b), inorm(x), atol=1e-5)


def test_mlp_bias_rule_and_default_parameter_counts():
    assert MLP((1, 10), 3, norm="LayerNorm").linears[0].bias is not None
    assert MLP((1, 10), 3, norm="BN").linears[0].bias is None
    assert MLP((1, 10), 3, norm="identity").linears[0].bias is not None
    # the default models keep their sizes
    assert _n_params(ConvNet((1, 40), 10)) == 12202
    assert _n_params(ConvNet((1, 40), 10, norm="group")) == 12202  # G = 32 = C
    assert _n_params(LocallyConnectedNet((1, 40), 10)) == 81802
    assert _n_params(MLP((1, 40), 10)) == 15210
    assert _n_params(StyleEncoder()) == 19392


def test_rnn_classifier_wrong_input_length_names_the_expected_shape():
    net = RNNClassifier((1, 40), 3, hidden=4, chunk=4)
    with pytest.raises(ValueError, match=r"expects input \(N, 1, 40\), got \(2, 1, 36\)"):
        net(torch.randn(2, 1, 36))
    with pytest.raises(ValueError, match=r"expects input \(N, 1, 40\)"):
        net(torch.randn(2, 40))


def test_models_exports_match_the_modules():
    import importlib

    import sharenorm.models as models

    for name in ("autoencoder", "convnet", "mlp", "rnn", "style"):
        mod = importlib.import_module(f"sharenorm.models.{name}")
        for public in mod.__all__:
            if public != "conv_out_len":  # a helper, not a model
                assert public in models.__all__ and getattr(models, public) is getattr(mod, public)


@pytest.mark.parametrize("readout, bidirectional", [("last", False), ("last", True),
                                                    ("all", False), ("all", True)])
def test_gru_classifier_reads_out_what_it_says(readout, bidirectional):
    from sharenorm.models.bn_rnn import GRUClassifier

    torch.manual_seed(0)
    net = GRUClassifier((2, 12), 3, hidden=5, chunk=3, readout=readout,
                        bidirectional=bidirectional)
    x = torch.randn(4, 2, 12)
    # the reference: torch.nn.GRU on the chunked sequence (4 steps of 3 positions × 2 channels)
    seq = torch.stack([x[:, :, 3 * t:3 * t + 3].transpose(1, 2).reshape(4, 6) for t in range(4)], 1)
    out, _ = net.gru(seq)
    if readout == "all":  # every step's output, both directions, in time order
        feats = out.reshape(4, -1)
    elif bidirectional:  # forward direction's last step, backward direction's first
        feats = torch.cat([out[:, -1, :5], out[:, 0, 5:]], 1)
    else:
        feats = out[:, -1]
    torch.testing.assert_close(net(x), net.head(feats))


def test_gru_classifier_default_and_bad_readout():
    from sharenorm.models.bn_rnn import GRUClassifier

    net = GRUClassifier((1, 40), 10)  # the default reads the last state: the API as it was
    assert net.readout == "last" and net.head.in_features == 64 and not net.gru.bidirectional
    with pytest.raises(ValueError, match="readout must be 'last'"):
        GRUClassifier((1, 40), 10, readout="mean")


def test_n10_trains_the_gru_as_the_mnist1d_paper_does():
    from sharenorm.lab.experiments import rnn_norm

    for quick in (False, True):
        cfgs = {c["cell"]: c for c in rnn_norm.configs(quick) if c["norm"] == "none"}
        assert cfgs["gru"]["lr"] == rnn_norm.GRU_LR == 1e-2 and cfgs["gru"]["readout"] == "all"
        assert cfgs["tanh"]["lr"] == rnn_norm.LR
    p = rnn_norm.EXPERIMENT.protocol
    assert f"GRU: {rnn_norm.GRU_LR:g}" in p.en and f"GRU: {rnn_norm.GRU_LR:g}" in p.hi
    assert "every time step's output" in p.en and "हर time step के output" in p.hi


def test_n10_gives_each_contender_the_budget_it_converges_in_and_stacks_the_tanh_rnns():
    from sharenorm.lab.batched import can_stack
    from sharenorm.lab.experiments import rnn_norm
    from sharenorm.models.bn_rnn import BNRNNClassifier, GRUClassifier

    full = {(c["cell"], c["norm"]): c for c in rnn_norm.configs(False)}
    assert full[("tanh", "batch")]["steps"] == full[("tanh", "none")]["steps"] == 24000
    assert full[("gru", "none")]["steps"] == rnn_norm.GRU_STEPS
    # 15 checkpoints: at least two in each window of the plateau check
    assert all(c["steps"] // c["eval_every"] == 15 for c in full.values())
    for norm in ("batch", "none"):  # the seeds of a tanh configuration train as one model
        assert can_stack([BNRNNClassifier((1, 40), 10, hidden=8, norm=norm) for _ in range(2)])
    assert not can_stack([GRUClassifier((1, 40), 10, hidden=8) for _ in range(2)])
