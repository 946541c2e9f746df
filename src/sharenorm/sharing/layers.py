"""Layers that differ from their torch counterparts only in *parameter sharing*.

* :class:`LocallyConnected1d` / :class:`LocallyConnected2d`: the connectivity of a convolution
  (kernel, stride, padding, dilation) with a separate filter at every output position, i.e. a
  convolution *without* weight sharing across positions.
* :class:`SharedRNN` / :class:`UnsharedRNN`: an Elman RNN (``nn.RNN``, one layer) whose weights are
  shared across time steps, and the same recurrence with separate weights per time step.

Each pair has the same interface, so an experiment can swap one for the other with everything
else equal; ``from_conv`` / ``from_shared`` copy a shared layer's weights into every position /
time step, which makes the unshared layer compute exactly what the shared one computes.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from sharenorm._checks import DtypeError, as_count
from sharenorm._fx import Proxy, call_module_node

__all__ = ["LocallyConnected1d", "LocallyConnected2d", "SharedRNN", "UnsharedRNN"]


def _int(value: Any) -> int | None:
    """``value`` as a plain int if it is an integer (numpy ints too, as torch takes), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _pair(value: Any, name: str, minimum: int) -> tuple[int, int]:
    if _int(value) is not None:
        value = (value, value)
    pair = tuple(_int(v) for v in value) if isinstance(value, (tuple, list)) else ()
    if len(pair) != 2 or any(v is None or v < minimum for v in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return pair


def _single(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    n = _int(value)
    if n is None or n < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return n


def _out_size(size: int, k: int, s: int, p: int, d: int) -> int:
    # Same formula as torch.nn.Conv2d's Shape section.
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def unshared_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, kernel: tuple[int, int],
                    stride: tuple[int, int], padding: tuple[int, int],
                    dilation: tuple[int, int], out_size: tuple[int, int]) -> Tensor:
    r"""G independent locally connected 2-D layers side by side (G = 1: one layer).

    .. math::
        y[n, (g, o), i, j] = b[g, o, (i, j)] + \sum_{c, u, v} W[g, (i, j), o, (c, u, v)]\,
                             x_{pad}[n, (g, c),\; i s_h + u d_h,\; j s_w + v d_w]

    Group g reads input channels ``[g·C, (g+1)·C)`` and writes output channels
    ``[g·O, (g+1)·O)``: the layout of a grouped convolution, which is how the lab stacks K
    models into one (:mod:`sharenorm.lab.batched`). Computed with one ``F.unfold`` and one
    batched matmul over (group, position), so G layers cost one layer's operations.

    Args:
        x: (N, G·C, H, W).
        weight: (G, P, O, C·k_h·k_w), P = H_out·W_out.
        bias: (G, O, P) or None.
        kernel, stride, padding, dilation: pairs, as in ``F.unfold``.
        out_size: (H_out, W_out).

    Returns:
        (N, G·O, H_out, W_out).

    Example:
        >>> import torch
        >>> x, w = torch.randn(2, 3, 1, 6), torch.randn(1, 6, 4, 3)  # G=1, C=3, k=1
        >>> unshared_conv2d(x, w, None, (1, 1), (1, 1), (0, 0), (1, 1), (1, 6)).shape
        torch.Size([2, 4, 1, 6])
    """
    n = x.shape[0]
    g, p, o, j = weight.shape
    # (N, G·C·kh·kw, P): unfold orders a column by channel, then kernel offset, so a group's
    # patches are one contiguous block of rows, the same patches a convolution sees.
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    # One batched matmul over (group, position): (G·P, N, J) @ (G·P, J, O) -> (G·P, N, O). Both
    # operands are made contiguous first (a reshape alone can return a strided view when G = 1):
    # measured 1.5-3x faster fwd+bwd than strided bmm operands.
    out = torch.bmm(cols.view(n, g, j, p).permute(1, 3, 0, 2).contiguous().view(g * p, n, j),
                    weight.transpose(2, 3).contiguous().view(g * p, j, o))
    out = out.view(g, p, n, o).permute(2, 0, 3, 1)  # (N, G, O, P)
    if bias is not None:
        out = out + bias
    return out.reshape(n, g * o, *out_size)


class _LocallyConnectedNd(nn.Module):
    """Shared implementation; the input is always handled as 2-D (1-D uses height 1)."""

    _ndim = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        input_size: tuple[int, int],
        kernel_size: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int],
        bias: bool,
        device: Any,
        dtype: Any,
    ) -> None:
        super().__init__()
        self.in_channels = as_count(in_channels, "in_channels", "")
        self.out_channels = as_count(out_channels, "out_channels", "")
        self._size2, self._k2, self._s2, self._p2, self._d2 = (
            input_size,
            kernel_size,
            stride,
            padding,
            dilation,
        )
        out = tuple(
            _out_size(n, k, s, p, d)
            for n, k, s, p, d in zip(
                input_size, kernel_size, stride, padding, dilation, strict=True
            )
        )
        if min(out) < 1:
            raise ValueError(
                f"kernel_size={self.kernel_size} (dilation={self.dilation}) does not fit "
                f"input_size={self.input_size} with padding={self.padding}: the output would be "
                f"empty; use a smaller kernel or more padding"
            )
        self._out2 = out
        factory = {"device": device, "dtype": dtype}
        positions = out[0] * out[1]
        fan_in = self.in_channels * kernel_size[0] * kernel_size[1]
        # Stored as (positions, out, in*k) so the forward is one batched matmul without copies.
        self.weight = nn.Parameter(torch.empty(positions, self.out_channels, fan_in, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_channels, positions, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    # Public geometry in the layer's own rank (1-D layers report 1-tuples).
    def _public(self, pair: tuple[int, int]) -> tuple[int, ...]:
        return pair if self._ndim == 2 else (pair[1],)

    @property
    def input_size(self) -> tuple[int, ...]:
        return self._public(self._size2)

    @property
    def output_size(self) -> tuple[int, ...]:
        return self._public(self._out2)

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return self._public(self._k2)

    @property
    def stride(self) -> tuple[int, ...]:
        return self._public(self._s2)

    @property
    def padding(self) -> tuple[int, ...]:
        return self._public(self._p2)

    @property
    def dilation(self) -> tuple[int, ...]:
        return self._public(self._d2)

    def reset_parameters(self) -> None:
        """Initialise every position's filter as ``nn.Conv`` initialises its one filter:
        ``U(-1/√fan_in, 1/√fan_in)`` (Conv's ``kaiming_uniform_(a=√5)`` bound) for weight and bias,
        with ``fan_in = in_channels · prod(kernel_size)`` (per output unit, not per tensor)."""
        bound = 1.0 / math.sqrt(self.weight.shape[-1])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, input_size={self.input_size}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}"
        )
        if any(self.padding):
            s += f", padding={self.padding}"
        if any(d != 1 for d in self.dilation):
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        return s

    def _forward2d(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.unsqueeze(0)
        return unshared_conv2d(x, self.weight.unsqueeze(0), bias, self._k2, self._s2, self._p2,
                               self._d2, self._out2)

    def _check_input(self, x: Tensor) -> None:
        rank = self._ndim + 2
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__} takes a Tensor, got {type(x).__name__}")
        if x.dim() not in (rank - 1, rank):
            raise ValueError(
                f"{type(self).__name__} expects a {rank - 1}-D (unbatched) or {rank}-D input "
                f"(N, C, {'H, W' if self._ndim == 2 else 'L'}), got shape {tuple(x.shape)}"
            )
        if x.shape[-self._ndim - 1] != self.in_channels or tuple(x.shape[-self._ndim :]) != tuple(
            self.input_size
        ):
            raise ValueError(
                f"{type(self).__name__} was built for inputs (N, {self.in_channels}, "
                f"{', '.join(map(str, self.input_size))}), got shape {tuple(x.shape)}; "
                f"a locally connected layer has one filter per position, so the spatial size "
                f"is fixed at construction (input_size=)"
            )
        if x.dtype != self.weight.dtype:  # else the batched matmul's "expected scalar type"
            w = self.weight.dtype
            model = f", or the model: model.to({x.dtype})" if x.is_floating_point() else ""
            raise DtypeError(
                f"{type(self).__name__} input dtype ({x.dtype}) does not match weight dtype "
                f"({w}). Convert the input: input.to({w}){model}"
            )


