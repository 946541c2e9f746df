"""The results store: append, resume, truncated last line, refusing another lab's folder."""

from __future__ import annotations

import json
import sys

import pytest

from sharenorm.lab.store import LabError, ResultsStore, run_key

HEADER = {"lab_version": "1", "profile": "quick", "data": "embedded"}


def _run(i):
    return {"experiment": "e", "config": {"a": i}, "seed": 0, "metrics": {"v": i}, "time": {}}


def test_append_and_reopen(tmp_path):
    s = ResultsStore.open(tmp_path, HEADER)
    s.add_run(_run(1))
    s.add_run(_run(2))
    again = ResultsStore.open(tmp_path, HEADER)
    assert set(again.runs) == {run_key("e", {"a": 1}, 0), run_key("e", {"a": 2}, 0)}
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "header" and len(lines) == 3


def test_key_is_canonical():
    assert run_key("e", {"b": 1, "a": 2}, 3) == run_key("e", {"a": 2, "b": 1}, 3)
    assert run_key("e", {"a": 1}, 0) != run_key("e", {"a": 1}, 1)


@pytest.mark.parametrize("cut", [1, 10, 30])  # bytes cut from the end of the last line
def test_truncated_last_line_is_removed_and_redone(tmp_path, cut):
    s = ResultsStore.open(tmp_path, HEADER)
    s.add_run(_run(1))
    s.add_run(_run(2))
    p = tmp_path / "results.jsonl"
    data = p.read_bytes()
    good = data[: data.rindex(b"\n", 0, len(data) - 1) + 1]
    p.write_bytes(data[:-cut])
    again = ResultsStore.open(tmp_path, HEADER)
    if cut == 1:  # only the newline was lost: the record is complete and kept
        assert len(again.runs) == 2 and p.read_bytes() == data
    else:
        assert again.repaired > 0 and len(again.runs) == 1
        assert p.read_bytes() == good  # exactly the partial bytes were cut, nothing else
        again.add_run(_run(2))
        assert len(ResultsStore.open(tmp_path, HEADER).runs) == 2


def test_corrupt_middle_line_is_ignored_with_a_warning(tmp_path):
    s = ResultsStore.open(tmp_path, HEADER)
    s.add_run(_run(1))
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write("{broken\n")
    s.add_run(_run(2))
    with pytest.warns(UserWarning, match="line 3 is not valid JSON"):
        again = ResultsStore.open(tmp_path, HEADER)
    assert len(again.runs) == 2


@pytest.mark.parametrize("other", [{"lab_version": "0"}, {"profile": "full"},
                                   {"data": "/somewhere/else"}])
def test_other_lab_configuration_is_refused_and_untouched(tmp_path, other):
    s = ResultsStore.open(tmp_path, HEADER)
    s.add_run(_run(1))
    before = (tmp_path / "results.jsonl").read_bytes()
    with pytest.raises(LabError, match="different lab configuration.*never mixed"):
        ResultsStore.open(tmp_path, {**HEADER, **other})
    assert (tmp_path / "results.jsonl").read_bytes() == before


def test_file_without_header_is_refused(tmp_path):
    (tmp_path / "results.jsonl").write_text('{"kind": "run", "key": "x"}\n')
    with pytest.raises(LabError, match="no header line"):
        ResultsStore.open(tmp_path, HEADER)


def test_read_missing_folder(tmp_path):
    with pytest.raises(LabError, match="does not exist: run `sharenorm lab"):
        ResultsStore.read(tmp_path / "none")


@pytest.mark.parametrize("name", ["results.jsonl", "notes.txt"])
def test_read_a_file_says_to_pass_its_folder(tmp_path, name):
    # `sharenorm report lab-results/results.jsonl`: the advice is the folder, not `lab --out FILE`
    (tmp_path / name).write_text("{}\n")
    with pytest.raises(LabError, match=f"{name} is a file, not a results folder: pass the folder "
                                       "that holds results.jsonl") as e:
        ResultsStore.read(tmp_path / name)
    assert "run `sharenorm lab --out" not in str(e.value)
    if name == "results.jsonl":  # the file itself: its folder is the answer
        assert f"`sharenorm report {tmp_path}`" in str(e.value)


