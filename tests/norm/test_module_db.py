"""torch.nn's own module test material against the drop-in layers: every sample of
``torch.testing._internal.common_modules.module_db`` for BatchNorm1d/2d/3d, InstanceNorm1d/2d/3d
and GroupNorm (constructor arguments, inputs, training and eval) runs through the torch.nn
module and through sharenorm's, built with the same arguments and the same state: outputs,
input and parameter gradients and buffers must agree, in float64 and float32, and with
channels-last inputs where torch's own memory-format test converts them. Every input
torch.nn refuses (the ModuleInfo's error inputs) sharenorm refuses too.

Material we did not write: the samples are torch's, so a case our own tables missed shows up
here (zero-size batches, no-batch-dim inputs, ``bias=False``, ``momentum=None``, …)."""

from __future__ import annotations

import pytest
import torch

import sharenorm as sn

pytest.importorskip("expecttest", reason="torch's test helpers need expecttest (the test extra)")
common_modules = pytest.importorskip("torch.testing._internal.common_modules")

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


def _compare(name, sample, training, dtype, memory_format=None):
    info = INFOS[name]
    c_args, c_kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    torch.manual_seed(0)
    ref = info.module_cls(*c_args, **c_kwargs).to(dtype)
    ours = OURS[name](*c_args, **c_kwargs).to(dtype)
    with torch.no_grad():  # γ, β and running statistics away from their 1/0 defaults
        for t in ref.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5)
    ours.load_state_dict(ref.state_dict())
    ref.train(training)
    ours.train(training)
    args, kwargs = sample.forward_input.args, sample.forward_input.kwargs
    if memory_format is not None:
        ref = ref.to(memory_format=memory_format)
        ours = ours.to(memory_format=memory_format)
    inputs = [_clone_inputs(args, kwargs, memory_format) for _ in range(2)]
    outs = [m(*a, **k) for m, (a, k) in zip((ref, ours), inputs, strict=True)]
    where = f"{name} {sample.desc or '(plain)'} training={training} {dtype} {memory_format}"
    torch.testing.assert_close(outs[1], outs[0], **TOL[dtype], msg=lambda m: f"{where}: {m}")
    if memory_format is not None:
        # channels-last in, channels-last out (torch's InstanceNorm returns NCHW here)
        assert outs[1].is_contiguous(memory_format=memory_format), where
    if outs[0].requires_grad and outs[0].numel():
        dy = torch.randn_like(outs[0])
        for out in outs:
            out.backward(dy)
        grads = [[t.grad for t in a if isinstance(t, torch.Tensor) and t.requires_grad]
                 + [p.grad for p in m.parameters()]
                 for m, (a, _) in zip((ref, ours), inputs, strict=True)]
        for got, want in zip(grads[1], grads[0], strict=True):
            torch.testing.assert_close(got, want, **TOL[dtype], msg=lambda m: f"{where} grad: {m}")
    for (key, want), got in zip(ref.state_dict().items(), ours.state_dict().values(),
                                strict=True):
        if key == "num_batches_tracked" and name.startswith("nn.InstanceNorm"):
            # deliberate: sharenorm's InstanceNorm counts its training batches, torch's stays 0
            # (README, "Differences from torch.nn")
            assert int(got) == int(training and getattr(ours, "track_running_stats", False))
            continue
        torch.testing.assert_close(got, want, **TOL[dtype],
                                   msg=lambda m, key=key: f"{where} {key}: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", sorted(OURS))
def test_torch_module_db_samples_match(name, training, dtype):
    info = INFOS[name]
    samples = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True,
                                      training=training)
    assert samples
    for sample in samples:
        _compare(name, sample, training, dtype)
        memory_format = _channels_last(name, sample.forward_input.args[0])
        if memory_format is not None:  # as torch's own memory-format test converts them
            _compare(name, sample, training, dtype, memory_format)


@pytest.mark.parametrize("name", sorted(n for n in OURS if INFOS[n].module_error_inputs_func))
def test_what_torch_refuses_sharenorm_refuses(name):
    """With torch's exception type; a bad argument torch refuses only at the first forward
    (eps ≤ 0) sharenorm may refuse at construction already."""
    info = INFOS[name]
    errors = info.module_error_inputs_func(info, device="cpu", dtype=torch.float32,
                                           requires_grad=False, training=True)
    assert errors
    for err in errors:
        mi = err.module_error_input
        c_args, c_kwargs = mi.constructor_input.args, mi.constructor_input.kwargs
        with pytest.raises(err.error_type):
            m = OURS[name](*c_args, **c_kwargs)
            assert err.error_on != common_modules.ModuleErrorEnum.CONSTRUCTION_ERROR, (
                f"{name}{c_args}{c_kwargs} was built; torch refuses it: {err.error_regex}")
            m(*mi.forward_input.args, **mi.forward_input.kwargs)
