"""Module semantics that make sharenorm a drop-in replacement: signatures, state_dict
keys and round trips with torch.nn, modes, the non-finite guard, repr."""

from __future__ import annotations

import copy
import inspect
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from norm_testing import make_input, randomize_affine
from torch import nn

import sharenorm as sn

PAIRS = [
    (sn.BatchNorm1d, nn.BatchNorm1d, (4, 3, 5)),
    (sn.BatchNorm2d, nn.BatchNorm2d, (4, 3, 5, 5)),
    (sn.BatchNorm3d, nn.BatchNorm3d, (2, 3, 2, 3, 3)),
    (sn.InstanceNorm1d, nn.InstanceNorm1d, (4, 3, 5)),
    (sn.InstanceNorm2d, nn.InstanceNorm2d, (4, 3, 5, 5)),
    (sn.InstanceNorm3d, nn.InstanceNorm3d, (2, 3, 2, 3, 3)),
]


@pytest.mark.parametrize(
    "ours,theirs", [(p[0], p[1]) for p in PAIRS] + [(sn.GroupNorm, nn.GroupNorm)]
)
def test_positional_signature_and_defaults_match_torch(ours, theirs):
    """Every torch.nn parameter exists with the same position and default; extras are
    keyword-only."""
    sig_o = inspect.signature(ours.__init__).parameters
    sig_t = inspect.signature(theirs.__init__).parameters
    positional_t = [n for n, p in sig_t.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    positional_o = [n for n, p in sig_o.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional_o == positional_t
    for name, p in sig_t.items():
        assert name in sig_o, name
        if ours is sn.GroupNorm and name in ("num_groups", "num_channels"):
            continue  # optional here because group_size= can replace num_groups
        assert sig_o[name].default == p.default, name
    extras = set(sig_o) - set(sig_t)
    assert all(sig_o[n].kind is inspect.Parameter.KEYWORD_ONLY for n in extras)


@pytest.mark.parametrize("ours,theirs,shape", PAIRS)
@pytest.mark.parametrize("affine,track", [(True, True), (False, True), (True, False)])
def test_state_dict_round_trip_both_ways(ours, theirs, shape, affine, track):
    t = theirs(3, affine=affine, track_running_stats=track)
    t.train()
    for _ in range(2):
        t(make_input(shape))
    if affine:
        randomize_affine(t)
    o = ours(3, affine=affine, track_running_stats=track)
    assert list(o.state_dict()) == list(t.state_dict())
    o.load_state_dict(t.state_dict())  # torch.nn -> sharenorm, strict
    back = theirs(3, affine=affine, track_running_stats=track)
    back.load_state_dict(o.state_dict())  # sharenorm -> torch.nn, strict
    for k, v in t.state_dict().items():
        torch.testing.assert_close(o.state_dict()[k], v)
        torch.testing.assert_close(back.state_dict()[k], v)
    o.eval(), t.eval()
    x = make_input(shape)
    torch.testing.assert_close(o(x), t(x))


def test_groupnorm_state_dict_round_trip():
    t = nn.GroupNorm(2, 6)
    randomize_affine(t)
    o = sn.GroupNorm(2, 6)
    o.load_state_dict(t.state_dict())
    nn.GroupNorm(2, 6).load_state_dict(o.state_dict())
    x = make_input((3, 6, 4))
    torch.testing.assert_close(o(x), t(x))


def test_old_checkpoint_without_num_batches_tracked_loads():
    """Version-1 checkpoints (before num_batches_tracked) load with the counter at 0."""
    bn = sn.BatchNorm2d(3)
    sd = bn.state_dict()
    del sd["num_batches_tracked"]
    sd._metadata[""]["version"] = 1
    bn2 = sn.BatchNorm2d(3)
    bn2.num_batches_tracked.fill_(5)
    bn2.load_state_dict(sd)
    assert int(bn2.num_batches_tracked) == 5  # kept its own value, as torch.nn does
    fresh = sn.BatchNorm2d(3)
    fresh.load_state_dict(sd)
    assert int(fresh.num_batches_tracked) == 0


def test_bias_false_creates_no_parameter():
    for m in (
        sn.BatchNorm2d(4, bias=False),
        sn.GroupNorm(2, 4, bias=False),
        sn.InstanceNorm2d(4, affine=True, bias=False),
    ):
        assert m.bias is None
        assert [n for n, _ in m.named_parameters()] == ["weight"]
        m(make_input((2, 4, 3, 3)))


def test_affine_false_has_no_parameters():
    for m in (
        sn.BatchNorm2d(4, affine=False),
        sn.GroupNorm(2, 4, affine=False),
        sn.InstanceNorm2d(4),
    ):
        assert list(m.parameters()) == []


def test_track_running_stats_false_uses_batch_stats_in_eval():
    ours = sn.BatchNorm2d(3, track_running_stats=False).eval()
    theirs = nn.BatchNorm2d(3, track_running_stats=False).eval()
    x = make_input((4, 3, 5, 5))
    torch.testing.assert_close(ours(x), theirs(x))
    assert ours.running_mean is None and ours.num_batches_tracked is None


def test_buffers_kept_but_tracking_switched_off_matches_torch():
    """A common trick: set track_running_stats=False on a trained layer. torch.nn then
    uses the running stats in eval and batch stats (without updating) in training."""
    ours, theirs = sn.BatchNorm2d(3), nn.BatchNorm2d(3)
    x0 = make_input((4, 3, 5, 5))
    for m in (ours, theirs):
        m(x0)
        m.track_running_stats = False
    x = make_input((4, 3, 5, 5), shift=-2.0)
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 1
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_running_stats_set_to_none_count_batches_as_torch(memory_efficient):
    """Running statistics set to None on a tracking layer: training normalizes with the
    batch's statistics and torch.nn still counts each batch in num_batches_tracked."""
    ours, theirs = sn.BatchNorm2d(3, memory_efficient=memory_efficient), nn.BatchNorm2d(3)
    x = make_input((4, 3, 5, 5))
    for m in (ours, theirs):
        m.running_mean = m.running_var = None
        m(x), m(x)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 2
    torch.testing.assert_close(ours(x), theirs(x))


def test_nonfinite_batch_does_not_poison_running_stats():
    bn, ref = sn.BatchNorm2d(3), nn.BatchNorm2d(3)
    x = make_input((4, 3, 5, 5))
    bn(x), ref(x)
    before = (bn.running_mean.clone(), bn.running_var.clone())
    bad = x.clone()
    bad[1, 2, 3, 4] = float("nan")
    with pytest.warns(RuntimeWarning, match="NOT updated"):
        y = bn(bad.requires_grad_())
    assert torch.isnan(y[:, 2]).all()  # the output shows the NaN: nothing is hidden
    y.sum().backward()  # and backward still runs (the restore is invisible to autograd)
    bad = bad.detach()
    torch.testing.assert_close(bn.running_mean, before[0])
    torch.testing.assert_close(bn.running_var, before[1])
    assert int(bn.num_batches_tracked) == 1
    ref(bad)
    assert torch.isnan(ref.running_mean).any()  # torch.nn: poisoned for good
    bad[1, 2, 3, 4] = float("inf")
    with pytest.warns(RuntimeWarning):
        bn(bad)
    assert torch.isfinite(bn.running_var).all()
    # a later good batch updates normally
    bn(x)
    assert int(bn.num_batches_tracked) == 2


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["plain", "lean"])
@pytest.mark.parametrize("make", [
    lambda **kw: (sn.BatchNorm1d(64, **kw), nn.BatchNorm1d(64)),
    lambda **kw: (sn.InstanceNorm1d(64, track_running_stats=True, **kw),
                  nn.InstanceNorm1d(64, track_running_stats=True)),
], ids=["bn", "in"])
def test_float16_running_stats_whose_sum_passes_65504_still_update(make, memory_efficient):
    """The finiteness check sums the running variances: in float16 64 channels of 2000
    overflow, though every entry is finite. The update must be kept, as in torch.nn."""
    m, ref = make(memory_efficient=memory_efficient)
    m, ref = m.half(), ref.half()
    for mod in (m, ref):
        mod.running_var.fill_(2000.0)
    x = torch.randn(8, 64, 5).half().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(x)
    ref(x)
    assert int(m.num_batches_tracked) == 1
    torch.testing.assert_close(m.running_var, ref.running_var)
    torch.testing.assert_close(m.running_mean, ref.running_mean)


def test_nonfinite_batch_instance_norm_guard():
    m = sn.InstanceNorm2d(3, track_running_stats=True)
    bad = make_input((2, 3, 4, 4))
    bad[0, 0, 0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="NOT updated"):
        m(bad)
    assert torch.equal(m.running_mean, torch.zeros(3))
    assert int(m.num_batches_tracked) == 0


def test_finite_batch_gives_no_warning():
    bn = sn.BatchNorm2d(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bn(make_input((4, 3, 2, 2)))


@pytest.mark.parametrize(
    "cls,shape",
    [
        (sn.InstanceNorm1d, (3, 7)),
        (sn.InstanceNorm2d, (3, 4, 5)),
        (sn.InstanceNorm3d, (3, 2, 3, 4)),
    ],
)
def test_instance_norm_accepts_unbatched_input(cls, shape):
    ours = cls(3, affine=True)
    theirs = getattr(nn, cls.__name__)(3, affine=True)
    randomize_affine(ours, theirs)
    x = make_input(shape)
    torch.testing.assert_close(ours(x), theirs(x))
    assert ours(x).shape == x.shape


def test_instance_norm_channel_mismatch_warns_like_torch_when_unused():
    m = sn.InstanceNorm2d(5)  # affine=False, no running stats: num_features unused
    with pytest.warns(UserWarning, match="num_features"):
        m(make_input((2, 3, 4, 4)))


def test_repr_shows_configuration():
    assert repr(sn.BatchNorm2d(8)) == repr(nn.BatchNorm2d(8))
    assert repr(sn.GroupNorm(4, 8)) == repr(nn.GroupNorm(4, 8))
    assert repr(sn.InstanceNorm2d(8)) == repr(nn.InstanceNorm2d(8))
    assert "act='leaky_relu', act_param=0.2" in repr(
        sn.BatchNorm2d(8, act="leaky_relu", act_param=0.2)
    )
    assert "act='silu'" in repr(sn.GroupNorm(4, 8, act="silu"))


def test_groupnorm_group_size():
    gn = sn.GroupNorm(num_channels=12, group_size=4)
    assert gn.num_groups == 3 and gn.group_size == 4
    assert sn.GroupNorm(3, 12, group_size=4).num_groups == 3


def test_deepcopy_pickle_and_dtype_moves():
    bn = sn.BatchNorm2d(3, act="relu")
    bn(make_input((4, 3, 3, 3)))
    clone = copy.deepcopy(bn)
    buf = io.BytesIO()
    torch.save(bn, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x = make_input((2, 3, 3, 3))
    for m in (clone, loaded):
        m.eval()
    bn.eval()
    torch.testing.assert_close(clone(x), bn(x))
    torch.testing.assert_close(loaded(x), bn(x))
    half = copy.deepcopy(bn).to(torch.bfloat16)
    assert half.running_mean.dtype == torch.bfloat16
    assert half.num_batches_tracked.dtype == torch.long


def test_meta_device_then_to_empty():
    with torch.device("meta"):
        bn = sn.BatchNorm2d(3)
    bn = bn.to_empty(device="cpu")
    bn.reset_parameters()
    assert torch.equal(bn.running_var, torch.ones(3)) and int(bn.num_batches_tracked) == 0


def test_module_in_a_model_trains():
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        sn.BatchNorm2d(4, act="relu"),
        nn.Flatten(),
        nn.Linear(4 * 16, 2),
    )
    x, y = torch.randn(32, 1, 4, 4), torch.randint(0, 2, (32,))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    first = None
    for _ in range(30):
        loss = nn.functional.cross_entropy(net(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first * 0.7


def test_torch_compile_matches_eager():
    m = sn.GroupNorm(2, 4, act="silu")
    x = make_input((2, 4, 3, 3))
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), m(x))


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
@pytest.mark.parametrize("make", [
    lambda: sn.BatchNorm2d(3),  # the default configuration, in training
    lambda: sn.InstanceNorm2d(3, affine=True, track_running_stats=True),
], ids=["bn", "in_track"])
def test_torch_compile_fullgraph_training_keeps_the_non_finite_guard(make, backend):
    # The guard's restore is branch-free while compiling (no host sync): a NaN batch
    # leaves the running statistics and num_batches_tracked as eager's guard does.
    torch._dynamo.reset()
    eager = make()
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, backend=backend, fullgraph=True)
    for step in range(3):
        x = make_input((4, 3, 3, 3)) + step
        if step == 1:
            x[0, 0, 0, 0] = float("nan")
        results = []
        for f in (eager, compiled):
            xi = x.clone().requires_grad_(True)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                y = f(xi)
            if f is eager:
                assert any("not finite" in str(w.message) for w in caught) == (step == 1)
            y.square().sum().backward()
            results.append((y.detach(), xi.grad))
        for got, want in zip(results[1], results[0], strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, equal_nan=True)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(compiled_module, name), getattr(eager, name),
                                       atol=1e-6, rtol=1e-6)
    assert int(compiled_module.num_batches_tracked) == 2
    for p, q in zip(compiled_module.parameters(), eager.parameters(), strict=True):
        # accumulated over the steps, the NaN one included (channel 0's grads are NaN)
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-5, equal_nan=True)


