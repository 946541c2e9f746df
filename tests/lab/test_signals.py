"""Stopping the lab with SIGTERM or Ctrl-C: a clean exit code, results kept, no orphans.

A real ``sharenorm lab`` process with a slow plug-in experiment whose runs start a
:func:`sharenorm.distributed.launch` rank (like N9), stopped while its runs are in flight.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="checks processes in /proc")

SLOW = '''
import os, time
from pathlib import Path
from sharenorm.lab.spec import SUPPORTED, ClaimResult, Experiment, Text

MARKS = Path(os.environ["SLOWEXP_MARKS"])


def _rank(rank, world, seed):
    (MARKS / f"rank-{seed}-{os.getpid()}").write_text("")
    time.sleep(600)


def run(cfg, seed, ctx):
    from sharenorm import distributed as snd

    if cfg["x"] == 0:
        return {"v": 0}, {}  # one quick run that finishes before the signal
    (MARKS / f"worker-{seed}-{os.getpid()}").write_text("")
    snd.launch(_rank, 1, seed, timeout=600)
    return {"v": 1}, {}


EXPERIMENT = Experiment(
    id="slowexp", claims=("X9",), title=Text("slow"), protocol=Text("sleeps"),
    configs=lambda quick: [{"x": 0}, {"x": 1}, {"x": 2}], run=run,
    analyze=lambda runs, figdir, lang: [ClaimResult("X9", SUPPORTED, "ok")], seeded=False)
'''

SCRIPT = '''
import sys
sys.path.insert(0, {here!r})
from sharenorm.lab import experiments
experiments.EXPERIMENT_MODULES.append("labslow.slowexp")  # also in spawned children
if __name__ == "__main__":
    from sharenorm.cli import main
    sys.exit(main(["lab", "slowexp", "--quick", "--no-progress", "--jobs", sys.argv[1],
                   "--out", sys.argv[2]]))
'''


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait(cond, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


@pytest.mark.parametrize("sig, jobs, code, word", [
    (signal.SIGTERM, "2", 143, "terminated (SIGTERM)"),  # pool workers + their ranks
    (signal.SIGINT, "1", 130, "interrupted"),            # the rank of a run in the main process
])
def test_signal_stops_cleanly_and_leaves_no_process(tmp_path, sig, jobs, code, word):
    (tmp_path / "labslow").mkdir()
    (tmp_path / "labslow" / "slowexp.py").write_text(SLOW)
    (tmp_path / "script.py").write_text(SCRIPT.format(here=str(tmp_path)))
    marks = tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "out"
    env = dict(os.environ, SLOWEXP_MARKS=str(marks))
    p = subprocess.Popen([sys.executable, str(tmp_path / "script.py"), jobs, str(out)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait(lambda: any(m.name.startswith("rank-") for m in marks.iterdir()), 120), \
            "the slow run never started its rank"
        # The quick run's result can still be on its way from a worker (a loaded machine):
        # signal only once it is on disk, so what "kept" means below is not a race.
        results = out / "results.jsonl"
        assert _wait(lambda: results.exists() and '"kind": "run"' in results.read_text(), 60), \
            "the quick run was never recorded"
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == code, err
    assert word in err and "finished runs are saved" in err and "Traceback" not in err
    pids = [int(m.name.rsplit("-", 1)[1]) for m in marks.iterdir()]
    pids = [q for q in pids if q != p.pid]
    assert _wait(lambda: not any(_alive(q) for q in pids), 20), \
        f"orphaned processes still alive: {[q for q in pids if _alive(q)]}"
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["config"] for r in lines if r["kind"] == "run"] == [{"x": 0}]  # kept
    assert lines[-1]["kind"] == "session" and lines[-1]["status"].startswith(word.split()[0])


FORKSERVER = '''
import multiprocessing as mp, os, sys, time
from pathlib import Path


def child(marks):
    from sharenorm.distributed import die_with_parent

    die_with_parent()  # the OS parent is the fork server: the sentinel thread must watch
    Path(marks, f"child-{os.getpid()}").write_text("")
    time.sleep(600)


if __name__ == "__main__":
    p = mp.get_context("forkserver").Process(target=child, args=(sys.argv[1],))
    p.start()
    time.sleep(600)
'''


def test_a_forkserver_child_dies_with_its_multiprocessing_parent(tmp_path):
    # Under forkserver the child's OS parent is the server, not the process that started it:
    # die_with_parent neither exits at once nor outlives the real parent when it is killed.
    (tmp_path / "parent.py").write_text(FORKSERVER)
    marks = tmp_path / "marks"
    marks.mkdir()
    p = subprocess.Popen([sys.executable, str(tmp_path / "parent.py"), str(marks)])
    try:
        assert _wait(lambda: any(marks.iterdir()), 60), "the child never started"
        child = int(next(marks.iterdir()).name.split("-")[1])
        time.sleep(1.5)  # past a check that would make it exit at once
        assert _alive(child), "the child exited while its parent was alive"
        p.kill()  # SIGKILL: no clean-up in the parent
        p.wait(timeout=30)
        assert _wait(lambda: not _alive(child), 20), "the child outlived its parent"
    finally:
        if p.poll() is None:
            p.kill()


def _children(pid: int) -> list[int]:
    """The pids of ``pid``'s living child processes (from /proc)."""
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid and _alive(int(d.name)):
                kids.append(int(d.name))
    return kids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# A spawned worker first re-imports the main script (as __mp_main__), then unpickles its
