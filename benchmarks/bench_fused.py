"""Fused norm + activation and memory-efficient training, against torch in the same run.

For each norm × activation × layout × dtype × shape, the contenders run alternately
(drift in the machine's load hits all alike) and the table shows median milliseconds:

    eager    act(F.<norm>(x)) with torch.nn.functional: the composition users write
    compile  torch.compile of that composition (unless --no-compile)
    sn       sharenorm's functional call (backend "auto": ATen on the CPU, the Triton
             kernels for CUDA tensors when Triton is installed)
    lean     the same with memory_efficient=True

``fwd`` is the forward under no_grad, ``f+b`` forward + backward. Ratios are *time*
ratios (below 1 = faster than the reference). GB/s is the effective bandwidth at the
minimal traffic: forward reads x and writes y (2 tensors), backward reads x, dy and
writes dx (3 more). ``saved`` is the bytes autograd keeps for backward (unique storages,
torch.autograd.graph.saved_tensors_hooks).

``--resnet`` also reports, for a small ResNet-like net at batch 32, the bytes saved for
backward by the whole forward (what dominates peak training memory) with and without
memory_efficient, and the measured peak of one training step (gradients set to None
before it, as ``zero_grad`` does): on CUDA torch.cuda.max_memory_allocated, on the CPU
the peak of the bytes held by the tensors the step creates (:class:`LiveBytes`).

    python benchmarks/bench_fused.py                       # the issue's shapes
    python benchmarks/bench_fused.py --quick --no-compile  # small shapes, quick
    python benchmarks/bench_fused.py --csv out.csv --resnet
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import time
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import sharenorm as sn
import sharenorm.functional as SF
from sharenorm.activation import apply_activation
from sharenorm.norm.fused import saved_tensor_bytes

SHAPES = [(32, 128, 56, 56), (2, 320, 64, 64), (1, 512, 64, 64)]
QUICK_SHAPES = [(8, 64, 28, 28), (2, 160, 32, 32), (1, 256, 32, 32)]
ACTS = ["none", "relu", "leaky_relu", "elu", "silu", "gelu"]
ALL_ACTS = ["none", "relu", "leaky_relu", "elu", "silu", "gelu", "tanh", "sigmoid"]
GROUPS = 32


def _act(name: str) -> str | None:
    return None if name == "none" else name


def contenders(norm: str, act: str | None, c: int, dtype, device, compile_: bool):
    """name -> fn(x, w, b) for one configuration (BN in training, with running stats)."""
    rm = torch.zeros(c, device=device)
    rv = torch.ones(c, device=device)
    if norm == "bn":
        def eager(x, w, b):
            return apply_activation(F.batch_norm(x, rm, rv, w, b, True), act)

        def ours(x, w, b, me):
            return SF.batch_norm(x, rm, rv, w, b, True, act=act, memory_efficient=me)
    elif norm == "in":
        def eager(x, w, b):
            return apply_activation(F.instance_norm(x, None, None, w, b), act)

        def ours(x, w, b, me):
            return SF.instance_norm(x, None, None, w, b, act=act, memory_efficient=me)
    else:
        def eager(x, w, b):
            return apply_activation(F.group_norm(x, GROUPS, w, b), act)

        def ours(x, w, b, me):
            return SF.group_norm(x, GROUPS, w, b, act=act, memory_efficient=me)
    fns = {
        "eager": eager,
        "sn": lambda x, w, b: ours(x, w, b, False),
        "lean": lambda x, w, b: ours(x, w, b, True),
    }
    if compile_:
        # One fresh cache per configuration: the closures share a code object, and after
        # recompile_limit configurations Dynamo would silently run them eagerly.
        torch._dynamo.reset()
        fns["compile"] = torch.compile(eager, dynamic=False)
    return fns


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


CLOCK = time.perf_counter


def time_all(fns, x, w, b, dy, backward: bool, repeats: int, device,
             block_s: float = 0.02) -> dict[str, float]:
    """Median seconds per call of each contender, run round-robin in a rotating order.

    Each sample times a block of back-to-back calls lasting about ``block_s`` (one call
    at a time swings by ±30% on a 2-core CPU with the allocator's state left by the
    previous contender; a block amortizes that)."""
    names = list(fns)

    def step(fn):
        if backward:
            # the gradients returned, not accumulated into .grad: in a network dx goes on
            # to the layer before, and an accumulation pass would be timed for everyone
            torch.autograd.grad(fn(x, w, b), (x, w, b), dy)
        else:
            with torch.no_grad():
                fn(x, w, b)

    calls = {}
    for name in names:  # warm-up (and compilation), then the block length
        step(fns[name])
        _sync(device)
        t0 = CLOCK()
        step(fns[name])
        _sync(device)
        calls[name] = max(1, round(block_s / max(CLOCK() - t0, 1e-6)))
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            _sync(device)
            t0 = CLOCK()
            for _ in range(calls[name]):
                step(fns[name])
            _sync(device)
            times[name].append((CLOCK() - t0) / calls[name])
    return {n: statistics.median(v) for n, v in times.items()}


def bench_row(norm, act_name, layout, dtype, shape, device, repeats, compile_):
    act = _act(act_name)
    c = shape[1]
    x = torch.randn(shape, device=device, dtype=dtype) * 2 + 1
    if layout == "nhwc":
        x = x.to(memory_format=torch.channels_last)
    # γ, β as a model cast to ``dtype`` holds them, except BatchNorm's: ATen's (and cuDNN's)
    # 16-bit BatchNorm keeps float32 parameters beside float32 running statistics.
    # (torch's CUDA GroupNorm refuses float32 γ/β with a 16-bit input.)
    p_dtype = torch.float32 if norm == "bn" else dtype
    w = (torch.rand(c, device=device) + 0.5).to(p_dtype).requires_grad_(True)
    b = torch.randn(c, device=device).to(p_dtype).requires_grad_(True)
    fns = contenders(norm, act, c, dtype, device, compile_)
    if compile_:
        try:
            with torch.no_grad():
                fns["compile"](x, w, b)
        except Exception as e:  # noqa: BLE001 - report and go on without it
            print(f"  (torch.compile failed for {norm}/{act_name}: {type(e).__name__})")
            del fns["compile"]
    fwd = time_all(fns, x, w, b, None, False, repeats, device)
    xg = x.detach().requires_grad_(True)
    dy = torch.randn_like(x)
    fb = time_all(fns, xg, w, b, dy, True, repeats, device)
    saved = {n: saved_tensor_bytes(lambda n=n: fns[n](xg, w, b))[1] for n in ("eager", "lean")}
    nbytes = x.numel() * x.element_size()
    row = {
        "norm": norm, "act": act_name, "layout": layout, "dtype": str(dtype).split(".")[-1],
        "shape": "x".join(map(str, shape)),
        "fwd_eager_ms": fwd["eager"] * 1e3, "fwd_sn_ms": fwd["sn"] * 1e3,
        "fwd_compile_ms": fwd.get("compile", float("nan")) * 1e3,
        "fwd_sn/eager": fwd["sn"] / fwd["eager"],
        "fwd_sn/compile": fwd["sn"] / fwd["compile"] if "compile" in fwd else float("nan"),
        "fwd_sn_GBps": 2 * nbytes / fwd["sn"] / 1e9,
        "fb_eager_ms": fb["eager"] * 1e3, "fb_compile_ms": fb.get("compile", float("nan")) * 1e3,
        "fb_sn_ms": fb["sn"] * 1e3, "fb_lean_ms": fb["lean"] * 1e3,
        "fb_sn/eager": fb["sn"] / fb["eager"], "fb_lean/eager": fb["lean"] / fb["eager"],
        "fb_lean/compile": fb["lean"] / fb["compile"] if "compile" in fb else float("nan"),
        "fb_lean_GBps": 5 * nbytes / fb["lean"] / 1e9,
        # the backward alone ≈ (forward + backward) − forward: reads x, dy, writes dx (nan
        # when timing noise makes the difference vanish)
        "bwd_sn_GBps": (3 * nbytes / (fb["sn"] - fwd["sn"]) / 1e9 if fb["sn"] > 1.05 * fwd["sn"]
                        else float("nan")),
        "saved_eager_MB": saved["eager"] / 2**20, "saved_lean_MB": saved["lean"] / 2**20,
        "saved_lean/eager": saved["lean"] / saved["eager"],
    }
    return row


COLUMNS = [
    ("norm", "{:<4}"), ("act", "{:<10}"), ("layout", "{:<6}"), ("dtype", "{:<8}"),
    ("shape", "{:<13}"),
    ("fwd_eager_ms", "{:>8.2f}"), ("fwd_compile_ms", "{:>8.2f}"), ("fwd_sn_ms", "{:>8.2f}"),
    ("fwd_sn/eager", "{:>6.2f}"), ("fwd_sn_GBps", "{:>6.1f}"),
    ("fb_eager_ms", "{:>8.2f}"), ("fb_compile_ms", "{:>8.2f}"), ("fb_sn_ms", "{:>8.2f}"),
    ("fb_lean_ms", "{:>8.2f}"), ("fb_sn/eager", "{:>6.2f}"), ("fb_lean/eager", "{:>6.2f}"),
    ("fb_lean/compile", "{:>6.2f}"), ("fb_lean_GBps", "{:>6.1f}"), ("bwd_sn_GBps", "{:>7.1f}"),
    ("saved_eager_MB", "{:>8.2f}"), ("saved_lean_MB", "{:>8.2f}"), ("saved_lean/eager", "{:>6.4f}"),
]
HEADERS = {
    "fwd_eager_ms": "fwd eag", "fwd_compile_ms": "fwd cmp", "fwd_sn_ms": "fwd sn",
    "fwd_sn/eager": "sn/eag", "fwd_sn_GBps": "GB/s", "fb_eager_ms": "f+b eag",
    "fb_compile_ms": "f+b cmp", "fb_sn_ms": "f+b sn", "fb_lean_ms": "f+b lean",
    "fb_sn/eager": "sn/eag", "fb_lean/eager": "ln/eag", "fb_lean/compile": "ln/cmp",
    "fb_lean_GBps": "GB/s", "bwd_sn_GBps": "bwdGB/s", "saved_eager_MB": "sav eag",
    "saved_lean_MB": "sav lean",
    "saved_lean/eager": "ln/eag",
}


def print_row(row) -> None:
    print(" ".join(fmt.format(row[k]) for k, fmt in COLUMNS), flush=True)


def print_header() -> None:
    cells = []
    for k, fmt in COLUMNS:
        align, width = re.search(r"([<>])(\d+)", fmt).groups()
        cells.append(f"{HEADERS.get(k, k):{align}{width}}")
    print(" ".join(cells))


# Datasheet HBM bandwidth (GB/s) of common GPUs, by a substring of the device name; the
# issue's targets are fractions of it. Longest match first ("H100 PCIe" before "H100").
HBM_PEAK_GBPS = {"H200": 4800, "H100 PCIe": 2000, "H100": 3350, "A100-SXM4-80GB": 2039,
                 "A100": 1555, "L40S": 864, "L4": 300, "A10G": 600, "RTX 4090": 1008}


def hbm_peak(name: str) -> float | None:
    for key in sorted(HBM_PEAK_GBPS, key=len, reverse=True):
        if key in name:
            return HBM_PEAK_GBPS[key]
    return None


def copy_bandwidth(device, nbytes: int = 2**29, repeats: int = 20) -> float:
    """GB/s of ``dst.copy_(src)`` (read + write) on ``nbytes``: the practical ceiling the
    kernels' GB/s compare with."""
    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times) / 1e9


