"""The results store: append, resume, truncated last line, refusing another lab's folder."""

from __future__ import annotations

import json

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
