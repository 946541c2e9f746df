"""sharenorm's plain norm layers against torch.nn, measured in the same run.

For each norm × shape × layout × mode, the two layers run alternately (so drift in the
machine's load hits both alike) and the table shows the median time of each and the
ratio sharenorm / torch.nn. Target on CPU: ratio ≤ 1.05 at the large shape. BatchNorm in
training adds two small ops per call that torch.nn does not have (the copy and the finiteness
check that keep one NaN batch from poisoning the running statistics): about 5 µs on a tiny
input, up to ~25 µs right after a big batch norm has evicted the caches, which shows as
1.05–1.2 on the 8×64×28×28 rows (0.2–0.7 ms).

    python benchmarks/bench_norms.py            # the issue's shapes
    python benchmarks/bench_norms.py --quick    # small shapes, a few seconds
    python benchmarks/bench_norms.py --csv out.csv
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time

import torch
from torch import nn

import sharenorm as sn

SHAPES = [(32, 128, 56, 56), (8, 64, 28, 28)]
QUICK_SHAPES = [(8, 64, 28, 28), (4, 32, 16, 16)]

NORMS = {
    # name: (sharenorm layer, torch.nn layer) for C channels
    "batch": (lambda c: sn.BatchNorm2d(c), lambda c: nn.BatchNorm2d(c)),
    "instance": (
        lambda c: sn.InstanceNorm2d(c, affine=True),
        lambda c: nn.InstanceNorm2d(c, affine=True),
    ),
    "group": (lambda c: sn.GroupNorm(32, c), lambda c: nn.GroupNorm(32, c)),
    "layer(G=1)": (lambda c: sn.GroupNorm(1, c), lambda c: nn.GroupNorm(1, c)),
}


def _step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor | None) -> None:
    if grad is None:
        with torch.no_grad():
            layer(x)
    else:
        layer(x).backward(grad)


def measure(ours: nn.Module, theirs: nn.Module, x: torch.Tensor, backward: bool, repeats: int):
    """Median seconds of ours and theirs, run alternately, ours first on even repeats."""
    grad = torch.randn_like(x) if backward else None
    xin = x.detach().requires_grad_(backward)
    for layer in (ours, theirs):  # warm-up
        _step(layer, xin, grad)
    times: dict[int, list[float]] = {0: [], 1: []}
    for r in range(repeats):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for i in order:
            layer = (ours, theirs)[i]
            t0 = time.perf_counter()
            _step(layer, xin, grad)
            times[i].append(time.perf_counter() - t0)
            xin.grad = None
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small shapes")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--csv", help="also write the rows to this CSV file")
    parser.add_argument("--norms", nargs="+", choices=list(NORMS), default=list(NORMS))
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    header = f"{'norm':11s} {'shape':16s} {'layout':6s} {'mode':8s} {'sharenorm ms':>12s} {'torch ms':>9s} {'ratio':>6s}"
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {args.repeats} (medians)"
    )
    print(header)
    print("-" * len(header))
    for shape in QUICK_SHAPES if args.quick else SHAPES:
        for name in args.norms:
            make_ours, make_theirs = NORMS[name]
            for layout in ("NCHW", "NHWC"):
                x = torch.randn(shape)
                if layout == "NHWC":
                    x = x.to(memory_format=torch.channels_last)
                for mode in ("fwd", "fwd+bwd"):
                    ours, theirs = make_ours(shape[1]), make_theirs(shape[1])
                    t_ours, t_theirs = measure(ours, theirs, x, mode == "fwd+bwd", args.repeats)
                    row = {
                        "norm": name,
                        "shape": "x".join(map(str, shape)),
                        "layout": layout,
                        "mode": mode,
                        "sharenorm_ms": t_ours * 1e3,
                        "torch_ms": t_theirs * 1e3,
                        "ratio": t_ours / t_theirs,
                    }
                    rows.append(row)
                    print(
                        f"{name:11s} {row['shape']:16s} {layout:6s} {mode:8s} {row['sharenorm_ms']:12.3f} "
                        f"{row['torch_ms']:9.3f} {row['ratio']:6.2f}",
                        flush=True,
                    )
    worst = max(rows, key=lambda r: r["ratio"])
    print(
        f"\nworst ratio {worst['ratio']:.2f} ({worst['norm']} {worst['shape']} {worst['layout']} {worst['mode']})"
    )
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
