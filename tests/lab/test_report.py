"""The report rebuilt from a tiny fake results file alone."""

from __future__ import annotations

import json

from sharenorm.lab.report import write_report
from sharenorm.lab.store import LAB_VERSION, run_key


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
                  "command": "sharenorm lab --quick", "env": {"torch": "w"}})
    lines.append({"kind": "session", "wall_s": 10.0, "jobs": 2, "env": {"torch": "x"}})
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
    assert "different versions (torch)" in md
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
