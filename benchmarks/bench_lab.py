"""Lab throughput, old code vs this code, in one run: optimizer steps per second.

Two measurements, each old/new interleaved (old, new, old, new, ...) so that a machine shared
with other work loads both alike; medians over the repeats, and the load average (``uptime``)
printed before and after:

* ``cli`` (default): the lab command itself, ``sharenorm lab N6 --quick --seeds 3 --jobs 2``
  (``--lab-args`` to change it), once with the old source tree and once with this one, each
  in a fresh output folder. steps/s = the optimizer steps of all runs in ``results.jsonl``
  (``steps_done``) / the command's wall time (start-up, data, training, report: everything
  a user waits for). Interleaved with them, the floor: the same command with this code for a
  claim that trains nothing (``--floor-args``: N5's demonstration), i.e. Python, imports,
  worker start-up, analysis and report; the new steps over the floor's time are the most any
  training engine could reach at this workload.
* ``train``: in this process, the training loop alone on N6's model and shapes: the old path
  (each seed trained alone, :func:`sharenorm.lab.train.train_classifier`'s loop as in the old
  code) vs the new one (the seeds as one stacked model,
  :func:`sharenorm.lab.train.train_classifiers`).

The old tree is the commit ``--old`` (default 5c2951e, before the stacked lab) exported with
``git archive`` into a temporary folder.

Run:  python benchmarks/bench_lab.py [--mode cli|train|both] [--repeats 3] [--old 5c2951e]
      python benchmarks/bench_lab.py --mode train --model resnet --seeds 5   # N8's jobs
      python benchmarks/bench_lab.py --mode train --model lc --seeds 5       # S2/S3's LC net
      python benchmarks/bench_lab.py --mode train --model rnn --seeds 5      # S4's RNNs
      python benchmarks/bench_lab.py --mode train --model n9 --seeds 5       # N9's per-rank norms

(``rnn`` and ``n9`` compare the seeds trained alone with the same seeds stacked, both with
this code: their stacked forms are newer than the old tree's models.)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def export_tree(commit: str, dest: Path) -> Path:
    """``src/`` of ``commit`` under ``dest`` (git archive: no worktree is registered)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "src"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def steps_in(results: Path) -> tuple[int, float]:
    """(optimizer steps of all runs, the last session's ``wall_s``) of a results file."""
    steps, wall = 0, float("nan")
    with open(results) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("kind") == "run":
                steps += rec["metrics"].get("steps_done") or 0
            elif rec.get("kind") == "session":
                wall = rec["wall_s"]
    return steps, wall


def children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_cli(src: Path, lab_args: list[str], out: Path) -> tuple[float, float, int, float]:
    """(wall s, CPU s of the command and its workers, optimizer steps, the session's wall_s
    as results.jsonl records it: from the store's opening to the last run's analysis)."""
    env = dict(os.environ, PYTHONPATH=str(src))
    t0, c0 = time.perf_counter(), children_cpu()
    subprocess.run([sys.executable, "-m", "sharenorm", "lab", *lab_args, "--out", str(out),
                    "--no-progress"], env=env, check=True, capture_output=True)
    wall, cpu = time.perf_counter() - t0, children_cpu() - c0
    return (wall, cpu, *steps_in(out / "results.jsonl"))


