"""Arguments of the wrong kind to the public API: a clear error that names the function and
what it takes, not an AttributeError, KeyError or "object is not iterable" from deep inside:
None, str, numbers, containers, tensors and modules in the wrong places."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sharenorm as sn

NOT_MODULES = [None, "model.safetensors", 3, {"0.weight": torch.zeros(1)}, torch.zeros(2)]
MODEL_TAKERS = {
    "convert_norm": lambda m: sn.convert_norm(m, "gn"),
    "convert_sync_batchnorm": lambda m: sn.convert_sync_batchnorm(m),
    "fuse_conv_bn": lambda m: sn.fuse_conv_bn(m),
    "freeze_norm_stats": lambda m: sn.freeze_norm_stats(m),
    "unfreeze_norm_stats": lambda m: sn.unfreeze_norm_stats(m),
    "recalibrate_norm_stats": lambda m: sn.recalibrate_norm_stats(m, [torch.zeros(2, 3)]),
    "tie": lambda m: sn.tie(m, "b.weight", "a.weight"),
    "iter_links": lambda m: list(sn.iter_links(m)),
    "ties": lambda m: sn.ties(m),
    "verify_ties": lambda m: sn.verify_ties(m),
    "count_parameters": lambda m: sn.count_parameters(m),
    "parameter_report": lambda m: sn.parameter_report(m),
    "sharenorm.save": lambda m: sn.save(m, "/nonexistent/x.safetensors"),
    "sharenorm.load": lambda m: sn.load(m, "/nonexistent/x.safetensors"),
}


@pytest.mark.parametrize("bad", NOT_MODULES, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("name", sorted(MODEL_TAKERS))
def test_every_function_taking_a_model_refuses_anything_else(name, bad):
    with pytest.raises(TypeError, match=f"{name.split('.')[-1]}.* expects an nn.Module, got "
                                        f"{type(bad).__name__}"):
        MODEL_TAKERS[name](bad)


def test_recalibrate_takes_an_iterable_of_batches():
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    with pytest.raises(TypeError, match=r"batches must be an iterable.*\[x\]"):
        sn.recalibrate_norm_stats(net, torch.randn(8, 3))  # one batch, not a list of them
    for bad in (None, 3):
        with pytest.raises(TypeError, match="batches must be an iterable"):
            sn.recalibrate_norm_stats(net, bad)


@pytest.mark.parametrize("bad", [3, None, nn.Linear(2, 2), [1, 2]])
def test_shared_stack_unshared_takes_names(bad):
    with pytest.raises(TypeError, match="unshared must be names inside block"):
        sn.SharedStack(nn.Linear(2, 2), 3, unshared=bad)


@pytest.mark.parametrize("bad", [[], {}, 1])
def test_rnn_nonlinearity_takes_a_name(bad):
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        sn.SharedRNN(2, 3, nonlinearity=bad)


def test_layer_inputs_of_the_wrong_kind():
    with pytest.raises(TypeError, match="LocallyConnected2d takes a Tensor, got list"):
        sn.LocallyConnected2d(2, 2, 5, 3)([[1.0]])
    with pytest.raises(TypeError, match="hx must be a Tensor or None, got float"):
        sn.SharedRNN(2, 3)(torch.randn(4, 2), 0.0)


@pytest.mark.parametrize("bad", ["x", 1.5, [1.0, 2.0], nn.Linear(2, 2)], ids=lambda v: type(v).__name__)
def test_functionals_take_tensors_or_none_for_their_per_channel_arguments(bad):
    import sharenorm.functional as SF

    x = torch.randn(2, 4, 3)
    calls = [lambda: SF.batch_norm(x, bad, torch.ones(4)),
             lambda: SF.batch_norm(x, None, None, bad, training=True),
             lambda: SF.instance_norm(x, weight=bad),
             lambda: SF.group_norm(x, 2, None, bad)]
    for call in calls:
        with pytest.raises(TypeError, match=r"must be a Tensor of shape \(4,\) or None"):
            call()


@pytest.mark.parametrize("bad", [None, "96", 0, 10**30])
def test_sample_photos_size_is_a_height_in_pixels(bad):
    from sharenorm.data import load_sample_photos

    with pytest.raises(ValueError, match="size must be"):
        load_sample_photos(bad)


@pytest.mark.parametrize("kw", [{"num_classes": None}, {"num_classes": True}, {"width": True},
                                {"depth": 0}, {"in_shape": (1, 0)}, {"in_shape": 40},
                                # kernel 0 must not become the default, -1 and 2.5 not reach torch
                                {"kernel": 0}, {"kernel": -1}, {"kernel": 2.5},
                                {"downsample": -1}, {"downsample": 2.0}])
def test_lab_models_check_their_sizes(kw):
    from sharenorm.models import ConvNet

    args = {"in_shape": (1, 40), "num_classes": 10, **kw}
    with pytest.raises(ValueError, match="must be"):
        ConvNet(args.pop("in_shape"), args.pop("num_classes"), **args)


@pytest.mark.parametrize("cls, num_classes, kw", [
    ("RNNClassifier", 0, {}), ("RNNClassifier", 3, {"chunk": 2.0}),
    ("RNNClassifier", 3, {"chunk": None}), ("MLP", 3, {"hidden": True}),
    ("MLP", 3, {"hidden": [8.5]}),
], ids=["rnn-0-classes", "rnn-float-chunk", "rnn-none-chunk", "mlp-bool", "mlp-float"])
def test_rnn_and_mlp_models_name_a_bad_size(cls, num_classes, kw):
    # num_classes 0 would build a Linear(64, 0) head silently; the others would fail inside
    # torch or name the wrong argument
    from sharenorm import models

    with pytest.raises(ValueError, match="must be a positive int"):
        getattr(models, cls)((1, 12), num_classes, **kw)


def test_mlp_takes_a_numpy_int_width_and_locally_connected_names_a_dtype_mismatch():
    np = pytest.importorskip("numpy")
    from sharenorm._checks import DtypeError
    from sharenorm.models import MLP

    assert MLP((1, 12), 3, hidden=np.int64(8)).linears[0].out_features == 8
    lc = sn.LocallyConnected2d(2, 3, (5, 5), 3)
    with pytest.raises(DtypeError, match=r"input.to\(torch.float32\), or the model"):
        lc(torch.randn(1, 2, 5, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="does not match weight dtype"):  # torch's type too
        lc(torch.ones(1, 2, 5, 5, dtype=torch.long))


@pytest.mark.parametrize("hidden", [(), 8, "ab", (8.5,)])
def test_autoencoder_names_bad_widths_and_a_sample_without_its_batch(hidden):
    from sharenorm.models import Autoencoder

    with pytest.raises(ValueError, match="hidden must be"):
        Autoencoder((1, 8, 8), hidden)
    with pytest.raises(ValueError, match=r"i.e. \(N, 1, 8, 8\), got shape \(1, 8, 8\)"):
        Autoencoder((1, 8, 8), (16, 4))(torch.randn(1, 8, 8))  # not an IndexError
