"""The runner: determinism, resume after a kill, interrupted runs kept, parallel == serial."""

from __future__ import annotations

import json

import pytest

from sharenorm.lab import runner
from sharenorm.lab.experiments import EXPERIMENT_MODULES, all_experiments, resolve
from sharenorm.lab.store import LabError


def _lines(out):
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]


def _runs(out):
    return [r for r in _lines(out) if r["kind"] == "run"]


def test_registry_ids_match_modules_and_cover_every_claim():
    from sharenorm.lab.experiments import all_claims

    exps = all_experiments()
    assert sorted(exps) == EXPERIMENT_MODULES  # every module of the package, found by itself
    covered = {c for e in exps.values() for c in e.claims}
    assert covered == set(all_claims())  # every claim has an experiment, and its definition


def test_resolve_claims_and_names():
    assert [e.id for e in resolve(["N6"])] == ["batch_size"]
    assert [e.id for e in resolve(["n4", "norm_training"])] == ["norm_training"]
    with pytest.raises(LabError, match="unknown experiment or claim 'N66'.*Did you mean N6"):
        resolve(["N66"])
    with pytest.raises(LabError, match="Did you mean batch_size"):
        resolve(["batch_sise"])


def test_training_run_is_deterministic():
    cfg = {"norm": "batch", "lr": 0.1, "steps": 15, "batch_size": 16}
    a = runner.execute("lr_sweep", cfg, 3, True, None)[0]
    b = runner.execute("lr_sweep", cfg, 3, True, None)[0]
    c = runner.execute("lr_sweep", cfg, 4, True, None)[0]
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a != c


def test_resume_skips_done_runs_and_redoes_a_truncated_one(tmp_path):
    kw = dict(quick=True, seeds=2, jobs=1, out=tmp_path, progress=False, report=False,
              echo=lambda s: None)
    runner.run_lab(["N5"], **kw)
    first = _runs(tmp_path)
    assert len(first) == 10  # 5 norms × 2 seeds
    p = tmp_path / "results.jsonl"
    lines = p.read_bytes().splitlines(keepends=True)
    assert b'"session"' in lines[-1]
    # a process killed while writing its last run leaves half a line
    p.write_bytes(b"".join(lines[:-2]) + lines[-2][:-20])
    msgs = []
    runner.run_lab(["N5"], **{**kw, "echo": msgs.append})
    assert any("truncated line" in m for m in msgs)
    assert any("9 of 10 runs already done" in m for m in msgs)
    again = _runs(tmp_path)
    assert len(again) == 10
    assert [r["metrics"] for r in again] == [r["metrics"] for r in first]  # redone identically
    n_lines = len(_lines(tmp_path))
    runner.run_lab(["N5"], **kw)  # nothing left to do: only a session line is added
    assert len(_runs(tmp_path)) == 10 and len(_lines(tmp_path)) == n_lines + 1


def test_interrupt_keeps_finished_runs(tmp_path, monkeypatch):
    real = runner.execute
    calls = []

    def flaky(*a):
        calls.append(a)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(runner, "execute", flaky)
    with pytest.raises(LabError, match="interrupted: 3 finished runs are saved"):
        runner.run_lab(["N5"], quick=True, seeds=1, jobs=1, out=tmp_path, progress=False,
                       report=False, echo=lambda s: None)
    assert len(_runs(tmp_path)) == 3


def test_parallel_gives_the_same_lines_as_serial(tmp_path):
    kw = dict(quick=True, seeds=2, progress=False, report=False, echo=lambda s: None)
    runner.run_lab(["N5"], jobs=1, out=tmp_path / "a", **kw)
    runner.run_lab(["N5"], jobs=2, out=tmp_path / "b", **kw)

    def by_key(out):
        return {r["key"]: r["metrics"] for r in _runs(out)}

    assert by_key(tmp_path / "a") == by_key(tmp_path / "b")


