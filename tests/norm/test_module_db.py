"""torch.nn's own module test material against the drop-in layers: every sample of
``torch.testing._internal.common_modules.module_db`` for BatchNorm1d/2d/3d, InstanceNorm1d/2d/3d
and GroupNorm (constructor arguments, inputs, training and eval) runs through the torch.nn
module and through sharenorm's, built with the same arguments and the same state: outputs,
input and parameter gradients and buffers must agree in float64 and float32, on the plain
and on the memory-efficient path (one saved tensor, hand-written backward); in bfloat16 and
float16, where the two libraries' kernels round differently, sharenorm's error against a
float64 run may not exceed torch's by more than a rounding. Channels-last inputs too, where
torch's own memory-format test converts them. Every input torch.nn refuses (the ModuleInfo's
error inputs) sharenorm refuses too, with torch's exception type.

Material we did not write: the samples are torch's, so a case our own tables missed shows up
here (zero-size batches, no-batch-dim inputs, ``bias=False``, ``momentum=None``, …)."""

from __future__ import annotations

import os

import pytest
import torch
from norm_testing import import_torch_test_material

import sharenorm as sn

# Where the samples run: the CPU (CI), or a GPU with SHARENORM_TEST_DEVICE=cuda (sharenorm's
# Triton kernels against torch's CUDA kernels; benchmarks/gpu_check.sh step 1).
DEVICE = os.environ.get("SHARENORM_TEST_DEVICE", "cpu")
if DEVICE != "cpu" and not torch.cuda.is_available():
    pytest.skip(f"SHARENORM_TEST_DEVICE={DEVICE} needs a GPU", allow_module_level=True)

common_modules = import_torch_test_material("common_modules")

OURS = {
    "nn.BatchNorm1d": sn.BatchNorm1d,
    "nn.BatchNorm2d": sn.BatchNorm2d,
    "nn.BatchNorm3d": sn.BatchNorm3d,
    "nn.InstanceNorm1d": sn.InstanceNorm1d,
    "nn.InstanceNorm2d": sn.InstanceNorm2d,
    "nn.InstanceNorm3d": sn.InstanceNorm3d,
    "nn.GroupNorm": sn.GroupNorm,
}
INFOS = {info.name: info for info in common_modules.module_db if info.name in OURS}
TOL = {torch.float64: {"atol": 1e-10, "rtol": 1e-9}, torch.float32: {"atol": 2e-5, "rtol": 1e-4}}


def test_every_norm_layer_has_torch_test_material():
    assert set(INFOS) == set(OURS)


def _clone_inputs(args, kwargs, memory_format=None):
    def one(a):
        if not isinstance(a, torch.Tensor):
            return a
        b = a.detach().clone()
        if memory_format is not None:
            b = b.to(memory_format=memory_format)
        return b.requires_grad_(a.requires_grad)

    return [one(a) for a in args], {k: one(v) for k, v in kwargs.items()}


def _channels_last(name: str, x: torch.Tensor):
    """The channels-last format of a batched 4-d/5-d input (None otherwise: an unbatched
    (C, D, H, W) input of a 3-d norm has no channels-last layout)."""
    batched = {"1d": 3, "2d": 4, "3d": 5}.get(name[-2:], x.dim())
    if x.dim() != batched or x.shape[1] < 2:
        return None
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())


def _run(module, training, args, kwargs, dy_seed, memory_format=None):
    """``(output, [input grads…, parameter grads…], state_dict)`` of one forward + backward."""
    module.train(training)
    if memory_format is not None:
        module = module.to(memory_format=memory_format)
    args, kwargs = _clone_inputs(args, kwargs, memory_format)
    out = module(*args, **kwargs)
    grads = []
    if out.requires_grad and out.numel():
        gen = torch.Generator().manual_seed(dy_seed)
        out.backward(torch.randn(out.shape, generator=gen).to(out.device, out.dtype))
        grads = ([t.grad for t in args if isinstance(t, torch.Tensor) and t.requires_grad]
                 + [q.grad for q in module.parameters()])
    return out, grads, module.state_dict()


def _quantities(name, ours, out, grads, state, training):
    """The output, the gradients and the buffers as (label, tensor); InstanceNorm's
    num_batches_tracked is checked here and left out: sharenorm's counts its training
    batches, torch's stays 0 (deliberate, README "Differences from torch.nn")."""
    q = [("output", out)] + [(f"grad {k}", g) for k, g in enumerate(grads)]
    for key, t in state.items():
        if key == "num_batches_tracked" and name.startswith("nn.InstanceNorm"):
            if ours:
                assert int(t) == int(training and "running_mean" in state), key
            continue
        q.append((key, t))
    return q


def _through_memory_efficient(fn, depth: int = 4) -> bool:
    """Whether the graph below ``fn`` holds the memory-efficient path's Function."""
    if fn is None or depth < 0:
        return False
    if "NormAct" in type(fn).__name__:
        return True
    return any(_through_memory_efficient(f, depth - 1) for f, _ in fn.next_functions)