# initializer, which imports torch: seconds before any of its own code runs. Here that
# start-up is made long on purpose, so a worker that does not die with the main process
# during it is seen alive long after.
SLOW_START = '''
import sys, time
if __name__ == "__mp_main__":
    time.sleep(120)
sys.path.insert(0, {here!r})
from sharenorm.lab import experiments
experiments.EXPERIMENT_MODULES.append("labslow.slowexp")
if __name__ == "__main__":
    from sharenorm.cli import main
    sys.exit(main(["lab", "slowexp", "--quick", "--no-progress", "--jobs", "2",
                   "--out", sys.argv[1]]))
'''


def test_workers_killed_during_start_up_die_with_the_main_process(tmp_path):
    (tmp_path / "labslow").mkdir()
    (tmp_path / "labslow" / "slowexp.py").write_text(SLOW)
    (tmp_path / "script.py").write_text(SLOW_START.format(here=str(tmp_path)))
    env = dict(os.environ, SLOWEXP_MARKS=str(tmp_path))
    p = subprocess.Popen([sys.executable, str(tmp_path / "script.py"), str(tmp_path / "out")],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        def started():
            workers[:] = [q for q in _children(p.pid) if "--multiprocessing-fork" in _cmdline(q)
                          and "resource_tracker" not in _cmdline(q)]
            return len(workers) == 2
        assert _wait(started, 120), "the pool never started its two workers"
        time.sleep(1.0)  # well inside their start-up (120 s)
        p.kill()  # SIGKILL: no clean-up in the main process
        p.wait(timeout=30)
        assert _wait(lambda: not any(_alive(q) for q in workers), 3), \
            f"workers outlived the main process: {[q for q in workers if _alive(q)]}"
    finally:
        if p.poll() is None:
            p.kill()
        for q in workers:
            if _alive(q):
                os.kill(q, signal.SIGKILL)


def test_a_sigterm_whose_exception_was_lost_still_stops_the_lab(tmp_path, monkeypatch):
    # raised from the signal handler inside a weakref callback, _Terminated is printed as
    # "Exception ignored in ..." and lost; the flag the handler also sets must still stop the
    # lab after the job in progress (exit 143, the session recorded as terminated)
    from sharenorm.lab import runner
    from sharenorm.lab.store import LabError

    original = runner.execute_job

    def lost_sigterm(*args, **kwargs):
        out = original(*args, **kwargs)
        runner._TERM_PENDING.set()  # what the handler leaves behind when its raise is lost
        return out

    monkeypatch.setattr(runner, "execute_job", lost_sigterm)
    with pytest.raises(LabError, match="terminated") as err:
        runner.run_lab(["N5"], quick=True, seeds=1, jobs=1, out=tmp_path, progress=False,
                       report=False, echo=lambda s: None)
    assert err.value.exit_code == 143
    sessions = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()
                if '"kind": "session"' in x]
    assert sessions[-1]["status"] == "terminated (SIGTERM)"
    monkeypatch.setattr(runner, "execute_job", original)
    # the flag left set is cleared by the next lab at its start
    runner.run_lab(["N5"], quick=True, seeds=1, jobs=1, out=tmp_path / "again",
                   progress=False, report=False, echo=lambda s: None)
