"""Every bad input gets a clear error that names the argument and the fix."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F

import sharenorm as sn
import sharenorm.functional as SF


@pytest.mark.parametrize(
    "module,shape,match",
    [
        (
            sn.BatchNorm2d(4),
            (2, 4, 3),
            r"4-d input \(N, C, H, W\), got shape \(2, 4, 3\); add the batch dim .*"
            r"\(x.unsqueeze\(0\)\), or use BatchNorm1d for \(N, C, L\)",
        ),
        (sn.BatchNorm2d(4), (2, 4), r"use BatchNorm1d for \(N, C\)"),
        (sn.BatchNorm3d(4), (4, 3, 3, 3), r"unbatched \(C, D, H, W\) volume"),
        (sn.BatchNorm2d(4), (2, 4, 3, 3, 3), "use BatchNorm3d"),
        (sn.BatchNorm1d(4), (2, 4, 3, 3), r"2-d \(N, C\) or 3-d \(N, C, L\)"),
        (sn.BatchNorm3d(4), (2, 4, 3, 3), "5-d input"),
        (sn.InstanceNorm2d(4), (2, 4, 3, 3, 3), r"4-d input \(N, C, H, W\) or a 3-d one"),
        (
            sn.BatchNorm2d(4),
            (2, 5, 3, 3),
            r"expected an input with 4 channels .* got shape \(2, 5, 3, 3\)",
        ),
        (sn.InstanceNorm2d(4, affine=True), (2, 5, 3, 3), "4 channels"),
        (sn.GroupNorm(2, 4), (2, 6, 3),
         r"expected an input \(N, 4, \*\) \(its γ/β have 4 channels\), got shape \(2, 6, 3\)"),
        (sn.GroupNorm(2, 4), (4,), r"at least 2 dims, got shape \(4,\)"),
    ],
)
def test_wrong_rank_or_channels(module, shape, match):
    with pytest.raises(ValueError, match=match):
        module(torch.randn(shape))


def test_groupnorm_indivisible_lists_valid_group_counts():
    with pytest.raises(
        ValueError,
        match=r"num_channels=30 is not divisible by num_groups=4; "
        r"valid group counts near 4: 2, 3, 5, 6",
    ):
        sn.GroupNorm(4, 30)
    with pytest.raises(ValueError, match="not divisible by group_size=7"):
        sn.GroupNorm(num_channels=30, group_size=7)
    with pytest.raises(ValueError, match="disagree"):
        sn.GroupNorm(3, 12, group_size=3)
    with pytest.raises(ValueError, match="num_groups or group_size"):
        sn.GroupNorm(num_channels=12)
    with pytest.raises(ValueError, match="not divisible"):
        SF.group_norm(torch.randn(2, 6, 3), 4)


@pytest.mark.parametrize("shape", [(1, 4), (1, 4, 1), (1, 4, 1, 1), (1, 4, 1, 1, 1)])
def test_batchnorm_one_value_per_channel_names_alternatives(shape):
    cls = {2: sn.BatchNorm1d, 3: sn.BatchNorm1d, 4: sn.BatchNorm2d, 5: sn.BatchNorm3d}[len(shape)]
    m = cls(4)
    with pytest.raises(
        ValueError, match="more than one value per channel.*eval.*GroupNorm or InstanceNorm"
    ):
        m(torch.randn(shape))
    m.eval()
    assert m(torch.randn(shape)).shape == shape  # eval mode is the documented way out
    # without running statistics eval mode uses batch statistics too: not a way out
    m = cls(4, track_running_stats=False).eval()
    with pytest.raises(ValueError, match="build the layer with track_running_stats=True"):
        m(torch.randn(shape))


def test_instance_norm_one_spatial_element():
    with pytest.raises(ValueError, match="more than one spatial element"):
        sn.InstanceNorm2d(3)(torch.randn(2, 3, 1, 1))



# (shape, num_groups, refused by torch.nn.functional.group_norm)
GROUP_VALUES = [((1, 3), 3, True), ((1, 3, 1), 3, True), ((1, 1, 1, 1), 1, True),
                ((1, 4), 4, True), ((1, 4), 2, False), ((2, 3), 3, False), ((1, 3, 2), 3, False),
                ((0, 3), 3, False)]


@pytest.mark.parametrize(("shape", "groups", "refused"), GROUP_VALUES)
@pytest.mark.parametrize("training", [True, False])
def test_groupnorm_single_value_groups_refused_exactly_where_torch_refuses(
        shape, groups, refused, training):
    """A single sample whose groups hold one value each would come out as β alone: torch
    raises a ValueError there (in eval too) and so do the layer and the functional form, with
    the fix; where torch computes (N > 1, an empty batch), so does sharenorm, to the same
    values (in float64: float32 torch leaves cancellation noise of ~1e-5 where σ² = 0)."""
    x = torch.randn(shape, dtype=torch.float64)
    ref = torch.nn.GroupNorm(groups, shape[1]).double().train(training)
    ours = sn.GroupNorm(groups, shape[1]).double().train(training)
    if refused:
        with pytest.raises(ValueError):
            ref(x)
        with pytest.raises(ValueError, match="more than one value per group.*fewer groups"):
            ours(x)
        with pytest.raises(ValueError, match="more than one value per group"):
            SF.group_norm(x, groups)
    else:
        torch.testing.assert_close(ours(x), ref(x))
        torch.testing.assert_close(SF.group_norm(x, groups), ref(x))

@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool, torch.complex64])
def test_integer_or_complex_input(dtype):
    x = torch.ones(2, 3, 4, 4).to(dtype)
    for m in (sn.BatchNorm2d(3), sn.InstanceNorm2d(3), sn.GroupNorm(1, 3)):
        with pytest.raises(TypeError, match=r"real floating dtype .* input.float\(\)"):
            m(x)


def test_non_tensor_input():
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        sn.BatchNorm1d(3)([[1.0, 2.0, 3.0]])


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda x: SF.batch_norm(x, torch.zeros(3), torch.ones(3), torch.ones(4)),
            r"weight must have shape \(3,\)",
        ),
        (
            lambda x: SF.batch_norm(x, torch.zeros(3), torch.ones(3), None, torch.ones(3, 1)),
            r"bias must have shape \(3,\)",
        ),
        (
            lambda x: SF.batch_norm(x, torch.zeros(2), torch.ones(3)),
            r"running_mean must have shape \(3,\)",
        ),
        (lambda x: SF.group_norm(x, 3, torch.ones(2)), r"weight must have shape \(3,\)"),
        (lambda x: SF.instance_norm(x, weight=torch.ones(5)), r"weight must have shape \(3,\)"),
        (lambda x: SF.batch_norm(x, None, None), "running_mean/running_var is None"),
        (lambda x: SF.instance_norm(x, use_input_stats=False), "use_input_stats=True"),
    ],
)
def test_mismatched_weight_bias_and_stats(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.randn(2, 3, 4))


@pytest.mark.parametrize("eps", [0, -1e-5, float("nan"), float("inf"), "1e-5"])
def test_bad_eps(eps):
    with pytest.raises(ValueError, match="eps must be positive"):
        sn.BatchNorm2d(3, eps=eps)
    with pytest.raises(ValueError, match="eps"):
        sn.GroupNorm(1, 3, eps=eps)
    with pytest.raises(ValueError, match="eps"):
        SF.group_norm(torch.randn(2, 3, 4), 1, eps=eps)


@pytest.mark.parametrize("momentum", [-0.1, 1.5, float("nan"), "0.1"])
def test_bad_momentum(momentum):
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\] or None"):
        sn.BatchNorm2d(3, momentum=momentum)
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\]"):
        SF.batch_norm(
            torch.randn(4, 3), torch.zeros(3), torch.ones(3), training=True, momentum=momentum
        )


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_bad_num_features(n):
    with pytest.raises(ValueError, match="num_features must be a positive int"):
        sn.BatchNorm2d(n)


def test_unknown_activation_suggests():
    with pytest.raises(ValueError, match="Did you mean 'silu'"):
        sn.GroupNorm(1, 3, act="slu")
    with pytest.raises(ValueError, match="takes no parameter"):
        sn.BatchNorm2d(3, act="relu", act_param=0.1)
    with pytest.raises(ValueError, match="act is None"):
        SF.group_norm(torch.randn(2, 3, 4), 1, act_param=0.1)


def test_numpy_floats_are_eps_and_momentum_as_in_torch():
    np = pytest.importorskip("numpy")
    bn = sn.BatchNorm2d(3, eps=np.float32(1e-3), momentum=np.float32(0.25))
    assert type(bn.eps) is float and type(bn.momentum) is float
    assert bn.eps == float(np.float32(1e-3)) and bn.momentum == 0.25
    assert type(sn.GroupNorm(1, 3, eps=np.float16(1e-3)).eps) is float
    x = torch.randn(4, 3, 2, 2)
    rm, rv = torch.zeros(3), torch.ones(3)
    SF.batch_norm(x, rm, rv, training=True, momentum=np.float32(0.5))
    torch.testing.assert_close(rm, 0.5 * x.mean((0, 2, 3)))
    with pytest.raises(ValueError, match="eps must be positive"):
        sn.BatchNorm2d(3, eps=np.float32(0))


@pytest.mark.parametrize(("make", "name"), [
    (lambda: sn.BatchNorm2d(3), "BatchNorm2d"),
    (lambda: sn.InstanceNorm2d(3, affine=True), "InstanceNorm2d"),
    (lambda: sn.InstanceNorm2d(3, track_running_stats=True), "InstanceNorm2d"),
    (lambda: sn.GroupNorm(1, 3), "GroupNorm"),
    (lambda: sn.BatchRenorm2d(3), "BatchRenorm2d"),
])
def test_input_and_layer_dtypes_that_do_not_mix(make, name):
    m = make()
    with pytest.raises(TypeError, match=f"{name}: .* is torch.float32 but the input is "
                                        r"torch.float64; convert the layer \(module.to"):
        m(torch.randn(2, 3, 4, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="is torch.float64 but the input is torch.float32"):
        copy.deepcopy(m).double()(torch.randn(2, 3, 4, 4))
    # as in torch.nn, a 16-bit input meets float32 parameters and statistics
    assert m(torch.randn(2, 3, 4, 4, dtype=torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(TypeError, match="but the input is torch.float16"):
        copy.deepcopy(m).to(torch.bfloat16)(torch.randn(2, 3, 4, 4, dtype=torch.float16))


def test_functional_dtypes_that_do_not_mix():
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    with pytest.raises(TypeError, match="batch_norm: running_mean is torch.float32"):
        SF.batch_norm(x, torch.zeros(3), torch.ones(3), training=True)
    with pytest.raises(TypeError, match="group_norm: weight is torch.float32"):
        SF.group_norm(x, 1, torch.ones(3))
    with pytest.raises(TypeError, match="instance_norm: bias is torch.float32"):
        SF.instance_norm(x, weight=torch.ones(3, dtype=torch.float64), bias=torch.zeros(3))


def test_numpy_and_index_integers_are_counts_as_in_torch():
    # torch.nn accepts any integer type (operator.index): numpy ints from a config or an
    # np.arange of widths; the layer stores a plain int.
    np = pytest.importorskip("numpy")
    bn = sn.BatchNorm2d(np.int64(3))
    assert bn.num_features == 3 and type(bn.num_features) is int
    assert tuple(bn.running_mean.shape) == (3,)
    gn = sn.GroupNorm(np.int64(3), np.int32(6))
    assert (gn.num_groups, gn.num_channels) == (3, 6)
    assert type(gn.num_groups) is int and type(gn.num_channels) is int
    assert sn.GroupNorm(num_channels=6, group_size=np.int64(2)).num_groups == 3
    assert sn.InstanceNorm1d(np.int16(2), affine=True).weight.shape == (2,)
    assert SF.group_norm(torch.randn(2, 6, 3), np.int64(2)).shape == (2, 6, 3)
    with pytest.raises(ValueError, match="num_groups must be a positive int"):
        sn.GroupNorm(np.int64(0), 6)
    with pytest.raises(ValueError, match="num_features must be a positive int"):
        sn.BatchNorm2d(np.float64(3.0))


@pytest.mark.parametrize("memory_efficient", [False, True])
@pytest.mark.parametrize("given", ["running_mean", "running_var"])
@pytest.mark.parametrize("op", ["batch_norm", "instance_norm"])
def test_one_running_statistic_without_the_other(op, given, memory_efficient):
    # torch raises for this; a silently ignored running_mean would never be updated.
    x = torch.randn(2, 3, 4, requires_grad=True)
    stats = {"running_mean": torch.zeros(3), "running_var": torch.ones(3)}
    rm, rv = (stats[k] if k == given else None for k in ("running_mean", "running_var"))
    fn = getattr(SF, op)
    with pytest.raises(ValueError, match="running_mean and running_var must both be given"):
        fn(x, rm, rv, None, None, True, memory_efficient=memory_efficient)


SETTABLE = [
    pytest.param(lambda: sn.BatchNorm2d(3), id="BatchNorm2d"),
    pytest.param(lambda: sn.InstanceNorm2d(3, track_running_stats=True), id="InstanceNorm2d"),
    pytest.param(lambda: sn.GroupNorm(1, 3), id="GroupNorm"),
    pytest.param(lambda: sn.BatchRenorm2d(3), id="BatchRenorm2d"),
]


@pytest.mark.parametrize("make", SETTABLE)
@pytest.mark.parametrize("eps", [-1.0, 0.0, float("nan"), float("inf"), "1e-5", True])
def test_eps_set_after_construction_is_checked(make, eps):
    """m.eps = -1.0 raises as the constructor does (torch.nn: "eps must be positive"),
    instead of NaN outputs from then on; a good value is taken and used."""
    m = make()
    with pytest.raises(ValueError, match="eps must be positive.*such as 1e-5"):
        m.eps = eps
    assert m.eps == 1e-5
    m.eps = 1e-3
    x = torch.randn(4, 3, 5, 5)
    assert m.eps == 1e-3 and bool(m(x).isfinite().all())


@pytest.mark.parametrize("make", [p for p in SETTABLE if p.id != "GroupNorm"])
@pytest.mark.parametrize("momentum", [-0.1, 1.5, float("nan"), "0.1", True])
def test_momentum_set_after_construction_is_checked(make, momentum):
    m = make()
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\]"):
        m.momentum = momentum
    assert m.momentum == 0.1
    m.momentum = None  # the cumulative average stays allowed
    assert m.momentum is None


def test_checked_attributes_keep_state_dict_copy_and_compile():
    """The checked eps/momentum are plain attributes to state_dict, deepcopy, pickle and
    torch.compile (fullgraph)."""
    import copy
    import pickle

    m = sn.BatchNorm2d(3, eps=1e-3, momentum=0.2)
    assert set(m.state_dict()) == set(torch.nn.BatchNorm2d(3).state_dict())
    for c in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert (c.eps, c.momentum) == (1e-3, 0.2)
        with pytest.raises(ValueError):
            c.eps = -1.0
    x = torch.randn(2, 3, 4, 4)
    for layer in (sn.GroupNorm(1, 3, eps=1e-3), sn.BatchNorm2d(3), sn.InstanceNorm2d(3)):
        compiled = torch.compile(layer, fullgraph=True, backend="eager")
        torch.testing.assert_close(compiled(x), layer(x))  # training: batch statistics
        # No class-level descriptor stands in for them: Dynamo of torch 2.11 recurses without
        # end inlining a data descriptor's __get__ (obj.__dict__[name]), and no norm layer
        # would compile there (torch 2.13 copes, so the mechanism is what is checked here).
        for name in ("eps", "momentum"):
            assert inspect.getattr_static(type(layer), name, None) is None, name


@pytest.mark.parametrize("act", ["leaky_relu", "elu"])
@pytest.mark.parametrize("bad,error", [(float("nan"), ValueError), (float("inf"), ValueError),
                                       (float("-inf"), ValueError), (10**400, ValueError),
                                       ("0.1", TypeError),
                                       (True, TypeError), (None, None)])
def test_bad_act_param_refused_at_construction(act, bad, error):
    """NaN/±inf would make every output and gradient NaN; a string failed later with
    "'<' not supported". Each is refused at once with a message naming act_param."""
    if error is None:  # None: the activation's default
        sn.GroupNorm(1, 3, act=act, act_param=bad)
        return
    for build in (lambda: sn.GroupNorm(1, 3, act=act, act_param=bad),
                  lambda: sn.BatchNorm2d(3, act=act, act_param=bad),
                  lambda: sn.InstanceNorm2d(3, act=act, act_param=bad),
                  lambda: SF.group_norm(torch.randn(2, 3, 4), 1, act=act, act_param=bad)):
        with pytest.raises(error, match="act_param must be a"):
            build()


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["plain", "memory_efficient"])
@pytest.mark.parametrize("act", ["leaky_relu", "elu"])
def test_int_act_param_beyond_int64_runs_as_float(act, memory_efficient):
    """A Python int act_param beyond int64 (10**30; torch would read an int as int64) runs
    as the float it stands for, as torch's own activation does for float(10**30)."""
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    for slope in (10**30, -(10**30)):
        layer = sn.GroupNorm(2, 4, act=act, act_param=slope, memory_efficient=memory_efficient,
                             dtype=torch.float64)
        y = layer(x)
        act_fn = F.leaky_relu if act == "leaky_relu" else F.elu
        ref = act_fn(F.group_norm(x, 2, layer.weight, layer.bias), float(slope))
        torch.testing.assert_close(y, ref)
        (dx,) = torch.autograd.grad(y.sum(), x)
        (ref_dx,) = torch.autograd.grad(ref.sum(), x)
        torch.testing.assert_close(dx, ref_dx)


