"""The lab's size: runs and optimizer steps per experiment, counted from the plan.

    python benchmarks/lab_budget.py            # the full profile, 5 seeds
    python benchmarks/lab_budget.py --quick --seeds 3

Steps, not seconds (a step's cost depends on the model): each config × seed counts the
experiment's ``planned_steps(config, n_train)`` (the final run and its learning-rate
selection) where the module defines it, else the config's ``steps`` (0 for runs that train
nothing). ``n_train`` is mnist1d's 4000 training samples.
"""

from __future__ import annotations

import argparse
import importlib

from sharenorm.lab.experiments import all_experiments

N_TRAIN = 4000  # mnist1d's training set (the experiments that count epochs use it)


def budget(quick: bool, seeds: int) -> list[tuple[str, int, int]]:
    rows = []
    for exp_id, exp in all_experiments().items():
        mod = importlib.import_module(f"sharenorm.lab.experiments.{exp_id}")
        count = getattr(mod, "planned_steps", None)
        k = seeds if exp.seeded else 1
        cfgs = exp.configs(quick)
        steps = sum(count(c, N_TRAIN) if count else c.get("steps", 0) for c in cfgs)
        rows.append((exp_id, len(cfgs) * k, steps * k))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, default=5)
    a = ap.parse_args()
    rows = budget(a.quick, a.seeds)
    print(f"| experiment | runs | steps |  ({'quick' if a.quick else 'full'}, {a.seeds} seeds)")
    print("|---|---|---|")
    for exp_id, runs, steps in rows:
        print(f"| {exp_id} | {runs} | {steps:,} |")
    print(f"| all | {sum(r for _, r, _ in rows)} | {sum(s for *_, s in rows):,} |")


if __name__ == "__main__":
    main()
