"""torch.fx symbolic tracing with torch's own tracer (``torch.fx.symbolic_trace``, what
torchvision's feature extraction and FX quantization run): every sharenorm layer is one
``call_module`` node, as torch.nn's layers are, and the GraphModule behaves as the model:
same outputs in training and in eval (its train/eval switch reaches the layer), the same
running statistics updated. The functionals are one ``call_function`` node. (Traced into,
the layers' input checks would meet a Proxy.)"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.fx as fx
from torch import nn

import sharenorm as sn
import sharenorm.functional as SF

LAYERS = [
    ("batchnorm", lambda: sn.BatchNorm2d(3, act="relu"), (4, 3, 5, 5)),
    ("batchnorm1d", lambda: sn.BatchNorm1d(3), (4, 3)),
    ("batchrenorm", lambda: sn.BatchRenorm2d(3), (4, 3, 5, 5)),
    ("syncbatchnorm", lambda: sn.SyncBatchNorm(3), (4, 3, 5, 5)),
    ("instancenorm", lambda: sn.InstanceNorm2d(3, affine=True, track_running_stats=True),
     (4, 3, 5, 5)),
    ("groupnorm", lambda: sn.GroupNorm(1, 3, act="silu"), (4, 3, 5, 5)),
    ("locally_connected2d", lambda: sn.LocallyConnected2d(3, 2, 5, 3), (4, 3, 5, 5)),
    ("locally_connected1d", lambda: sn.LocallyConnected1d(3, 2, 5, 3), (4, 3, 5)),
    ("shared_rnn", lambda: sn.SharedRNN(3, 4), (5, 4, 3)),
    ("unshared_rnn", lambda: sn.UnsharedRNN(3, 4, 5), (5, 4, 3)),
    ("tied_autoencoder", lambda: sn.TiedAutoencoder([3, 2]), (4, 3)),
]


class _Wrapped(nn.Module):
    """A model around the layer: something before it, so its input is a traced value."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.rnn = isinstance(layer, (sn.SharedRNN, sn.UnsharedRNN))  # (output, h_n)

    def forward(self, x):
        out = self.layer(x * 1.5)
        return out[0] if self.rnn else out


def _close(a, b):
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("name, make, shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_torch_fx_records_each_layer_as_one_node_that_behaves_as_the_layer(name, make, shape):
    torch.manual_seed(0)
    model = _Wrapped(make())
    twin = copy.deepcopy(model)
    gm = fx.symbolic_trace(model)
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["layer"]
    assert gm.layer is model.layer  # the GraphModule calls the layer itself
    x = torch.randn(*shape)
    _close(gm(x), twin(x))  # training: batch statistics, running statistics updated
    for got, want in zip(model.layer.buffers(), twin.layer.buffers(), strict=True):
        _close(got, want)
    gm.eval()
    twin.eval()
    _close(gm(x), twin(x))  # eval reaches the layer (a constant traced in would not)
    clone = pickle.loads(pickle.dumps(gm))
    _close(clone(x), twin(x))


def test_torch_nn_layers_are_recorded_alike():
    """The reference: torch.nn's BatchNorm is one call_module node under the same tracer."""
    gm = fx.symbolic_trace(_Wrapped(nn.BatchNorm2d(3)))
    assert [n.target for n in gm.graph.nodes if n.op == "call_module"] == ["layer"]


@pytest.mark.parametrize("fn, args", [
    (SF.batch_norm, (None, None, None, None, True)),
    (SF.instance_norm, ()),
    (SF.group_norm, (1,)),
], ids=["batch_norm", "instance_norm", "group_norm"])
def test_torch_fx_records_each_functional_as_one_call(fn, args):
    class Model(nn.Module):
        def forward(self, x):
            return fn(x * 1.5, *args, act="silu")

    gm = fx.symbolic_trace(Model())
    calls = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert fn in calls
    x = torch.randn(4, 3, 5, 5)
    _close(gm(x), Model()(x))
    _close(pickle.loads(pickle.dumps(gm))(x), Model()(x))


def test_a_shared_stack_is_traced_into_and_keeps_its_ties():
    """A container, as nn.Sequential: the blocks are recorded, the copies read block 0's
    weights (a change of them reaches every copy in the GraphModule)."""
    model = nn.Sequential(sn.SharedStack(nn.Sequential(nn.Linear(4, 4), nn.Tanh()), 3))
    gm = fx.symbolic_trace(model)
    x = torch.randn(2, 4)
    _close(gm(x), model(x))
    with torch.no_grad():
        model[0].blocks[0][0].weight.mul_(2)
    _close(gm(x), model(x))


@pytest.mark.parametrize("name, make, shape", LAYERS[:1] + LAYERS[-3:-1], ids=["bn", "rnn", "urnn"])
def test_tracing_a_layer_alone_names_the_way(name, make, shape):
    """fx traces into its root, which a layer cannot be (torch.nn's BatchNorm fails there
    too, on its control flow); wrapped in a model, it traces (the tests above)."""
    with pytest.raises(TypeError, match=r"trace a model that holds it.*Sequential\(layer\)"):
        fx.symbolic_trace(make())
    fx.symbolic_trace(nn.Sequential(make()))
