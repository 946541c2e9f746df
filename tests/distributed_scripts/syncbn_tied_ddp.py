"""Run by ``torchrun`` (tests/sharing/test_torchrun.py): a tied model with a SyncBatchNorm
inside, trained under DDP on unequal per-rank batches. Each rank saves its final state.

    python -m torch.distributed.run --standalone --nproc_per_node 3 \\
        tests/distributed_scripts/syncbn_tied_ddp.py OUT_DIR

``reference()`` trains the same model in one process on the concatenated batches: the ranks
must end with its parameters and running statistics.
"""

from __future__ import annotations

import gc
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

import sharenorm as sn
from sharenorm import distributed as snd

STEPS = 4
SIZES = [3, 5, 2]  # rank r's batch: unequal on purpose (SyncBN must weigh them by size)


def model() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), sn.SyncBatchNorm(8), nn.Tanh(), nn.Linear(8, 6)).double()
    sn.tie(m, target="3.weight", source="0.weight", transform="transpose")  # decoder = encoderᵀ
    return m


def batches(world: int) -> list[list[torch.Tensor]]:
    """``STEPS`` global batches, each split into the ranks' parts (sizes ``SIZES[:world]``)."""
    g = torch.Generator().manual_seed(1)
    sizes = SIZES[:world]
    return [list(torch.randn(sum(sizes), 6, generator=g, dtype=torch.float64).mul(2).add(1)
                 .split(sizes)) for _ in range(STEPS)]


def train(m: nn.Module, parts: list[list[torch.Tensor]], rank: int | None = None,
          net=None) -> nn.Module:
    """SGD on the squared error, the loss of the *global* batch: each rank's sum of squares
    over the global count, times the world size (DDP and FSDP average the ranks' gradients).
    ``rank``: this rank's part of each batch (None: one process, all of them); ``net``: what
    runs the forward (a DDP wrapper; default ``m``)."""
    net = net or m
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    world = 1 if rank is None else len(parts[0])
    for step in parts:
        x = torch.cat(step) if rank is None else step[rank]
        n = sum(len(p) for p in step)
        loss = (net(x) - torch.tanh(x)).pow(2).sum() / n * world
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m


def reference(world: int) -> dict:
    """One process, plain (the SyncBatchNorm without a group is a BatchNorm), all samples."""
    return train(model(), batches(world)).state_dict()


def main(out: str) -> None:
    dist.init_process_group("gloo")  # torchrun set RANK, WORLD_SIZE, MASTER_ADDR/PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    m = model()
    net = snd.ddp(m)
    train(m, batches(world), rank, net=net)
    sn.verify_ties(m)
    torch.save({k: v.detach().clone() for k, v in m.state_dict().items()},
               os.path.join(out, f"rank{rank}.pt"))
    del net
    leave()


def leave() -> None:
    """End the process group cleanly, once the caller dropped its DDP wrapper / sharded model.

    DDP (and FSDP's hooks) hold the process group and sit in reference cycles, so without the
    collection they are freed whenever the cyclic GC runs, possibly at interpreter exit after
    the group is gone; then a rank can abort (std::terminate). Measured at 3 ranks: 6 aborts
    in 90 runs without it, 0 in 80 with it. The barrier lets every rank finish its last
    collective before any of them leaves."""
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
