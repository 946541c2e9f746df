"""Run by ``torchrun`` (tests/sharing/test_torchrun.py): the model of syncbn_tied_ddp.py (a
transposed tie across the model, a SyncBatchNorm inside) under FSDP2 (``fully_shard``),
trained on unequal per-rank batches. The tie's two ends share one unit, the root (torch's rule
for any shared parameter: a unit that resharded the source would hand the target a shard);
the SyncBatchNorm is a unit of its own. Each rank saves the full final state, and what
``verify_ties`` and a forward say of the layout to avoid (the source's module a unit alone);
rank 0 writes a ``sharenorm.save`` checkpoint the way its refusal of the shards describes.

    python -m torch.distributed.run --standalone --nproc_per_node 3 \\
        tests/distributed_scripts/tied_fsdp.py OUT_DIR

The ranks must end with the parameters and running statistics of ``syncbn_tied_ddp.reference``:
one process trained on the concatenated batches.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

import sharenorm as sn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from syncbn_tied_ddp import batches, leave, model, train  # noqa: E402  (the same model and data)


def _error_of(fn, *args) -> str:
    """``"TypeName: message"`` of what ``fn(*args)`` raises, or "no error"."""
    try:
        fn(*args)
    except (sn.TieError, RuntimeError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


def main(out: str) -> None:
    dist.init_process_group("gloo")  # torchrun set RANK, WORLD_SIZE, MASTER_ADDR/PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    m = model()
    fully_shard(m[1])  # the SyncBatchNorm: a unit of its own
    fully_shard(m)     # the root holds both ends of the tie
    train(m, batches(world), rank)
    sn.verify_ties(m)
    state = {k: v.full_tensor() if isinstance(v, DTensor) else v
             for k, v in m.state_dict().items()}
    torch.save({k: v.detach().clone() for k, v in state.items()},
               os.path.join(out, f"rank{rank}.pt"))
    # A checkpoint with its ties: sharenorm.save refuses the shards and names the way, which
    # is this: the whole tensors (gathered on every rank) into an unsharded copy, saved once
    refused = _error_of(sn.save, m, os.path.join(out, "sharded.safetensors"))
    whole = get_model_state_dict(m, options=StateDictOptions(full_state_dict=True))
    if rank == 0:
        plain = model()
        plain.load_state_dict(whole)
        sn.save(plain, os.path.join(out, "model.safetensors"))
    dist.barrier()
    refused_load = _error_of(sn.load, m, os.path.join(out, "model.safetensors"))
    # the layout to avoid: the source's Linear a unit of its own. verify_ties says so, and a
    # forward fails inside torch (the target reads the resharded source)
    bad = model()
    fully_shard(bad[0])
    fully_shard(bad)
    said = [_error_of(sn.verify_ties, bad), _error_of(bad, batches(world)[0][rank]), refused,
            refused_load]
    with open(os.path.join(out, f"rank{rank}.bad.txt"), "w") as f:
        f.write("\n".join(said))
    del bad, m
    leave()


if __name__ == "__main__":
    main(sys.argv[1])
