"""The report rebuilt from a tiny fake results file alone."""

from __future__ import annotations

import json

import pytest

from sharenorm.lab.report import write_report
from sharenorm.lab.store import LAB_VERSION, LabError, run_key


def fake_results(folder):
    folder.mkdir(exist_ok=True)
    lines = [{"kind": "header", "lab_version": LAB_VERSION, "profile": "quick",
              "data": "embedded"}]
    deltas = {"batch": 0.2, "instance": 0.0, "group": 0.0, "layer": 0.0, "none": 0.0}
    for norm, d in deltas.items():
        for seed in range(3):
            cfg = {"norm": norm, "batch": 16}
            lines.append({"kind": "run", "key": run_key("batch_dependence", cfg, seed),
                          "experiment": "batch_dependence", "config": cfg, "seed": seed,
                          "metrics": {"delta_train": d * (1 + seed / 10), "delta_eval": 0.0},
                          "time": {"run_s": 0.01}})
    for bs, accs in {2: {"batch": [0.5, 0.52, 0.49], "group": [0.8, 0.82, 0.81]},
                     32: {"batch": [0.8, 0.81, 0.79], "group": [0.8, 0.8, 0.81]}}.items():
        for norm, vals in accs.items():
            for seed, a in enumerate(vals):
                cfg = {"norm": norm, "batch_size": bs, "epochs": 1, "lr": 0.05 * bs / 32}
                lines.append({"kind": "run", "key": run_key("batch_size", cfg, seed),
                              "experiment": "batch_size", "config": cfg, "seed": seed,
                              "metrics": {"test_acc": a, "train_acc": a, "diverged": False},
                              "time": {"run_s": 1.0}})
    lines.append({"kind": "session", "wall_s": 2.5, "jobs": 2, "status": "interrupted (Ctrl-C)",
                  "command": "sharenorm lab --quick",
                  "env": {"torch": "w", "cpu_capability": "AVX512"}})
    lines.append({"kind": "session", "wall_s": 10.0, "jobs": 2,
                  "env": {"torch": "x", "cpu_capability": "AVX2"}})
    (folder / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_report_from_results_alone(tmp_path):
    fake_results(tmp_path)
    md = write_report(tmp_path).read_text()
    # the documents' tables at the top, with measured numbers, verdicts and criteria
    top = md[: md.index("Verdicts at a glance")]
    assert "Batch Size पर निर्भरता" in top and "Δ = 2.4e-01 (✅ supported)" in top
    assert "Criteria behind the cells" in top
    assert "Small Batch Sizes पर कार्यक्षमता" in top
    # sections: statement, criterion, figure, CI table, verdict, published numbers
    assert "## N5" in md and "## N6" in md and "Criterion (fixed before the run)" in md
    assert "![N5: n5_batch_dependence](figures/n5_batch_dependence.png)" in md
    assert "50.3 ± " in md  # mean ± CI over 3 seeds (BN at batch 2)
    assert "Wu & He 2018" in md and "23.6 → 34.7" in md
    assert "N6 " in md and "✅ supported" in md
    assert "⏸ not run" in md  # claims without runs say so
    assert "12.5 s" in md  # total time
    assert "`sharenorm lab --quick`" in md and "interrupted (Ctrl-C)" in md  # provenance
    # other vector kernels give other bits: flagged like another torch
    assert "different versions (torch, cpu_capability)" in md
    assert (tmp_path / "figures" / "n6_batch_size.png").stat().st_size > 1000
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<table>" in html
    assert "src='figures/" not in html  # self-contained


def test_report_in_hindi(tmp_path):
    fake_results(tmp_path)
    md = write_report(tmp_path, lang="hi").read_text()
    assert "समर्थित (supported)" in md and "Criterion (run से पहले तय)" in md
    assert "एक नज़र में verdicts" in md and "Training mode में" in md


def test_report_survives_a_broken_analysis(tmp_path, monkeypatch):
    fake_results(tmp_path)
    from sharenorm.lab.experiments import batch_dependence

    def boom(*a):
        raise RuntimeError("kaputt")

    monkeypatch.setattr(batch_dependence.EXPERIMENT, "analyze", boom)
    md = write_report(tmp_path).read_text()
    assert "The analysis failed: RuntimeError: kaputt" in md and "## N6" in md


def _train_run(exp, cfg, seed, acc):
    metrics = {"train_acc": acc + 0.02, "test_acc": acc, "gap": 0.02, "diverged": False,
               "steps_to_target": 50 if acc >= 0.6 else None,
               "curve": [[25, acc - 0.2], [50, acc]]}
    return {"kind": "run", "key": run_key(exp, cfg, seed), "experiment": exp, "config": cfg,
            "seed": seed, "metrics": metrics,
            "time": {"s_per_step": 0.001 * (seed + 1), "s_to_target": 0.05, "run_s": 0.1}}


def _order_results(folder, reverse):
    """A norm_training and a sharing_cost experiment whose runs finished in some order."""
    folder.mkdir()
    runs = []
    for norm, acc in {"batch": 0.8, "group": 0.75, "instance": 0.7, "layer": 0.72,
                      "none": 0.6}.items():
        cfg = {"norm": norm, "steps": 100, "batch_size": 32, "lr": 0.05, "eval_every": 25,
               "target": 0.6}
        runs += [_train_run("norm_training", cfg, s, acc + 0.01 * s) for s in range(2)]
    for model, p in {"cnn": 1000, "locally_connected": 7000, "mlp": 30000}.items():
        runs.append({"kind": "run", "key": run_key("sharing_cost", {"model": model}, 0),
                     "experiment": "sharing_cost", "config": {"model": model}, "seed": 0,
                     "metrics": {"params": p, "param_bytes": 4 * p, "adam_state_bytes": 8 * p,
                                 "sgd_momentum_state_bytes": 4 * p,
                                 "param_plus_adam_bytes": 12 * p, "data": "mnist1d"},
                     "time": {"run_s": 0.3}})
    header = {"kind": "header", "lab_version": LAB_VERSION, "profile": "quick",
              "data": "embedded"}
    session = {"kind": "session", "wall_s": 2.0, "jobs": 2, "env": {"torch": "x"}}
    lines = [header, *(runs[::-1] if reverse else runs), session]
    (folder / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_report_does_not_depend_on_the_order_runs_finished_in(tmp_path):
    # --jobs 2 stores runs in completion order; the report follows the configs' order
    _order_results(tmp_path / "a", reverse=False)
    _order_results(tmp_path / "b", reverse=True)
    md_a = write_report(tmp_path / "a").read_text()
    assert md_a == write_report(tmp_path / "b").read_text()
    assert (tmp_path / "a/report.html").read_bytes() == (tmp_path / "b/report.html").read_bytes()
    section = md_a[md_a.index("## N1"):]
    assert section.index("| batch |") < section.index("| group |") < section.index("| none |")


def test_the_bn_use_cell_is_informational_not_a_borrowed_verdict(tmp_path):
    # "BN is used in CNNs, RNNs" is never measured: the cell shows N1's number, no ✅/❌
    _order_results(tmp_path / "a", reverse=False)
    md = write_report(tmp_path / "a").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| Deep Learning Model में उपयोग"))
    batch_cell = row.split(" | ")[1]
    assert "80.5" in batch_cell and "CNNs:" in batch_cell  # BN's N1 test accuracy
    assert "(ℹ informational, no verdict)" in batch_cell
    assert "✅" not in batch_cell and "❌" not in batch_cell


def test_html_carries_its_own_devanagari_font_and_marks(tmp_path):
    # a stock browser without a Devanagari font or a colour-emoji font showed boxes
    from sharenorm.lab.fonts import devanagari_font

    fake_results(tmp_path)
    write_report(tmp_path, lang="hi")
    html = (tmp_path / "report.html").read_text()
    for mark in ("✅", "❌", "➖", "⏸", "❔"):
        assert mark not in html
    assert "<svg class='mk'" in html and "aria-label='supported'" in html
    if devanagari_font() is None:
        pytest.skip("no Devanagari font installed (pip install fontpkg-noto-sans-devanagari)")
    assert "@font-face{font-family:'SN Devanagari';src:url(data:font/ttf;base64," in html
    import base64
    import io
    import re

    from fontTools.ttLib import TTFont

    b64 = re.search(r"data:font/ttf;base64,([A-Za-z0-9+/=]+)", html).group(1)
    cmap = TTFont(io.BytesIO(base64.b64decode(b64))).getBestCmap()
    body = re.sub(r"<style>.*?</style>", "", html, flags=re.S)
    used = {ch for ch in body if 0x0900 <= ord(ch) <= 0x097F}
    assert used and used <= {chr(c) for c in cmap}  # every Devanagari letter of the page
    assert len(cmap) < 200  # a subset, not the whole font


def test_english_report_without_hindi_text_embeds_no_font():
    from sharenorm.lab.fonts import font_face_css

    assert font_face_css("only English ±") == ""


def test_n6_small_multiples_and_t2_legend(tmp_path, monkeypatch):
    from sharenorm.lab.experiments import batch_size, tying_reg

    figs = {}

    def keep(fig, figdir, name):
        figs[name] = fig
        return f"figures/{name}.png"

    fake_results(tmp_path)
    monkeypatch.setattr(batch_size, "save_figure", keep)
    monkeypatch.setattr(tying_reg, "save_figure", keep)
    import json

    runs = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    batch_size.analyze([r for r in runs if r.get("experiment") == "batch_size"], tmp_path,
                       "hi")
    axes = figs["n6_batch_size"].axes
    assert len(axes) == 2 and [a.get_title() for a in axes] == ["BN", "GN"]  # one per norm
    assert any("Wu & He" in t.get_text() for t in axes[0].get_legend().get_texts())
    t2 = []
    for mode, mse in (("untied", 0.3), ("tied", 0.25)):
        for n in (50, 200):
            for s in range(2):
                t2.append({"experiment": "tying_reg", "seed": s,
                           "config": {"n": n, "mode": mode, "strength": 0.0, "steps": 10},
                           "metrics": {"train_mse": mse - 0.1, "test_mse": mse + s / 100,
                                       "gap": 0.1, "tie_distance": 0.0, "params": 1}})
    for lam in (0.01, 1.0):
        for s in range(2):
            t2.append({"experiment": "tying_reg", "seed": s,
                       "config": {"n": 50, "mode": "soft", "strength": lam, "steps": 10},
                       "metrics": {"train_mse": 0.2, "test_mse": 0.28, "gap": 0.08,
                                   "tie_distance": 1.0 / (1 + lam), "params": 1}})
    tying_reg.analyze(t2, tmp_path, "en")
    a1, a2 = figs["t2_tying_regularization"].axes[:2]
    # each band has its line's colour
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import to_rgb

    lines = {ln.get_label(): to_rgb(ln.get_color()) for ln in a1.get_lines()}
    bands = [c for c in a1.collections if isinstance(c, PolyCollection)]
    for band in bands:
        mode = band.get_label().split(" ")[0]
        assert tuple(band.get_facecolor()[0][:3]) == pytest.approx(lines[f"{mode} (test)"])
    # every curve of both axes of the soft-tie panel is in its legend
    legend = {t.get_text() for t in a2.get_legend().get_texts()}
    curves = {ln.get_label() for ax in figs["t2_tying_regularization"].axes[1:]
              for ln in ax.get_lines()}
    assert curves <= legend and "‖W_dec − W_encᵀ‖" in legend


def test_font_is_pinned_once_then_read_from_the_cache(tmp_path, monkeypatch):
    # pinning the variable font takes ~5 s: once per machine, not per lab command
    from sharenorm.lab import fonts

    if fonts.devanagari_font() is None:
        pytest.skip("no Devanagari font installed (pip install fontpkg-noto-sans-devanagari)")
    monkeypatch.setenv("SHARENORM_CACHE_DIR", str(tmp_path))
    fonts._regular_instance.cache_clear()
    first = fonts.font_face_css("GN उच्च")
    made = sorted((tmp_path / "fonts").iterdir())
    assert len(made) == 2  # the pinned font and the subset
    fonts._regular_instance.cache_clear()
    monkeypatch.setattr(fonts, "_pin", lambda path: pytest.fail("pinned again"))
    monkeypatch.setattr(fonts, "_subset", lambda data, chars: pytest.fail("subset again"))
    assert fonts.font_face_css("GN उच्च") == first
    # a cache file that is not a font (someone else's, or damaged) is made again, not embedded
    for f in made:
        f.write_bytes(b"<html>not a font</html>")
    monkeypatch.undo()
    monkeypatch.setenv("SHARENORM_CACHE_DIR", str(tmp_path))
    fonts._regular_instance.cache_clear()
    assert fonts.font_face_css("GN उच्च") == first
    fonts._regular_instance.cache_clear()


def test_the_same_runs_are_analyzed_once_per_process(tmp_path, monkeypatch):
    # the console's line and the report both ask for every experiment's analysis
    from sharenorm.lab import experiments

    exp = experiments.get_experiment("vanishing")
    runs = [{"experiment": "vanishing", "config": c, "seed": 0, "metrics": {}, "time": {}}
            for c in exp.configs(True)]
    calls = []
    monkeypatch.setattr(exp, "analyze", lambda r, f, lang: calls.append(1) or [])
    experiments.analyze_stored(exp, runs, tmp_path, "en", True)
    experiments.analyze_stored(exp, list(reversed(runs)), tmp_path, "en", True)
    assert len(calls) == 1
    runs[0] = dict(runs[0], metrics={"changed": 1})  # other results: analyzed again
    experiments.analyze_stored(exp, runs, tmp_path, "en", True)
    experiments.analyze_stored(exp, runs, tmp_path, "hi", True)
    assert len(calls) == 3


@pytest.mark.parametrize("args, match", [((None,), "folder must be the path"),
                                         ((5,), "folder must be the path"),
                                         (("x", "fr"), "lang must be 'en' or 'hi'"),
                                         (("x", None), "lang must be 'en' or 'hi'")])
def test_write_report_and_summary_check_their_arguments(args, match):
    from sharenorm.lab.report import summary_markdown

    for fn in (write_report, summary_markdown):
        with pytest.raises(LabError, match=match):
            fn(*args)


@pytest.mark.parametrize("where, match", [
    (lambda d: (d / "docs").mkdir() or d / "docs", "is a folder: pass a file path"),
    (lambda d: (d / "afile").write_text("x") and d / "afile" / "s.md", "cannot write the summary"),
], ids=["a-folder", "under-a-file"])
def test_summary_to_a_path_it_cannot_write_is_a_lab_error(tmp_path, capsys, where, match):
    # torch-free OSErrors (IsADirectoryError, FileExistsError) become exit 2 with the fix
    from sharenorm.cli import main

    fake_results(tmp_path / "lab")
    path = where(tmp_path)
    assert main(["report", str(tmp_path / "lab"), "--summary", str(path)]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_hints_give_a_command_that_runs_into_this_folder(tmp_path):
    # a plain `sharenorm lab N1` would write a full-profile lab into lab-results/, and this
    # folder, a quick one, refuses the full profile: the hint names the profile and --out.
    # The documents are named by their titles, not their first word ("(“Batch)").
    from sharenorm.lab.report import summary_markdown

    fake_results(tmp_path)
    md = write_report(tmp_path).read_text()
    assert "(`sharenorm lab N1 --quick --out DIR`, DIR this folder, runs it here)" in md
    assert "(“Batch Normalization, Instance Normalization और Group Normalization क्या हैं?”)" in md
    summary = summary_markdown(tmp_path)
    assert "**Not run**:" in summary and "--quick --out DIR` runs them" in summary
    assert "lab-results/report.html" not in summary