class LocallyConnected2d(_LocallyConnectedNd):
    r"""A 2-D convolution without weight sharing: every output position has its own filter.

    .. math::
        y[n, o, i, j] = b[o, i, j] + \sum_{c, u, v} W[(i, j), o, (c, u, v)]\,
                        x_{pad}[n, c,\; i s_h + u d_h,\; j s_w + v d_w]

    With all position filters equal to a ``Conv2d`` weight (and ``b[o, i, j] = b_{conv}[o]``) this
    is exactly ``Conv2d`` with the same kernel/stride/padding/dilation; :meth:`from_conv` builds
    that layer. Parameters: ``H_out·W_out`` times those of the convolution (plus per-position bias).
    Computed with ``F.unfold`` and one batched matmul over positions (no Python loop).

    Args:
        in_channels: C_in.
        out_channels: C_out.
        input_size: (H, W) of the input; fixed, because the number of filters depends on it.
        kernel_size, stride, padding, dilation: as in ``nn.Conv2d`` (int or pair; zero padding).
        bias: a learnable bias per output channel *and position*. Default: True.

    Shape:
        - Input: (N, C_in, H, W) or (C_in, H, W)
        - Output: (N, C_out, H_out, W_out) or (C_out, H_out, W_out), H_out/W_out as in Conv2d.
        - ``weight``: (H_out·W_out, C_out, C_in·k_h·k_w); ``bias``: (C_out, H_out·W_out).

    Example:
        >>> import torch, sharenorm as sn
        >>> lc = sn.LocallyConnected2d(1, 4, input_size=(28, 28), kernel_size=3, padding=1)
        >>> lc(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 4, 28, 28])
    """

    _ndim = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        input_size: int | tuple[int, int],
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            _pair(input_size, "input_size", 1),
            _pair(kernel_size, "kernel_size", 1),
            _pair(stride, "stride", 1),
            _pair(padding, "padding", 0),
            _pair(dilation, "dilation", 1),
            bias,
            device,
            dtype,
        )

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) and isinstance(x, Proxy):  # torch.fx tracing
            return call_module_node(self, x)
        self._check_input(x)
        if x.dim() == 3:
            return self._forward2d(x.unsqueeze(0)).squeeze(0)
        return self._forward2d(x)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, input_size: int | tuple[int, int]) -> LocallyConnected2d:
        """The locally connected layer that computes exactly ``conv`` on inputs of
        ``input_size``: the conv filter (and bias) copied to every output position."""
        return _from_conv(cls, conv, input_size, 2)


