"""convert_norm, fuse_conv_bn and the norm tools on real Hugging Face transformers models (tiny
configs, random weights and running statistics, nothing downloaded), compared with the
unconverted model in float64: HF's ResNet (BatchNorm2d after each convolution) and wav2vec2's
feature encoder (a GroupNorm with one channel per group on (N, C, L) audio features)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sharenorm as sn

transformers = pytest.importorskip("transformers", reason="pip install -e '.[test]'")
F64 = torch.float64


def _randomize_norms(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                m.weight.copy_(torch.rand_like(m.weight) + 0.5)
                m.bias.copy_(torch.randn_like(m.bias) * 0.2)
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.copy_(torch.randn_like(m.running_mean) * 0.2)
                    m.running_var.copy_(torch.rand_like(m.running_var) + 0.5)
    return model.eval()


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1])
    return _randomize_norms(transformers.ResNetModel(cfg).to(F64))


def _wav2vec2() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
        conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), feat_extract_norm="group",
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    return _randomize_norms(transformers.Wav2Vec2Model(cfg).to(F64))


IMAGES = torch.randn(2, 3, 32, 32, dtype=F64, generator=torch.Generator().manual_seed(1))
AUDIO = torch.randn(2, 400, dtype=F64, generator=torch.Generator().manual_seed(1))


def _out(model, x):
    with torch.no_grad():
        return model(x).last_hidden_state


@pytest.mark.parametrize("kind", ["batch", "renorm"])
def test_convert_keeps_a_hf_resnets_output(kind):
    model = _resnet()
    want = _out(model, IMAGES)
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    report = sn.convert_norm(model, kind)
    assert len(report.changes) == bns > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(_out(model, IMAGES), want, atol=1e-12, rtol=1e-10)


def test_fuse_conv_bn_folds_a_hf_resnet():
    model = _resnet()
    want = _out(model, IMAGES)
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    report = sn.fuse_conv_bn(model)
    assert len(report.fused) == bns and not report.skipped
    torch.testing.assert_close(_out(report.model, IMAGES), want, atol=1e-12, rtol=1e-10)


def test_training_a_converted_hf_resnet_matches_torch():
    # a training-mode forward and backward: batch statistics, running statistics, gradients
    ref, ours = _resnet().train(), _resnet().train()
    sn.convert_norm(ours, "batch")
    for m in (ref, ours):
        m(IMAGES).last_hidden_state.square().mean().backward()
    for (name, a), b in zip(ref.state_dict().items(), ours.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, atol=1e-12, rtol=1e-10, msg=lambda m, n=name: f"{n}: {m}")
    for (name, a), b in zip(ref.named_parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-12, rtol=1e-10,
                                   msg=lambda m, n=name: f"{n} grad: {m}")


def test_convert_keeps_wav2vec2s_group_norm_feature_encoder():
    model = _wav2vec2()
    want = _out(model, AUDIO)
    report = sn.convert_norm(model, "group")
    assert [type(m) for m in model.modules() if isinstance(m, (nn.GroupNorm, sn.GroupNorm))] \
        == [sn.GroupNorm] == [type(model.feature_extractor.conv_layers[0].layer_norm)]
    assert len(report.changes) == 1
    torch.testing.assert_close(_out(model, AUDIO), want, atol=1e-12, rtol=1e-10)
