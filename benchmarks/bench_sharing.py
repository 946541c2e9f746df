"""Shared vs not shared, measured in one run: parameters, bytes, Adam state, checkpoint size and
forward+backward time, with ratios (shared / not shared).

Pairs:
  * TiedAutoencoder([784, 256, 64]) tied vs untied, on flattened 28×28 inputs;
  * SharedStack(depth 12) of a residual MLP block (LayerNorm unshared) vs 12 independent blocks;
  * Conv2d(1→16, 3×3, pad 1) vs LocallyConnected2d with the same connectivity, on 28×28 inputs.

Checkpoints are written with ``sharenorm.save``; "ckpt/unique" is (file bytes − header bytes) /
unique tensor bytes, which must be 1.00 for every model (each stored tensor written once).
Times are medians over repeats (ms, CPU, this machine; shared and unshared timed alternately),
so only the ratio column is comparable across machines.

Run:  python benchmarks/bench_sharing.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import struct
import tempfile
import time

import torch
from torch import nn

import sharenorm as sn


class MLPBlock(nn.Module):
    """x + W2·gelu(W1·LN(x)): a pre-norm residual MLP block (transformer-style)."""

    def __init__(self, d: int = 128, hidden: int = 512) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))


def pairs() -> list[tuple[str, nn.Module, nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    images = torch.randn(64, 1, 28, 28)
    ae_tied = sn.TiedAutoencoder([784, 256, 64], tied=True)
    ae_plain = sn.TiedAutoencoder([784, 256, 64], tied=False)
    block = MLPBlock()
    stack_shared = sn.SharedStack(block, depth=12, unshared=("norm",))
    stack_plain = nn.Sequential(*[MLPBlock() for _ in range(12)])
    conv = nn.Conv2d(1, 16, 3, padding=1)
    lc = sn.LocallyConnected2d.from_conv(conv, (28, 28))
    return [
        ("autoencoder [784,256,64]", ae_tied, ae_plain, images.flatten(1)),
        ("SharedStack depth 12", stack_shared, stack_plain, torch.randn(64, 128)),
        ("Conv2d vs LocallyConn2d", conv, lc, images),
    ]


def fwd_bwd_ms(
    models: tuple[nn.Module, nn.Module], x: torch.Tensor, repeats: int
) -> tuple[float, float]:
    """Median forward+backward ms of both models, timed alternately so that load from other
    processes on the machine hits both the same way."""

    def step(model: nn.Module) -> float:
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        model(x).pow(2).mean().backward()
        return time.perf_counter() - t0

    for _ in range(3):  # warm-up
        for m in models:
            step(m)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for m, t in zip(models, times, strict=True):
            t.append(step(m))
    return 1e3 * statistics.median(times[0]), 1e3 * statistics.median(times[1])


def header_bytes(path: str) -> int:
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def measure(model: nn.Module, x: torch.Tensor, tmp: str) -> dict[str, float]:
    rep = sn.parameter_report(model)
    path = os.path.join(tmp, "ckpt.safetensors")
    sn.save(model, path)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    ckpt = os.path.getsize(path)
    # Round trip: the checkpoint loads back into a copy with the same outputs.
    clone = copy.deepcopy(model)
    sn.load(clone, path)
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))
    return {
        "params": rep.unique,
        "param_bytes": rep.unique_bytes,
        "adam_bytes": rep.adam_state_bytes,
        "ckpt_bytes": ckpt,
        "ckpt_over_unique": (ckpt - header_bytes(path)) / (rep.unique_bytes + buffers),
    }


def main() -> None:
    summary = " ".join(__doc__.split("\n\n")[0].split())  # the first paragraph, whole
    parser = argparse.ArgumentParser(description=summary)
    parser.add_argument("--repeats", type=int, default=30,
                        help="timed forward+backward passes per model (median reported; default 30)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {args.repeats}")
    cols = ["params", "param_bytes", "adam_bytes", "ckpt_bytes", "ms"]
    head = (
        f"{'model':<26} {'variant':<9}" + "".join(f"{c:>13}" for c in cols) + f"{'ckpt/unique':>13}"
    )
    print(head)
    print("-" * len(head))
    with tempfile.TemporaryDirectory() as tmp:
        for name, shared, plain, x in pairs():
            a = measure(shared, x, tmp)
            b = measure(plain, x, tmp)
            a["ms"], b["ms"] = fwd_bwd_ms((shared, plain), x, args.repeats)
            for variant, r in (("shared", a), ("unshared", b)):
                row = f"{name:<26} {variant:<9}"
                row += "".join(f"{r[c]:>13.2f}" if c == "ms" else f"{int(r[c]):>13,}" for c in cols)
                print(row + f"{r['ckpt_over_unique']:>13.2f}")
            ratio = f"{name:<26} {'ratio':<9}" + "".join(f"{a[c] / b[c]:>13.3f}" for c in cols)
            print(ratio)
            print()
    print("ratio = shared / unshared. ckpt/unique = (file - header) / unique tensor bytes.")


if __name__ == "__main__":
    main()
