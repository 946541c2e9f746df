"""freeze/unfreeze_norm_stats, recalibrate_norm_stats, fuse_conv_bn: each against the
behaviour it promises (eval-mode output, unchanged statistics, the direct average of
per-batch statistics, the unfused model's output)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import sharenorm as sn
from sharenorm.norm.tools import fold_bn_weights


def _norm_zoo() -> nn.Sequential:
    """One of every norm with running statistics, torch and sharenorm, plus GN."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),  # torch
        sn.BatchNorm2d(4, act="relu"),  # sharenorm
        sn.SyncBatchNorm(4),  # no group: BN
        sn.BatchRenorm2d(4, r_warmup=(0, 0), d_warmup=(0, 0)),
        nn.InstanceNorm2d(4, track_running_stats=True, affine=True),
        sn.InstanceNorm2d(4, track_running_stats=True),
        nn.GroupNorm(2, 4),  # no running statistics: nothing to freeze
        nn.BatchNorm2d(4, track_running_stats=False),  # idem
    )


def _stats(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_b" in k}


# ----------------------------------------------------------------------------- freeze


def test_freeze_survives_train_and_uses_running_stats():
    net = _norm_zoo()
    net.train()
    for _ in range(2):  # move the running statistics away from (0, 1)
        net(torch.randn(4, 2, 5, 5) * 2 + 1)
    frozen = sn.freeze_norm_stats(net)
    assert frozen == ["1", "2", "3", "4", "5", "6"]
    assert sn.freeze_norm_stats(net) == frozen  # idempotent: still one hook each
    assert len(net[1]._forward_pre_hooks) == 1
    before = _stats(net)
    evaluated = copy.deepcopy(net)
    sn.unfreeze_norm_stats(evaluated)
    evaluated.eval()
    for m in (evaluated[7], evaluated[8]):
        m.train()  # unfrozen layers keep training behaviour in `net`
    net.train()  # the fine-tuning bug: this must not unfreeze
    x = torch.randn(3, 2, 5, 5) * 2 + 1
    y = net(x)
    assert torch.equal(y, evaluated(x))  # eval behaviour: running statistics normalize
    for k, v in _stats(net).items():
        assert torch.equal(v, before[k]), k  # and they did not move
    assert all(m.training for m in net.modules())  # the mode flag reads as set
    # γ/β still learn unless asked otherwise.
    y.sum().backward()
    assert net[1].weight.grad is not None and net[1].weight.requires_grad


def test_freeze_deepcopy_pickle_unfreeze_and_affine():
    net = _norm_zoo()
    sn.freeze_norm_stats(net, affine=True)
    assert not net[1].weight.requires_grad and not net[2].bias.requires_grad
    clone = copy.deepcopy(net)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    for model in (clone, loaded):
        assert sn.is_norm_stats_frozen(model[1])
        before = _stats(model)
        model.train()(torch.randn(4, 2, 3, 3) + 3)
        assert all(torch.equal(v, before[k]) for k, v in _stats(model).items())
    # Unfreezing the copy leaves the original frozen (the hooks are per module).
    assert sn.unfreeze_norm_stats(clone, affine=True) == ["1", "2", "3", "4", "5", "6"]
    assert sn.is_norm_stats_frozen(net[1]) and not sn.is_norm_stats_frozen(clone[1])
    assert clone[1].weight.requires_grad
    assert len(clone[1]._forward_pre_hooks) == len(clone[1]._forward_hooks) == 0
    clone.train()(torch.randn(4, 2, 3, 3) + 3)
    assert clone[1].num_batches_tracked.item() == 1  # moving again
    net.train()(torch.randn(4, 2, 3, 3) + 3)
    assert net[1].num_batches_tracked.item() == 0
    with pytest.raises(TypeError, match="nn.Module"):
        sn.freeze_norm_stats([net])
    with pytest.raises(TypeError, match="nn.Module"):
        sn.unfreeze_norm_stats(None)


# ----------------------------------------------------------------------------- recalibrate


class _Net(nn.Module):
    """Conv → Dropout → BN → ReLU → Conv → BN: the second BN's input depends on the first."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3)
        self.drop = nn.Dropout(0.5)
        self.bn1 = sn.BatchNorm2d(3, momentum=0.1)
        self.conv2 = nn.Conv2d(3, 4, 1)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.drop(self.conv1(x))))))


def _direct_average(model, batches):
    """Per BN layer: the plain average over batches of the mean and unbiased variance of
    its input, computed from hooks in a pass where only the norm layers use batch
    statistics (dropout off)."""
    seen = {"bn1": [], "bn2": []}
    hooks = []
    for name in seen:
        def hook(m, args, name=name):
            x = args[0].double()
            seen[name].append((x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)))
        hooks.append(getattr(model, name).register_forward_pre_hook(hook))
    model.eval()
    model.bn1.train(), model.bn2.train()
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in hooks:
        h.remove()
    return {
        name: (torch.stack([s[0] for s in v]).mean(0), torch.stack([s[1] for s in v]).mean(0))
        for name, v in seen.items()
    }


def test_recalibrate_equals_direct_average_of_batch_statistics():
    torch.manual_seed(1)
    model = _Net()
    # Unequal batch sizes: the average is over batches, unweighted (precise-BN).
    batches = [torch.randn(n, 2, 6, 6) * 3 + 2 for n in (5, 2, 7, 3)]
    expected = _direct_average(copy.deepcopy(model), batches)
    model.train()
    model(torch.randn(4, 2, 6, 6))  # stale statistics to be replaced
    sn.freeze_norm_stats(model.bn2)
    n = sn.recalibrate_norm_stats(model, [(b, torch.zeros(len(b))) for b in batches])
    assert n == 4
    for name, (mean, var) in expected.items():
        bn = getattr(model, name)
        torch.testing.assert_close(bn.running_mean.double(), mean, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(bn.running_var.double(), var, atol=1e-6, rtol=1e-6)
        assert bn.num_batches_tracked.item() == 4
    # Everything else is as it was: momentum, modes, frozen state.
    assert model.bn1.momentum == 0.1 and model.bn2.momentum == 0.1
    assert model.training and model.drop.training and model.bn1.training
    assert sn.is_norm_stats_frozen(model.bn2)


def _batch_stats(x, instance):
    """A batch's statistics as a norm layer averages them into its running ones: BN's
    mean and unbiased variance over (N, H, W); IN's per-instance ones over (H, W),
    averaged over the batch."""
    x = x.double()
    if instance:
        return x.mean((2, 3)).mean(0), x.var((2, 3), unbiased=True).mean(0)
    return x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize(("make", "instance"), [
    (lambda m: nn.BatchNorm2d(3, momentum=m), False),
    (lambda m: sn.BatchNorm2d(3, momentum=m), False),
    # torch.nn's InstanceNorm turns momentum=None into 0.0 (no update at all), so the
    # cumulative average must be done with a per-batch momentum 1/(k + 1)
    (lambda m: nn.InstanceNorm2d(3, momentum=m, track_running_stats=True), True),
    (lambda m: sn.InstanceNorm2d(3, momentum=m, track_running_stats=True), True),
], ids=["torch_bn", "sn_bn", "torch_in", "sn_in"])
def test_recalibrate_each_layer_kind_equals_average_of_batch_statistics(make, instance,
                                                                        momentum):
    layer = make(momentum)
    batches = [torch.randn(n, 3, 5, 5) * (k + 1) + 2 * k for k, n in enumerate((4, 2, 6))]
    assert sn.recalibrate_norm_stats(layer, batches) == 3
    stats = [_batch_stats(b, instance) for b in batches]
    mean = torch.stack([s[0] for s in stats]).mean(0)
    var = torch.stack([s[1] for s in stats]).mean(0)
    torch.testing.assert_close(layer.running_mean.double(), mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(layer.running_var.double(), var, atol=1e-6, rtol=1e-6)
    assert layer.momentum == momentum
    assert not layer._forward_pre_hooks  # no hook left behind


def test_recalibrate_batchrenorm_runs_as_bn_and_restores():
    m = nn.Sequential(sn.BatchRenorm1d(3, r_warmup=(0, 0), d_warmup=(0, 0)), sn.BatchNorm1d(3))
    m.eval()
    batches = [torch.randn(8, 3) * 2 + 1 for _ in range(3)]
    sn.recalibrate_norm_stats(m, batches, forward=lambda model, b: model(b))
    # The second layer saw BN-normalized inputs (r = 1, d = 0) while recalibrating.
    normalized = [(b - b.mean(0)) / torch.sqrt(b.var(0, unbiased=False) + 1e-5) for b in batches]
    mean = torch.stack([z.mean(0) for z in normalized]).mean(0)
    torch.testing.assert_close(m[1].running_mean, mean, atol=1e-6, rtol=0)
    assert m[0].renorm and not m.training


def test_recalibrate_keeps_batchrenorms_warm_up_step():
    # num_batches_tracked is BatchRenorm's warm-up clock: recalibration reset it to the
    # number of recalibration batches, so training fell back to plain BN (r_max 1, d_max 0)
    m = sn.BatchRenorm1d(3, r_max=3.0, d_max=5.0, r_warmup=(10, 20), d_warmup=(10, 20))
    for _ in range(50):
        m(torch.randn(16, 3) * 2 + 1)
    assert m.clips() == (3.0, 5.0)
    sn.recalibrate_norm_stats(m, [torch.randn(16, 3) * 2 + 1 for _ in range(3)])
    assert int(m.num_batches_tracked) == 50 and m.clips() == (3.0, 5.0)
    bn = sn.BatchNorm1d(3)
    sn.recalibrate_norm_stats(bn, [torch.randn(16, 3) for _ in range(3)])
    assert int(bn.num_batches_tracked) == 3  # other layers count the batches averaged


def test_recalibrate_failures_restore_statistics():
    model = _Net()
    before = _stats(model)
    with pytest.raises(ValueError, match="no batch"):
        sn.recalibrate_norm_stats(model, iter([]))
    assert all(torch.equal(v, before[k]) for k, v in _stats(model).items())

    def bad_batches():
        yield torch.randn(4, 2, 6, 6)
        raise KeyError("loader broke")

    with pytest.raises(KeyError, match="loader broke"):
        sn.recalibrate_norm_stats(model, bad_batches())
    assert all(torch.equal(v, before[k]) for k, v in _stats(model).items())
    assert model.bn1.momentum == 0.1
    with pytest.raises(TypeError, match="forward="):
        sn.recalibrate_norm_stats(model, [{"x": torch.randn(2, 2, 6, 6)}])
    with pytest.raises(ValueError, match="no norm layer with running statistics"):
        sn.recalibrate_norm_stats(nn.Sequential(nn.Linear(2, 2), nn.GroupNorm(1, 2)), [])


# ----------------------------------------------------------------------------- fuse


def _randomize_bn(model):
    """Non-trivial running statistics and γ/β, so a wrong fold shows."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, sn.BatchNorm1d, sn.BatchNorm2d,
                              sn.BatchNorm3d)) and m.running_mean is not None:
                c = m.num_features
                m.running_mean.copy_(torch.randn(c))
                m.running_var.copy_(torch.rand(c) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(c) + 0.5)
                    m.bias.copy_(torch.randn(c))
    return model


