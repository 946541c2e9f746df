"""make_norm builds the right layer from a string; convert_norm swaps every norm in a
model and reports what it changed."""

from __future__ import annotations

import ast
import copy
import pathlib

import pytest
import torch
from norm_testing import make_input, randomize_affine
from torch import nn

import sharenorm as sn
from sharenorm.norm import reference
from sharenorm.norm.factory import Activation
from sharenorm.norm.post import activation_name


@pytest.mark.parametrize(
    "kind,dim,cls,attrs",
    [
        ("batch", 2, sn.BatchNorm2d, {}),
        ("BN", 1, sn.BatchNorm1d, {}),
        ("bn", 0, sn.BatchNorm1d, {}),
        ("bn", 3, sn.BatchNorm3d, {}),
        ("instance", 2, sn.InstanceNorm2d, {"affine": False}),
        ("in", 1, sn.InstanceNorm1d, {}),
        ("group", 2, sn.GroupNorm, {"num_groups": 32}),
        ("gn", 2, sn.GroupNorm, {"num_groups": 32}),
        ("layer", 2, sn.GroupNorm, {"num_groups": 1}),
        ("ln", 3, sn.GroupNorm, {"num_groups": 1}),
        ("none", 2, nn.Identity, {}),
    ],
)
def test_make_norm_kinds(kind, dim, cls, attrs):
    m = sn.make_norm(kind, 64, dim=dim)
    assert type(m) is cls
    for k, v in attrs.items():
        assert getattr(m, k) == v


def test_make_norm_layer_is_layernorm_over_channels_and_space():
    m = sn.make_norm("layer", 6).double()
    randomize_affine(m)
    x = make_input((3, 6, 4, 5), torch.float64)
    torch.testing.assert_close(m(x), reference.layer_norm(x, m.weight, m.bias))


def test_make_norm_default_groups_and_kwargs():
    assert sn.make_norm("gn", 48).num_groups == 24  # largest divisor of 48 below 32
    assert sn.make_norm("gn", 48, num_groups=4).num_groups == 4
    assert sn.make_norm("gn", 48, group_size=16).num_groups == 3
    assert sn.make_norm("bn", 8, momentum=None, act="relu").act == "relu"
    act_only = sn.make_norm("none", 8, act="relu")
    assert torch.equal(act_only(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2.0]))


def test_make_norm_errors():
    with pytest.raises(ValueError, match="Did you mean 'group'"):
        sn.make_norm("grup", 8)
    with pytest.raises(ValueError, match="dim must be"):
        sn.make_norm("bn", 8, dim=4)
    with pytest.raises(ValueError, match="needs spatial dims"):
        sn.make_norm("in", 8, dim=0)
    with pytest.raises(ValueError, match="one group"):
        sn.make_norm("ln", 8, num_groups=2)


