"""Every autograd mode torch.nn's norm layers support, checked by torch's own gradcheck.

``torch.autograd.gradcheck`` and ``gradgradcheck`` are material we did not write: beside
finite differences they check forward-mode AD (``jvp``), batched gradients
(``is_grads_batched``, what ``jacobian(vectorize=True)`` uses), undefined output gradients
(which autograd hands tensor hooks as ``None``) and second derivatives (gradient penalties,
``create_graph=True``). The plain layers support all of them as torch.nn does; the
memory-efficient layers and SyncBatchNorm's synchronised training compute their backward
from hand-written formulas and refuse second derivatives and batched backward with an error
that names the fix, never a silently wrong (or zero) result (SyncBatchNorm's refusal:
test_syncbatchnorm.py::test_function_gradcheck_and_no_second_derivative).
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import sharenorm as sn

# (id, layer, input shape): batch-of-one layers run the gradient-layout hook
# (sharenorm.norm.functional.guard_gradient_layout)
LAYERS = [
    ("bn2d", lambda: sn.BatchNorm2d(4), (3, 4, 3, 2)),
    ("bn2d_one", lambda: sn.BatchNorm2d(4), (1, 4, 3, 2)),
    ("bn1d", lambda: sn.BatchNorm1d(4), (5, 4)),
    ("bn3d_one", lambda: sn.BatchNorm3d(4), (1, 4, 2, 2, 3)),
    ("bn_relu", lambda: sn.BatchNorm2d(4, act="relu"), (3, 4, 3, 2)),
    ("bn_silu", lambda: sn.BatchNorm2d(4, act="silu"), (3, 4, 3, 2)),
    ("brn", lambda: sn.BatchRenorm2d(4), (3, 4, 3, 2)),
    ("in_track_one", lambda: sn.InstanceNorm2d(4, affine=True, track_running_stats=True),
     (1, 4, 3, 3)),
    ("in3d_track_one", lambda: sn.InstanceNorm3d(4, affine=True, track_running_stats=True),
     (1, 4, 2, 2, 3)),
    ("in_unbatched", lambda: sn.InstanceNorm2d(4, affine=True), (4, 3, 3)),
    ("gn", lambda: sn.GroupNorm(2, 4), (2, 4, 3, 3)),
    ("gn_one", lambda: sn.GroupNorm(2, 4), (1, 4, 3, 3)),
    ("gn_silu", lambda: sn.GroupNorm(2, 4, act="silu"), (2, 4, 3, 3)),
    ("syncbn_local", lambda: sn.SyncBatchNorm(4), (3, 4, 3, 2)),
]


# forward AD loads torch's jvp decompositions, which call the deprecated torch.jit.script
JIT_SCRIPT_DEPRECATED = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def _as_function(m):
    """``m`` as a function of (x, *parameters), for gradcheck."""
    names = [n for n, _ in m.named_parameters()]

    def f(x, *params):
        return torch.func.functional_call(m, dict(zip(names, params, strict=True)), (x,))

    return f, tuple(m.parameters())


def _layer(make, shape, training, channels_last=False):
    torch.manual_seed(0)
    m = make().double().train(training)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(0.5, 1.5)
        if not training and getattr(m, "running_var", None) is not None:
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(*shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return m, x.requires_grad_(True)


@JIT_SCRIPT_DEPRECATED
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name, make, shape", LAYERS, ids=[c[0] for c in LAYERS])
def test_gradcheck_every_mode(name, make, shape, training):
    """Finite differences, forward AD, batched and undefined output gradients, second
    derivatives: as torch.nn. The batch-of-one layers run the gradient-layout hook, which
    autograd hands ``None`` for an undefined gradient."""
    m, x = _layer(make, shape, training)
    f, params = _as_function(m)
    kw = {"eps": 1e-6, "atol": 1e-5}
    assert gradcheck(f, (x, *params), check_batched_grad=True, **kw)
    assert gradcheck(f, (x, *params), check_forward_ad=True, check_backward_ad=False,
                     check_undefined_grad=False, **kw)
    assert gradgradcheck(f, (x, *params), **kw)


@pytest.mark.parametrize("make", [lambda: sn.BatchNorm2d(4), lambda: sn.GroupNorm(2, 4),
                                  lambda: sn.InstanceNorm2d(4, affine=True)],
                         ids=["bn", "gn", "in"])
def test_second_derivative_channels_last(make):
    m, x = _layer(make, (2, 4, 3, 3), True, channels_last=True)
    f, params = _as_function(m)
    assert gradgradcheck(f, (x, *params), eps=1e-6, atol=1e-5)


def test_undefined_gradient_passes_the_batch_of_one_hook():
    """A tensor hook gets ``None`` where nothing flows back; the layout hook passes it on."""
    m = sn.InstanceNorm2d(4, affine=True, track_running_stats=True).double()
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    y = m(x)
    hooks = y._backward_hooks
    assert hooks, "the batch-of-one layout hook is registered"
    for hook in hooks.values():
        assert hook(None) is None


MEMORY_EFFICIENT = [
    ("bn_relu", lambda: sn.BatchNorm2d(4, act="relu", memory_efficient=True)),
    ("bn_plain", lambda: sn.BatchNorm2d(4, memory_efficient=True)),
    ("bn_eval", lambda: sn.BatchNorm2d(4, act="leaky_relu", memory_efficient=True).eval()),
    ("gn_silu", lambda: sn.GroupNorm(2, 4, act="silu", memory_efficient=True)),
    ("in_elu", lambda: sn.InstanceNorm2d(4, affine=True, act="elu", memory_efficient=True)),
]
NO_DOUBLE = "memory_efficient=True has no double backward.*memory_efficient=False"


def _gradient_penalty_loss(m, x, w):
    """A loss with a gradient penalty whose layer feeds a fixed linear loss: the output
    gradient ``w`` is a constant, so the first-order gradients do not require grad by
    themselves (torch's once_differentiable then returns them as constants)."""
    out = (m(x) * w).sum()
    (dx,) = torch.autograd.grad(out, x, create_graph=True)
    return out + dx.pow(2).sum(), dx


@pytest.mark.parametrize("name, make", MEMORY_EFFICIENT, ids=[c[0] for c in MEMORY_EFFICIENT])
def test_memory_efficient_refuses_every_second_derivative(name, make):
    torch.manual_seed(0)
    m = make().double()
    x = torch.randn(3, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, 3, 2, dtype=torch.float64)
    loss, dx = _gradient_penalty_loss(m, x, w)
    # the output gradient w is a constant: the gradients must still refuse to be
    # differentiated, not pass as constants whose penalty gradient is zero
    with pytest.raises(RuntimeError, match=NO_DOUBLE):
        loss.backward()
    for wrt in (x, m.weight):  # autograd.grad prunes the graph to `wrt`: the node is on it
        loss, dx = _gradient_penalty_loss(m, x, w)
        with pytest.raises(RuntimeError, match=NO_DOUBLE):
            torch.autograd.grad(loss, wrt, allow_unused=True)
    f, params = _as_function(m)
    with pytest.raises(RuntimeError, match=NO_DOUBLE):
        gradgradcheck(f, (x, *params), eps=1e-6, atol=1e-5)


def _with_plain_twin(make):
    """A memory-efficient layer (float64) and the same layer on the plain path, same state."""
    torch.manual_seed(0)
    m = make().double()
    plain = make()
    plain.memory_efficient = False
    plain = plain.double()
    plain.load_state_dict(m.state_dict())
    return m, plain


@pytest.mark.parametrize("name, make", MEMORY_EFFICIENT, ids=[c[0] for c in MEMORY_EFFICIENT])
def test_memory_efficient_first_order_under_create_graph_is_unchanged(name, make):
    """Building a graph changes nothing in the gradients themselves: they equal those
    without a graph and the plain layer's (ATen's backward), and the plain layer's penalty
    is differentiable (the fix the error names)."""
    m, ref = _with_plain_twin(make)
    x = torch.randn(3, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    y = m(x)
    g = torch.randn_like(y)
    plain = torch.autograd.grad(y, (x, m.weight), g, retain_graph=True)
    graphed = torch.autograd.grad(y, (x, m.weight), g, create_graph=True)
    want = torch.autograd.grad(ref(x), (x, ref.weight), g)
    for a, b, w in zip(plain, graphed, want, strict=True):
        assert torch.equal(a, b) and b.requires_grad
        torch.testing.assert_close(b, w, atol=1e-10, rtol=1e-10)
    loss, _ = _gradient_penalty_loss(ref, x, torch.randn_like(y))
    loss.backward()
    assert ref.weight.grad is not None and torch.isfinite(ref.weight.grad).all()


@pytest.mark.parametrize("name, make", MEMORY_EFFICIENT, ids=[c[0] for c in MEMORY_EFFICIENT])
def test_memory_efficient_batched_backward_error_names_the_fix(name, make):
    m = make().double()
    x = torch.randn(2, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    y = m(x)
    with pytest.raises(RuntimeError, match="no batched backward.*memory_efficient=False"):
        torch.autograd.grad(y, x, torch.randn(3, *y.shape, dtype=y.dtype),
                            is_grads_batched=True)
    # the way the error names: one gradient at a time
    jac = torch.autograd.functional.jacobian(m, x.detach(), vectorize=False)
    assert jac.shape == (*x.shape, *x.shape)


@JIT_SCRIPT_DEPRECATED
@pytest.mark.parametrize("name, make", MEMORY_EFFICIENT, ids=[c[0] for c in MEMORY_EFFICIENT])
def test_memory_efficient_forward_ad_runs_the_plain_path(name, make):
    """Forward-mode AD (a dual level, as torch.autograd.forward_ad): the memory-efficient
    Functions have no jvp, so the plain path runs there, with the plain layer's tangents."""
    import torch.autograd.forward_ad as fwad

    m, plain = _with_plain_twin(make)
    x = torch.randn(3, 4, 3, 2, dtype=torch.float64)
    t = torch.randn_like(x)
    with fwad.dual_level():
        got = fwad.unpack_dual(m(fwad.make_dual(x, t)))
        want = fwad.unpack_dual(plain(fwad.make_dual(x, t)))
    torch.testing.assert_close(got.primal, want.primal, atol=1e-12, rtol=0)
    torch.testing.assert_close(got.tangent, want.tangent, atol=1e-12, rtol=0)


@pytest.mark.parametrize("make, twin", [
    (lambda: sn.BatchNorm1d(2, momentum=None), lambda: torch.nn.BatchNorm1d(2, momentum=None)),
    (lambda: sn.BatchNorm1d(2, momentum=None, act="relu", memory_efficient=True),
     lambda: torch.nn.BatchNorm1d(2, momentum=None)),
    (lambda: sn.BatchNorm1d(2), lambda: torch.nn.BatchNorm1d(2)),
], ids=["cumulative", "cumulative-memory-efficient", "momentum-0.1"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_running_statistics_under_checkpoint_match_torch(make, twin, reentrant):
    # a non-reentrant checkpoint stops its recompute once the kernel's saved tensors are
    # rebuilt: a count taken after the kernel would miss the recompute's update, and
    # momentum=None's average would come out 2.0 where torch's is 1.5
    from torch.utils.checkpoint import checkpoint

    ours, theirs = make(), twin()
    for k in range(4):
        x = torch.randn(8, 2, dtype=torch.float64) + k
        for m in (ours.double(), theirs.double()):
            checkpoint(m, x.clone().requires_grad_(True), use_reentrant=reentrant
                       ).relu().pow(3).sum().backward()
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked)