# (layers, input shape)
FUSE_CASES = [
    ([nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4)], (2, 3, 9)),
    ([nn.Conv2d(4, 6, 3, groups=2, bias=False), sn.BatchNorm2d(6)], (2, 4, 7, 7)),  # groups
    ([nn.Conv3d(2, 3, 2), nn.BatchNorm3d(3, affine=False)], (2, 2, 4, 4, 4)),  # no γ/β
    ([nn.Linear(5, 4), sn.BatchNorm1d(4, act="relu")], (6, 5)),  # Linear, act kept
    ([nn.ConvTranspose2d(4, 6, 3, groups=2), nn.BatchNorm2d(6)], (2, 4, 5, 5)),  # transposed
    ([nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4)], (2, 3, 6, 6)),  # torch's SyncBN in eval
]


@pytest.mark.parametrize(
    "layers,shape", FUSE_CASES, ids=[f"{type(c[0][0]).__name__}-{type(c[0][1]).__name__}"
                                     for c in FUSE_CASES]
)
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_fuse_sequential_equals_unfused(layers, shape, dtype, atol):
    net = _randomize_bn(nn.Sequential(*copy.deepcopy(layers), nn.Tanh())).to(dtype).eval()
    x = torch.randn(shape, dtype=dtype)
    report = sn.fuse_conv_bn(net)
    assert report.fused == [("0", "1")] and report.skipped == []
    fused = report.model
    assert fused is not net and type(net[1]) is type(layers[1])  # original untouched
    act = getattr(layers[1], "act", None)
    after = fused[1].act if isinstance(layers[0], nn.Linear) else fused[1]
    assert type(after).__name__ == ("Activation" if act else "Identity")
    torch.testing.assert_close(fused(x), net(x), atol=atol, rtol=atol)
    assert fused[0].weight.dtype == dtype