class Block(nn.Module):
    """A residual block with a norm inside nested containers."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.convs = nn.ModuleList([nn.Conv2d(c, c, 3, padding=1, bias=False)])
        self.norms = nn.ModuleDict({"bn2": nn.BatchNorm2d(c)})

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.norms["bn2"](self.convs[0](y)))


def small_resnet():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        Block(8),
        Block(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
        nn.LayerNorm(4),  # trailing-dims norm: must not be touched
    )


def _train_a_little(net, steps=2):
    net.train()
    for _ in range(steps):
        net(torch.randn(8, 3, 8, 8)).sum().backward()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                randomize_affine(m)


def test_convert_bn_to_bn_keeps_eval_output():
    torch.manual_seed(0)
    net = small_resnet()
    _train_a_little(net)
    net.eval()
    x = torch.randn(4, 3, 8, 8)
    before = net(x)
    report = sn.convert_norm(net, "bn")
    assert len(report) == 5
    assert all(type(m) is not nn.BatchNorm2d for m in net.modules())
    assert sum(isinstance(m, sn.BatchNorm2d) for m in net.modules()) == 5
    assert isinstance(net[-1], nn.LayerNorm)
    assert not net.training and not net[1].training  # mode preserved
    torch.testing.assert_close(net(x), before)
    text = str(report)
    assert "3.norms.bn2" in text and "running_mean" in text


def test_convert_bn_to_gn_trains():
    torch.manual_seed(0)
    net = small_resnet()
    _train_a_little(net)
    gamma = net[1].weight.detach().clone()
    report = sn.convert_norm(net, "group", num_groups=4)
    assert [c.kept for c in report][0] == ("weight", "bias")
    assert isinstance(net[3].norms["bn2"], sn.GroupNorm) and net[3].norms["bn2"].num_groups == 4
    torch.testing.assert_close(net[1].weight.detach(), gamma)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    losses = []
    for _ in range(40):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]  # the LayerNorm on the logits caps how low it goes
    # batch-independent now: one sample's output does not depend on the others
    net.train()
    a = net(x)[:1]
    b = net(torch.cat([x[:1], torch.randn(15, 3, 8, 8)]))[:1]
    torch.testing.assert_close(a, b)


def test_convert_keeps_dtype_device_and_act_and_handles_root_norm():
    net = nn.Sequential(nn.Conv1d(2, 6, 3), sn.BatchNorm1d(6, act="silu")).double()
    sn.convert_norm(net, "gn", num_groups=3)
    assert net[1].weight.dtype == torch.float64 and net[1].act == "silu"
    report = sn.convert_norm(nn.BatchNorm2d(4), "in")
    assert isinstance(report.model, sn.InstanceNorm2d) and report.model.affine  # affine kept
    assert str(sn.convert_norm(nn.Linear(2, 2), "gn")) == "convert_norm: no norm layer found"
    with pytest.raises(TypeError, match="nn.Module"):
        sn.convert_norm("model", "gn")


def test_convert_to_none_removes_norms():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.GroupNorm(2, 4))
    report = sn.convert_norm(net, "none")
    assert len(report) == 2 and isinstance(net[1], nn.Identity) and isinstance(net[2], nn.Identity)


@pytest.mark.parametrize("old", [
    nn.BatchNorm2d(4, track_running_stats=False),
    sn.BatchNorm2d(4, track_running_stats=False),
], ids=["torch", "sharenorm"])
@pytest.mark.parametrize("kind", ["bn", "sync"])
def test_convert_keeps_track_running_stats_false(old, kind):
    # Without running statistics BN uses batch statistics in eval too: the converted
    # layer must do the same, not normalize with fresh (0, 1) running statistics.
    net = nn.Sequential(copy.deepcopy(old)).eval()
    x = torch.randn(8, 4, 3, 3) * 3 + 2
    before = net(x)
    sn.convert_norm(net, kind)
    assert net[0].track_running_stats is False and net[0].running_mean is None
    torch.testing.assert_close(net(x), before)


@pytest.mark.parametrize("old", [
    nn.InstanceNorm2d(4, track_running_stats=True, affine=True),
    sn.InstanceNorm2d(4, track_running_stats=True, affine=True),
], ids=["torch", "sharenorm"])
def test_convert_instance_to_instance_keeps_running_stats(old):
    net = nn.Sequential(copy.deepcopy(old))
    with torch.no_grad():
        net[0].running_mean.copy_(torch.randn(4))
        net[0].running_var.copy_(torch.rand(4) + 0.5)
    net.eval()
    x = torch.randn(2, 4, 5, 5)
    before = net(x)
    report = sn.convert_norm(net, "in")
    assert net[0].track_running_stats is True
    assert {"running_mean", "running_var"} <= set(report.changes[0].kept)
    torch.testing.assert_close(net(x), before)


@pytest.mark.parametrize("kind", ["bn", "in", "gn", "sync", "renorm"])
@pytest.mark.parametrize("old", [
    nn.BatchNorm2d(4, bias=False),
    sn.BatchNorm2d(4, bias=False),
    nn.GroupNorm(2, 4, bias=False),
], ids=["torch_bn", "sn_bn", "torch_gn"])
def test_convert_keeps_a_missing_bias(old, kind):
    layer = sn.convert_norm(copy.deepcopy(old), kind, **({"num_groups": 2} if kind == "gn"
                                                          else {})).model
    assert layer.weight is not None and layer.bias is None
    assert not any(k.endswith("bias") for k in layer.state_dict())


@pytest.mark.parametrize("kind", ["bn", "in", "gn", "ln", "sync", "renorm"])
def test_convert_keeps_memory_efficient_and_backend(kind):
    old = sn.BatchNorm2d(4, act="leaky_relu", memory_efficient=True, backend="torch")
    new = sn.convert_norm(old, kind).model
    assert new.memory_efficient is True and new.backend == "torch"
    assert sn.convert_norm(old, kind, memory_efficient=False).model.memory_efficient is False
    assert not sn.convert_norm(sn.GroupNorm(2, 4), kind).model.memory_efficient
    assert isinstance(sn.convert_norm(old, "none").model, nn.Module)  # takes neither


def test_activation_repr_shows_a_zero_parameter():
    assert repr(sn.make_norm("none", 4, act="leaky_relu", act_param=0.0)) == (
        "Activation(act='leaky_relu', act_param=0.0)"
    )
    assert repr(sn.make_norm("none", 4, act="relu")) == "Activation(act='relu')"


def test_convert_a_module_used_in_several_places_once():
    bn = nn.BatchNorm2d(4)
    net = nn.Sequential(bn, nn.ReLU(), bn)
    report = sn.convert_norm(net, "group", num_groups=2)
    assert isinstance(net[0], sn.GroupNorm) and net[2] is net[0]
    assert len(report) == 1


@pytest.mark.parametrize("kind,kw", [("group", {"num_groups": 2}), ("batch", {})])
def test_convert_keeps_ties_of_and_to_norm_layers(kind, kw):
    # A SharedStack ties every copy of the block to copy 0, its BatchNorm included.
    block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
    stack = sn.SharedStack(block, 3)
    assert sn.count_parameters(stack) == 4 * 4 * 9 + 4 + 8
    sn.convert_norm(stack, kind, **kw)
    assert sn.count_parameters(stack) == 4 * 4 * 9 + 4 + 8
    sn.verify_ties(stack)
    assert stack.blocks[2][1].weight is stack.blocks[0][1].weight
    if kind == "batch":  # running statistics are still one set, updated by every repetition
        stack(torch.randn(2, 4, 5, 5))
        assert stack.blocks[1][1].running_mean is stack.blocks[0][1].running_mean
    # A tie from a norm to a layer that is not converted, and plain torch sharing.
    net = nn.ModuleDict({"bn": nn.BatchNorm1d(3), "lin": nn.Linear(3, 3), "bn2": nn.BatchNorm1d(3)})
    sn.tie(net, "lin.bias", "bn.bias")
    net.bn2.weight = net.bn.weight
    sn.convert_norm(net, "group", num_groups=1)
    sn.verify_ties(net)
    assert net.lin.bias is net.bn.bias and net.bn2.weight is net.bn.weight
    assert sn.count_parameters(net) == 3 + 3 + 9 + 3


def test_convert_refuses_to_drop_a_tie_it_cannot_keep():
    # Only one side of the tie survives the conversion (GroupNorm has no running_mean).
    net = nn.ModuleDict({"bn": nn.BatchNorm1d(3), "other": nn.Module()})
    net.other.register_buffer("mean", torch.zeros(3))
    sn.tie(net, "other.mean", "bn.running_mean")
    with pytest.raises(ValueError, match=r"sharenorm.untie\(model, 'other.mean'\)"):
        sn.convert_norm(net, "group", num_groups=1)
    assert isinstance(net.bn, nn.BatchNorm1d)  # refused before changing anything
    # A norm tied to a source outside the model being converted.
    outer = nn.ModuleDict({"a": nn.BatchNorm1d(3), "in": nn.ModuleDict({"b": nn.BatchNorm1d(3)})})
    sn.tie(outer, "in.b.weight", "a.weight")
    for part in (outer["in"], outer["in"].b):
        with pytest.raises(ValueError, match="outside .* the model that holds both"):
            sn.convert_norm(part, "group", num_groups=1)
    sn.convert_norm(outer, "group", num_groups=1)
    sn.verify_ties(outer)


@pytest.mark.parametrize("gn", [nn.GroupNorm(8, 64), sn.GroupNorm(8, 64, act="silu")],
                         ids=["torch", "sharenorm"])
def test_group_norm_to_group_norm_keeps_its_group_count(gn):
    net = nn.Sequential(nn.Conv2d(3, 64, 3), gn)
    randomize_affine(net[1])
    x = torch.randn(2, 3, 8, 8)
    before = net(x)
    sn.convert_norm(net, "gn")
    assert isinstance(net[1], sn.GroupNorm) and net[1].num_groups == 8
    torch.testing.assert_close(net(x), before)
    sn.convert_norm(net, "gn", num_groups=4)  # an explicit count still wins
    assert net[1].num_groups == 4


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_layer_without_tensors_takes_the_models_dtype(dtype):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4)).to(dtype)
    sn.convert_norm(net, "bn")
    assert net[1].weight is None and net[1].running_var.dtype == dtype  # affine=False kept
    assert net(torch.randn(2, 3, 6, 6, dtype=dtype)).dtype == dtype


@pytest.mark.parametrize("old", [nn.SyncBatchNorm(4), nn.GroupNorm(2, 4)],
                         ids=["syncbn", "gn"])
def test_layers_of_any_rank_convert_to_the_rank_given(old):
    net = nn.Sequential(nn.Conv1d(3, 4, 3), copy.deepcopy(old))
    report = sn.convert_norm(net, "bn")  # no dim: images assumed, and the report says so
    assert type(net[1]) is sn.BatchNorm2d
    assert "2-d images assumed, pass dim=1 or dim=3" in str(report)
    net = nn.Sequential(nn.Conv1d(3, 4, 3), copy.deepcopy(old))
    report = sn.convert_norm(net, "bn", dim=1)
    assert type(net[1]) is sn.BatchNorm1d and "assumed" not in str(report)
    assert net(torch.randn(2, 3, 8)).shape == (2, 4, 6)
    # a layer whose class names its rank keeps it whatever dim says
    net = nn.Sequential(nn.BatchNorm1d(4), nn.BatchNorm2d(4))
    sn.convert_norm(net, "bn", dim=3)
    assert [type(m) for m in net] == [sn.BatchNorm1d, sn.BatchNorm2d]


def test_an_uninitialized_lazy_norm_names_the_fix():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LazyBatchNorm2d())
    with pytest.raises(ValueError, match="lazy layer .* run one forward pass"):
        sn.convert_norm(net, "gn", num_groups=2)
    net(torch.randn(2, 3, 6, 6))  # initialized: converts
    assert type(sn.convert_norm(net, "gn", num_groups=2).model[1]) is sn.GroupNorm


@pytest.mark.parametrize("convert", [
    lambda m: sn.convert_norm(m, "batch"),
    lambda m: sn.convert_sync_batchnorm(m),
], ids=["convert_norm", "convert_sync_batchnorm"])
@pytest.mark.parametrize("norm_dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_tied_norms_keep_their_dtype_in_a_model_of_another(convert, norm_dtype):
    """A SharedStack's copies hold no tensors of their own (all tied): the new layers take
    the tied tensors' dtype, not the model's first tensor's (a half model with float32
    norms) or float32."""
    m = nn.Sequential(nn.Conv2d(4, 4, 1),
                      sn.SharedStack(nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)), 3))
    m = m.double()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.to(norm_dtype)
    count = sn.count_parameters(m)
    convert(m)
    sn.verify_ties(m)
    assert sn.count_parameters(m) == count
    assert all(mod.weight.dtype == norm_dtype for mod in m.modules()
               if isinstance(mod, (sn.BatchNorm2d, sn.SyncBatchNorm)))


# ----------------------------------------------------------------------------- norm + act layers


class _BatchNormAct2d(nn.BatchNorm2d):
    """timm's convention (timm/layers/norm_act.py): a torch BatchNorm subclass with ``drop``
    and ``act`` modules, applied after the norm in that order."""

    def __init__(self, c, act, drop=None):
        super().__init__(c)
        self.drop = drop if drop is not None else nn.Identity()
        self.act = act

    def forward(self, x):
        return self.act(self.drop(super().forward(x)))


class _GroupNormAct(nn.GroupNorm):
    def __init__(self, c, act):
        super().__init__(2, c)
        self.drop = nn.Identity()
        self.act = act

    def forward(self, x):
        return self.act(self.drop(super().forward(x)))


class _Scale(nn.Module):
    """A 'drop' that is no Identity: what runs after the norm must stay a module."""

    def forward(self, x):
        return x * 0.5


# (activation module, the act= it must become, or None: kept as a module in a NormAct)
NORM_ACT_CASES = [
    (nn.ReLU(inplace=True), "relu"),
    (nn.SiLU(inplace=True), "silu"),
    (nn.LeakyReLU(0.2), "leaky_relu"),
    (nn.ELU(0.5), "elu"),
    (nn.GELU(), "gelu"),
    (nn.Tanh(), "tanh"),
    (nn.Sigmoid(), "sigmoid"),
    (nn.Identity(), None),  # no activation: a plain norm
    (nn.GELU(approximate="tanh"), "module"),  # sharenorm's gelu is the exact one
    (nn.Hardswish(), "module"),
    (nn.PReLU(4), "module"),  # a parameter of its own
]


@pytest.mark.parametrize("act,expect", NORM_ACT_CASES,
                         ids=[f"{type(a).__name__}-{e}" for a, e in NORM_ACT_CASES])
@pytest.mark.parametrize("kind", ["batch", "group", "sync"])
@pytest.mark.parametrize("cls", [_BatchNormAct2d, _GroupNormAct], ids=["bnact", "gnact"])
def test_convert_norm_act_layers_keeps_what_they_apply_after_the_norm(cls, kind, act, expect):
    torch.manual_seed(0)
    old = cls(4, copy.deepcopy(act)).double()
    randomize_affine(old)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64) * 2 + 1
    for mode in ("train", "eval"):
        before = copy.deepcopy(old).train(mode == "train")
        after = sn.convert_norm(copy.deepcopy(before), kind).model
        same = (kind != "group") == isinstance(old, nn.BatchNorm2d)
        if expect == "module":
            assert type(after).__name__ == "NormAct" and type(after.act) is type(act)
            norm = after.norm
        else:
            assert after.act == expect
            norm = after
        assert norm.weight.dtype == torch.float64 and norm.training == (mode == "train")
        if same:  # the same norm: the same output
            torch.testing.assert_close(after(x), before(x), atol=1e-12, rtol=1e-12)


def test_convert_norm_act_layer_with_a_drop_and_its_report():
    old = _BatchNormAct2d(4, nn.SiLU(), drop=_Scale()).double().eval()
    randomize_affine(old)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), old).double().eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    expected = net(x)
    report = sn.convert_norm(net, "bn")
    assert type(net[1]).__name__ == "NormAct" and isinstance(net[1].drop, _Scale)
    assert "_Scale and SiLU run after the new norm" in str(report)
    torch.testing.assert_close(net(x), expected, atol=1e-12, rtol=1e-12)
    # converting again converts the norm inside, and keeps what runs after it
    sn.convert_norm(net, "gn", num_groups=2)
    assert type(net[1].norm) is sn.GroupNorm and isinstance(net[1].drop, _Scale)
    # an act that maps onto act= says so
    report = sn.convert_norm(nn.Sequential(_BatchNormAct2d(4, nn.ReLU())), "bn")
    assert "its ReLU runs as act='relu'" in str(report)


def test_convert_norm_act_layer_to_none_keeps_the_activation():
    net = nn.Sequential(_BatchNormAct2d(4, nn.SiLU()), _BatchNormAct2d(4, nn.Hardswish()),
                        _BatchNormAct2d(4, nn.Identity()))
    sn.convert_norm(net, "none")
    assert type(net[0]) is Activation and net[0].act == "silu"
    assert type(net[1]).__name__ == "NormAct" and isinstance(net[1].norm, nn.Identity)
    assert type(net[2]) is nn.Identity
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(net(x), nn.Hardswish()(nn.functional.silu(x)))


def test_an_act_given_for_a_norm_act_layer_that_has_one_names_the_fix():
    with pytest.raises(ValueError, match="applies Identity and SiLU after its norm.*pass no act"):
        sn.convert_norm(nn.Sequential(_BatchNormAct2d(4, nn.SiLU())), "bn", act="relu")
    # a norm+act layer without activation takes the act= given
    net = nn.Sequential(_BatchNormAct2d(4, nn.Identity()))
    sn.convert_norm(net, "bn", act="relu")
    assert net[0].act == "relu"


def test_activation_name_only_for_exact_torch_classes():
    class MyReLU(nn.ReLU):
        def forward(self, x):
            return super().forward(x) * 2

    assert activation_name(nn.ReLU()) == ("relu", None)
    assert activation_name(nn.LeakyReLU()) == ("leaky_relu", 0.01)
    assert activation_name(MyReLU()) is None and activation_name(nn.Mish()) is None


def test_convert_norm_sync_converts_every_norm_convert_sync_batchnorm_only_batchnorm():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.GroupNorm(2, 4))
    sn.convert_norm(net, "sync")
    assert type(net[1]) is sn.SyncBatchNorm and type(net[2]) is sn.SyncBatchNorm
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.GroupNorm(2, 4))
    assert sn.convert_sync_batchnorm(net) is net
    assert type(net[1]) is sn.SyncBatchNorm and type(net[2]) is nn.GroupNorm
    assert sn.SyncBatchNorm.convert_sync_batchnorm is sn.convert_sync_batchnorm


def test_torchs_own_converter_leaves_sharenorm_layers_alone():
    """Not subclasses of torch.nn's classes (README "Classes"): torch's converter, which
    rebuilds by class, would make a torch SyncBatchNorm of a subclass and drop its act."""
    net = nn.Sequential(nn.Conv2d(3, 4, 1), sn.BatchNorm2d(4, act="relu"))
    layer = net[1]
    net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert net[1] is layer and layer.act == "relu"
    assert not isinstance(layer, nn.BatchNorm2d)


CONVERSIONS = [
    ("torch_sync", lambda m: nn.SyncBatchNorm.convert_sync_batchnorm(m)),  # the reference
    ("sync", lambda m: sn.convert_sync_batchnorm(m)),
    ("bn", lambda m: sn.convert_norm(m, "bn").model),
    ("gn", lambda m: sn.convert_norm(m, "gn", num_groups=2).model),
    ("renorm", lambda m: sn.convert_norm(m, "renorm").model),
]


@pytest.mark.parametrize("name, convert", CONVERSIONS, ids=[c[0] for c in CONVERSIONS])
def test_an_optimizer_built_before_the_conversion_still_trains_the_layer(name, convert):
    """torch's convert_sync_batchnorm gives the new layer the old Parameters and buffers
    themselves; a copy would leave the optimizer stepping tensors no layer uses (γ and β
    silently frozen)."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    old = net[1]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net = convert(net)
    assert net[1] is not old
    assert net[1].weight is old.weight and net[1].bias is old.bias
    if name != "gn":  # running statistics mean the same between BatchNorms only
        assert net[1].running_mean is old.running_mean
    before = net[1].weight.detach().clone()
    net(torch.randn(4, 3, 6, 6)).pow(2).sum().backward()
    opt.step()
    assert not torch.equal(net[1].weight, before)
    assert {id(p) for p in net.parameters()} <= {id(p) for g in opt.param_groups
                                                 for p in g["params"]}


