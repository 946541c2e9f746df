"""sharenorm's plain norm layers now against the same layers at an older commit.

Answers "is this change slower than what we had?" on the bench_norms shapes. The old
commit's ``src/sharenorm`` is exported with ``git archive`` and renamed ``sharenorm_old``
(every ``sharenorm`` name in its .py files rewritten), so both versions live in one
process: for each row the old and the new layer run alternately, call by call (old first
on even repeats), on the same input. Measured across separate processes instead, the
same code differed by 0.5–1.6× from process to process on this machine (where a
buffer's pages land, and whether they are fresh, depends on the process, not the code);
within one process the two see the same allocator and caches. The script re-executes
itself with glibc's malloc kept steady (STEADY_MALLOC): by default big blocks go back to
the kernel and whether a call's output lands on fresh pages (page faults, up to ~0.5 ms
per call here) depends on the order of the calls before it: the same row measured
0.7–1.3× without it. ``--system-malloc`` measures with glibc's defaults. The table shows the
median time of each and the ratio new / old. A row is a norm × shape × layout × mode,
as in bench_norms.py.

    python benchmarks/bench_vs_commit.py --old 5c2951e            # the issue's shapes
    python benchmarks/bench_vs_commit.py --old 5c2951e --quick    # small shapes, seconds
    python benchmarks/bench_vs_commit.py --old HEAD~3 --norms instance --repeats 301
    python benchmarks/bench_vs_commit.py --memory-efficient --act silu    # bench_fused's path
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

from bench_norms import measure  # alternating calls, medians: (first's, second's)

ROOT = Path(__file__).resolve().parent.parent
SHAPES = [(32, 128, 56, 56), (8, 64, 28, 28)]
QUICK_SHAPES = [(8, 64, 28, 28), (4, 32, 16, 16)]
# every block from a heap that is never trimmed, as with the caching allocators (jemalloc,
# tcmalloc) usual for CPU training
STEADY_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
NORMS = {
    # name: the layer for C channels, from a sharenorm package (old or new), with kwargs
    "batch": lambda sn, c, **kw: sn.BatchNorm2d(c, **kw),
    "instance": lambda sn, c, **kw: sn.InstanceNorm2d(c, affine=True, **kw),
    "group": lambda sn, c, **kw: sn.GroupNorm(32, c, **kw),
    "layer(G=1)": lambda sn, c, **kw: sn.GroupNorm(1, c, **kw),
}


def import_old(ref: str, into: str):
    """The ``sharenorm`` package of commit ``ref``, imported as ``sharenorm_old``."""
    run = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref,
                          "src/sharenorm"], capture_output=True)
    if run.returncode != 0:
        raise SystemExit(f"bench_vs_commit: cannot export src/sharenorm at --old {ref!r}: "
                         f"{run.stderr.decode().strip()}; pass a commit of this repository")
    archive = run.stdout
    tar_path = Path(into) / "old.tar"
    tar_path.write_bytes(archive)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    package = Path(into) / "sharenorm_old"
    (Path(into) / "src" / "sharenorm").rename(package)
    for path in package.rglob("*.py"):
        path.write_text(re.sub(r"\bsharenorm\b", "sharenorm_old", path.read_text()))
    sys.path.insert(0, into)
    return importlib.import_module("sharenorm_old")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--old", default="5c2951e", help="git ref to compare against")
    parser.add_argument("--quick", action="store_true", help="small shapes")
    parser.add_argument("--repeats", type=int, default=101, help="timed calls per row and version")
    parser.add_argument("--norms", nargs="+", choices=list(NORMS), default=list(NORMS))
    parser.add_argument("--act", help="the layers' fused activation (relu, silu, ...)")
    parser.add_argument("--memory-efficient", action="store_true",
                        help="the memory-efficient path (bench_fused's) instead of the plain one")
    parser.add_argument("--system-malloc", action="store_true",
                        help="keep glibc's default malloc settings (see STEADY_MALLOC)")
    args = parser.parse_args()
    steady = all(os.environ.get(k) == v for k, v in STEADY_MALLOC.items())
    if not args.system_malloc and not steady:  # malloc reads these at process start
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **STEADY_MALLOC})
    import sharenorm as new_sn

    with tempfile.TemporaryDirectory() as tmp:
        old_sn = import_old(args.old, tmp)
        torch.manual_seed(0)
        kwargs = {"act": args.act} if args.act else {}
        if args.memory_efficient:
            kwargs["memory_efficient"] = True
        load = [os.getloadavg()[0]]
        print(f"old = {args.old}, new = the working tree; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads; {'steady' if steady else 'default'} malloc; "
              f"medians of {args.repeats} alternating calls; layers with {kwargs or 'defaults'}")
        header = (f"{'norm':11s} {'shape':14s} {'layout':6s} {'mode':8s} "
                  f"{'old ms':>8s} {'new ms':>8s} {'new/old':>7s}")
        print(header)
        print("-" * len(header))
        ratios = []
        for shape in QUICK_SHAPES if args.quick else SHAPES:
            for name in args.norms:
                for layout in ("NCHW", "NHWC"):
                    x = torch.randn(shape)
                    if layout == "NHWC":
                        x = x.to(memory_format=torch.channels_last)
                    for mode in ("fwd", "fwd+bwd"):
                        old = NORMS[name](old_sn, shape[1], **kwargs)
                        new = NORMS[name](new_sn, shape[1], **kwargs)
                        t_old, t_new = measure(old, new, x, mode == "fwd+bwd", args.repeats)
                        label = f"{name:11s} {'x'.join(map(str, shape)):14s} {layout:6s} {mode:8s}"
                        ratios.append((t_new / t_old, label))
                        print(f"{label} {t_old * 1e3:8.3f} {t_new * 1e3:8.3f} {t_new / t_old:7.3f}",
                              flush=True)
                        load.append(os.getloadavg()[0])
    worst = max(ratios)
    print(f"\nmedian ratio {statistics.median(r for r, _ in ratios):.3f}; worst {worst[0]:.3f} "
          f"({' '.join(worst[1].split())}); load average {min(load):.1f}-{max(load):.1f}")


if __name__ == "__main__":
    main()