@pytest.mark.parametrize("call, torch_call", [
    (lambda x: SF.batch_norm(x, None, None, training=False),
     lambda x: F.batch_norm(x, None, None, training=False)),
    (lambda x: SF.instance_norm(x, use_input_stats=False),
     lambda x: F.instance_norm(x, use_input_stats=False)),
])
def test_missing_running_statistics_raise_torchs_error_type_too(call, torch_call):
    # torch raises a RuntimeError here; sharenorm's error is that and a ValueError
    x = torch.randn(2, 3, 4)
    with pytest.raises(RuntimeError):
        torch_call(x)
    with pytest.raises(RuntimeError, match="running statistics") as err:
        call(x)
    assert isinstance(err.value, ValueError)
    m = sn.BatchNorm1d(3).eval()
    m.running_var = None
    with pytest.raises(RuntimeError, match="running_mean/running_var is None"):
        m(x)


@pytest.mark.parametrize("memory_efficient", [False, True])
@pytest.mark.parametrize("call", [
    lambda x, rm, rv, me: SF.batch_norm(x, rm, rv, training=False, memory_efficient=me),
    lambda x, rm, rv, me: SF.batch_norm(x, rm, rv, training=True, memory_efficient=me),
    lambda x, rm, rv, me: SF.instance_norm(x, rm, rv, use_input_stats=False,
                                           memory_efficient=me),
], ids=["bn-eval", "bn-train", "in-eval"])
def test_running_statistics_that_require_grad_are_refused_on_every_path(call, memory_efficient):
    # torch's kernels refuse them; a path that ran would return no gradient for them silently
    x = torch.randn(2, 3, 4)
    rm, rv = torch.zeros(3, requires_grad=True), torch.ones(3)
    with pytest.raises(RuntimeError, match="not differentiable"):
        F.batch_norm(x, rm, rv, training=False)
    with pytest.raises(RuntimeError, match="running_mean/running_var require grad"):
        call(x, rm, rv, memory_efficient)
    with torch.no_grad():  # nothing to differentiate: as torch, it runs
        call(x, rm.detach().clone(), rv, memory_efficient)


