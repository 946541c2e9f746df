r"""Does a budget reach a plateau? N6's ConvNet on mnist1d at one batch size, constant rate vs
the cosine schedule (or S4's RNNs at a number of Adam steps): test accuracy and the last 20%'s
gain (mean over seeds), as the lab's plateau check reads it.

The lab v9 protocol choices came from these runs (docs/design/lab-protocols.md):

    python benchmarks/schedule_pilot.py --batch 32 --epochs 12 --seeds 3
    python benchmarks/schedule_pilot.py --batch 32 --epochs 16 --seeds 5 --schedules cosine

and lab v10's S4 budget (tanh RNNs shared in time or not, Adam at 3e-3, batch 32) from

    python benchmarks/schedule_pilot.py --model rnn --steps 6000 --seeds 5 --schedules cosine
    python benchmarks/schedule_pilot.py --model rnn --steps 12000 --seeds 5 --schedules cosine

and lab v12's N8 budget (batch 32 for 16 epochs; at batch 4 one epoch and at batch 8 four
epochs were far from a plateau) from

    python benchmarks/schedule_pilot.py --model residual --depth 17 --batch 32 --epochs 16 \
        --seeds 5 --schedules cosine --lr 0.1          # and --norms group --lr 0.03 (or 0.3)
    python benchmarks/schedule_pilot.py --model residual --depth 17 --batch 4 --epochs 1 \
        --seeds 5 --schedules cosine --lr 0.02

Each row: seeds stacked as one model (the lab's engine), SGD momentum 0.9, lr = 0.05·batch/32
at the first step (N6's linear scaling rule), 10 test-accuracy checkpoints per run; with
``--model rnn`` the "norms" are S4's two RNNs, with ``--model bnrnn`` N10's tanh RNN with and
without BN per time step, and the optimizer Adam at ``--lr``; ``--model residual|plain`` are
N8's nets (width 16, GN with 4 groups) at ``--depth`` conv layers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sharenorm.lab.common import dataset, epoch_steps
from sharenorm.lab.experiments._protocol import checkpoint_every, mean_tail_gain
from sharenorm.lab.experiments.batch_size import lr_for
from sharenorm.lab.experiments.depth import _model as depth_model
from sharenorm.lab.spec import RunContext
from sharenorm.lab.train import TrainConfig, train_classifiers
from sharenorm.models import ConvNet, RNNClassifier
from sharenorm.models.bn_rnn import BNRNNClassifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=float, default=12)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--norms", default=None,
                    help="default: batch,group,instance,layer,none (rnn: shared,unshared; "
                         "bnrnn: batch,none; residual, plain: batch,group)")
    ap.add_argument("--schedules", default="constant,cosine")
    ap.add_argument("--model", choices=("convnet", "rnn", "bnrnn", "residual", "plain"),
                    default="convnet")
    ap.add_argument("--depth", type=int, default=17,
                    help="conv layers of N8's residual or plain nets (width 16, GN with G=4)")
    ap.add_argument("--steps", type=int, default=None, help="instead of --epochs")
    ap.add_argument("--lr", type=float, default=None,
                    help="default: lr_for(batch), SGD (rnn: 3e-3, Adam)")
    a = ap.parse_args()
    rnn = a.model in ("rnn", "bnrnn")
    norms = a.norms or {"rnn": "shared,unshared", "bnrnn": "batch,none",
                        "residual": "batch,group", "plain": "batch,group"}.get(
        a.model, "batch,group,instance,layer,none")
    lr = a.lr or (3e-3 if rnn else lr_for(a.batch))
    torch.set_num_threads(1)
    ds = dataset(RunContext(quick=False))
    steps = a.steps or epoch_steps(a.epochs, len(ds.x_train), a.batch)
    depth = f" depth {a.depth}" if a.model in ("residual", "plain") else ""
    print(f"{a.model}{depth}, batch {a.batch}, {steps} steps "
          f"({steps * a.batch / len(ds.x_train):g} epochs), lr {lr:g}, {a.seeds} seeds")
    print("| schedule | norm | test acc % (mean, min–max) | last 20% gained (points, mean) | s |")
    print("|---|---|---|---|---|")
    for schedule in a.schedules.split(","):
        for norm in norms.split(","):
            t0 = time.perf_counter()
            models = []
            for s in range(a.seeds):
                torch.manual_seed(s)
                models.append(
                    BNRNNClassifier(ds.sample_shape, ds.num_classes, hidden=64, chunk=4,
                                    norm=norm) if a.model == "bnrnn" else
                    RNNClassifier(ds.sample_shape, ds.num_classes, hidden=64, chunk=4,
                                  shared=norm == "shared") if rnn else
                    depth_model({"arch": a.model, "norm": norm, "depth": a.depth}, ds)
                    if a.model in ("residual", "plain") else
                    ConvNet(ds.sample_shape, ds.num_classes, norm=norm,
                            num_groups=8 if norm == "group" else None))
            cfg = TrainConfig(steps=steps, batch_size=a.batch, lr=lr,
                              optimizer="adam" if rnn else "sgd",
                              eval_every=checkpoint_every(steps), schedule=schedule)
            out = [m for m, _ in train_classifiers(models, ds, cfg, list(range(a.seeds)))]
            acc = [100 * m["test_acc"] for m in out]
            print(f"| {schedule} | {norm} | {statistics.mean(acc):.1f} ({min(acc):.1f}–"
                  f"{max(acc):.1f}) | {100 * mean_tail_gain(out):+.1f} | "
                  f"{time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