def _compare(name, sample, training, dtype, memory_format=None, memory_efficient=False):
    info = INFOS[name]
    c_args, c_kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    torch.manual_seed(0)
    ref = info.module_cls(*c_args, **c_kwargs).to(DEVICE, dtype)
    with torch.no_grad():  # γ, β and running statistics away from their 1/0 defaults
        for t in ref.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    ours = OURS[name](*c_args, **c_kwargs, memory_efficient=memory_efficient).to(DEVICE, dtype)
    ours.load_state_dict(state)
    args, kwargs = sample.forward_input.args, sample.forward_input.kwargs
    where = (f"{name} {sample.desc or '(plain)'} training={training} {dtype} {memory_format} "
             f"memory_efficient={memory_efficient}")
    runs = [_run(m, training, args, kwargs, 1, memory_format) for m in (ref, ours)]
    if memory_efficient and runs[1][0].requires_grad and runs[1][0].numel():
        assert _through_memory_efficient(runs[1][0].grad_fn), where
    if memory_format is not None:
        # channels-last in, channels-last out (torch's InstanceNorm returns NCHW here)
        assert runs[1][0].is_contiguous(memory_format=memory_format), where
    theirs_q, ours_q = (_quantities(name, k == 1, *run, training) for k, run in enumerate(runs))
    assert [lbl for lbl, _ in ours_q] == [lbl for lbl, _ in theirs_q], where
    if dtype in TOL:
        for (label, want), (_, got) in zip(theirs_q, ours_q, strict=True):
            torch.testing.assert_close(got, want, **TOL[dtype],
                                       msg=lambda m, lbl=label: f"{where} {lbl}: {m}")
        return
    # 16-bit: both against torch's module run in float64 on the same values; sharenorm's
    # error may not exceed torch's by more than a rounding of the dtype (torch's 16-bit
    # kernels and ours round differently, so they need not agree with each other).
    ref64 = info.module_cls(*c_args, **c_kwargs).to(DEVICE, torch.float64)
    ref64.load_state_dict({k: v.double() if v.is_floating_point() else v
                           for k, v in state.items()})
    up = ([a.detach().double().requires_grad_(a.requires_grad)
           if isinstance(a, torch.Tensor) else a for a in args], kwargs)
    exact_q = _quantities(name, False, *_run(ref64, training, *up, 1), training)
    eps = torch.finfo(dtype).eps
    for (label, exact), (_, want), (_, got) in zip(exact_q, theirs_q, ours_q, strict=True):
        exact, want, got = (t.detach().double() for t in (exact, want, got))
        err_theirs = float((want - exact).abs().max()) if exact.numel() else 0.0
        err_ours = float((got - exact).abs().max()) if exact.numel() else 0.0
        scale = float(exact.abs().max()) if exact.numel() else 0.0
        assert err_ours <= 2 * err_theirs + 2 * eps * scale, (
            f"{where} {label}: error {err_ours:.3g} against float64, torch's {err_theirs:.3g}")


@pytest.mark.parametrize("memory_efficient", [False, True], ids=["plain", "memory_efficient"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=["f64", "f32", "bf16", "f16"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", sorted(OURS))
def test_torch_module_db_samples_match(name, training, dtype, memory_efficient):
    info = INFOS[name]
    torch.manual_seed(0)  # the samples' tensors are drawn from torch's generator
    samples = info.module_inputs_func(info, device=DEVICE, dtype=dtype, requires_grad=True,
                                      training=training)
    assert samples
    for sample in samples:
        _compare(name, sample, training, dtype, None, memory_efficient)
        memory_format = _channels_last(name, sample.forward_input.args[0])
        if memory_format is not None:  # as torch's own memory-format test converts them
            _compare(name, sample, training, dtype, memory_format, memory_efficient)


@pytest.mark.parametrize("name", sorted(n for n in OURS if INFOS[n].module_error_inputs_func))
def test_what_torch_refuses_sharenorm_refuses(name):
    """With torch's exception type; a bad argument torch refuses only at the first forward
    (eps ≤ 0) sharenorm may refuse at construction already."""
    info = INFOS[name]
    errors = info.module_error_inputs_func(info, device=DEVICE, dtype=torch.float32,
                                           requires_grad=False, training=True)
    assert errors
    for err in errors:
        mi = err.module_error_input
        c_args, c_kwargs = mi.constructor_input.args, mi.constructor_input.kwargs
        with pytest.raises(err.error_type):
            m = OURS[name](*c_args, **c_kwargs).to(DEVICE)
            assert err.error_on != common_modules.ModuleErrorEnum.CONSTRUCTION_ERROR, (
                f"{name}{c_args}{c_kwargs} was built; torch refuses it: {err.error_regex}")
            m(*mi.forward_input.args, **mi.forward_input.kwargs)