@pytest.mark.parametrize("param, stats", [(torch.float16, torch.float32),
                                          (torch.float32, torch.float16)])
def test_16bit_input_with_parameters_and_statistics_of_two_dtypes(param, stats):
    # ATen's batch_norm takes them all 16-bit or all float32: its raw "mixed dtype" /
    # "expected scalar type" error named neither; torch.instance_norm takes them mixed
    from sharenorm._checks import DtypeError

    x = torch.randn(4, 3, 5, dtype=torch.float16)
    w, b = torch.rand(3, dtype=param) + 0.5, torch.randn(3, dtype=param)
    rm, rv = torch.randn(3, dtype=stats), torch.rand(3, dtype=stats) + 0.5
    for training in (False, True):
        with pytest.raises(DtypeError, match="must all be torch.float16 or all float32"):
            SF.batch_norm(x, rm.clone(), rv.clone(), w, b, training)
    for use_input_stats in (True, False):
        for me in (False, True):
            want = F.instance_norm(x, rm.clone(), rv.clone(), w, b, use_input_stats)
            got = SF.instance_norm(x, rm.clone(), rv.clone(), w, b, use_input_stats,
                                   memory_efficient=me)
            torch.testing.assert_close(got, want, atol=2e-3, rtol=0)


def test_channels_are_checked_against_the_per_channel_tensors_as_torch_does():
    # pruning code that slices γ/β and the statistics but leaves num_features stale: torch
    # never reads the attribute in forward and runs, and so must sharenorm
    import torch.nn as nn

    for ours, theirs in ((sn.BatchNorm2d(4), nn.BatchNorm2d(4)), (sn.GroupNorm(1, 4),
                                                                 nn.GroupNorm(1, 4))):
        for m in (ours, theirs):
            with torch.no_grad():
                m.weight = nn.Parameter(m.weight[:3].clone())
                m.bias = nn.Parameter(m.bias[:3].clone())
                for name in ("running_mean", "running_var"):
                    if getattr(m, name, None) is not None:
                        setattr(m, name, getattr(m, name)[:3].clone())
        x = torch.randn(4, 3, 5, 5)
        torch.testing.assert_close(ours(x), theirs(x))
    # without per-channel tensors any channel count runs, as in torch.nn
    sn.BatchNorm2d(4, affine=False, track_running_stats=False)(torch.randn(4, 3, 5, 5))