def test_folded_linear_refuses_inputs_where_the_fold_is_not_the_norm():
    """Linear → BatchNorm1d on (N, L, F) with L = F: the BN normalizes dim 1 (L), the
    folded Linear would scale dim 2; the fused model refuses that input instead."""
    net = _randomize_bn(nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6))).eval()
    fused = sn.fuse_conv_bn(net).model
    x = torch.randn(5, 4)
    torch.testing.assert_close(fused(x), net(x))
    with pytest.raises(ValueError, match="exact only for \\(N, features\\).*unfused"):
        fused(torch.randn(2, 6, 4))


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 1)
        self.bn2 = nn.BatchNorm2d(3)  # its conv's output is also used by the residual

    def forward(self, x):
        y = self.bn(self.conv(x)) + x
        z = self.conv2(y)
        return self.bn2(z) + z


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.bn(self.conv(x))
        return x


class _ConvNormNet(nn.Module):
    """Not a Sequential: the pairs are only found in the torch.fx graph, which must see
    sharenorm norms as leaves (as it sees torch.nn's) to trace the model at all."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = sn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = sn.BatchNorm2d(4, act="relu")
        self.gn = sn.GroupNorm(2, 4, act="silu")  # no running statistics: stays

    def forward(self, x):
        return self.gn(self.bn2(self.conv2(self.bn1(self.conv1(x)))) + 1.0)


def test_fuse_fx_folds_sharenorm_batchnorm_outside_sequential():
    net = _randomize_bn(_ConvNormNet()).eval()
    x = torch.randn(2, 3, 5, 5)
    report = sn.fuse_conv_bn(net)
    assert report.fused == [("conv1", "bn1"), ("conv2", "bn2")] and report.skipped == []
    assert isinstance(report.model, torch.fx.GraphModule)
    assert type(report.model.bn2).__name__ == "Activation"  # bn2's relu stays
    torch.testing.assert_close(report.model(x), net(x), atol=1e-5, rtol=1e-5)


def test_norm_tracer_keeps_sharenorm_norms_as_leaves():
    from sharenorm.norm.tools import NormTracer

    net = nn.Sequential(nn.Conv2d(3, 4, 1), sn.BatchNorm2d(4), sn.InstanceNorm2d(4),
                        sn.GroupNorm(2, 4), sn.BatchRenorm2d(4), sn.SyncBatchNorm(4)).eval()
    graph = NormTracer().trace(net)
    targets = [n.target for n in graph.nodes if n.op == "call_module"]
    assert targets == ["0", "1", "2", "3", "4", "5"]
    gm = torch.fx.GraphModule(net, graph)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(gm(x), net(x))


def test_fuse_fx_and_what_cannot_be_fused():
    net = _randomize_bn(_Residual()).eval()
    x = torch.randn(2, 3, 5, 5)
    report = sn.fuse_conv_bn(net)
    assert report.fused == [("conv", "bn")]
    assert report.skipped[0][0] == "bn2" and "also used elsewhere" in report.skipped[0][1]
    assert isinstance(report.model, torch.fx.GraphModule)
    torch.testing.assert_close(report.model(x), net(x), atol=1e-5, rtol=1e-5)
    assert sn.fuse_conv_bn(net, method="sequential").fused == []

    report = sn.fuse_conv_bn(_Branchy().eval())
    assert report.fused == [] and "torch.fx could not trace" in report.skipped[0][1]

    shared = nn.Conv2d(3, 3, 1)
    weight_normed = parametrizations.weight_norm(nn.Conv2d(3, 3, 1))
    net = _randomize_bn(nn.Sequential(
        shared, nn.BatchNorm2d(3), shared, nn.BatchNorm2d(3),  # one conv, two places
        weight_normed, nn.BatchNorm2d(3),  # parametrized weight
        nn.ReLU(), nn.BatchNorm2d(3),  # not after a conv
        nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3, track_running_stats=False),  # batch stats
        nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3).train(),  # training mode
    )).eval()
    net[11].train()
    report = sn.fuse_conv_bn(net)
    reasons = dict(report.skipped)
    assert report.fused == []
    assert "shared" in reasons["1"] and "shared" in reasons["3"]
    assert "parametrized" in reasons["5"]
    assert "follows a ReLU" in reasons["7"]
    assert "no running statistics" in reasons["9"]
    assert "training mode" in reasons["11"]
    assert "NOT folded 11" in str(report)
    # A frozen BN in a training model behaves as in eval: it can be folded.
    sn.freeze_norm_stats(net[11])
    assert ("10", "11") in sn.fuse_conv_bn(net).fused
    with pytest.raises(ValueError, match="method"):
        sn.fuse_conv_bn(net, method="graph")
    with pytest.raises(TypeError, match="nn.Module"):
        sn.fuse_conv_bn(lambda x: x)


def test_fuse_inplace():
    net = _randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).eval()
    x = torch.randn(2, 3, 5, 5)
    expected = net(x)
    report = sn.fuse_conv_bn(net, inplace=True)
    assert report.model is net and isinstance(net[1], nn.Identity)
    torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)


def test_fused_model_quantizes_with_torch_ao_like_a_torch_nn_one():
    """torch.ao's FX quantization fuses conv + BatchNorm (+ ReLU) by torch.nn's classes only:
    a model with sharenorm's BatchNorm quantizes, but the norm runs unfused in float.
    fuse_conv_bn first, and torch's quantizer finds the conv + relu it fuses for a torch.nn
    model: one quantized ConvReLU2d, no norm left."""
    import warnings

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    def quantized(model):
        x = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notes
            prepared = prepare_fx(copy.deepcopy(model), get_default_qconfig_mapping("x86"), (x,))
            for i in range(4):
                prepared(torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(i)))
            q = convert_fx(prepared)
        torch.testing.assert_close(q(x), model(x), atol=0.05, rtol=0)  # 8-bit rounding
        return {type(m).__name__ for m in q.modules()}

    torch.manual_seed(0)
    ours = _randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3), sn.BatchNorm2d(8, act="relu"),
                                       nn.Conv2d(8, 4, 3))).eval()
    theirs = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    theirs[0].load_state_dict(ours[0].state_dict())
    theirs[1].load_state_dict(ours[1].state_dict())
    theirs[3].load_state_dict(ours[2].state_dict())
    theirs.eval()
    assert "BatchNorm2d" in quantized(ours)  # left unfused
    fused = quantized(sn.fuse_conv_bn(ours).model)
    assert "ConvReLU2d" in fused and "BatchNorm2d" not in fused
    assert quantized(theirs) == fused


def test_frozen_layer_keeps_its_mode_when_forward_raises():
    # The hook that runs a frozen layer in eval behaviour restores `training` even when
    # the call raises (a wrong input), so the layer does not stay in eval for good.
    bn = sn.BatchNorm2d(3)
    sn.freeze_norm_stats(bn)
    bn.train()
    with pytest.raises(ValueError, match="expected an input with 3 channels"):
        bn(torch.randn(2, 5, 2, 2))
    assert bn.training
    restored = copy.deepcopy(bn)  # the hook survives a copy, and unfreezing removes it
    with pytest.raises(ValueError):
        restored(torch.randn(2, 5, 2, 2))
    assert restored.training
    sn.unfreeze_norm_stats(restored)
    assert not restored._forward_hooks and not restored._forward_pre_hooks


# ----------------------------------------------------------------------------- fold_bn_weights


def _bn_stats(c, dtype=torch.float64):
    g = torch.Generator().manual_seed(c)
    return (torch.randn(c, generator=g, dtype=dtype), torch.rand(c, generator=g, dtype=dtype) + 0.5,
            torch.rand(c, generator=g, dtype=dtype) + 0.5, torch.randn(c, generator=g, dtype=dtype))


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_fold_bn_weights_equals_torchs_fuse_conv_bn_weights(transpose, bias):
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    torch.manual_seed(0)
    w = torch.randn(5, 6, 3, 3, dtype=torch.float64)
    c = 6 if transpose else 5
    b = torch.randn(c, dtype=torch.float64) if bias else None
    mean, var, gamma, beta = _bn_stats(c)
    ours = fold_bn_weights(w, b, mean, var, 1e-3, gamma, beta, transpose=transpose)
    theirs = fuse_conv_bn_weights(w, b, mean, var, 1e-3, gamma, beta, transpose=transpose)
    for a, t in zip(ours, theirs, strict=True):
        assert type(a) is torch.Tensor and not a.requires_grad
        torch.testing.assert_close(a, t.detach(), atol=1e-14, rtol=1e-14)


def test_fold_bn_weights_linear_and_affine_less():
    from torch.nn.utils.fusion import fuse_linear_bn_weights

    w, b = torch.randn(4, 7, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    mean, var, gamma, beta = _bn_stats(4)
    ours = fold_bn_weights(w, b, mean, var, 1e-5, gamma, beta)
    theirs = fuse_linear_bn_weights(w, b, mean, var, 1e-5, gamma, beta)
    for a, t in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, t.detach(), atol=1e-14, rtol=1e-14)
    no_affine = fold_bn_weights(w, b, mean, var, 1e-5)
    ones = fold_bn_weights(w, b, mean, var, 1e-5, torch.ones(4, dtype=torch.float64),
                           torch.zeros(4, dtype=torch.float64))
    for a, t in zip(no_affine, ones, strict=True):
        torch.testing.assert_close(a, t, atol=0, rtol=0)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 1e-5),
                                        (torch.bfloat16, 5e-2)])
def test_fold_bn_weights_of_a_grouped_transposed_conv_computes_conv_then_bn(dtype, atol):
    """Per group, a ConvTranspose's output channels are the columns of that group's rows:
    the scale must follow them (torch's fuse_conv_bn_weights assumes one group)."""
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(6, 9, 3, groups=3).to(torch.float64)
    bn = _randomize_bn(nn.BatchNorm2d(9)).to(torch.float64).eval()
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    w, b = fold_bn_weights(conv.weight.to(dtype), conv.bias.to(dtype), bn.running_mean,
                           bn.running_var, bn.eps, bn.weight, bn.bias, transpose=True, groups=3)
    assert w.dtype == dtype and b.dtype == dtype
    got = nn.functional.conv_transpose2d(x, w.double(), b.double(), groups=3)
    torch.testing.assert_close(got, bn(conv(x)), atol=atol * 10, rtol=atol)


# ----------------------------------------------------------------------------- norm + act layers


class _BNAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d convention: drop, then act, after the norm (modules)."""

    def __init__(self, c, act, drop=None):
        super().__init__(c)
        self.drop = drop if drop is not None else nn.Identity()
        self.act = act

    def forward(self, x):
        return self.act(self.drop(super().forward(x)))


class _Half(nn.Module):
    def forward(self, x):
        return x * 0.5


class _ConvBNActNet(nn.Module):
    """Not a Sequential: found in the torch.fx graph only."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = _BNAct(4, nn.SiLU(inplace=True))
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = _BNAct(4, nn.Hardswish(), drop=_Half())
        self.conv3 = nn.Conv2d(4, 4, 1)
        self.bn3 = _BNAct(4, nn.Identity())

    def forward(self, x):
        return self.bn3(self.conv3(self.bn2(self.conv2(self.bn1(self.conv1(x))))))


def test_fuse_folds_norm_act_layers_keeping_what_they_apply_after():
    net = _randomize_bn(_ConvBNActNet()).double().eval()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    report = sn.fuse_conv_bn(net)
    assert report.fused == [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")], report
    fused = report.model
    assert type(fused.bn1) is nn.SiLU and not hasattr(fused, "bn3")
    assert isinstance(fused.bn2.drop, _Half) and type(fused.bn2.act) is nn.Hardswish
    torch.testing.assert_close(fused(x), net(x), atol=1e-12, rtol=1e-12)
    # in a Sequential, and after a Linear
    seq = _randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 1), _BNAct(4, nn.GELU()))).double().eval()
    report = sn.fuse_conv_bn(seq)
    assert report.fused == [("0", "1")] and type(report.model[1]) is nn.GELU
    torch.testing.assert_close(report.model(x), seq(x), atol=1e-12, rtol=1e-12)