class LocallyConnected1d(_LocallyConnectedNd):
    r"""A 1-D convolution without weight sharing: every output position has its own filter.

    .. math::
        y[n, o, i] = b[o, i] + \sum_{c, u} W[i, o, (c, u)]\; x_{pad}[n, c,\; i s + u d]

    Equal to ``Conv1d`` when all position filters are the conv filter (see :meth:`from_conv`).

    Args:
        in_channels, out_channels: C_in, C_out.
        input_size: L of the input (fixed).
        kernel_size, stride, padding, dilation: as in ``nn.Conv1d`` (ints; zero padding).
        bias: a learnable bias per output channel and position. Default: True.

    Shape:
        - Input: (N, C_in, L) or (C_in, L); Output: (N, C_out, L_out) or (C_out, L_out).
        - ``weight``: (L_out, C_out, C_in·k); ``bias``: (C_out, L_out).

    Example:
        >>> import torch, sharenorm as sn
        >>> lc = sn.LocallyConnected1d(2, 3, input_size=40, kernel_size=5, stride=2)
        >>> lc(torch.randn(8, 2, 40)).shape
        torch.Size([8, 3, 18])
    """

    _ndim = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        input_size: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        # A 1-D layer is the 2-D one on inputs of height 1 (kernel 1, no padding along height).
        super().__init__(
            in_channels,
            out_channels,
            (1, _single(input_size, "input_size", 1)),
            (1, _single(kernel_size, "kernel_size", 1)),
            (1, _single(stride, "stride", 1)),
            (0, _single(padding, "padding", 0)),
            (1, _single(dilation, "dilation", 1)),
            bias,
            device,
            dtype,
        )

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) and isinstance(x, Proxy):  # torch.fx tracing
            return call_module_node(self, x)
        self._check_input(x)
        batched = x if x.dim() == 3 else x.unsqueeze(0)
        out = self._forward2d(batched.unsqueeze(2)).squeeze(2)
        return out if x.dim() == 3 else out.squeeze(0)

    @classmethod
    def from_conv(cls, conv: nn.Conv1d, input_size: int) -> LocallyConnected1d:
        """The locally connected layer that computes exactly ``conv`` on inputs of length
        ``input_size``: the conv filter (and bias) copied to every output position."""
        return _from_conv(cls, conv, input_size, 1)


