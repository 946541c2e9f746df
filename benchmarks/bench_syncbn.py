"""SyncBatchNorm's cost over local BatchNorm: forward + backward on 2 gloo processes (CPU).

Each process (one thread each, started by ``sharenorm.distributed.launch``, or by torchrun)
times, on its own batch, a training step (forward + backward) of

- ``local BN``: sharenorm's BatchNorm2d (no communication), and
- ``SyncBN``: sharenorm's SyncBatchNorm over the 2-process group (one all_gather of
  2C + 1 float64 values in forward, one all_reduce of 2C in backward),

alternately (so drift in the machine's load hits both alike), and the table shows the
median times of rank 0 and the ratio SyncBN / local BN, plus the time of SyncBN's two
collectives alone and of its synchronised code path without communication (so the compute
overhead can be told from the communication latency).
torch.nn.SyncBatchNorm cannot be compared: it raises on CPU tensors.

    python benchmarks/bench_syncbn.py            # the default shapes
    python benchmarks/bench_syncbn.py --quick    # small shapes, a few seconds
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 benchmarks/bench_syncbn.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist

import sharenorm as sn
from sharenorm import distributed as snd
from sharenorm.norm.syncbatchnorm import sync_batch_norm_train

# Per-process input shapes (N, C, H, W): a small-batch detection-like layer, a mid one,
# and a tiny one where the communication latency dominates.
SHAPES = [(8, 64, 56, 56), (4, 128, 28, 28), (2, 256, 14, 14), (8, 64, 8, 8)]
QUICK_SHAPES = [(4, 64, 28, 28), (8, 64, 8, 8)]


def _step(layer, x, grad):
    layer(x).backward(grad)


def _measure(shape: tuple, world: int, repeats: int) -> tuple:
    """Median seconds of local BN, SyncBN and SyncBN's two collectives on one shape."""
    x = (torch.randn(shape) * 2 + 1).requires_grad_(True)
    grad = torch.randn(shape)
    c = shape[1]
    local, sync = sn.BatchNorm2d(c), sn.SyncBatchNorm(c)
    row = torch.zeros(2 * c + 1, dtype=torch.float64)
    parts = [torch.empty_like(row) for _ in range(world)]
    sums = torch.zeros(2 * c, dtype=torch.float64)

    def comm():
        # SyncBN's two collectives alone: the statistics and the gradient sums.
        dist.all_gather(parts, row)
        dist.all_reduce(sums)

    def sync_compute():
        # The synchronised path with a group of one: SyncBN's own compute, no collective.
        sync_batch_norm_train(sync, x, None, 1).backward(grad)

    steps = {
        "local": lambda: _step(local, x, grad),
        "sync": lambda: _step(sync, x, grad),
        "comm": comm,
        "compute": sync_compute,
    }
    for fn in steps.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(repeats):
        for name in list(steps) if r % 2 == 0 else list(reversed(steps)):
            # Start together: otherwise SyncBN's time includes waiting for the other
            # rank to finish its previous step.
            dist.barrier()
            t0 = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t0)
    return tuple(statistics.median(times[n]) for n in steps)


def _rank(rank: int, world: int, shapes: list, repeats: int) -> list:
    torch.manual_seed(rank)
    return [(shape, *_measure(shape, world, repeats)) for shape in shapes]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--world", type=int, default=2, help="number of processes")
    args = parser.parse_args()
    shapes = QUICK_SHAPES if args.quick else SHAPES
    repeats = args.repeats or (10 if args.quick else 30)
    if "LOCAL_RANK" in os.environ:  # started by torchrun: this process is one rank
        dist.init_process_group("gloo")
        torch.set_num_threads(1)
        args.world = dist.get_world_size()
        mine = _rank(dist.get_rank(), args.world, shapes, repeats)
        dist.destroy_process_group()
        if int(os.environ["RANK"]) != 0:
            return
        results = [mine]
    else:
        results = snd.launch(_rank, args.world, shapes, repeats, timeout=600)
    print(f"SyncBatchNorm vs local BatchNorm2d, forward+backward, {args.world} gloo processes "
          f"x 1 thread, torch {torch.__version__}, median of {repeats}")
    print(f"{'shape per process':>22} | {'local BN ms':>11} | {'SyncBN ms':>9} | {'ratio':>5} | "
          f"{'2 collectives ms':>16} | {'SyncBN compute ms':>17} | {'compute ratio':>13}")
    print("-" * 112)
    for shape, t_local, t_sync, t_comm, t_compute in results[0]:
        print(f"{str(tuple(shape)):>22} | {t_local * 1e3:11.3f} | {t_sync * 1e3:9.3f} | "
              f"{t_sync / t_local:5.2f} | {t_comm * 1e3:16.3f} | {t_compute * 1e3:17.3f} | "
              f"{t_compute / t_local:13.2f}")
    print("ratio = SyncBN / local BN (rank 0). '2 collectives' = SyncBN's all_gather (2C+1 "
          "float64) and all_reduce (2C float64)\nalone; 'SyncBN compute' = its synchronised "
          "code path with a group of one (no communication).")


if __name__ == "__main__":
    main()