def test_conversion_copies_what_it_cannot_share():
    """A dtype the new layer does not take, or a tied γ (computed from its source): the
    value is copied, as before; nothing is shared with a tensor of another dtype."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    net[1].running_mean = net[1].running_mean.half()
    sn.convert_norm(net, "bn")
    assert net[1].running_mean.dtype == torch.float32
    net = nn.ModuleDict({"a": nn.BatchNorm2d(4), "b": nn.BatchNorm2d(4)})
    sn.tie(net, "b.weight", "a.weight")
    a_weight = net.a.weight
    sn.convert_norm(net, "bn")
    assert net.a.weight is a_weight and net.b.weight is a_weight  # the tie, kept
    assert [(t.target, t.source) for t in sn.iter_links(net)] == [("b.weight", "a.weight")]


def test_hooks_on_a_converted_layer_keep_firing_and_their_handles_remove_them():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False))
    seen = []
    fwd = net[1].register_forward_hook(lambda m, i, o: seen.append(("fwd", type(m).__name__)))
    net[1].register_forward_pre_hook(lambda m, i: seen.append(("pre", type(m).__name__)))
    net[1].register_full_backward_hook(lambda m, gi, go: seen.append(("bwd", type(m).__name__)))
    report = sn.convert_norm(net, "gn", num_groups=2)
    assert report.changes[0].kept == ("hooks",) and "kept hooks" in str(report)
    net(torch.randn(2, 3, 5, 5, requires_grad=True)).sum().backward()
    assert seen == [("pre", "GroupNorm"), ("fwd", "GroupNorm"), ("bwd", "GroupNorm")]
    fwd.remove()
    seen.clear()
    net(torch.randn(2, 3, 5, 5))
    assert seen == [("pre", "GroupNorm")]
    plain = sn.convert_norm(nn.Sequential(nn.BatchNorm2d(4)), "gn", num_groups=2)
    assert "hooks" not in plain.changes[0].kept


@pytest.mark.parametrize("kind, kw, frozen", [
    ("bn", {}, True), ("sync", {}, True), ("renorm", {}, True),
    ("gn", {"num_groups": 2}, False),  # no running statistics to freeze to
    ("in", {"affine": True, "track_running_stats": True}, False),  # fresh ones: not frozen
])
def test_a_frozen_layer_stays_frozen_where_its_statistics_go(kind, kw, frozen):
    """A fine-tuning run that froze its statistics keeps them through a conversion that
    keeps them; a layer given fresh (or no) statistics is not frozen to them."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    net.train()(torch.randn(4, 3, 6, 6))  # statistics worth keeping
    sn.freeze_norm_stats(net)
    report = sn.convert_norm(net, kind, **kw)
    assert ("frozen" in report.changes[0].kept) == frozen
    assert "hooks" not in report.changes[0].kept  # the freeze's own hooks are not the user's
    assert sn.is_norm_stats_frozen(net[1]) == frozen
    if frozen:
        before = net[1].running_mean.clone()
        net.train()(torch.randn(4, 3, 6, 6) + 3)
        assert torch.equal(net[1].running_mean, before) and net[1].training
        assert sn.unfreeze_norm_stats(net) == ["1"]
        net(torch.randn(4, 3, 6, 6) + 3)
        assert not torch.equal(net[1].running_mean, before)


