"""The seeds' normalization math, plainly, in float64: the test oracle (slow, easy to check).

Every norm is x̂ = γ(x − μ)/√(σ² + ε) + β with μ, σ² over: batch — N and positions (per
channel); instance — one sample's positions; group — C/G channels × positions; layer — all
of one sample. Biased σ² normalizes, running statistics keep the unbiased one, as in
``torch.nn`` (the table: docs/design/reference-norms.md).

Example:
    >>> import torch
    >>> from sharenorm.norm import reference
    >>> reference.group_norm(torch.randn(4, 6, 5, 5), num_groups=3).dtype
    torch.float64
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "normalize",
    "batch_norm",
    "instance_norm",
    "group_norm",
    "layer_norm",
    "update_running",
    "ACTIVATIONS",
]


def _affine(x_hat: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """γ · x̂ + β with γ, β of shape (C,) broadcast over (N, C, *spatial)."""
    shape = (1, -1) + (1,) * (x_hat.dim() - 2)
    if weight is not None:
        x_hat = x_hat * weight.to(torch.float64).reshape(shape)
    if bias is not None:
        x_hat = x_hat + bias.to(torch.float64).reshape(shape)
    return x_hat


def normalize(x: Tensor, dims: tuple[int, ...], eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """(x − μ) / √(σ² + ε) with μ, σ² (biased) over ``dims``; returns (x̂, μ, σ²)."""
    x = x.to(torch.float64)
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)  # biased: divide by m
    return (x - mean) / torch.sqrt(var + eps), mean, var


def update_running(
    running: Tensor, batch_value: Tensor, momentum: float | None, num_batches_tracked: int
) -> Tensor:
    """New running statistic: ``(1 − m)·running + m·batch``.

    ``momentum=None`` is the cumulative average, ``m = 1 / num_batches_tracked`` where
    ``num_batches_tracked`` already counts the current batch.
    """
    m = 1.0 / num_batches_tracked if momentum is None else momentum
    return (1.0 - m) * running.to(torch.float64) + m * batch_value.to(torch.float64)


def batch_norm(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor, Tensor]:
    """Batch Normalization in training mode.

    μ_c = mean of x[:, c, ...] over the batch and every spatial position;
    σ²_c likewise (biased). Returns ``(y, μ, σ²_unbiased)`` with μ and the unbiased
    σ² of shape (C,), the values a running-statistics update uses.
    """
    dims = (0,) + tuple(range(2, x.dim()))
    x_hat, mean, var = normalize(x, dims, eps)
    m = x.numel() // x.shape[1]
    unbiased = var.reshape(-1) * m / max(m - 1, 1)
    return _affine(x_hat, weight, bias), mean.reshape(-1), unbiased


def batch_norm_eval(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Batch Normalization in eval mode: the running statistics replace μ and σ²."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    mean = running_mean.to(torch.float64).reshape(shape)
    var = running_var.to(torch.float64).reshape(shape)
    x_hat = (x.to(torch.float64) - mean) / torch.sqrt(var + eps)
    return _affine(x_hat, weight, bias)


def instance_norm(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor, Tensor]:
    """Instance Normalization: μ_{n,c}, σ²_{n,c} over the spatial positions of one
    sample's one channel. Returns ``(y, μ, σ²_unbiased)`` with the statistics averaged
    over the batch, shape (C,), as torch's running-statistics update uses them."""
    dims = tuple(range(2, x.dim()))
    x_hat, mean, var = normalize(x, dims, eps)
    m = x[0, 0].numel()
    unbiased = var * m / max(m - 1, 1)
    flat = (x.shape[0], x.shape[1])
    return (
        _affine(x_hat, weight, bias),
        mean.reshape(flat).mean(0),
        unbiased.reshape(flat).mean(0),
    )


def group_norm(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Group Normalization: the C channels are split into G groups of C/G consecutive
    channels; μ_{n,g}, σ²_{n,g} are taken over one sample's group (its C/G channels ×
    every spatial position). γ, β stay per channel."""
    n, c = x.shape[:2]
    grouped = x.reshape(n, num_groups, -1)  # (N, G, C/G · spatial)
    x_hat, _, _ = normalize(grouped, (2,), eps)
    return _affine(x_hat.reshape(x.shape), weight, bias)


def layer_norm(
    x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5
) -> Tensor:
    """Layer Normalization over (C, *spatial) with per-channel γ, β: GN with one group."""
    return group_norm(x, 1, weight, bias, eps)


def _gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / 2.0**0.5))


# The activations ``act=`` accepts, written from their definitions (float64 in, float64 out).
ACTIVATIONS = {
    None: lambda x, p: x,
    "identity": lambda x, p: x,
    "relu": lambda x, p: torch.clamp(x, min=0.0),
    "leaky_relu": lambda x, p: torch.where(x >= 0, x, x * (0.01 if p is None else p)),
    "elu": lambda x, p: torch.where(x > 0, x, (1.0 if p is None else p) * (torch.exp(x) - 1)),
    "silu": lambda x, p: x / (1.0 + torch.exp(-x)),
    "gelu": lambda x, p: _gelu(x),
    "tanh": lambda x, p: torch.tanh(x),
    "sigmoid": lambda x, p: 1.0 / (1.0 + torch.exp(-x)),
}