def test_torch_compile_memory_efficient_with_graph_breaks():
    # The memory-efficient path reads a few values on the host (which backward to take):
    # compiled without fullgraph it breaks the graph there and matches eager.
    torch._dynamo.reset()
    eager = sn.BatchNorm2d(3, act="leaky_relu", memory_efficient=True)
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, backend="eager")
    x = make_input((4, 3, 3, 3))
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    ys = [eager(xs[0]), compiled(xs[1])]
    for y in ys:
        y.square().sum().backward()
    torch.testing.assert_close(ys[1], ys[0])
    torch.testing.assert_close(xs[1].grad, xs[0].grad)
    torch.testing.assert_close(compiled_module.running_var, eager.running_var)


NEGATIVE_SLOPE_NORMS = [  # (name, constructor taking act kwargs, input shape)
    ("bn", lambda **kw: sn.BatchNorm2d(3, **kw), (4, 3, 2, 3)),
    ("bn_eval", lambda **kw: sn.BatchNorm2d(3, **kw).eval(), (4, 3, 2, 3)),
    ("in", lambda **kw: sn.InstanceNorm1d(3, affine=True, **kw), (4, 3, 5)),
    ("in_track", lambda **kw: sn.InstanceNorm2d(3, track_running_stats=True, **kw), (2, 3, 3, 3)),
    ("gn", lambda **kw: sn.GroupNorm(3, 6, **kw), (2, 6, 3)),
    ("renorm", lambda **kw: sn.BatchRenorm2d(3, **kw), (4, 3, 2, 3)),
    ("sync", lambda **kw: sn.SyncBatchNorm(3, **kw), (4, 3, 2, 3)),
]


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["plain", "lean"])
@pytest.mark.parametrize("slope", [-0.3, 0.0])
@pytest.mark.parametrize(("name", "make", "shape"), NEGATIVE_SLOPE_NORMS,
                         ids=[c[0] for c in NEGATIVE_SLOPE_NORMS])
