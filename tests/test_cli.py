"""The command line: lab, report, --list, and every bad input (exit code ≠ 0, nothing lost)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sharenorm.cli import main

sys.path.insert(0, str(Path(__file__).parent / "data"))
from test_loaders import make_cifar_folder, make_idx_folder  # noqa: E402  (tiny file writers)


def _lab(tmp_path, *extra):
    return main(["lab", "--out", str(tmp_path), "--jobs", "1", "--no-progress", *extra])


def test_help_lists_every_claim_and_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["lab", "--help"])
    out = capsys.readouterr().out
    assert "N1..N10" in out and "143" in out and "130" in out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "``" not in capsys.readouterr().out


def test_version(capsys):
    import sharenorm

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"sharenorm {sharenorm.__version__} (torch ") and "Python" in out


def test_list(capsys):
    assert main(["lab", "--list"]) == 0
    out = capsys.readouterr().out
    for cid in ("N1", "N8", "S4", "T3", "batch_size", "criterion:"):
        assert cid in out


def test_demo(capsys):
    assert main(["demo"]) == 0
    assert "group" in capsys.readouterr().out


def test_end_to_end_subset_then_report(tmp_path, capsys):
    assert _lab(tmp_path, "N5", "S1", "--quick", "--seeds", "2") == 0
    out = capsys.readouterr().out
    assert "[N5] batch_dependence done" in out and "[S1] sharing_cost done" in out
    md = (tmp_path / "report.md").read_text()
    assert "## N5" in md and "## S1" in md and "✅ supported" in md
    # provenance: the command line, its status, versions per session
    assert "`sharenorm lab --out " in md and "| complete |" in md
    assert "| mnist1d | installed |" not in md
    before = (tmp_path / "results.jsonl").read_bytes()
    (tmp_path / "report.md").unlink()
    assert main(["report", str(tmp_path), "--lang", "hi"]) == 0
    assert "समर्थित" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "results.jsonl").read_bytes() == before  # report only reads


@pytest.mark.parametrize("args, message", [
    (["N66"], "Did you mean N6"),
    (["--data", "/no/such/path"], "does not exist. Accepted formats"),
])
def test_bad_lab_input(tmp_path, capsys, args, message):
    assert _lab(tmp_path, *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "results.jsonl").exists()


def test_unknown_data_format(tmp_path, capsys):
    (tmp_path / "x.csv").write_text("1,2\n")
    assert _lab(tmp_path / "out", "--data", str(tmp_path / "x.csv")) == 2
    assert "unknown data format '.csv'" in capsys.readouterr().err


def test_corrupt_idx_data(tmp_path, capsys):
    make_idx_folder(tmp_path, gz=False)
    p = tmp_path / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-3])
    assert _lab(tmp_path / "out", "N5", "--data", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "t10k-images-idx3-ubyte" in err and "truncated or corrupt" in err


def test_corrupt_cifar_data(tmp_path, capsys):
    make_cifar_folder(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(b"\x80\x04junk")
    assert _lab(tmp_path / "out", "N5", "--data", str(tmp_path)) == 2
    assert "data_batch_2: not a readable CIFAR python batch" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--seeds", "--jobs"])
def test_zero_seeds_or_jobs(tmp_path, capsys, flag):
    with pytest.raises(SystemExit) as e:
        _lab(tmp_path, flag, "0")
    assert e.value.code == 2 and f"{flag} must be ≥ 1" in capsys.readouterr().err


def test_other_lab_config_in_out_dir_is_refused_and_kept(tmp_path, capsys):
    assert _lab(tmp_path, "N5", "--quick", "--seeds", "1") == 0
    assert "--seeds 1 gives no 95% confidence intervals" in capsys.readouterr().out
    before = (tmp_path / "results.jsonl").read_bytes()
    assert _lab(tmp_path, "N5", "--seeds", "1") == 2  # full profile into a quick folder
    assert "different lab configuration" in capsys.readouterr().err
    assert (tmp_path / "results.jsonl").read_bytes() == before


def test_report_of_missing_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("kind, message", [("file", "is a file, not a folder"),
                                           ("file/sub", "cannot be created"),
                                           ("/proc/xyz", "cannot be created")])
def test_unusable_out_folder_is_exit_2_with_the_fix(tmp_path, capsys, kind, message):
    (tmp_path / "file").write_text("x")
    out = kind if kind.startswith("/") else str(tmp_path / kind)
    assert main(["lab", "N5", "--quick", "--out", out, "--jobs", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Choose another --out folder" in err and "Traceback" not in err


def test_report_into_an_unwritable_folder_is_exit_2(tmp_path, capsys, monkeypatch):
    assert _lab(tmp_path, "S1", "--quick", "--seeds", "2") == 0
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    assert main(["report", str(tmp_path)]) == 2
    assert "cannot write the report" in capsys.readouterr().err