class _ReadsTheNormsTensors(nn.Module):
    """Uses a BatchNorm's tensors without calling it: there is no layer call to fold."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        bn = self.bn
        return nn.functional.batch_norm(self.conv(x), bn.running_mean, bn.running_var,
                                        bn.weight, bn.bias, False, 0.0, bn.eps)


class _NeverCallsIt(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.conv(x)


def test_fuse_says_why_a_norm_was_not_found_after_a_conv():
    reasons = dict(sn.fuse_conv_bn(_ReadsTheNormsTensors().eval()).skipped)
    assert "uses its parts (bn." in reasons["bn"] and "bn.running_mean" in reasons["bn"]
    assert "no layer to fold" in reasons["bn"]
    reasons = dict(sn.fuse_conv_bn(_NeverCallsIt().eval()).skipped)
    assert reasons["bn"] == "the model's forward never calls it (torch.fx trace)"
    reasons = dict(sn.fuse_conv_bn(_ConvBNActNet().eval(), method="sequential").skipped)
    assert "the only place method='sequential' looks" in reasons["bn1"]


def test_norm_tracer_keeps_torch_norm_subclasses_of_other_libraries_as_leaves():
    from sharenorm.norm.tools import NormTracer

    net = _ConvBNActNet()
    targets = [n.target for n in NormTracer().trace(net).nodes if n.op == "call_module"]
    assert targets == ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3"]


class _ConvBlock(nn.Module):
    """conv → norm → act as attributes, as Hugging Face's ResNetConvLayer."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.convolution = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.normalization = nn.BatchNorm2d(c_out)
        self.activation = nn.ReLU()

    def forward(self, x):
        return self.activation(self.normalization(self.convolution(x)))