def _imports(path: pathlib.Path, root: pathlib.Path) -> set[str]:
    """The sharenorm modules ``path`` imports anywhere in it (functions included); a
    ``from package import module`` counts as the module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                is_module = (root / pathlib.Path(*sub.split(".")[1:])).with_suffix(".py").exists()
                found.add(sub if is_module else node.module)
    return {m for m in found if m.startswith("sharenorm.")}


def test_conversion_and_tools_modules_import_nothing_that_imports_them_back():
    root = pathlib.Path(sn.__file__).parent
    graph = {}
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        graph[".".join(("sharenorm",) + parts)] = _imports(path, root)

    def is_package(mod: str) -> bool:
        return (root / pathlib.Path(*mod.split(".")[1:]) / "__init__.py").exists()

    def reaches(start: str, goal: str) -> bool:
        # Packages re-export what lies below them: not edges of the layering.
        seen, todo = set(), [start]
        while todo:
            mod = todo.pop()
            if mod == goal:
                return True
            if mod in graph and mod not in seen:
                seen.add(mod)
                todo += [m for m in graph[mod] if not is_package(m)]
        return False

    mine = ["sharenorm.norm.factory", "sharenorm.norm.syncbatchnorm", "sharenorm.norm.post",
            "sharenorm.norm.tools.freeze", "sharenorm.norm.tools.recalibrate",
            "sharenorm.norm.tools.fuse"]
    for mod in mine:
        for dep in graph[mod]:
            assert not reaches(dep, mod), f"{mod} imports {dep}, which imports {mod} back"
    assert "sharenorm.norm.factory" not in graph["sharenorm.norm.syncbatchnorm"]


class _GroupNormRelu(nn.GroupNorm):
    """Hugging Face's BitGroupNormActivation in short: an activation module in forward."""

    def __init__(self, groups, channels):
        super().__init__(groups, channels)
        self.activation = nn.ReLU()

    def forward(self, x):
        return self.activation(super().forward(x))