@pytest.mark.parametrize("kw, match", [
    ({"seeds": 0}, "--seeds must be ≥ 1"),
    ({"jobs": 0}, "--jobs must be between 1 and 4 × the CPU cores"),
    # a huge count would fill the memory with the plan before any message; one process a job
    ({"seeds": 10**20}, "--seeds must be ≤ 10000"),
    ({"jobs": 4 * (__import__("os").cpu_count() or 1) + 1}, "--jobs must be between 1 and 4"),
    ({"lang": "fr"}, "--lang must be"),
    # from Python: what argparse would have refused (a bool or float count, a str)
    ({"seeds": True}, "--seeds must be an int"),
    ({"seeds": 2.5}, "--seeds must be an int"),
    ({"jobs": "2"}, "--jobs must be an int"),
    ({"quick": "yes"}, "quick must be True or False"),
    ({"names": None}, "names must be a list"),
    ({"names": [6]}, "names must be a list"),
    ({"out": None}, "out must be a folder path"),
    ({"data": 5}, "--data must be a path"),
])
def test_bad_arguments(tmp_path, kw, match):
    kw = {"names": ["N5"], "out": tmp_path, **kw}
    with pytest.raises(LabError, match=match):
        runner.run_lab(kw.pop("names"), progress=False, **kw)
    assert not (tmp_path / "results.jsonl").exists()


def test_one_name_as_a_str_and_numpy_counts(tmp_path):
    np = pytest.importorskip("numpy")
    runner.run_lab("N5", quick=True, seeds=np.int64(2), jobs=np.int64(1), out=tmp_path,
                   progress=False, report=False, echo=lambda s: None)
    runs = _runs(tmp_path)
    assert {r["experiment"] for r in runs} == {"batch_dependence"}
    assert {r["seed"] for r in runs} == {0, 1}


PLUGIN = '''
from sharenorm.lab.claims import Claim
from sharenorm.lab.spec import SUPPORTED, ClaimResult, Experiment, Text

def run(cfg, seed, ctx):
    return {"value": cfg["x"] * 10 + seed}, {}

def analyze(runs, figdir, lang):
    vals = sorted(r["metrics"]["value"] for r in runs)
    return [ClaimResult("X1", SUPPORTED, f"values {vals}")]

EXPERIMENT = Experiment(
    id="plugin_exp", claims=("X1",), title=Text("a plug-in"), protocol=Text("adds numbers"),
    configs=lambda quick: [{"x": 1}, {"x": 2}], run=run, analyze=analyze,
    new_claims=(Claim("X1", "elsewhere", "कथन", "a statement", Text("always")),))
'''


def test_an_experiment_is_one_file_plus_one_line(tmp_path, monkeypatch):
    from sharenorm.lab import experiments

    (tmp_path / "labplugins").mkdir()
    (tmp_path / "labplugins" / "plugin_exp.py").write_text(PLUGIN)  # the one file
    monkeypatch.syspath_prepend(str(tmp_path))
    # the one line (a module outside the package is registered by its dotted path)
    monkeypatch.setattr(experiments, "EXPERIMENT_MODULES",
                        [*experiments.EXPERIMENT_MODULES, "labplugins.plugin_exp"])
    runner.run_lab(["X1"], quick=True, seeds=2, jobs=1, out=tmp_path / "out", progress=False,
                   echo=lambda s: None)
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## X1 — a statement" in md and "values [10, 11, 20, 21]" in md


def test_zero_steps_is_a_clear_error_not_a_zero_division():
    from sharenorm.data import load_digits
    from sharenorm.lab.train import TrainConfig, train_classifier
    from sharenorm.models import ConvNet

    ds = load_digits()
    with pytest.raises(ValueError, match="steps must be ≥ 1, got 0"):
        train_classifier(ConvNet(ds.sample_shape, ds.num_classes), ds, TrainConfig(steps=0), 0)


def test_a_crash_records_the_session_as_failed_and_keeps_finished_runs(tmp_path, monkeypatch):
    real = runner.execute
    calls = []

    def buggy(*a):
        calls.append(a)
        if len(calls) == 3:
            raise ZeroDivisionError("division by zero")
        return real(*a)

    monkeypatch.setattr(runner, "execute", buggy)
    with pytest.raises(ZeroDivisionError):  # a bug stays a bug (exit 1, traceback) ...
        runner.run_lab(["N5"], quick=True, seeds=1, jobs=1, out=tmp_path, progress=False,
                       report=False, echo=lambda s: None, command="sharenorm lab N5")
    assert len(_runs(tmp_path)) == 2  # ... but the finished runs are kept
    sessions = [r for r in _lines(tmp_path) if r["kind"] == "session"]
    assert len(sessions) == 1 and sessions[0]["runs_done"] == 2
    assert sessions[0]["status"] == "failed (ZeroDivisionError: division by zero)"
    assert sessions[0]["command"] == "sharenorm lab N5" and "env" in sessions[0]