class _ChecksItsInput(nn.Module):
    """torch.fx cannot trace it as a whole (a check on the input in Python, as Hugging Face
    models do), but it can trace each block; the last BN follows an untraceable step."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([_ConvBlock(3, 4), _ConvBlock(4, 4)])
        self.head = nn.Conv2d(4, 4, 1)
        self.head_norm = nn.BatchNorm2d(4)
        self.tail = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU())  # its norm's input: from outside

    def forward(self, x):
        if x.shape[1] != 3:
            raise ValueError("expected 3 channels")
        for block in self.blocks:
            x = block(x)
        return self.tail(self.head_norm(self.head(x) if x.sum() > 0 else x))


def test_fuse_folds_inside_the_parts_torch_fx_can_trace_of_a_model_it_cannot():
    net = _randomize_bn(_ChecksItsInput()).double().eval()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    expected = net(x)
    report = sn.fuse_conv_bn(net)
    assert report.fused == [("blocks.0.convolution", "blocks.0.normalization"),
                            ("blocks.1.convolution", "blocks.1.normalization")]
    assert type(report.model) is _ChecksItsInput  # in place, each class kept
    assert type(report.model.blocks[0].normalization) is nn.Identity
    reasons = dict(report.skipped)
    assert reasons["head_norm"].startswith("torch.fx could not trace the model")
    assert reasons["tail.0"] == ("its input comes from outside tail, the largest part of the "
                                 "model that torch.fx could trace")
    torch.testing.assert_close(report.model(x), expected, atol=1e-12, rtol=1e-12)


class _StandardizedConv(nn.Conv2d):
    """timm's StdConv2d in short: the weight standardized per output channel in forward."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(x, w, self.bias)


