"""sharenorm under torch's own launcher: ``torchrun --standalone --nproc_per_node N`` (gloo,
one machine) runs tests/distributed_scripts/syncbn_tied_ddp.py — a tied model with a
SyncBatchNorm inside, under DDP, on unequal per-rank batches — and tied_fsdp.py, the same
under FSDP2 (``fully_shard``); every rank ends with the parameters and running statistics of
one process trained on the concatenated batches."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sharenorm as sn

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "distributed_scripts" / "syncbn_tied_ddp.py"


def _script():
    spec = importlib.util.spec_from_file_location("syncbn_tied_ddp", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("script, nproc", [("syncbn_tied_ddp.py", 2), ("syncbn_tied_ddp.py", 3),
                                           ("tied_fsdp.py", 3)])
def test_torchrun_syncbn_and_tied_model_equal_one_process(tmp_path, script, nproc):
    import sharenorm

    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(sharenorm.__file__).parents[1]),
                                           os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", str(nproc), str(SCRIPT.parent / script), str(tmp_path)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    ref = _script().reference(nproc)
    for rank in range(nproc):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got.keys() == ref.keys()
        for k, v in ref.items():
            torch.testing.assert_close(got[k], v, atol=1e-10, rtol=1e-10,
                                       msg=lambda e, k=k, r=rank: f"rank {r} {k}: {e}")
    assert torch.equal(got["3.weight"], got["0.weight"].T)  # the tie held
    if script == "tied_fsdp.py":  # the ends in two units: verify_ties names the unit to drop
        said = (tmp_path / "rank0.bad.txt").read_text().splitlines()
        assert said[0].startswith("TieError") and "different FSDP units" in said[0], said
        assert "not '0' on its own" in said[0], said
        assert said[1].startswith("RuntimeError") and "DTensor" in said[1], said
        # sharenorm.save of the shards is refused, naming the way; that way gives a checkpoint
        # with the tie that loads into a fresh, untied model
        assert said[2].startswith("ValueError") and "get_model_state_dict" in said[2], said
        assert said[3].startswith("ValueError") and "before sharding it" in said[3], said
        fresh = _script().model()
        sn.untie(fresh, "3.weight")
        sn.load(fresh, tmp_path / "model.safetensors")
        assert [g.source for g in sn.ties(fresh)] == ["0.weight"]
        for k, v in ref.items():
            torch.testing.assert_close(fresh.state_dict()[k], v, atol=1e-10, rtol=1e-10)
    assert not torch.equal(ref["0.weight"], _script().model().state_dict()["0.weight"])  # moved


def test_torchrun_reports_a_failing_rank(tmp_path):
    # torchrun's own error report names the rank and carries its traceback
    bad = tmp_path / "bad.py"
    bad.write_text("import torch.distributed as dist\n"
                   "from torch.distributed.elastic.multiprocessing.errors import record\n"
                   "@record\n"
                   "def main():\n"
                   "    dist.init_process_group('gloo')\n"
                   "    if dist.get_rank() == 1:\n"
                   "        raise ValueError('rank 1 has bad data')\n"
                   "    dist.barrier()\n"
                   "main()\n")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", str(bad)], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert p.returncode != 0
    assert "ValueError: rank 1 has bad data" in p.stderr
    assert re.search(r"rank\s*:\s*1 ", p.stderr), p.stderr[-2000:]  # the root cause's rank