def _from_conv(cls: type, conv: nn.Module, input_size: Any, ndim: int) -> Any:
    expected = nn.Conv2d if ndim == 2 else nn.Conv1d
    if not isinstance(conv, expected):
        raise TypeError(f"{cls.__name__}.from_conv expects an nn.{expected.__name__}, got {conv!r}")
    if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(
            "from_conv supports groups=1, padding_mode='zeros' and numeric padding only, got "
            f"groups={conv.groups}, padding_mode={conv.padding_mode!r}, padding={conv.padding!r}"
        )
    unpack = (lambda t: t) if ndim == 2 else (lambda t: t[0])
    lc = cls(
        conv.in_channels,
        conv.out_channels,
        input_size,
        unpack(conv.kernel_size),
        stride=unpack(conv.stride),
        padding=unpack(conv.padding),
        dilation=unpack(conv.dilation),
        bias=conv.bias is not None,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        lc.weight.copy_(conv.weight.reshape(1, conv.out_channels, -1).expand_as(lc.weight))
        if conv.bias is not None:
            lc.bias.copy_(conv.bias[:, None].expand_as(lc.bias))
    return lc


_NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


class _RNNBase(nn.Module):
    """Input handling shared by the shared and unshared RNN (``nn.RNN``'s conventions)."""

    def __init__(
        self, input_size: int, hidden_size: int, nonlinearity: str, batch_first: bool
    ) -> None:
        super().__init__()
        self.input_size = as_count(input_size, "input_size", "")
        self.hidden_size = as_count(hidden_size, "hidden_size", "")
        if not isinstance(nonlinearity, str) or nonlinearity not in _NONLINEARITIES:
            raise ValueError(
                f"nonlinearity must be one of {sorted(_NONLINEARITIES)}, got {nonlinearity!r}"
            )
        self.nonlinearity = nonlinearity
        self.batch_first = bool(batch_first)

    def _init_uniform(self) -> None:
        # nn.RNN's init: every weight and bias ~ U(-1/√H, 1/√H).
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def _weights(self, t: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        raise NotImplementedError

    def _input_projection(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(
        self, input: Tensor | PackedSequence, hx: Tensor | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        """Run the recurrence ``h_t = act(x_t W_ih[t]ᵀ + b_ih[t] + h_{t-1} W_hh[t]ᵀ + b_hh[t])``.

        Args:
            input: (L, N, H_in), or (N, L, H_in) with ``batch_first=True``, or unbatched
                (L, H_in), or a ``PackedSequence`` of sequences of different lengths.
            hx: initial hidden state (1, N, H) or (1, H) unbatched; zeros if None.

        Returns:
            ``(output, h_n)`` exactly like ``nn.RNN``: output (L, N, H) (batch_first: (N, L, H)),
            or a ``PackedSequence`` for a packed input; h_n (1, N, H), each sequence's hidden
            state after its own last step.
        """
        name = type(self).__name__
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx)
        if not isinstance(input, Tensor):
            if isinstance(input, Proxy):  # torch.fx tracing
                return call_module_node(self, input, hx)
            raise TypeError(
                f"{name} takes a Tensor or a PackedSequence, got {type(input).__name__}; "
                "convert it with torch.as_tensor"
            )
        if input.dim() not in (2, 3):
            raise ValueError(
                f"{name} expects a 3-D (batched) or 2-D (unbatched) input, got "
                f"shape {tuple(input.shape)}"
            )
        unbatched = input.dim() == 2
        x = (
            input.unsqueeze(1)
            if unbatched
            else (input.transpose(0, 1) if self.batch_first else input)
        )
        out = self._run(x, self._initial_state(hx, x.shape[1], unbatched))
        h_n = out[-1].unsqueeze(0)
        if unbatched:
            return out.squeeze(1), h_n.squeeze(1)
        return (out.transpose(0, 1) if self.batch_first else out), h_n

    def _initial_state(self, hx: Tensor | None, batch: int, unbatched: bool) -> Tensor | None:
        """``hx`` checked against nn.RNN's shape, (1, N, H) or (1, H) unbatched, as (N, H)."""
        if hx is None:
            return None
        if not isinstance(hx, Tensor):
            raise TypeError(f"hx must be a Tensor or None, got {type(hx).__name__}")
        expected = (1, self.hidden_size) if unbatched else (1, batch, self.hidden_size)
        if tuple(hx.shape) != expected:
            raise ValueError(f"hx must have shape {expected}, got {tuple(hx.shape)}")
        return hx.reshape(batch, self.hidden_size)

    def _run(self, x: Tensor, h: Tensor | None) -> Tensor:
        """Every step's hidden state (L, N, H) of the (L, N, H_in) input ``x`` from ``h``."""
        name = type(self).__name__
        if x.shape[-1] != self.input_size:
            raise ValueError(
                f"{name} expects input feature size {self.input_size}, got input whose last "
                f"dimension is {x.shape[-1]}"
            )
        weight = self.weight_hh
        if x.dtype != weight.dtype:
            raise ValueError(
                f"{name} input dtype ({x.dtype}) does not match weight dtype ({weight.dtype}). "
                f"Convert the input: input.to({weight.dtype}), or the model: "
                f"model.to({x.dtype})"
            )
        if x.shape[0] == 0:
            raise ValueError(f"{name} needs a sequence of at least one step, got 0 steps")
        steps, batch = x.shape[0], x.shape[1]
        if h is None:
            h = x.new_zeros(batch, self.hidden_size)
        act = _NONLINEARITIES[self.nonlinearity]
        # The input projections of all steps do not depend on h: compute them in one op.
        xw = self._input_projection(x)  # (L, N, H), includes b_ih
        outputs = []
        for t in range(steps):
            _, w_hh, _, b_hh = self._weights(t)
            pre = xw[t] + h @ w_hh.T
            if b_hh is not None:
                pre = pre + b_hh
            h = act(pre)
            outputs.append(h)
        return torch.stack(outputs)

    def _forward_packed(
        self, input: PackedSequence, hx: Tensor | None
    ) -> tuple[PackedSequence, Tensor]:
        """A packed batch: run the padded batch (sequences in their original order, as
        ``hx`` is), take each sequence's hidden state at its own last step, and pack the
        outputs with the input's batch sizes and order. Steps past a sequence's end run on
        padding and are dropped: nothing of them reaches h_n or the output."""
        padded, lengths = pad_packed_sequence(input)  # (L, N, H_in), original order
        batch = padded.shape[1]
        out = self._run(padded, self._initial_state(hx, batch, unbatched=False))
        last = (lengths - 1).to(out.device)
        h_n = out[last, torch.arange(batch, device=out.device)].unsqueeze(0)
        order = input.sorted_indices
        by_length = out if order is None else out.index_select(1, order)
        data = torch.cat([by_length[t, :n] for t, n in enumerate(input.batch_sizes.tolist())])
        packed = PackedSequence(data, input.batch_sizes, input.sorted_indices,
                                input.unsorted_indices)
        return packed, h_n


class SharedRNN(_RNNBase):
    r"""An Elman RNN whose weights are shared across time steps (one-layer ``nn.RNN``).

    .. math:: h_t = \tanh(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh})

    The same four tensors serve every step, so the parameter count does not depend on the
    sequence length. Same interface as :class:`UnsharedRNN` and as ``nn.RNN`` (one layer).

    Args:
        input_size: H_in.
        hidden_size: H.
        nonlinearity: ``"tanh"`` (default) or ``"relu"``.
        bias: use ``b_ih``/``b_hh``. Default: True.
        batch_first: input/output as (N, L, ·). Default: False.

    Shape:
        input (L, N, H_in) → output (L, N, H), h_n (1, N, H); see :meth:`forward`.
        ``weight_ih``: (H, H_in), ``weight_hh``: (H, H), ``bias_ih``/``bias_hh``: (H,).

    Example:
        >>> import torch, sharenorm as sn
        >>> rnn = sn.SharedRNN(3, 5)
        >>> out, h = rnn(torch.randn(7, 2, 3))
        >>> out.shape, h.shape
        (torch.Size([7, 2, 5]), torch.Size([1, 2, 5]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(input_size, hidden_size, nonlinearity, batch_first)
        f = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size, **f))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size, **f))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(hidden_size, **f))
            self.bias_hh = nn.Parameter(torch.empty(hidden_size, **f))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.RNN``'s init: every tensor ~ U(-1/√H, 1/√H)."""
        self._init_uniform()

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, nonlinearity={self.nonlinearity!r}"
        if self.bias_ih is None:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        return s

    def _weights(self, t: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh

    def _input_projection(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih)

    @classmethod
    def from_torch(cls, rnn: nn.RNN) -> SharedRNN:
        """Copy a one-layer unidirectional ``nn.RNN`` (same outputs)."""
        if not isinstance(rnn, nn.RNN) or rnn.num_layers != 1 or rnn.bidirectional:
            raise ValueError("from_torch expects a one-layer, unidirectional nn.RNN")
        w = rnn.weight_ih_l0
        new = cls(
            rnn.input_size,
            rnn.hidden_size,
            rnn.nonlinearity,
            rnn.bias,
            rnn.batch_first,
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            new.weight_ih.copy_(rnn.weight_ih_l0)
            new.weight_hh.copy_(rnn.weight_hh_l0)
            if rnn.bias:
                new.bias_ih.copy_(rnn.bias_ih_l0)
                new.bias_hh.copy_(rnn.bias_hh_l0)
        return new


class UnsharedRNN(_RNNBase):
    r"""The RNN recurrence with separate weights for every time step (no sharing in time).

    .. math:: h_t = \tanh(x_t W_{ih}[t]^T + b_{ih}[t] + h_{t-1} W_{hh}[t]^T + b_{hh}[t])

    ``seq_len`` sets how many steps have weights; shorter sequences use the first steps'
    weights, longer ones are an error. Parameters: ``seq_len`` times :class:`SharedRNN`'s.
    With every step's weights equal (:meth:`from_shared`) it computes exactly the shared RNN.

    Args:
        input_size: H_in.
        hidden_size: H.
        seq_len: the number of time steps with their own weights (the longest input).
        nonlinearity, bias, batch_first: as in :class:`SharedRNN`.

    Shape:
        As :class:`SharedRNN`; ``weight_ih``: (seq_len, H, H_in), ``weight_hh``: (seq_len, H, H),
        ``bias_ih``/``bias_hh``: (seq_len, H).

    Example:
        >>> import torch, sharenorm as sn
        >>> rnn = sn.UnsharedRNN(3, 5, seq_len=7)
        >>> out, h = rnn(torch.randn(7, 2, 3))
        >>> out.shape
        torch.Size([7, 2, 5])
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        seq_len: int,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(input_size, hidden_size, nonlinearity, batch_first)
        self.seq_len = as_count(seq_len, "seq_len", "")
        f = {"device": device, "dtype": dtype}
        self.weight_ih = nn.Parameter(torch.empty(seq_len, hidden_size, input_size, **f))
        self.weight_hh = nn.Parameter(torch.empty(seq_len, hidden_size, hidden_size, **f))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(seq_len, hidden_size, **f))
            self.bias_hh = nn.Parameter(torch.empty(seq_len, hidden_size, **f))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.RNN``'s init for every step: every tensor ~ U(-1/√H, 1/√H)."""
        self._init_uniform()

    def extra_repr(self) -> str:
        s = (
            f"{self.input_size}, {self.hidden_size}, seq_len={self.seq_len}, "
            f"nonlinearity={self.nonlinearity!r}"
        )
        if self.bias_ih is None:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        return s

    def _weights(self, t: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        b_ih = None if self.bias_ih is None else self.bias_ih[t]
        b_hh = None if self.bias_hh is None else self.bias_hh[t]
        return self.weight_ih[t], self.weight_hh[t], b_ih, b_hh

    def _input_projection(self, x: Tensor) -> Tensor:
        steps = x.shape[0]
        if steps > self.seq_len:
            raise ValueError(
                f"UnsharedRNN has weights for seq_len={self.seq_len} steps, got a sequence of "
                f"{steps}; build it with seq_len >= {steps}"
            )
        # Step t uses its own W_ih[t]: (L, N, I) x (L, H, I) -> (L, N, H), one batched matmul.
        xw = torch.bmm(x, self.weight_ih[:steps].transpose(1, 2))
        if self.bias_ih is not None:
            xw = xw + self.bias_ih[:steps, None, :]
        return xw

    @classmethod
    def from_shared(cls, rnn: SharedRNN | nn.RNN, seq_len: int) -> UnsharedRNN:
        """The unshared RNN whose every step starts from ``rnn``'s weights (same outputs)."""
        if isinstance(rnn, nn.RNN):
            rnn = SharedRNN.from_torch(rnn)
        if not isinstance(rnn, SharedRNN):
            raise TypeError(f"from_shared expects a SharedRNN or nn.RNN, got {type(rnn).__name__}")
        w = rnn.weight_ih
        new = cls(
            rnn.input_size,
            rnn.hidden_size,
            seq_len,
            rnn.nonlinearity,
            rnn.bias_ih is not None,
            rnn.batch_first,
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                src = getattr(rnn, name)
                if src is not None:
                    getattr(new, name).copy_(src.unsqueeze(0).expand_as(getattr(new, name)))
        return new