# ----------------------------------------------------------------------------- vector kernels

def _x86_with(flag: str) -> bool:
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            flags = next(ln for ln in f if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return platform.machine().lower() in ("x86_64", "amd64") and flag in flags


# a lab-sized training: 20 SGD steps of the ConvNet with BN; prints its loss and weights
_PROBE = """
import torch
from sharenorm.models import ConvNet
torch.manual_seed(0)
x, y = torch.randn(32, 1, 40), torch.randint(0, 10, (32,))
m = ConvNet((1, 40), 10, norm="batch")
opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
for _ in range(20):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(m(x), y)
    loss.backward()
    opt.step()
print(torch.backends.cpu.get_cpu_capability(), repr(loss.item()),
      repr(float(sum(p.detach().double().sum() for p in m.parameters()))))
"""


def _probe(**env) -> list[str]:
    import os
    import subprocess
    import sys

    from sharenorm.lab.executors import VECTOR_ISA_ENV

    base = {k: v for k, v in os.environ.items() if k not in VECTOR_ISA_ENV}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=base | env, capture_output=True,
                         text=True, check=True, timeout=120).stdout
    return out.split()


@pytest.mark.skipif(not _x86_with("avx512f"), reason="needs an x86 CPU with AVX-512")
def test_avx512_kernels_round_differently_which_is_why_the_lab_pins_avx2():
    # the same training, the same seed: AVX-512 kernels give other bits than AVX2 ones (on
    # an AVX2-only machine the lab's pin changes nothing, and this test cannot run)
    native = _probe()
    pinned = _probe(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    assert native[0] == "AVX512" and pinned[0] == "AVX2"
    assert native[1:] != pinned[1:]
    assert _probe(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2") == pinned


@pytest.mark.skipif(not _x86_with("avx2"), reason="needs an x86 CPU with AVX2")
def test_the_lab_command_runs_on_avx2_kernels_and_its_workers_inherit_them(tmp_path):
    import os
    import subprocess
    import sys

    from sharenorm.lab.executors import VECTOR_ISA_ENV

    env = {k: v for k, v in os.environ.items() if k not in VECTOR_ISA_ENV}
    code = ("import os, sys\nfrom sharenorm.cli import main\nrc = main(sys.argv[1:])\n"
            "from concurrent.futures import ProcessPoolExecutor\n"
            "import multiprocessing as mp\n"
            "with ProcessPoolExecutor(1, mp_context=mp.get_context('spawn')) as ex:\n"
            "    print(ex.submit(os.getenv, 'ATEN_CPU_CAPABILITY').result(),\n"
            "          ex.submit(os.getenv, 'ONEDNN_MAX_CPU_ISA').result())\n"
            "sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, "lab", "N5", "--quick", "--seeds", "1",
                          "--jobs", "1", "--no-progress", "--out", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["avx2", "AVX2"]  # what a spawned worker sees
    session = [r for r in _lines(tmp_path) if r["kind"] == "session"][-1]
    assert session["env"]["cpu_capability"] == "AVX2"
    # the user's own choice stands
    chosen = subprocess.run([sys.executable, "-c", code, "lab", "N5", "--quick", "--seeds", "1",
                             "--jobs", "1", "--no-progress", "--out", str(tmp_path / "b")],
                            env=env | {"ATEN_CPU_CAPABILITY": "default"}, capture_output=True,
                            text=True, timeout=300)
    assert chosen.returncode == 0, chosen.stderr
    assert chosen.stdout.split()[-2:] == ["default", "AVX2"]
    session = [r for r in _lines(tmp_path / "b") if r["kind"] == "session"][-1]
    assert session["env"]["cpu_capability"] == "DEFAULT"


def test_pin_vector_isa_only_on_x86(monkeypatch):
    import os
    import platform

    from sharenorm.lab.executors import VECTOR_ISA_ENV, pin_vector_isa

    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items()
                                        if k not in VECTOR_ISA_ENV})
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert pin_vector_isa() == {} and not set(VECTOR_ISA_ENV) & set(os.environ)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert pin_vector_isa() == VECTOR_ISA_ENV