LOCK_HOLDER = """
import sys, time
from sharenorm.lab.store import ResultsStore
ResultsStore.open(sys.argv[1], {"lab_version": "1", "profile": "quick", "data": "embedded"})
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test closes our stdin
"""


def test_a_second_process_on_the_same_folder_is_refused(tmp_path):
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(LabError, match=rf"another sharenorm lab is writing to .*pid {p.pid}"):
            ResultsStore.open(tmp_path, HEADER)
    finally:
        p.stdin.close()
        p.wait(timeout=30)
    s = ResultsStore.open(tmp_path, HEADER)  # the other process ended: the lock is free
    s.add_run(_run(1))
    s.close()


def test_the_lock_is_released_by_close(tmp_path):
    import fcntl

    s = ResultsStore.open(tmp_path, HEADER)
    s.close()
    with open(tmp_path / "results.lock", "rb+") as f:  # nobody holds it any more
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


@pytest.mark.parametrize("make, match", [
    (lambda p: (p.write_text("x"), p)[1], "is a file, not a folder"),
    (lambda p: (p.write_text("x"), p / "sub")[1], "cannot be created"),
    (lambda p: __import__("pathlib").Path("/proc/no-such-dir/x"), "cannot be created"),
])
def test_unusable_folder_is_a_lab_error(tmp_path, make, match):
    out = make(tmp_path / "afile")
    with pytest.raises(LabError, match=match + ".*Choose another --out folder"):
        ResultsStore.open(out, HEADER)


def test_unwritable_folder_is_found_before_any_run(tmp_path, monkeypatch):
    import pathlib

    real = pathlib.Path.write_bytes

    def refuse(self, data):
        if self.name.startswith(".sharenorm-write-test"):
            raise PermissionError(13, "Permission denied")
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", refuse)
    with pytest.raises(LabError, match="is not writable: Permission denied"):
        ResultsStore.open(tmp_path, HEADER)


def test_read_only_results_file_is_found_at_open(tmp_path):
    import os

    ResultsStore.open(tmp_path, HEADER).close()
    (tmp_path / "results.jsonl").chmod(0o444)
    if os.access(tmp_path / "results.jsonl", os.W_OK):
        pytest.skip("running as root: permissions are not enforced")
    with pytest.raises(LabError, match="cannot use .*results.jsonl"):
        ResultsStore.open(tmp_path, HEADER)


@pytest.mark.parametrize("cut", [5, 40])
def test_a_truncated_header_starts_afresh(tmp_path, cut):
    s = ResultsStore.open(tmp_path, HEADER)
    s.close()
    p = tmp_path / "results.jsonl"
    p.write_bytes(p.read_bytes()[:cut])  # killed while writing the header line
    again = ResultsStore.open(tmp_path, HEADER)
    assert again.header == HEADER and again.repaired == 0
    assert json.loads(p.read_text().splitlines()[0])["kind"] == "header"


def test_git_commit_is_none_for_a_copy_inside_another_repository(tmp_path, monkeypatch):
    # sharenorm installed in some project's (gitignored) .venv: that project's HEAD is not ours.
    import importlib.util
    import shutil
    import subprocess

    from sharenorm.lab import runner

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "project"
    pkg = repo / ".venv" / "sharenorm_copy"
    pkg.mkdir(parents=True)
    (repo / ".gitignore").write_text(".venv/\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", ".gitignore"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    shutil.copy(runner.__file__, pkg / "runner.py")
    spec = importlib.util.spec_from_file_location("runner_copy", pkg / "runner.py")
    copy = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "runner_copy", copy)  # its dataclasses look it up
    spec.loader.exec_module(copy)
    assert copy.git_commit() is None
    assert runner.git_commit() is None or len(runner.git_commit().split("+")[0]) == 12