def test_leaky_relu_non_positive_slope_equals_norm_then_leaky_relu(
    name, make, shape, slope, memory_efficient
):
    # torch refuses an in-place leaky_relu backward for a negative slope: the fused
    # activation must not run in place then, and still equal F.leaky_relu(norm(x), slope).
    fused_act = make(act="leaky_relu", act_param=slope, memory_efficient=memory_efficient)
    plain = make()
    plain.load_state_dict(fused_act.state_dict())
    if getattr(plain, "weight", None) is not None:
        randomize_affine(fused_act, plain)
    x = make_input(shape, torch.float64).float()
    g = torch.randn(shape)
    grads = []
    for m, post in ((fused_act, lambda t: t), (plain, lambda t: F.leaky_relu(t, slope))):
        xi = x.clone().requires_grad_(True)
        y = post(m(xi))
        y.backward(g)
        params = [p.grad for p in m.parameters()]
        grads.append((y.detach(), xi.grad, *params))
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["plain", "lean"])
def test_functional_leaky_relu_negative_slope(memory_efficient):
    import sharenorm.functional as SF

    x = make_input((4, 6, 3), torch.float64)
    w = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_(True)
    calls = [
        (lambda t, **kw: SF.batch_norm(t, None, None, w, None, True, **kw),
         lambda t: F.batch_norm(t, None, None, w, None, True)),
        (lambda t, **kw: SF.instance_norm(t, None, None, w, None, **kw),
         lambda t: F.instance_norm(t, None, None, w, None)),
        (lambda t, **kw: SF.group_norm(t, 2, w, None, **kw),
         lambda t: F.group_norm(t, 2, w, None)),
    ]
    for ours, theirs in calls:
        xi, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        y = ours(xi, act="leaky_relu", act_param=-0.3, memory_efficient=memory_efficient)
        y_ref = F.leaky_relu(theirs(xr), -0.3)
        got = torch.autograd.grad(y.square().sum(), (xi, w))
        want = torch.autograd.grad(y_ref.square().sum(), (xr, w))
        torch.testing.assert_close(y, y_ref, atol=1e-12, rtol=1e-12)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_sync_path_leaky_relu_negative_slope():
    from sharenorm.norm.syncbatchnorm import sync_batch_norm_train

    m = sn.SyncBatchNorm(3, act="leaky_relu", act_param=-0.3)
    ref = sn.BatchNorm2d(3)
    x = make_input((4, 3, 2, 3))
    xs, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y = sync_batch_norm_train(m, xs, None, 1)  # the synchronised path, a group of one
    y_ref = F.leaky_relu(ref(xr), -0.3)
    y.sum().backward()
    y_ref.sum().backward()
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xs.grad, xr.grad, atol=1e-5, rtol=1e-5)


