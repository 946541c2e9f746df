"""``--executor ray`` against a real local Ray cluster (``ray start --head`` on loopback, 2 CPUs,
stopped after): the same runs give the same metrics as the local pool, resume works, a task
that raises or whose worker dies comes back as a Failure, leaving early cancels the tasks, and
without Ray the flag is a clear error (exit 2)."""

from __future__ import annotations

import functools
import importlib.util
import json
import operator
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from sharenorm.distributed import free_port
from sharenorm.lab import runner
from sharenorm.lab.executors import Failure, RayExecutor, RemoteTraceback, check_executor
from sharenorm.lab.store import LabError

# Ray ≥ 2.x turns --node-ip-address 127.0.0.1 into the machine's routable address and listens
# on every interface, unless told it is a single-machine cluster: keep every port on loopback.
# Token authentication off: with a ~/.ray/auth_token (left by any earlier `ray start` that
# enabled it) Ray ≥ 2.5x turns it on for this loopback cluster too, and its drivers then
# need RAY_AUTH_MODE=token to connect.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


def _ray_cli() -> list[str]:
    exe = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    return [exe] if exe else [sys.executable, "-m", "ray.scripts.scripts"]


@pytest.fixture(scope="module")
def cluster():
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install -e '.[ray]')")
    port = free_port()
    env = dict(os.environ, **LOOPBACK_ENV)
    saved = {k: os.environ.get(k) for k in LOOPBACK_ENV}
    # the driver (this process) joins on loopback too: Ray reads this when it is imported
    os.environ.update(LOOPBACK_ENV)
    assert "ray" not in sys.modules, "ray was imported before the loopback setting"
    try:
        subprocess.run([*_ray_cli(), "start", "--head", "--node-ip-address", "127.0.0.1",
                        "--port", str(port), "--num-cpus", "2", "--include-dashboard=false",
                        "--disable-usage-stats"], env=env, check=True, capture_output=True,
                       timeout=120)
        yield f"127.0.0.1:{port}"
    finally:
        # A driver still connected when the cluster stops is terminated by Ray's core worker
        # 60 s later ("Failed to connect to GCS"): that would end this pytest process in the
        # middle of a later test, without a summary. Disconnect first, whatever a test left.
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()
        subprocess.run([*_ray_cli(), "stop", "--force"], env=env, capture_output=True,
                       timeout=120)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _runs(out):
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()
            if '"kind": "run"' in x]


def test_ray_runs_equal_the_local_pool_and_resume(cluster, tmp_path):
    kw = dict(quick=True, seeds=1, progress=False, report=False, echo=lambda s: None)
    runner.run_lab(["N5"], jobs=2, out=tmp_path / "local", **kw)
    local = {r["key"]: r["metrics"] for r in _runs(tmp_path / "local")}
    assert len(local) == 5
    # resume: a results file holding 3 of the 5 runs (from the local pool); Ray does the rest
    (tmp_path / "ray").mkdir()
    lines = (tmp_path / "local" / "results.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "ray" / "results.jsonl").write_text("".join(lines[:4]))  # header + 3 runs
    msgs = []
    runner.run_lab(["N5"], executor="ray", address=cluster, out=tmp_path / "ray",
                   **{**kw, "echo": msgs.append})
    assert any("3 of 5 runs already done" in m for m in msgs)
    assert {r["key"]: r["metrics"] for r in _runs(tmp_path / "ray")} == local
    session = json.loads((tmp_path / "ray" / "results.jsonl").read_text().splitlines()[-1])
    assert session["status"] == "complete" and session["runs_done"] == 2
    assert session["flags"]["executor"] == "ray" and session["flags"]["address"] == cluster


def test_failures_come_back_as_failures(cluster):
    import ray

    ok, bad = functools.partial(operator.truediv, 1, 2), functools.partial(operator.truediv, 1, 0)
    dies = functools.partial(os._exit, 3)  # a worker process that dies, as when its node dies
    with RayExecutor(address=cluster) as ex:
        out = dict(ex.imap_unordered(operator.call, [ok, bad, dies]))
    assert out[ok] == 0.5
    assert isinstance(out[bad], Failure) and isinstance(out[bad].exception, ZeroDivisionError)
    cause = out[bad].exception.__cause__
    assert isinstance(cause, RemoteTraceback) and "ZeroDivisionError" in str(cause)
    # retried (RAY_MAX_RETRIES), then reported
    assert isinstance(out[dies], Failure)
    assert isinstance(out[dies].exception, ray.exceptions.RayError), out[dies].message


def test_leaving_early_cancels_the_tasks(cluster, tmp_path):
    import ray

    # Each task marks that it runs, then sleeps; exec (a builtin) ships by reference.
    def task(i):
        return (f"import pathlib, time; pathlib.Path({str(tmp_path)!r}, 'started-{i}').touch(); "
                "time.sleep(120)")

    def interrupt_when_busy():
        # the marks, not a Ray call from this thread: a cluster call here can block while
        # the main thread waits on Ray, and then no Ctrl-C would ever come
        end = time.monotonic() + 120
        while time.monotonic() < end and len(list(tmp_path.glob("started-*"))) < 2:
            time.sleep(0.2)
        signal.raise_signal(signal.SIGINT)  # Ctrl-C, delivered to the main thread

    # A driver that disconnects ends its tasks anyway: stay connected past the block, so what
    # is seen below is the executor's cancel, not the disconnection.
    shutdown, ray.shutdown = ray.shutdown, lambda: None
    try:
        with pytest.raises(KeyboardInterrupt):
            with RayExecutor(address=cluster) as ex:
                threading.Thread(target=interrupt_when_busy, daemon=True).start()
                list(ex.imap_unordered(exec, [task(i) for i in range(3)]))
        assert len(list(tmp_path.glob("started-*"))) == 2  # the third was never started
        end = time.monotonic() + 30
        while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < end:
            time.sleep(0.2)
        assert ray.available_resources().get("CPU", 0) == 2, "the sleeping tasks still run"
        time.sleep(1.0)
        assert len(list(tmp_path.glob("started-*"))) == 2, "a cancelled task started later"
    finally:
        ray.shutdown = shutdown
        ray.shutdown()


def test_without_ray_the_flag_is_a_clear_error(monkeypatch, tmp_path, capsys):
    from sharenorm.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(LabError, match=r"needs Ray.*pip install .*sharenorm\[ray\]"):
        check_executor("ray")
    assert main(["lab", "N5", "--executor", "ray", "--out", str(tmp_path / "o")]) == 2
    assert "sharenorm[ray]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was written
    assert main(["lab", "N5", "--address", "127.0.0.1:1", "--out", str(tmp_path / "o")]) == 2
    assert "--address" in capsys.readouterr().err