def bench_cli(args) -> None:
    lab_args = shlex.split(args.lab_args)
    with tempfile.TemporaryDirectory(prefix="bench-lab-") as tmp:
        tmp = Path(tmp)
        trees = {"old": export_tree(args.old, tmp / "old"), "new": ROOT / "src"}
        print(f"sharenorm lab {args.lab_args}: old = {args.old}, new = {ROOT / 'src'}")
        print(f"load before: {load()}")
        rates: dict[str, dict[str, list[float]]] = {
            m: {"old": [], "new": []} for m in ("command", "session", "cpu")}
        floors, new_steps = [], []
        for r in range(args.repeats):
            for name in ("old", "new"):
                wall, c, steps, session = run_cli(trees[name], lab_args, tmp / f"{name}-{r}")
                for m, sec in (("command", wall), ("session", session), ("cpu", c)):
                    rates[m][name].append(steps / sec)
                if name == "new":
                    new_steps.append(steps)
                print(f"  {name} #{r}: {steps} steps; command {wall:.1f} s wall, session "
                      f"(results.jsonl wall_s) {session:.1f} s, {c:.1f} s CPU  (load {load()})",
                      flush=True)
            floor = run_cli(trees["new"], shlex.split(args.floor_args), tmp / f"floor-{r}")[0]
            floors.append(floor)
            print(f"  floor #{r}: `sharenorm lab {args.floor_args}` {floor:.1f} s wall  "
                  f"(load {load()})", flush=True)
        print(f"load after: {load()}")
        for m, what in (("command", "steps / command wall s"),
                        ("session", "steps / session wall_s (results.jsonl)"),
                        ("cpu", "steps / CPU s of command and workers")):
            old, new = (statistics.median(rates[m][k]) for k in ("old", "new"))
            print(f"{what:42s} median: old {old:7.1f}, new {new:7.1f}, ratio {new / old:.2f}x")
        old = statistics.median(rates["command"]["old"])
        ceiling = statistics.median(new_steps) / statistics.median(floors)
        print(f"{'ceiling: new steps / floor wall s':42s} median: {ceiling:.1f} steps/s = "
              f"{ceiling / old:.2f}x old (training in no time at all)")
        # what 3x the old rate would take for this workload, beside what no training takes
        need = statistics.median(new_steps) / (3 * old)
        print(f"{'3x old steps/s at the new workload':42s} needs a command wall of {need:.2f} s; "
              f"the floor alone takes {statistics.median(floors):.2f} s")


