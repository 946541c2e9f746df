"""Does a budget reach a plateau? N6's ConvNet on mnist1d at one batch size, constant rate vs
the cosine schedule: test accuracy and the last 20%'s gain (mean over seeds), as the lab's
plateau check reads it.

The lab v9 protocol choices came from these runs (docs/design/lab-protocols.md):

    python benchmarks/schedule_pilot.py --batch 32 --epochs 12 --seeds 3
    python benchmarks/schedule_pilot.py --batch 32 --epochs 16 --seeds 5 --schedules cosine

Each row: seeds stacked as one model (the lab's engine), SGD momentum 0.9, lr = 0.05·batch/32
at the first step (N6's linear scaling rule), 10 test-accuracy checkpoints per run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sharenorm.lab.common import dataset, epoch_steps
from sharenorm.lab.experiments._protocol import checkpoint_every, mean_tail_gain
from sharenorm.lab.experiments.batch_size import lr_for
from sharenorm.lab.spec import RunContext
from sharenorm.lab.train import TrainConfig, train_classifiers
from sharenorm.models import ConvNet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=float, default=12)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--norms", default="batch,group,instance,layer,none")
    ap.add_argument("--schedules", default="constant,cosine")
    a = ap.parse_args()
    torch.set_num_threads(1)
    ds = dataset(RunContext(quick=False))
    steps = epoch_steps(a.epochs, len(ds.x_train), a.batch)
    print(f"batch {a.batch}, {a.epochs:g} epochs = {steps} steps, lr {lr_for(a.batch):g}, "
          f"{a.seeds} seeds")
    print("| schedule | norm | test acc % (mean, min–max) | last 20% gained (points, mean) | s |")
    print("|---|---|---|---|---|")
    for schedule in a.schedules.split(","):
        for norm in a.norms.split(","):
            t0 = time.perf_counter()
            models = []
            for s in range(a.seeds):
                torch.manual_seed(s)
                models.append(ConvNet(ds.sample_shape, ds.num_classes, norm=norm,
                                      num_groups=8 if norm == "group" else None))
            cfg = TrainConfig(steps=steps, batch_size=a.batch, lr=lr_for(a.batch),
                              eval_every=checkpoint_every(steps), schedule=schedule)
            out = [m for m, _ in train_classifiers(models, ds, cfg, list(range(a.seeds)))]
            acc = [100 * m["test_acc"] for m in out]
            print(f"| {schedule} | {norm} | {statistics.mean(acc):.1f} ({min(acc):.1f}–"
                  f"{max(acc):.1f}) | {100 * mean_tail_gain(out):+.1f} | "
                  f"{time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