# ----------------------------------------------------------------------------- ResNet-like


class _Block(nn.Module):
    """BasicBlock: conv → norm+act → conv → norm, + shortcut, then act."""

    def __init__(self, cin, cout, stride, act, me):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = sn.BatchNorm2d(cout, act=act, memory_efficient=me)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = sn.BatchNorm2d(cout, memory_efficient=me)
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                          sn.BatchNorm2d(cout, memory_efficient=me))
            if stride != 1 or cin != cout else nn.Identity()
        )
        self.act = act

    def forward(self, x):
        y = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        # in place where safe (relu, leaky_relu), as torchvision's ReLU(inplace=True)
        return apply_activation(y + self.short(x), self.act, fresh=True)


def resnet_like(act: str, me: bool, width: int = 64) -> nn.Module:
    """A ResNet-18-style net for 32×32 inputs: stem + 3 stages of 2 BasicBlocks."""
    layers = [nn.Conv2d(3, width, 3, 1, 1, bias=False),
              sn.BatchNorm2d(width, act=act, memory_efficient=me)]
    cin = width
    for i, cout in enumerate((width, 2 * width, 4 * width)):
        layers += [_Block(cin, cout, 1 if i == 0 else 2, act, me), _Block(cout, cout, 1, act, me)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)


class LiveBytes(TorchDispatchMode):
    """The peak of the bytes held by the tensor storages that ops create while it is
    active (activations, gradients, scratch; not what existed before): what a caching
    allocator would need, independent of how malloc reuses or returns memory."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()  # one Python object per storage while it lives
            key, nbytes = st.data_ptr(), st.nbytes()
            if nbytes and key not in self.seen:
                self.seen.add(key)
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                weakref.finalize(st, self._free, key, nbytes)
        return out


def resnet_memory(device, batch: int = 32) -> list[dict]:
    rows = []
    x = torch.randn(batch, 3, 32, 32, device=device)
    for act in ("relu", "leaky_relu", "silu"):
        res = {}
        for me in (False, True):
            torch.manual_seed(0)
            net = resnet_like(act, me).to(device)
            params = sum(p.numel() * p.element_size() for p in net.parameters())
            out, saved = saved_tensor_bytes(lambda net=net: net(x))
            out.square().mean().backward()
            net.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                net(x).square().mean().backward()
                peak = torch.cuda.max_memory_allocated() - base
            else:
                with LiveBytes() as live:
                    net(x).square().mean().backward()
                peak = live.peak
            # params + their grads + the saved activations: the peak of a plain SGD step
            res[me] = {"saved": saved, "est_peak": 2 * params + saved, "peak": peak}
        rows.append({
            "act": act,
            "saved_plain_MB": res[False]["saved"] / 2**20,
            "saved_lean_MB": res[True]["saved"] / 2**20,
            "saved_lean/plain": res[True]["saved"] / res[False]["saved"],
            "est_peak_plain_MB": res[False]["est_peak"] / 2**20,
            "est_peak_lean_MB": res[True]["est_peak"] / 2**20,
            "step_peak_plain_MB": res[False]["peak"] / 2**20,
            "step_peak_lean_MB": res[True]["peak"] / 2**20,
            "step_peak_lean/plain": res[True]["peak"] / res[False]["peak"],
        })
    return rows


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    ap.add_argument("--csv", help="also write the rows to this CSV file")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per contender")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--norms", default="bn,in,gn")
    ap.add_argument("--acts", default=",".join(ACTS), help=f"any of {','.join(ALL_ACTS)}")
    ap.add_argument("--layouts", default="nchw,nhwc")
    ap.add_argument("--dtypes", default=None, help="default: float32 (CPU), +bf16/fp16 (CUDA)")
    ap.add_argument("--shapes", default=None, help="e.g. 32x128x56x56,2x320x64x64")
    ap.add_argument("--resnet", action="store_true",
                    help="ResNet-like training memory, alone (with --quick or --shapes: after "
                         "the timing sweep)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: process CPU time (all threads), steadier on a shared CPU")
    args = ap.parse_args()
    global CLOCK
    if args.clock == "cpu":
        CLOCK = time.process_time

    device = torch.device(args.device)
    shapes = ([tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
              if args.shapes else QUICK_SHAPES if args.quick else SHAPES)
    dtypes = args.dtypes or ("float32" if device.type == "cpu" else "float32,bfloat16,float16")
    dtypes = [getattr(torch, d) for d in dtypes.split(",")]
    repeats = args.repeats or (7 if device.type == "cpu" else 30)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"# device: {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"repeats {repeats}, GN groups {GROUPS}, clock {args.clock}; times in ms (median), "
          "ratios are time ratios (< 1 = faster)")
    peak = hbm_peak(name) if device.type == "cuda" else None
    print(f"# memory bandwidth: copy_ {copy_bandwidth(device):.0f} GB/s measured"
          + (f", datasheet HBM peak {peak} GB/s" if peak else ""))
    rows = []
    if args.resnet and not (args.quick or args.shapes):
        shapes = []  # the README's memory figures: the ResNet table alone, in seconds
    else:
        print_header()
    for shape in shapes:
        for dtype in dtypes:
            for layout in args.layouts.split(","):
                for norm in args.norms.split(","):
                    for act in args.acts.split(","):
                        row = bench_row(norm, act, layout, dtype, shape, device, repeats,
                                        not args.no_compile)
                        rows.append(row)
                        print_row(row)
    if args.csv and rows:
        with open(args.csv, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[0]))
            wr.writeheader()
            wr.writerows(rows)
    if args.resnet:
        print("\n# ResNet-like net (stem + 6 BasicBlocks, width 64, 32x32 input), batch 32: "
              "bytes saved for backward by the forward; est. peak = 2 x params + saved; "
              "step peak = measured peak of one training step beyond the params")
        for r in resnet_memory(device):
            print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in r.items()))


if __name__ == "__main__":
    main()
