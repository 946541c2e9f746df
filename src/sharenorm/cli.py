"""The ``sharenorm`` command.

    sharenorm lab [IDS...] [--list] [--quick] [--seeds K] [--jobs J] [--data PATH] [--out DIR]
                  [--lang hi] [--executor local|ray [--address HOST:PORT]]
    sharenorm report DIR [--lang hi] [--summary docs/results.md]
    sharenorm demo

``lab`` runs (or resumes) the experiments that measure the claims of the two seed documents
and writes ``DIR/report.md`` + ``DIR/report.html``; ``report`` rebuilds the report from
``DIR/results.jsonl`` alone. Exit codes: see ``EXIT_CODES``. ``--seeds 1`` runs but warns:
criteria that compare 95% intervals are then reported "inconclusive".
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

DESCRIPTION = ("sharenorm: normalization layers, parameter sharing/tying, and a lab that\n"
               "measures the claims of two documents about them.")
EXIT_CODES = """exit codes:
  0    success
  1    an unexpected error (a bug: please report the traceback)
  2    bad arguments or data, or an --out / report folder that cannot be used
  130  interrupted by Ctrl-C (finished runs are saved; rerun the same command to resume)
  143  terminated by SIGTERM (finished runs are saved; rerun the same command to resume)"""


REPORT_EXIT_CODES = """exit codes:
  0    success
  1    an unexpected error (a bug: please report the traceback)
  2    a folder without results, or a report or summary that cannot be written"""


# Every empirical claim of the full profile rests on at least this many seeds.
FULL_SEEDS = 5


def _positive_int(name: str):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {s!r}") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name} must be ≥ 1, got {v}")
        return v
    return parse


def _versions() -> str:
    """``sharenorm X (torch Y, Python Z)`` from the installed metadata: importing torch
    would cost a second for ``--version``."""
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return f"sharenorm {of('sharenorm')} (torch {of('torch')}, Python {sys.version.split()[0]})"


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="sharenorm", description=DESCRIPTION,
                                     epilog=EXIT_CODES, formatter_class=fmt)
    parser.add_argument("--version", action="version", version=_versions())
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="a short demonstration of the norm layers")
    lab = sub.add_parser("lab", help="measure the documents' claims and write a report",
                         description="Run (or resume) the lab and write DIR/report.md and "
                                     "DIR/report.html.", epilog=EXIT_CODES, formatter_class=fmt)
    lab.add_argument("ids", nargs="*", metavar="ID",
                     help=f"claims ({_claim_ids()}) or experiment names; default: all")
    lab.add_argument("--list", action="store_true", help="list claims and experiments, then exit")
    lab.add_argument("--quick", action="store_true",
                     help="a small version of everything, 2 seeds unless --seeds is given "
                          "(under a minute on 2 cores)")
    lab.add_argument("--seeds", type=_positive_int("--seeds"), default=None,
                     help="seeds per configuration (default 5; 2 with --quick); 1 runs but "
                          "criteria comparing 95%% intervals are then 'inconclusive'")
    lab.add_argument("--jobs", type=_positive_int("--jobs"), default=min(os.cpu_count() or 1, 2),
                     help="parallel training processes (default: min(CPU cores, 2))")
    lab.add_argument("--data", metavar="PATH", help="your dataset instead of the embedded one "
                     "(IDX folder, CIFAR batches, .npz with x/y, or image folder per class)")
    lab.add_argument("--out", metavar="DIR", default="lab-results",
                     help="output folder (default lab-results/)")
    lab.add_argument("--lang", choices=("en", "hi"), default="en",
                     help="report language (hi: Hindi with English technical terms)")
    lab.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="where runs execute: local processes (default, --jobs of them) or "
                          "Ray tasks on a cluster (needs the [ray] extra)")
    lab.add_argument("--address", metavar="HOST:PORT",
                     help="with --executor ray: the Ray cluster to use (default: RAY_ADDRESS, "
                          "a cluster started here with `ray start`, else a new local one)")
    lab.add_argument("--no-progress", action="store_true", help="no progress bar")
    rep = sub.add_parser("report", help="rebuild the report from DIR/results.jsonl",
                         epilog=REPORT_EXIT_CODES, formatter_class=fmt)
    rep.add_argument("dir", metavar="DIR", help="a folder `sharenorm lab --out` wrote")
    rep.add_argument("--lang", choices=("en", "hi"), default="en",
                     help="report language (hi: Hindi with English technical terms)")
    rep.add_argument("--summary", metavar="PATH",
                     help="also write the verdicts as a short Markdown page (docs/results.md)")
    return parser


def _claim_ids() -> str:
    """The claim ids of the registry, grouped: "N1..N9, S1..S4, T1..T3" (plus any others)."""
    try:
        from sharenorm.lab.experiments import all_claims

        ids = list(all_claims())
    except Exception:  # noqa: BLE001 - --help must work even if an experiment cannot import
        return "N1.., S1.., T1.."
    groups: dict[str, list[int]] = {}
    other = []
    for c in ids:
        if c[:1].isalpha() and c[1:].isdigit():
            groups.setdefault(c[0], []).append(int(c[1:]))
        else:
            other.append(c)
    parts = [f"{k}{min(v)}..{k}{max(v)}" if len(v) > 1 else f"{k}{v[0]}"
             for k, v in groups.items()]
    return ", ".join(parts + other)


def _list() -> None:
    from sharenorm.lab.experiments import all_claims, all_experiments

    exps = all_experiments()
    print("Claims (criterion fixed before the run):")
    for c in all_claims().values():
        by = [e.id for e in exps.values() if c.id in e.claims]
        print(f"  {c.id:3s} {c.statement_en}  [experiment: {', '.join(by)}]")
        print(f"      criterion: {c.criterion('en')}")
    print("\nExperiments:")
    for e in exps.values():
        miss = e.missing()
        note = f"  (unavailable: sharenorm lacks {', '.join(miss)})" if miss else ""
        print(f"  {e.id:18s} {'/'.join(e.claims):7s} {e.title('en')}"
              f"{'  [uses --data]' if e.uses_data else ''}{note}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["sharenorm", *argv])
    if argv[:1] == ["lab"]:
        # before anything runs a torch op (the parser's help imports the experiments): the
        # same numbers on every x86-64 machine, whatever its vector unit
        from sharenorm.lab.executors import pin_vector_isa

        pin_vector_isa()
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        import torch

        import sharenorm as sn

        x = torch.randn(4, 8, 6, 6) * 3 + 2
        for kind in ("batch", "instance", "group", "layer"):
            y = sn.make_norm(kind, 8).train()(x)
            print(f"{kind:9s} mean={y.mean():+.4f} std={y.std():.4f}")
        return 0

    from sharenorm.data import DataError
    from sharenorm.lab.store import LabError

    try:
        if args.command == "report":
            from sharenorm.lab.report import write_report

            path = write_report(args.dir, lang=args.lang)
            print(f"report: {path} and {path.with_suffix('.html')}")
            if args.summary:
                from sharenorm.lab.report import write_summary

                print(f"summary: {write_summary(args.dir, args.summary, lang=args.lang)}")
            return 0
        if args.list:
            _list()
            return 0
        from sharenorm.lab.runner import run_lab

        seeds = args.seeds if args.seeds is not None else (2 if args.quick else FULL_SEEDS)
        run_lab(args.ids, quick=args.quick, seeds=seeds, jobs=args.jobs, data=args.data,
                out=args.out, lang=args.lang, progress=not args.no_progress, command=command,
                executor=args.executor, address=args.address)
        return 0
    except KeyboardInterrupt:
        print("sharenorm: interrupted; finished runs are saved, run the same command to resume",
              file=sys.stderr)
        return 130
    except (LabError, DataError) as e:
        code = getattr(e, "exit_code", 2)
        print(f"sharenorm: {'error: ' if code == 2 else ''}{e}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