class _AppendList(nn.Sequential):
    """timm's SequentialAppendList in short: every child's output is kept and concatenated."""

    def forward(self, x):
        outs = [x]
        for m in self:
            outs.append(m(outs[-1]))
        return torch.cat(outs, 1)


def _with_stats(bn):
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
    return bn


@pytest.mark.parametrize("build, reason", [
    # folding a scale into a weight that forward standardizes: wrong outputs (off by ~10)
    (lambda: nn.Sequential(_StandardizedConv(3, 8, 3, padding=1), _with_stats(nn.BatchNorm2d(8))),
     "computes its own forward"),
    # hook-based weight_norm recomputes the weight from weight_g/weight_v before every call
    (lambda: nn.Sequential(torch.nn.utils.weight_norm(nn.Conv2d(3, 8, 3, padding=1)),
                           _with_stats(nn.BatchNorm2d(8))), "has forward hooks"),
    (lambda: nn.Sequential(torch.nn.utils.spectral_norm(nn.Conv2d(3, 8, 3, padding=1)),
                           _with_stats(nn.BatchNorm2d(8))), "has forward hooks"),
    # a Sequential subclass that does not chain its children: the conv's output is used too
    (lambda: nn.Sequential(_AppendList(nn.Conv2d(3, 3, 3, padding=1),
                                       _with_stats(nn.BatchNorm2d(3)))), "used elsewhere"),
], ids=["std-conv", "weight-norm-hook", "spectral-norm-hook", "append-list"])
@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
def test_fuse_leaves_pairs_whose_fold_would_not_be_the_norm(build, reason):
    torch.manual_seed(0)
    net = build().eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        want = net(x)
        report = sn.fuse_conv_bn(net)
        got = report.model(x)
    assert report.fused == [] and reason in report.skipped[0][1], report.skipped
    torch.testing.assert_close(got, want, rtol=0, atol=0)
