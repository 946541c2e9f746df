"""ONNX export, the way models leave PyTorch for deployment: ``torch.onnx.export`` (the dynamo
exporter, torch's default, and the TorchScript one) of models holding sharenorm's layers, run
in ONNX Runtime, against the same model in PyTorch. Eval mode (inference), the norms with
running statistics and non-default γ/β, fused activations, the memory-efficient path,
channels-last inputs, a dynamic batch size, and the sharing layers (a transposed tie,
SharedStack, locally connected layers, the tied autoencoder, the unshared RNN)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import sharenorm as sn

ort = pytest.importorskip("onnxruntime", reason="pip install -e '.[test]'")
pytest.importorskip("onnxscript", reason="pip install -e '.[test]'")

G = torch.Generator().manual_seed(0)


def _conv(norm: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), norm)


def _tied_autoencoder() -> nn.Module:
    m = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 6))
    return sn.tie(m, "2.weight", "0.weight", transform="transpose")


# name: (model, input)
MODELS = {
    "bn": (lambda: _conv(sn.BatchNorm2d(8)), (2, 3, 7, 7)),
    "bn_relu_memory_efficient": (
        lambda: _conv(sn.BatchNorm2d(8, act="relu", memory_efficient=True)), (2, 3, 7, 7)),
    "bn_channels_last": (
        lambda: _conv(sn.BatchNorm2d(8)).to(memory_format=torch.channels_last), (2, 3, 7, 7)),
    "gn_silu": (lambda: _conv(sn.GroupNorm(2, 8, act="silu")), (2, 3, 7, 7)),
    "gn_one_group": (lambda: _conv(sn.GroupNorm(1, 8)), (2, 3, 7, 7)),
    "in_tracked": (
        lambda: _conv(sn.InstanceNorm2d(8, affine=True, track_running_stats=True)), (2, 3, 7, 7)),
    "in_leaky_relu": (lambda: _conv(sn.InstanceNorm2d(8, affine=True, act="leaky_relu")),
                      (2, 3, 7, 7)),
    "bn1d": (lambda: nn.Sequential(nn.Linear(5, 8), sn.BatchNorm1d(8)), (4, 5)),
    "bn3d": (lambda: nn.Sequential(nn.Conv3d(3, 8, 3), sn.BatchNorm3d(8)), (2, 3, 5, 5, 5)),
    "batch_renorm": (lambda: _conv(sn.BatchRenorm2d(8)), (2, 3, 7, 7)),
    "transposed_tie": (_tied_autoencoder, (2, 6)),
    "shared_stack": (lambda: sn.SharedStack(nn.Sequential(nn.Linear(4, 4), nn.Tanh()), 3),
                     (2, 4)),
    "locally_connected2d": (lambda: sn.LocallyConnected2d(3, 4, (6, 6), 3), (2, 3, 6, 6)),
    "tied_autoencoder": (lambda: sn.TiedAutoencoder([8, 5, 3]), (2, 8)),
    "unshared_rnn": (lambda: sn.UnsharedRNN(5, 7, 4), (4, 2, 5)),
}


def _model_and_input(name: str) -> tuple[nn.Module, torch.Tensor]:
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    with torch.no_grad():  # γ, β and running statistics away from their 1/0 defaults
        for key, t in model.state_dict().items():
            if t.is_floating_point() and key.rsplit(".", 1)[-1] in (
                    "weight", "bias", "running_mean", "running_var") and t.dim() == 1:
                t.copy_(torch.rand(t.shape, generator=G) + 0.5)
    x = torch.randn(shape, generator=G)
    if name == "bn_channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return model, x


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _run_onnx(path, x: torch.Tensor):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def _export(model, x, path, dynamo: bool, dynamic_batch: bool = False) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' own deprecation and tracing notes
        if dynamo:
            shapes = ({0: torch.export.Dim("batch", min=1, max=64)},) if dynamic_batch else None
            torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=shapes).save(str(path))
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False,
                              dynamic_axes={"x": {0: "batch"}} if dynamic_batch else None,
                              input_names=["x"])


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnx_runtime_matches_pytorch(tmp_path, name, dynamo):
    model, x = _model_and_input(name)
    with torch.no_grad():
        want = _first(model(x))
    _export(model, x, tmp_path / "m.onnx", dynamo)
    torch.testing.assert_close(_run_onnx(tmp_path / "m.onnx", x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("name", ["bn", "gn_silu", "in_tracked"])
def test_onnx_with_a_dynamic_batch_uses_the_running_statistics(tmp_path, name, dynamo):
    """Exported at batch 2, run at batch 5 and 1: eval-mode BatchNorm is a fixed affine map
    (the running statistics), GroupNorm and InstanceNorm normalize each sample alone."""
    model, x = _model_and_input(name)
    _export(model, x, tmp_path / "m.onnx", dynamo, dynamic_batch=True)
    five = torch.randn(5, *x.shape[1:], generator=G)
    for batch in (five, five[:1]):
        with torch.no_grad():
            want = model(batch)
        torch.testing.assert_close(_run_onnx(tmp_path / "m.onnx", batch), want, atol=1e-5,
                                   rtol=1e-5)
    # in eval mode every sample is normalized alone: its output does not depend on the others
    torch.testing.assert_close(_run_onnx(tmp_path / "m.onnx", five[:1]),
                               _run_onnx(tmp_path / "m.onnx", five)[:1], atol=1e-6, rtol=1e-6)
