"""K independent models trained as one: stacked along the channel axis.

The lab's models are tiny, so a step costs mostly per-operation overhead: K models of one
architecture (the seeds of a configuration, the points of a learning-rate grid) cost about
as much as one when they run as one stacked model. Convolutions become grouped convolutions,
linear layers batched matmuls (:class:`StackedLinear`), norms per-member channel groups, and
the loss the sum of the members' losses, so each member gets exactly its own gradient. Every
stacked tensor is member-major: ``t.view(K, -1)[k]`` is member k's. A layer of the lab's own
that knows its stacked form gives it as a classmethod ``stack_members(layers)``
(:class:`sharenorm.lab.per_rank.PerRankBatchNorm`). How each layer stacks,
and why not ``torch.func.vmap``: docs/design/lab-batching.md.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from sharenorm.lab.stacked_layers import (  # re-exported: the stacking API
    NotStackable,
    StackedBatchNorm,
    StackedLinear,
    _stack_param,
)

__all__ = ["NotStackable", "StackedLinear", "StackedBatchNorm", "StackedOptimizer", "stack_models", "unstack_into",
           "stack_inputs", "stackable", "can_stack", "StackedLocallyConnected"]


class StackedLocallyConnected(nn.Module):
    """K independent ``LocallyConnected1d``/``2d`` of one geometry on ``(N, K·C_in, *size)``
    → ``(N, K·C_out, *size_out)``: member k reads channels ``[k·C_in, (k+1)·C_in)`` and writes
    ``[k·C_out, (k+1)·C_out)``, as a grouped convolution does.

    ``weight`` is ``(K, P, C_out, C_in·k)`` and ``bias`` ``(K, C_out, P)``: member k's tensors
    at ``[k]``, so ``view(K, -1)[k]`` is member k's parameter, flattened. The forward is the
    members' layer's own (:func:`sharenorm.sharing.layers.unshared_conv2d`) with K groups:
    one unfold and one batched matmul over (member, position).

    Example:
        >>> import torch, sharenorm as sn
        >>> lcs = [sn.LocallyConnected1d(2, 3, input_size=10, kernel_size=3) for _ in range(4)]
        >>> st = stack_models(lcs)
        >>> xs = torch.randn(4, 5, 2, 10)                      # (K, N, C_in, L)
        >>> y = st(stack_inputs(xs)).view(5, 4, 3, 8)          # (N, K, C_out, L_out)
        >>> torch.allclose(y[:, 2], lcs[2](xs[2]), atol=1e-6)
        True
    """

    def __init__(self, mods: list[nn.Module]) -> None:
        super().__init__()
        m0, k = mods[0], len(mods)
        self.k, self.ndim = k, m0._ndim  # noqa: SLF001
        self.in_channels, self.out_channels = m0.in_channels, m0.out_channels
        self.input_size, self.output_size = m0.input_size, m0.output_size
        # the 2-D geometry the layer computes with (a 1-D layer is a 2-D one of height 1)
        self._geometry = (m0._k2, m0._s2, m0._p2, m0._d2, m0._out2)  # noqa: SLF001
        self.weight = _stack_param([m.weight for m in mods], (k, *m0.weight.shape))
        self.bias = None if m0.bias is None else \
            _stack_param([m.bias for m in mods], (k, *m0.bias.shape))

    def forward(self, x: Tensor) -> Tensor:
        from sharenorm.sharing.layers import unshared_conv2d

        x2 = x.unsqueeze(2) if self.ndim == 1 else x
        out = unshared_conv2d(x2, self.weight, self.bias, *self._geometry)
        return out.squeeze(2) if self.ndim == 1 else out

    def extra_repr(self) -> str:
        return f"k={self.k}, {self.in_channels}, {self.out_channels}, " \
               f"input_size={self.input_size}, bias={self.bias is not None}"


def _whole_model_stackers() -> dict[type, type]:
    """Models whose forward is not channel-agnostic, stacked as a whole."""
    from sharenorm.lab.batched_rnn import StackedBNRNNClassifier, StackedRNNClassifier
    from sharenorm.models import RNNClassifier
    from sharenorm.models.bn_rnn import BNRNNClassifier

    return {RNNClassifier: StackedRNNClassifier, BNRNNClassifier: StackedBNRNNClassifier}


def _norm_types() -> tuple[type, ...]:
    import sharenorm.norm.batchnorm as bn
    import sharenorm.norm.groupnorm as gn
    import sharenorm.norm.instancenorm as inn

    return (bn._BatchNorm, inn._InstanceNorm, gn.GroupNorm,
            nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)


def _batchnorm_types() -> tuple[type, ...]:
    import sharenorm.norm.batchnorm as bn

    return (bn._BatchNorm, nn.modules.batchnorm._BatchNorm)


def _elementwise_types() -> tuple[type, ...]:
    from sharenorm.norm.factory import Activation

    return (nn.Identity, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.LeakyReLU, nn.GELU, nn.SiLU,
            Activation)


def _locally_connected_types() -> tuple[type, ...]:
    from sharenorm.sharing.layers import LocallyConnected1d, LocallyConnected2d

    return (LocallyConnected1d, LocallyConnected2d)


def _container_types() -> tuple[type, ...]:
    """Modules whose own forward only composes their children and channel-agnostic ops
    (elementwise add, relu, flatten): they compute K members side by side unchanged."""
    from sharenorm.models import MLP, ConvNet, LocallyConnectedNet
    from sharenorm.models.resnet import ResNet, _Block

    return (nn.Sequential, nn.ModuleList, ConvNet, LocallyConnectedNet, MLP, ResNet, _Block)


def _why_not(model: nn.Module) -> str | None:
    """None when every module of ``model`` has a stacked twin, else the first reason why not."""
    from sharenorm.models import ConvNet, LocallyConnectedNet

    if type(model).__name__ == "SyncBatchNorm":
        return f"{type(model).__name__} has no stacked form"
    for name, p in model.named_parameters():
        if p._backward_hooks:  # noqa: SLF001 - the stacked copy's gradients would bypass them
            return f"{name} has a gradient hook, which would not see the stacked gradients"
    norms, elementwise, containers = _norm_types(), _elementwise_types(), _container_types()
    # a model stacked as a whole (batched_rnn) computes its recurrent cores itself
    whole = type(model) in _whole_model_stackers()
    for name, m in model.named_modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks:  # noqa: SLF001
            return f"{name or 'the model'} has a hook, which would not see the stacked model"
        if whole and (name == "" or type(m) in _recurrent_core_types()):
            continue
        if type(m) in containers and (type(m) not in (ConvNet, LocallyConnectedNet)
                                      or name == ""):
            continue
        if type(m) in _locally_connected_types() or hasattr(type(m), "stack_members"):
            continue
        if type(m) in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
            if m.groups != 1:
                return f"{name}: a grouped convolution"
            continue
        if type(m) is nn.Linear or isinstance(m, elementwise):
            continue
        if isinstance(m, _batchnorm_types()) and m.momentum is None:
            # a cumulative average weighs batch t by 1/t: StackedBatchNorm has one momentum
            return f"{name}: BatchNorm with momentum=None (a cumulative average)"
        if isinstance(m, norms) and "Sync" not in type(m).__name__ and \
                "Renorm" not in type(m).__name__:
            continue
        return f"{name or 'the model'}: {type(m).__name__} has no stacked form"
    return None


def _recurrent_core_types() -> tuple[type, ...]:
    from sharenorm.sharing.layers import SharedRNN, UnsharedRNN

    return (SharedRNN, UnsharedRNN)


def stackable(model: nn.Module) -> bool:
    """True when :func:`stack_models` can stack copies of ``model`` exactly."""
    return _why_not(model) is None


def can_stack(models: list[nn.Module]) -> bool:
    """True when ``models`` are stackable and alike: same types, hyperparameters and shapes."""
    if not models or not stackable(models[0]):
        return False
    ref = _signature(models[0])
    return all(_signature(m) == ref for m in models[1:])


def _signature(model: nn.Module):
    return (repr(model), [(n, tuple(t.shape), t.dtype) for n, t in model.state_dict().items()])


def _stack_leaf(mods: list[nn.Module]) -> nn.Module:
    m0, k = mods[0], len(mods)
    if hasattr(type(m0), "stack_members"):  # a layer that knows its own stacked form
        return type(m0).stack_members(mods)
    if type(m0) in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        new = type(m0)(k * m0.in_channels, k * m0.out_channels, m0.kernel_size, stride=m0.stride,
                       padding=m0.padding, dilation=m0.dilation, groups=k,
                       bias=m0.bias is not None, padding_mode=m0.padding_mode,
                       dtype=m0.weight.dtype)
        new.weight = _stack_param([m.weight for m in mods], tuple(new.weight.shape))
        if m0.bias is not None:
            new.bias = _stack_param([m.bias for m in mods], (k * m0.out_channels,))
        return new
    if type(m0) is nn.Linear:
        new = StackedLinear(k, m0.in_features, m0.out_features, bias=m0.bias is not None)
        new.weight = _stack_param([m.weight for m in mods], tuple(new.weight.shape))
        if m0.bias is not None:
            new.bias = _stack_param([m.bias for m in mods], tuple(new.bias.shape))
        return new
    if type(m0) in _locally_connected_types():
        return StackedLocallyConnected(mods)
    if isinstance(m0, _batchnorm_types()):
        return StackedBatchNorm(mods)
    if isinstance(m0, _norm_types()):
        new = copy.deepcopy(m0)
        # the same layer over K·C channels (GroupNorm: K·G groups of the same size)
        for attr in ("num_features", "num_channels", "num_groups"):
            if hasattr(new, attr):
                setattr(new, attr, k * getattr(m0, attr))
        for name, p in m0.named_parameters(recurse=False):
            setattr(new, name, _stack_param([getattr(m, name) for m in mods], (k * p.numel(),)))
        for name, b in m0.named_buffers(recurse=False):
            if b is None:
                continue
            if b.dim() == 0:  # num_batches_tracked: every member steps together
                new._buffers[name] = b.clone()
            else:
                new._buffers[name] = torch.stack([getattr(m, name) for m in mods]).reshape(-1).clone()
        return new
    return copy.deepcopy(m0)  # elementwise, no state


def stack_models(models: list[nn.Module]) -> nn.Module:
    """One model that computes ``len(models)`` independent copies side by side.

    Input ``(N, K·C, *)`` (:func:`stack_inputs`), output ``(N, K·classes)``; member k's
    parameters, buffers and gradients are ``t.view(K, -1)[k]`` of every stacked tensor.
    The members are not changed; :func:`unstack_into` copies the stacked state back.

    Raises:
        NotStackable: a layer without an exact stacked form (RNN, SyncBatchNorm,
            BatchRenorm, a grouped convolution), or members that differ in architecture.

    Example:
        >>> import torch
        >>> from sharenorm.models import ConvNet
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> nets = [ConvNet((1, 40), 10, width=8, norm="group", num_groups=2) for _ in range(3)]
        >>> big = stack_models(nets)
        >>> xs = torch.randn(3, 4, 1, 40)                       # (K, N, C, L): one batch per member
        >>> out = big(stack_inputs(xs)).view(4, 3, 10)          # (N, K, classes)
        >>> torch.allclose(out[:, 1], nets[1](xs[1]), atol=1e-5)
        True
    """
    if not models:
        raise NotStackable("stack_models needs at least one model")
    why = _why_not(models[0])
    if why is not None:
        raise NotStackable(f"cannot stack {type(models[0]).__name__}: {why}; train it alone")
    if not can_stack(models):
        raise NotStackable("the models to stack differ in architecture or shapes; stack only "
                           "copies of one architecture (e.g. the seeds of one configuration)")
    whole = _whole_model_stackers().get(type(models[0]))
    if whole is not None:
        stacked = whole(models)
        stacked.train(models[0].training)
        return stacked
    if not list(models[0].children()):  # a single layer
        return _stack_leaf(models)
    stacked = copy.deepcopy(models[0])
    names = [n for n, m in models[0].named_modules() if not list(m.children())]
    for name in names:
        leaves = [m.get_submodule(name) for m in models]
        parent, _, attr = name.rpartition(".")
        setattr(stacked.get_submodule(parent) if parent else stacked, attr, _stack_leaf(leaves))
    stacked.train(models[0].training)
    return stacked


@torch.no_grad()
def unstack_into(stacked: nn.Module, models: list[nn.Module], members=None) -> None:
    """Copy member k's slice of every parameter and buffer of ``stacked`` into ``models[k]``
    (for k in ``members``, default all)."""
    k_all = len(models)
    src = dict(stacked.named_parameters()) | dict(stacked.named_buffers())
    for k in range(k_all) if members is None else members:
        for name, t in list(models[k].named_parameters()) + list(models[k].named_buffers()):
            s = src[name]
            t.copy_(s if s.dim() == 0 else s.reshape(k_all, -1)[k].view_as(t))


def stack_inputs(xs: Tensor) -> Tensor:
    """``(K, N, C, *)`` (member k's batch at ``[k]``) → ``(N, K·C, *)``."""
    k, n, c = xs.shape[:3]
    return xs.transpose(0, 1).reshape(n, k * c, *xs.shape[3:])


class StackedOptimizer:
    """SGD (momentum, weight decay) or Adam over stacked parameters, per-member learning rate
    and weight decay, and members that can be frozen (diverged or finished).

    The update of every element is torch.optim's formula for that element:

    - SGD: ``g ← g + λ·θ``; ``b ← μ·b + g`` (``b = g`` at the first step); ``θ ← θ − lr·b``
    - Adam: ``g ← g + λ·θ``; ``m ← β₁m + (1−β₁)g``; ``v ← β₂v + (1−β₂)g²``;
      ``θ ← θ − lr·(m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)``

    with ``lr`` and ``λ`` member k's own on member k's elements. It is computed by torch's
    fused kernels (those of ``torch.optim.SGD/Adam(fused=True)``), one call per member over
    that member's slices: one pass over the parameters instead of one per operation, which is
    what these memory-bound updates cost. Parameters, gradients and optimizer state are views
    of one flat tensor each, member-major within every parameter (row k of
    ``view(K, -1)`` is member k's), so member k's slices are contiguous and a step allocates
    nothing. :meth:`freeze` stops a member: its parameters stay where they are, and a NaN in
    them is zeroed so no later operation of the stacked model meets it.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.ones(2, 3, dtype=torch.float64))  # 2 members of 3
        >>> opt = StackedOptimizer([w], 2, "sgd", lrs=[0.1, 0.5], weight_decays=[0.0, 0.0])
        >>> (w * 1.0).sum().backward()
        >>> opt.step()
        >>> w[:, 0].tolist()
        [0.9, 0.5]
    """

    def __init__(self, params: list[nn.Parameter], k: int, kind: str, lrs, weight_decays,
                 momentum: float = 0.9, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        if kind not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {kind!r}")
        self.params, self.k, self.kind = list(params), k, kind
        self.momentum, self.betas, self.eps = momentum, betas, eps
        self.lrs, self.weight_decays = [float(x) for x in lrs], [float(x) for x in weight_decays]
        sizes = [p.numel() for p in self.params]
        self.flat = torch.cat([p.detach().reshape(-1) for p in self.params])
        # gradients land in one flat buffer too: a parameter's .grad is a view of it, and
        # autograd accumulates into an existing .grad in place
        self.grad = torch.zeros_like(self.flat)
        self._grads, off = [], 0
        for p, n in zip(self.params, sizes, strict=True):
            p.data = self.flat[off:off + n].view_as(p)  # the parameter is now a view of flat
            self._grads.append(self.grad[off:off + n].view_as(p))
            off += n
        self.state1 = torch.zeros_like(self.flat)  # momentum buffer / Adam m
        self.state2 = torch.zeros_like(self.flat) if kind == "adam" else None
        self.t = 0
        self._steps = torch.zeros((), dtype=torch.float32)  # Adam's t, as the fused kernel reads it
        self.active = list(range(k))
        # [member][parameter]: member k's slices of the parameters, gradients and state
        self._p, self._g, self._s1 = (self._member_slices(b, sizes)
                                      for b in (self.flat, self.grad, self.state1))
        self._s2 = self._member_slices(self.state2, sizes) if kind == "adam" else None
        self._step_list = [self._steps] * len(sizes)  # one step count, read for every tensor
        self.zero_grad()

    def _member_slices(self, buf: Tensor, sizes: list[int]) -> list[list[Tensor]]:
        """``[member][parameter]``: member k's contiguous slice of each parameter in ``buf``."""
        out: list[list[Tensor]] = [[] for _ in range(self.k)]
        off = 0
        for n in sizes:
            rows = buf[off:off + n].view(self.k, -1)
            for j in range(self.k):
                out[j].append(rows[j])
            off += n
        return out

    def zero_grad(self) -> None:
        self.grad.zero_()
        for p, g in zip(self.params, self._grads, strict=True):
            p.grad = g

    @torch.no_grad()
    def step(self) -> None:
        if any(p.grad is not g for p, g in zip(self.params, self._grads, strict=True)):
            raise RuntimeError("StackedOptimizer: a parameter's .grad was replaced (e.g. by "
                               "zero_grad(set_to_none=True) of another optimizer); call this "
                               "optimizer's zero_grad() before backward")
        self.t += 1
        self._steps.fill_(self.t)
        for j in self.active:
            p, g, s1 = self._p[j], self._g[j], self._s1[j]
            if self.kind == "sgd":
                torch._fused_sgd_(p, g, s1, weight_decay=self.weight_decays[j],
                                  momentum=self.momentum, lr=self.lrs[j], dampening=0.0,
                                  nesterov=False, maximize=False, is_first_step=self.t == 1)
            else:
                torch._fused_adam_(p, g, s1, self._s2[j], [], self._step_list,
                                   lr=self.lrs[j], beta1=self.betas[0], beta2=self.betas[1],
                                   weight_decay=self.weight_decays[j], eps=self.eps,
                                   amsgrad=False, maximize=False)

    @torch.no_grad()
    def freeze(self, member: int) -> None:
        if member in self.active:
            self.active.remove(member)
        for p in self._p[member]:
            p.nan_to_num_(0.0, 0.0, 0.0)