def test_instance_norm_refuses_unversioned_running_stats_as_torch_does():
    # a plain dict (no _metadata: pre-0.4 checkpoints, or a prefix strip) with running
    # statistics for a layer that tracks none: torch refuses even with strict=False; it
    # loaded silently here, only listing them as unexpected
    sd = {"running_mean": torch.zeros(4), "running_var": torch.ones(4)}
    for m in (sn.InstanceNorm2d(4), nn.InstanceNorm2d(4)):
        for strict in (True, False):
            with pytest.raises(RuntimeError, match="Unexpected running stats buffer"):
                m.load_state_dict(dict(sd), strict=strict)


def test_sync_batchnorm_signature_and_converter_spell_torchs():
    import inspect

    assert "bias" in inspect.signature(sn.SyncBatchNorm).parameters  # not hidden in **kwargs
    assert sn.SyncBatchNorm(4, bias=False).bias is None
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    net[1].qconfig = "per-layer setting"  # torch.ao's, which torch's converter keeps
    out = sn.SyncBatchNorm.convert_sync_batchnorm(module=net)  # torch's argument name
    assert isinstance(out[1], sn.SyncBatchNorm) and out[1].qconfig == "per-layer setting"


def test_wrong_argument_types_raise_torchs_type_error_too():
    import torch.nn.functional as F

    import sharenorm.functional as SF

    x = torch.randn(2, 4, 3)
    for lib in (F, SF):
        with pytest.raises(TypeError):
            lib.group_norm(x, 2.0)
        with pytest.raises(TypeError):
            lib.batch_norm(x, torch.zeros(4), torch.ones(4), momentum=None)
    with pytest.raises(ValueError):  # and sharenorm's ValueError still
        SF.group_norm(x, 2.0)
