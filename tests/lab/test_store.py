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
    run = {"kind": "run", "key": run_key("e", {"a": 1}, 0), **_run(1)}
    (tmp_path / "results.jsonl").write_text(json.dumps(run) + "\n")
    with pytest.raises(LabError, match="no header line"):
        ResultsStore.open(tmp_path, HEADER)
    with pytest.raises(LabError, match="no header line .*Pass a folder written by"):
        ResultsStore.read(tmp_path)


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


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("name", ["results.jsonl", "results.lock"])
def test_a_fifo_in_place_of_the_results_or_the_lock_is_refused_not_opened(tmp_path, name):
    # appending to a FIFO would block forever (with the folder locked), and ftruncate of a
    # FIFO lock fails with a bare OSError: both are refused, never opened for writing
    import os

    os.mkfifo(tmp_path / name)
    with pytest.raises(LabError, match=rf"{name} is a FIFO \(named pipe\).*another --out"):
        ResultsStore.open(tmp_path, HEADER)
    if name == "results.jsonl":
        with pytest.raises(LabError, match="is a FIFO .*not a results file"):
            ResultsStore.read(tmp_path)
    else:  # the refusal released nothing it did not hold: a plain folder opens afterwards
        os.remove(tmp_path / name)
        ResultsStore.open(tmp_path, HEADER).close()


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


# ------------------------------------------------- lines the lab did not write as they stand
def _store_with(tmp_path, *lines):
    """A results file: the header, two good runs, then ``lines`` (dicts or raw strings)."""
    recs = [{"kind": "header", **HEADER}]
    recs += [{"kind": "run", "key": run_key("e", {"a": i}, 0), **_run(i)} for i in (1, 2)]
    recs += list(lines)
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in recs)
    (tmp_path / "results.jsonl").write_text(text)
    return tmp_path / "results.jsonl"


def _good(i=3, **change):
    rec = {"kind": "run", "key": run_key("e", {"a": i}, 0), **_run(i)}
    rec.update(change)
    return {k: v for k, v in rec.items() if v is not _DROP}


_DROP = object()


_MALFORMED = [
    (_good(experiment=_DROP), "a run without 'experiment'"),
    (_good(metrics=_DROP, seed=_DROP), "a run without 'seed', 'metrics'"),
    (_good(key=_DROP), "a run without 'key'"),
    (_good(config=[1]), "'config' is not an object"),
    (_good(seed="0"), "'seed' is not an integer"),
    (_good(seed=True), "'seed' is not an integer"),
    (_good(metrics=None), "'metrics' is not an object"),
    (_good(time=3), "'time' is not an object"),
    (_good(time={"run_s": "fast"}), "time 'run_s' is not a number"),
    (_good(key="e|{}|0"), "'key' does not match its experiment, config and seed"),
    ('{"kind": "run", "key": "x", "experiment": "e", "config": {}, "seed": 0, '
     '"metrics": {"v": NaN}}', "holds NaN, a number the lab never writes"),
    (json.dumps(_good(metrics={"v": 1e999})), "holds Infinity"),  # json.dumps writes Infinity
    # a literal beyond float's range reads as infinity, past the token check
    (json.dumps(_good(metrics={"v": 1.0})).replace("1.0", "1e400"), "holds 1e400"),
    (json.dumps(_good(time={"run_s": 2.0})).replace("2.0", "-2e999"), "holds -2e999"),
    ("[1, 2]", "is a JSON list, not an object"),
    ('"text"', "is a JSON str, not an object"),
    ('{"kind": "runn"}', "unknown kind 'runn'"),
    ('{"key": "x"}', "unknown kind None"),
    ("[" * 100000, "is not valid JSON"),
    ('{"kind": "session", "wall_s": "1 s"}', "session whose 'wall_s' is not a number"),
    ('{"kind": "session", "env": []}', "session whose 'env' is not an object"),
    ('{"kind": "session", "load": [1]}', "session whose 'load' is not two numbers"),
]