def bench_train(args) -> None:
    import torch

    from sharenorm.lab.common import dataset
    from sharenorm.lab.experiments import distributed_bn
    from sharenorm.lab.experiments.sharing_cost import build
    from sharenorm.lab.spec import RunContext
    from sharenorm.lab.train import TrainConfig, _train_alone, train_classifiers
    from sharenorm.models import ConvNet, RNNClassifier
    from sharenorm.models.resnet import ResNet

    torch.set_num_threads(1)
    ds = dataset(RunContext(quick=True))
    seeds = list(range(args.seeds))
    if args.model == "convnet":
        # N6's model; batch 2 and 4 are most of its steps
        cases = [(norm, bs, steps) for norm in ("batch", "group", "none")
                 for bs, steps in ((2, 250), (4, 125))]
        lrs = [None]
    elif args.model == "resnet":
        # N8's deepest residual net at batch 4, its learning-rate grid and seeds in one job
        cases = [(norm, 4, 60) for norm in ("batch", "group")]
        lrs = [0.002, 0.006, 0.02, 0.06]
    elif args.model == "rnn":
        # S4's tanh RNNs, shared in time or not, Adam at batch 32 as there
        cases = [("shared", 32, 200), ("unshared", 32, 200)]
        lrs = [None]
    elif args.model == "n9":
        # N9's variants: per-process BN and BatchRenorm (W = 4 ranks of b = 2), GN, at the
        # global batch of 8
        cases = [("bn", 8, 200), ("renorm", 8, 200), ("gn", 8, 200)]
        lrs = [None]
    else:
        # S2/S3's locally connected net (no norm), Adam at batch 32 as there
        cases = [("none", 32, 300)]
        lrs = [None]

    def models(norm):
        out = []
        for _ in lrs:
            for s in seeds:
                torch.manual_seed(s)
                if args.model == "rnn":
                    out.append(RNNClassifier(ds.sample_shape, ds.num_classes, hidden=64,
                                             shared=norm == "shared", chunk=4))
                    continue
                if args.model == "n9":
                    out.append(distributed_bn._model(norm, ds.sample_shape, ds.num_classes,
                                                     cases[0][2], world=4))
                    continue
                gn = 8 if args.model == "convnet" else 4
                kw = {"norm": norm, "num_groups": gn if norm == "group" else None}
                out.append(ConvNet(ds.sample_shape, ds.num_classes, **kw)
                           if args.model == "convnet" else
                           ResNet(ds.sample_shape, ds.num_classes, depth=17, **kw)
                           if args.model == "resnet" else build("locally_connected", ds))
        return out

    def configs(cfg):
        return [cfg if lr is None else TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size,
                                                   lr=lr) for lr in lrs for _ in seeds]

    # each returns its steps' own wall time (timing["train_s"]: no data set-up, no evaluation)
    def old(norm, cfg):
        return sum(_train_alone(m, ds, c, s)[1]["train_s"]
                   for m, c, s in zip(models(norm), configs(cfg), seeds * len(lrs), strict=True))

    def new(norm, cfg):
        out = train_classifiers(models(norm), ds, configs(cfg), seeds * len(lrs))
        return sum(t["train_s"] for _, t in out)  # each member's share: the stacked time / K

    what = {"convnet": "N6 ConvNet", "resnet": f"N8 ResNet-17, {len(lrs)} rates",
            "lc": "S2/S3 LocallyConnectedNet, Adam", "rnn": "S4 RNNClassifier, Adam",
            "n9": "N9 ConvNet, W = 4 ranks of 2"}[args.model]
    print(f"training loop, {what}, {len(seeds)} seeds; load before: {load()}")
    ratios, cpu_ratios = [], []
    for norm, bs, steps in cases:
        adam = {"lc": 1e-3, "rnn": 3e-3}.get(args.model)
        cfg = (TrainConfig(steps=steps, batch_size=bs, lr=adam, optimizer="adam")
               if adam else TrainConfig(steps=steps, batch_size=bs, lr=0.05 * bs / 32))
        times: dict[str, list[float]] = {"old": [], "new": []}
        cpus: dict[str, list[float]] = {"old": [], "new": []}
        steps_s: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.repeats):
            for name, fn in (("old", old), ("new", new)):
                t0, c0 = time.perf_counter(), time.process_time()
                steps_s[name].append(fn(norm, cfg))
                times[name].append(time.perf_counter() - t0)
                cpus[name].append(time.process_time() - c0)
        o, n = statistics.median(times["old"]), statistics.median(times["new"])
        so, sn = statistics.median(steps_s["old"]), statistics.median(steps_s["new"])
        oc, nc = statistics.median(cpus["old"]), statistics.median(cpus["new"])
        total = steps * len(seeds) * len(lrs)
        ratios.append(o / n)
        cpu_ratios.append(oc / nc)
        print(f"  {norm:8s} batch {bs}: old {total / o:7.1f} steps/s, new {total / n:7.1f} "
              f"steps/s, ratio {o / n:.2f}x wall, {oc / nc:.2f}x CPU  (load {load()}); "
              f"per member and step, the steps alone: old {1e3 * so / total:.2f} ms, new "
              f"{1e3 * sn / total:.2f} ms ({so / sn:.2f}x)", flush=True)
    print(f"load after: {load()}")
    print(f"training-loop ratio new/old (incl. final evaluation): median "
          f"{statistics.median(ratios):.2f}x wall, {statistics.median(cpu_ratios):.2f}x CPU")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("cli", "train", "both"), default="cli")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--old", default="5c2951e", help="the commit to compare with")
    ap.add_argument("--lab-args", default="N6 --quick --seeds 3 --jobs 2")
    ap.add_argument("--floor-args", default="N5 --quick --seeds 3 --jobs 2",
                    help="the same command for a claim that trains nothing (cli mode)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per config (train mode)")
    ap.add_argument("--model", choices=("convnet", "resnet", "lc", "rnn", "n9"),
                    default="convnet",
                    help="train mode: N6's ConvNet, N8's ResNet-17 with its rate grid, "
                         "S2/S3's locally connected net, S4's RNNs or N9's per-rank norms")
    args = ap.parse_args()
    if args.mode in ("train", "both"):
        bench_train(args)
    if args.mode in ("cli", "both"):
        bench_cli(args)


if __name__ == "__main__":
    main()
