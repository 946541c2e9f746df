"""Gradient error of the plain and the memory-efficient (``memory_efficient=True``) norm +
activation against a float64 reference, per dtype (the README's "16-bit memory-efficient
backward" figures).

The memory-efficient path keeps the output y and, where inverting is safe, recovers
x̂ = (act⁻¹(y) − β)/γ from it: x̂ then carries y's rounding, one unit of the input dtype,
where the plain path computes x̂ from the input in float32. In 16 bits that shows in dγ.

Each row: BatchNorm in training with float32 γ/β (what autocast gives) or GroupNorm with
γ/β in the input's dtype (a model cast with ``.half()``), 8×16×16×16 input with mean 1 and
std 3, |γ| ~ U(0.5, 2) with a random sign and β ~ N(0, 1), so that every channel passes the
inversion's check (|β| ≤ 16·|γ|; a layer with a channel that fails it saves its input and
its gradients are the plain path's); relative error = max|g − g₆₄| / max|g₆₄|, median over 9
seeds.

Run: python benchmarks/accuracy_memory_efficient.py
"""

from __future__ import annotations

import statistics

import torch

import sharenorm.functional as SF

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def grads(kind: str, x, w, b, g, act: str | None, memory_efficient: bool):
    """(dx, dγ, dβ) of the norm + activation at ``x`` for the output gradient ``g``."""
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    if kind == "batch":
        y = SF.batch_norm(x, None, None, w, b, True, act=act, memory_efficient=memory_efficient)
    else:
        y = SF.group_norm(x, 4, w, b, act=act, memory_efficient=memory_efficient)
    return torch.autograd.grad(y, (x, w, b), g.to(y.dtype))


def relative_errors(kind: str, dtype: torch.dtype, act: str | None, seed: int):
    """{(path, gradient): relative error} for one draw."""
    gen = torch.Generator().manual_seed(seed)
    c = 16
    x = (torch.randn(8, c, 16, 16, generator=gen, dtype=torch.float64) * 3 + 1).to(dtype)
    pdtype = torch.float32 if kind == "batch" and dtype != torch.float64 else dtype
    sign = torch.randint(0, 2, (c,), generator=gen).double() * 2 - 1
    w = (sign * (0.5 + 1.5 * torch.rand(c, generator=gen, dtype=torch.float64))).to(pdtype)
    b = torch.randn(c, generator=gen, dtype=torch.float64).to(pdtype)
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
    ref = grads(kind, x.double(), w.double(), b.double(), g.double(), act, False)
    out = {}
    for path, me in (("plain", False), ("memory-efficient", True)):
        for name, got, want in zip(("dx", "dγ", "dβ"), grads(kind, x, w, b, g, act, me), ref,
                                   strict=True):
            out[path, name] = float((got.double() - want).abs().max() / want.abs().max())
    return out


def main() -> None:
    print("relative gradient error vs float64 (max|g − g64| / max|g64|), median of 9 seeds")
    print(f"{'norm':6s} {'dtype':9s} {'act':11s} {'path':17s} {'dx':>8s} {'dγ':>8s} {'dβ':>8s}")
    for kind in ("batch", "group"):
        for dtype in DTYPES:
            for act in (None, "leaky_relu"):
                runs = [relative_errors(kind, dtype, act, s) for s in range(9)]
                for path in ("plain", "memory-efficient"):
                    cells = [statistics.median(r[path, n] for r in runs) for n in ("dx", "dγ", "dβ")]
                    print(f"{kind:6s} {str(dtype)[6:]:9s} {str(act):11s} {path:17s} "
                          + " ".join(f"{v:8.1e}" for v in cells))


if __name__ == "__main__":
    main()