@pytest.mark.parametrize("line, why", _MALFORMED, ids=[w for _, w in _MALFORMED])
def test_a_malformed_line_is_skipped_with_a_warning_naming_it(tmp_path, line, why):
    # a line the lab would not have written: like a garbage line, skipped with a warning that
    # names it, and its run redone; never a KeyError/TypeError later in the report
    _store_with(tmp_path, line, {"kind": "session", "wall_s": 1.0, "jobs": 1})
    for opener in (ResultsStore.read, lambda f: ResultsStore.open(f, HEADER)):
        with pytest.warns(UserWarning, match=rf"line 4 .*{_re(why)}.*ignored.*redone"):
            s = opener(tmp_path)
        assert s.skipped_lines == [4]
        assert len(s.runs) == 2 and len(s.sessions) == 1
        assert all(r["experiment"] == "e" for r in s.runs.values())
        assert not s.done(run_key("e", {"a": 3}, 0))
        s.close()


def _re(text):
    import re

    return re.escape(text)


def test_report_of_a_malformed_line_is_not_a_traceback(tmp_path, capsys):
    from sharenorm.cli import main

    folder = tmp_path / "lab"
    folder.mkdir()
    _store_with(folder, _good(experiment=_DROP))
    with pytest.warns(UserWarning, match="line 4 is a run without 'experiment'"):
        assert main(["report", str(folder)]) == 0
    assert (folder / "report.md").is_file()


def test_identical_duplicates_are_harmless_and_the_first_counts(tmp_path):
    dup = _good(1, time={"run_s": 9.0})  # same key and metrics; the time may differ
    _store_with(tmp_path, dup, {"kind": "header", **HEADER})
    s = ResultsStore.read(tmp_path)
    assert len(s.runs) == 2 and s.skipped_lines == []
    assert s.runs[run_key("e", {"a": 1}, 0)]["time"] == {}


def test_a_duplicate_run_with_other_metrics_is_refused_naming_both_lines(tmp_path, capsys):
    from sharenorm.cli import main

    p = _store_with(tmp_path, _good(1, metrics={"v": 99}))
    before = p.read_bytes()
    for opener in (ResultsStore.read, lambda f: ResultsStore.open(f, HEADER)):
        with pytest.raises(LabError, match=r"lines 2 and 4 hold the same run \(e\|\{\"a\":1\}\|0\) "
                                           r"with different metrics \(v: 1 vs 99\).*Delete the "
                                           r"wrong line, or both"):
            opener(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert "lines 2 and 4 hold the same run" in capsys.readouterr().err
    assert p.read_bytes() == before and not (tmp_path / "report.md").exists()


def test_a_second_header_that_differs_is_refused(tmp_path, capsys):
    from sharenorm.cli import main

    _store_with(tmp_path, {"kind": "header", **HEADER, "profile": "full"}, _good(3))
    for opener in (ResultsStore.read, lambda f: ResultsStore.open(f, HEADER)):
        with pytest.raises(LabError, match=r"line 4 is a second header that differs from the one "
                                           r"on line 1 \(profile: \"quick\" vs \"full\"\).*never "
                                           r"mixed: move lines 4\.\. into"):
            opener(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert "second header" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_an_empty_results_file_is_refused_by_read_and_started_by_open(tmp_path, capsys, text):
    from sharenorm.cli import main

    (tmp_path / "results.jsonl").write_text(text)
    with pytest.raises(LabError, match=r"results.jsonl is empty: .*Run `sharenorm lab --out"):
        ResultsStore.read(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert "is empty" in capsys.readouterr().err
    if not text:  # a file created empty (touch): the lab starts it
        ResultsStore.open(tmp_path, HEADER).close()
        assert ResultsStore.read(tmp_path).header == HEADER


def test_a_header_without_runs_reads(tmp_path):
    ResultsStore.open(tmp_path, HEADER).close()  # a lab stopped before its first run finished
    s = ResultsStore.read(tmp_path)
    assert s.header == HEADER and s.runs == {}