class _SplitBatchNorm(nn.BatchNorm2d):
    """timm's SplitBatchNorm2d in short: the batch's second half through an auxiliary BN."""

    def __init__(self, channels):
        super().__init__(channels)
        self.aux_bn = nn.ModuleList([nn.BatchNorm2d(channels)])

    def forward(self, x):
        a, b = x.chunk(2)
        return torch.cat([super().forward(a), self.aux_bn[0](b)])


class _MaskedGroupNorm(nn.GroupNorm):
    """A GroupNorm whose forward takes a mask (Hugging Face's masked audio norms)."""

    def forward(self, x, padding_mask=None):
        return super().forward(x if padding_mask is None else x * padding_mask)


class _FastGroupNorm(nn.GroupNorm):
    """timm's GroupNorm1 in short: the same math in a forward of its own, nothing added."""

    def forward(self, x):
        return nn.functional.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


def test_convert_leaves_norm_subclasses_whose_forward_uses_more_than_a_norm():
    # converted, the activation, the split batch or the mask would be dropped: outputs off
    # by ~4 silently, a crash half-way (the split BN's children), or a TypeError at run time
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), _GroupNormRelu(2, 4), _SplitBatchNorm(4),
                        _MaskedGroupNorm(2, 4), _FastGroupNorm(2, 4)).eval()
    x = torch.randn(4, 3, 5, 5)
    report = sn.convert_norm(net, "group")
    skipped = dict(report.skipped)
    assert set(skipped) == {"1", "2", "3"}, str(report)
    assert "modules ['activation']" in skipped["1"] and "modules ['aux_bn']" in skipped["2"]
    assert "forward arguments ['padding_mask']" in skipped["3"]
    assert "left as they are" in str(report)
    # what is converted: the auxiliary BN inside the split one, and the plain subclass
    assert {c.name for c in report.changes} == {"2.aux_bn.0", "4"}
    assert type(net[4]) is sn.GroupNorm and type(net[1]) is _GroupNormRelu
    assert sn.convert_norm(_GroupNormRelu(2, 4), "group").skipped  # the model itself
    # same-kind conversions keep the outputs
    gns = nn.Sequential(_GroupNormRelu(2, 4), _MaskedGroupNorm(2, 4), _FastGroupNorm(2, 4))
    bns = nn.Sequential(nn.Conv2d(3, 4, 1), _SplitBatchNorm(4), nn.BatchNorm2d(4)).eval()
    for model, kind, inp in ((gns, "group", torch.randn(2, 4, 5, 5)), (bns, "batch", x)):
        want = model(inp)
        sn.convert_norm(model, kind)
        torch.testing.assert_close(model(inp), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("channels", [0, -2, 8.0, None, True])
def test_make_norm_group_names_a_bad_channel_count(channels):
    # checked before the default group count, which would fail on it with "max() arg is an
    # empty sequence"
    with pytest.raises(ValueError, match="num_channels must be a positive int"):
        sn.make_norm("gn", channels)
