"""Write ``report.md``, a self-contained ``report.html`` and ``figures/*.png`` from results alone.

The report is built as a list of blocks (heading, paragraph, quote, table, image) rendered
twice, to Markdown and to HTML with every figure embedded as base64, so both say the same.
"""

from __future__ import annotations

import base64
import html
import math
import os
import shlex
from pathlib import Path

from sharenorm.lab.claims import DOC_TABLES, NOT_MEASURED, quote
from sharenorm.lab.experiments import all_claims, all_experiments, analyze_stored
from sharenorm.lab.fonts import FONT_FAMILY, font_face_css
from sharenorm.lab.spec import INFORMATIONAL, NOT_RUN, UNDECIDABLE, ClaimResult, Text
from sharenorm.lab.store import LabError, ResultsStore

__all__ = ["write_report", "write_summary", "summary_markdown", "build_blocks", "VERDICT_WORDS",
           "SUMMARY_MARK"]

VERDICT_WORDS = {
    "supported": Text("supported", "समर्थित (supported)"),
    "not supported": Text("not supported", "समर्थित नहीं (not supported)"),
    "mixed": Text("mixed", "मिश्रित (mixed)"),
    "not run": Text("not run", "नहीं चलाया गया (not run)"),
    "inconclusive": Text("inconclusive", "अनिर्णीत (inconclusive)"),
    "informational": Text("informational, no verdict", "सिर्फ़ जानकारी, verdict नहीं (informational)"),
}
_MARK = {"supported": "✅", "not supported": "❌", "mixed": "➖", "not run": "⏸",
         "inconclusive": "❔", "informational": "ℹ"}

L = {
    "title": Text("sharenorm lab report", "sharenorm lab report"),
    "intro": Text(
        "Every claim of the two documents was turned into an experiment on real data with the "
        "criterion for *supported* fixed in the code before the run. Numbers are means over "
        "seeds with 95% confidence intervals (Student t over seeds). A criterion is decided by "
        "the 95% Welch interval of a *difference* against its stated margin: wholly beyond it "
        "holds, wholly short of it fails, straddling it is *inconclusive*. Claims that hold by "
        "construction are marked *demonstration* and not counted as evidence.",
        "दोनों documents के हर claim को real data पर एक experiment में बदला गया; *supported* होने की "
        "criterion run से पहले code में तय की गई। Numbers seeds पर mean हैं, 95% confidence "
        "intervals (seeds पर Student t) के साथ। Criterion एक *difference* के 95% Welch interval की "
        "उसके margin से तुलना से तय होती है: पूरा पार हो तो holds, पूरा पीछे हो तो fails, दोनों ओर हो "
        "तो *inconclusive*। जो claims construction से ही सही हैं वे *demonstration* हैं, evidence नहीं।"),
    "glance": Text("Verdicts at a glance", "एक नज़र में verdicts"),
    "quick": Text("**Quick profile**: a smoke test with few steps and seeds; its numbers and "
                  "verdicts are not conclusions. Run `sharenorm lab` (the default size) for the "
                  "measurements.",
                  "**Quick profile**: कम steps और seeds वाला smoke test; इसके numbers और verdicts "
                  "निष्कर्ष नहीं हैं। Measurements के लिए `sharenorm lab` (default size) चलाएँ।"),
    "load": Text("System load average (1 min) at start → end of each session; other processes "
                 "shared the CPU, so wall-clock timings are inflated by roughly that factor / "
                 "cores.",
                 "हर session की शुरुआत → अंत पर system load average (1 min); CPU दूसरे processes के "
                 "साथ shared था, इसलिए wall-clock timings लगभग load / cores के factor से बढ़ी हुई हैं।"),
    "doc_tables": Text("The documents' comparison tables, measured",
                       "Documents की comparison tables, measured"),
    "doc_says": Text("document says", "document कहता है"),
    "criteria_used": Text("Criteria behind the cells", "Cells के पीछे की criteria"),
    "claim": Text("claim", "claim"), "statement": Text("statement", "कथन (statement)"),
    "verdict": Text("verdict", "verdict"), "measured": Text("measured", "measured"),
    "doc_statement": Text("What the document says", "Document क्या कहता है"),
    "criterion": Text("Criterion (fixed before the run)", "Criterion (run से पहले तय)"),
    "protocol": Text("Protocol", "Protocol"),
    "results": Text("Results (over seeds; ± is the 95% CI where shown)",
                    "Results (seeds पर; ± जहाँ दिखे, 95% CI है)"),
    "published": Text("Published numbers beside ours", "Published numbers हमारे numbers के साथ"),
    "why": Text("Why", "क्यों"),
    "not_measured": Text("Claims of the documents that are not measured",
                         "Documents के claims जो measure नहीं हुए"),
    "env": Text("Environment and time", "Environment और समय"),
    "not_run": Text("This claim has no finished runs in this folder (`{cmd}`, DIR this "
                    "folder, runs it here).",
                    "इस folder में इस claim के कोई finished runs नहीं हैं (`{cmd}`, DIR यही folder, "
                    "इसे यहीं चलाता है)।"),
    "undecidable": Text(
        "The 95% interval of a difference the criterion needs straddles its margin (or, with one "
        "seed, there is no interval), or a run had not converged: the measurement cannot tell "
        "either way. More seeds narrow the interval (5 is the default).",
        "Criterion को जिस difference का 95% interval चाहिए वह margin के दोनों ओर है (या एक seed के "
        "साथ कोई interval नहीं), या कोई run converge नहीं हुआ: measurement किसी ओर फ़ैसला नहीं कर "
        "सकता। ज़्यादा seeds interval को संकरा करते हैं (default 5)।"),
    "effects": Text("Differences behind the verdict (effect size, 95% Welch interval, margin)",
                    "Verdict के पीछे के differences (effect size, 95% Welch interval, margin)"),
    "effect": Text("effect [95% CI] vs margin", "effect [95% CI] vs margin"),
    "demo": Text("demonstration", "demonstration (प्रदर्शन)"),
    "demo_note": Text(
        "**Demonstration:** this claim holds by construction or arithmetic (parameter counts, a "
        "definition); the lab shows it, but it is not counted as evidence.",
        "**Demonstration:** यह claim construction या गणित से ही सही है (parameter counts, एक "
        "definition); lab इसे दिखाता है, पर इसे evidence नहीं गिना जाता।"),
    "kind": Text("kind", "प्रकार"), "evidence": Text("evidence", "evidence"),
    "informational": Text("informational", "informational (जानकारी)"),
    "translation": Text("English translation", "English translation"),
    "experiment": Text("Experiment", "Experiment"),
    "profile": Text("Profile", "Profile"), "seeds": Text("Seeds", "Seeds"),
    "data": Text("Data", "Data"),
    "total": Text("Total lab time (wall clock, all sessions)", "कुल lab समय (wall clock, सभी sessions)"),
    "cpu_time": Text("Sum of run wall times (one core each)",
                     "Run wall times का योग (हर run एक core पर)"),
    "cpu_sum": Text("Sum of run CPU times (the run's own process)",
                    "Run CPU times का योग (run का अपना process)"),
    "cpu_children": Text("CPU time of processes the runs started (N9's gloo ranks)",
                         "Runs के शुरू किए processes का CPU time (N9 के gloo ranks)"),
    "sessions": Text("Sessions (one per `sharenorm lab` invocation)",
                     "Sessions (हर `sharenorm lab` invocation का एक)"),
    "mixed_versions": Text(
        "**Note:** the results in this folder come from sessions with different versions "
        "({what}); numbers of different versions may not be comparable.",
        "**ध्यान दें:** इस folder के results अलग versions वाले sessions से हैं ({what}); अलग versions "
        "के numbers तुलनीय न भी हों।"),
    "feature": Text("feature", "विशेषता"),
    "source": Text("source", "source"), "setting": Text("setting", "setting"),
    "theirs": Text("published", "published"), "ours": Text("ours", "हमारा"),
}


def _t(key: str, lang: str, **kw) -> str:
    s = L[key](lang)
    return s.format(**kw) if kw else s


def _verdict(v: str, lang: str) -> str:
    return f"{_MARK.get(v, '')} {VERDICT_WORDS.get(v, Text(v))(lang)}".strip()


def _analyze_all(store: ResultsStore, figdir: Path, lang: str) -> tuple[dict, dict]:
    """``({claim: ClaimResult}, {experiment id: Experiment})`` from the stored runs."""
    results: dict[str, ClaimResult] = {}
    exps = all_experiments()
    quick = (store.header or {}).get("profile") == "quick"
    for e in exps.values():
        for r in analyze_stored(e, store.runs_of(e.id), figdir, lang, quick):
            results[r.claim] = r
    return results, exps


def _kind(claim, result: ClaimResult | None, lang: str) -> str:
    """A claim's kind: a demonstration (holds by construction), informational (measured, no
    criterion decides it: N10), or evidence."""
    if claim.demonstration:
        return _t("demo", lang)
    return _t("informational" if result and result.verdict == INFORMATIONAL else "evidence", lang)


def lab_command(store: ResultsStore, ids: list[str]) -> str:
    """The ``sharenorm lab`` command that runs ``ids`` into the results folder (``DIR``: a
    report does not depend on where its folder lies): with the profile and data of its
    header, which a folder refuses to mix (a plain ``sharenorm lab N1`` would write a
    full-profile lab into lab-results/)."""
    hdr = store.header or {}
    quick = " --quick" if hdr.get("profile") == "quick" else ""
    data = hdr.get("data", "embedded")
    data = "" if data == "embedded" else f" --data {shlex.quote(data.split(' (')[0])}"
    return f"sharenorm lab {' '.join(ids)}{quick}{data} --out DIR"


def build_blocks(store: ResultsStore, folder: Path, lang: str = "en") -> list[tuple]:
    """The report as blocks: ("h", level, text) ("p", text) ("quote", text)
    ("table", headers, rows) ("img", relpath, caption)."""
    figdir = folder / "figures"
    results, exps = _analyze_all(store, figdir, lang)
    claim_exp = {c: e for e in exps.values() for c in e.claims}
    hdr = store.header or {}
    seeds = sorted({r["seed"] for r in store.runs.values()})
    claims = all_claims()
    B: list[tuple] = [("h", 1, _t("title", lang)), ("p", _t("intro", lang)),
                      ("p", f"{_t('profile', lang)}: **{hdr.get('profile', '?')}** · "
                            f"{_t('seeds', lang)}: {len(seeds)} · {_t('data', lang)}: "
                            f"{hdr.get('data', '?')} · lab version {hdr.get('lab_version', '?')}")]
    if hdr.get("profile") == "quick":
        B.append(("p", _t("quick", lang)))

    # -------- the two comparison tables at the top
    B.append(("h", 2, _t("doc_tables", lang)))
    for table_id, title, cols, rows in DOC_TABLES:
        B.append(("h", 3, title(lang)))
        trows, used = [], []
        for row_id, label, doc_cells, claim in rows:
            col_claims = claim if isinstance(claim, list) else [claim] * len(cols)
            cells = [label]
            for col, doc, cl in zip(cols, doc_cells, col_claims, strict=False):
                # a cell several claims measure (BN "used in CNNs, RNNs": N1 and N10) shows
                # every measurement; the first one's verdict (they are informational alike)
                parts = [r.cells[(table_id, row_id, col)] for r in results.values()
                         if (table_id, row_id, col) in r.cells]
                found = ("; ".join(p[0] for p in parts), parts[0][1]) if parts else None
                if found is None:
                    # no cell-level measurement: point to the claim's section and verdict
                    res = results.get(cl)
                    found = (f"see {cl}" if res and res.verdict != NOT_RUN else "—",
                             res.verdict if res else NOT_RUN)
                cells.append(f"{doc} — {found[0]} ({_verdict(found[1], lang)})")
            owners = sorted(set(col_claims) | {r.claim for r in results.values()
                                               if any(k[:2] == (table_id, row_id) for k in r.cells)})
            cells.append(", ".join(owners))
            used += [o for o in owners if o not in used]
            trows.append(cells)
        B.append(("table", [_t("feature", lang)] + [f"{c} ({_t('doc_says', lang)} — "
                                                      f"{_t('measured', lang)})" for c in cols]
                  + [_t("claim", lang)], trows))
        B.append(("p", f"**{_t('criteria_used', lang)}:** " + " ".join(
            f"**{c}**: {claims[c].criterion(lang)}" for c in used if c in claims)))

    # -------- verdicts at a glance
    B.append(("h", 2, _t("glance", lang)))
    glance = []
    for cid, claim in claims.items():
        r = results.get(cid)
        glance.append([cid, claim.statement_hi if lang == "hi" else claim.statement_en,
                       _kind(claim, r, lang),
                       _verdict(r.verdict if r else NOT_RUN, lang),
                       "; ".join(str(c) for c in r.comparisons) if r and r.comparisons else "—",
                       r.measured if r else "—"])
    B.append(("table", [_t("claim", lang), _t("statement", lang), _t("kind", lang),
                        _t("verdict", lang), _t("effect", lang), _t("measured", lang)], glance))

    # -------- one section per claim
    for cid, claim in claims.items():
        r = results.get(cid)
        e = claim_exp.get(cid)
        B.append(("h", 2, f"{cid} — {claim.statement_hi if lang == 'hi' else claim.statement_en}"))
        B.append(("p", f"**{_t('doc_statement', lang)}** ({claim.doc}):"))
        B.append(("quote", "\n".join(quote(claim)) + (f"\n({_t('translation', lang)}: "
                                                     f"{claim.statement_en})")))
        B.append(("p", f"**{_t('criterion', lang)}:** {claim.criterion(lang)}"))
        if e is not None:
            B.append(("p", f"**{_t('protocol', lang)}** ({_t('experiment', lang)} `{e.id}`): "
                           f"{e.protocol(lang)}"))
        if r is None or (r.verdict == NOT_RUN and not r.tables):
            B.append(("p", f"**{_t('verdict', lang)}: {_verdict(NOT_RUN, lang)}.** " +
                      (r.measured if r else _t("not_run", lang,
                                                cmd=lab_command(store, [cid])))))
            continue
        for f in r.figures:
            B.append(("img", f, f"{cid}: {Path(f).stem}"))
        if r.tables:
            B.append(("h", 3, _t("results", lang)))
            for t in r.tables:
                B.append(("table", t.headers, t.rows))
        if r.published:
            B.append(("h", 3, _t("published", lang)))
            B.append(("table", [_t("source", lang), _t("setting", lang), _t("theirs", lang),
                                _t("ours", lang)], r.published))
        if r.comparisons:
            B.append(("h", 3, _t("effects", lang)))
            B.append(("table", [_t("effect", lang)], [[str(c)] for c in r.comparisons]))
        kind = f" ({_t('demo', lang)})" if claim.demonstration else ""
        B.append(("p", f"**{_t('verdict', lang)}: {_verdict(r.verdict, lang)}{kind}** — "
                       f"{r.measured}"))
        if claim.demonstration:
            B.append(("p", _t("demo_note", lang)))
        if r.verdict == UNDECIDABLE:
            B.append(("p", _t("undecidable", lang)))
        if r.notes:
            B.append(("p", f"**{_t('why', lang)}:** {r.notes(lang)}"))

    # -------- claims no experiment measures: listed, so silence is not read as support
    B.append(("h", 2, _t("not_measured", lang)))
    B.append(("table", [_t("doc_statement", lang), _t("translation", lang), _t("why", lang)],
              [[f"{q} ({doc.split('”')[0]}”)", en, why(lang)]  # the document by its title
               for doc, q, en, why in NOT_MEASURED]))

    # -------- environment and time
    B.append(("h", 2, _t("env", lang)))
    # fsum: exactly rounded, so the totals do not depend on the order the runs finished in
    total = math.fsum(s.get("wall_s", 0) for s in store.sessions)
    run_s = math.fsum(r.get("time", {}).get("run_s", 0) for r in store.runs.values())
    cpu_s = math.fsum(r.get("time", {}).get("cpu_s", 0) for r in store.runs.values())
    kids_s = math.fsum(r.get("time", {}).get("cpu_children_s", 0) for r in store.runs.values())
    env = store.sessions[-1].get("env", {}) if store.sessions else {}
    if store.sessions:
        B.append(("p", f"**{_t('sessions', lang)}**"))
        srows = []
        for i, s in enumerate(store.sessions, 1):
            e = s.get("env", {})
            srows.append([str(i), str(s.get("started", "?")), str(s.get("status", "complete")),
                          f"`{s['command']}`" if s.get("command") else "—",
                          str(e.get("git_commit") or "—"), str(e.get("sharenorm", "?")),
                          str(e.get("torch", "?")), str(e.get("python", "?")),
                          str(s.get("runs_done", "?")), f"{s.get('wall_s', 0):.1f} s"])
        B.append(("table", ["#", "started (UTC)", "status", "command", "git commit", "sharenorm",
                            "torch", "python", "runs done", "wall"], srows))
        differ = [k for k in ("sharenorm", "torch", "python", "git_commit", "cpu_capability")
                  if len({str(s.get("env", {}).get(k)) for s in store.sessions}) > 1]
        if differ:
            B.append(("p", _t("mixed_versions", lang, what=", ".join(differ))))
    rows = [[k, str(v)] for k, v in env.items()]
    rows += [[_t("total", lang), f"{total:.1f} s ({len(store.sessions)} session(s), jobs "
              f"{', '.join(str(s.get('jobs')) for s in store.sessions)})"],
             [_t("cpu_time", lang), f"{run_s:.1f} s over {len(store.runs)} runs"]]
    if cpu_s:
        rows.append([_t("cpu_sum", lang), f"{cpu_s:.1f} s (÷ {env.get('cpu_count', '?')} cores "
                     f"≈ {cpu_s / max(env.get('cpu_count') or 1, 1):.0f} s wall on an idle "
                     "machine, plus start-up and report)"])
    if kids_s:
        rows.append([_t("cpu_children", lang), f"{kids_s:.1f} s (not in the sum above)"])
    loads = [s.get("load") for s in store.sessions if s.get("load")]
    if loads:
        rows.append([_t("load", lang), "; ".join(f"{a:.1f} → {b:.1f}" for a, b in loads)])
    B.append(("table", ["", ""], rows))
    return B


# --------------------------------------------------------------------------- rendering
def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[tuple]) -> str:
    out = []
    for b in blocks:
        if b[0] == "h":
            out.append("#" * b[1] + " " + b[2])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "quote":
            out.append("\n".join("> " + ln for ln in b[1].split("\n")))
        elif b[0] == "table":
            out.append("| " + " | ".join(map(_md_cell, b[1])) + " |")
            out[-1] += "\n|" + "---|" * len(b[1])
            for row in b[2]:
                out[-1] += "\n| " + " | ".join(map(_md_cell, row)) + " |"
        elif b[0] == "img":
            out.append(f"![{b[2]}]({b[1]})")
    return "\n\n".join(out) + "\n"


def _inline(s: str) -> str:
    """Escape, then render **bold**, *italic* and `code` (the only inline marks we emit)."""
    import re

    s = html.escape(s)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    s = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<i>\1</i>", s)
    return _marks_to_svg(re.sub(r"`(.+?)`", r"<code>\1</code>", s))


# The verdict marks as inline SVG: emoji need a colour-emoji font the reader may lack.
_SVG = ("<svg class='mk' viewBox='0 0 16 16' width='1em' height='1em' role='img' "
        "aria-label='{label}'><circle cx='8' cy='8' r='7.5' fill='{fill}'/>{body}</svg>")
_STROKE = "fill='none' stroke='#fff' stroke-width='2' stroke-linecap='round'"
_MARK_SVG = {
    "✅": _SVG.format(label="supported", fill="#2e7d32",
                     body=f"<path d='M4.5 8.3l2.4 2.4 4.6-5' {_STROKE}/>"),
    "❌": _SVG.format(label="not supported", fill="#c62828",
                     body=f"<path d='M5 5l6 6M11 5l-6 6' {_STROKE}/>"),
    "➖": _SVG.format(label="mixed", fill="#ef6c00", body=f"<path d='M4.5 8h7' {_STROKE}/>"),
    "⏸": _SVG.format(label="not run", fill="#757575",
                     body=f"<path d='M6.2 5v6M9.8 5v6' {_STROKE}/>"),
    "❔": _SVG.format(label="inconclusive", fill="#6a1b9a",
                     body=f"<path d='M6 6.2a2 2 0 1 1 2.6 1.9c-.5.2-.6.6-.6 1.1' {_STROKE}/>"
                          "<circle cx='8' cy='11.8' r='1' fill='#fff'/>"),
    "ℹ": _SVG.format(label="informational", fill="#1565c0",
                     body=f"<path d='M8 7.5v4' {_STROKE}/><circle cx='8' cy='4.8' r='1' "
                          "fill='#fff'/>"),
}


def _marks_to_svg(s: str) -> str:
    for ch, svg in _MARK_SVG.items():
        s = s.replace(ch, svg)
    return s


_CSS = """body{font-family:'""" + FONT_FAMILY + """',system-ui,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;line-height:1.5;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.3em .6em;vertical-align:top}th{background:#f3f3f3}
blockquote{border-left:4px solid #999;margin:1em 0;padding:.2em 1em;background:#fafafa}
img{max-width:100%;border:1px solid #eee}code{background:#f3f3f3;padding:0 .2em}
svg.mk{vertical-align:-.15em}"""


def to_html(blocks: list[tuple], folder: Path, lang: str) -> str:
    text = "".join(str(x) for b in blocks for x in b[1:])
    out = [f"<!DOCTYPE html><html lang='{lang}'><head><meta charset='utf-8'>"
           f"<title>sharenorm lab report</title><style>{font_face_css(text)}{_CSS}</style>"
           "</head><body>"]
    for b in blocks:
        if b[0] == "h":
            out.append(f"<h{b[1]}>{_inline(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            out.append(f"<p>{_inline(b[1])}</p>")
        elif b[0] == "quote":
            out.append("<blockquote>" + "<br>".join(_inline(x) for x in b[1].split("\n"))
                       + "</blockquote>")
        elif b[0] == "table":
            rows = "".join("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in r) + "</tr>"
                           for r in b[2])
            head = "".join(f"<th>{_inline(str(h))}</th>" for h in b[1])
            out.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif b[0] == "img":
            p = folder / b[1]
            if p.is_file():
                data = base64.b64encode(p.read_bytes()).decode()
                out.append(f"<p><img alt='{html.escape(b[2])}' "
                           f"src='data:image/png;base64,{data}'></p>")
    out.append("</body></html>")
    return "\n".join(out)


def _folder(folder, lang: str) -> Path:
    """``folder`` as a Path, after checking it is a path and ``lang`` a report language."""
    if lang not in ("en", "hi"):
        raise LabError(f"lang must be 'en' or 'hi' (Hindi with English terms), got {lang!r}")
    if not isinstance(folder, (str, os.PathLike)):
        raise LabError(f"folder must be the path of a results folder (the --out of `sharenorm "
                       f"lab`), got {folder!r}")
    return Path(folder)


def write_report(folder, lang: str = "en") -> Path:
    """Rebuild ``report.md``, ``report.html`` and ``figures/`` in ``folder`` from its results.

    Returns:
        The path of ``report.md``.

    Raises:
        LabError: no results in ``folder``, or the report cannot be written there (the message
            names the fix).
    """
    import tempfile

    folder = _folder(folder, lang)
    store = ResultsStore.read(folder)
    try:
        tempfile.TemporaryFile(dir=folder).close()  # writable? (before figures are drawn)
        blocks = build_blocks(store, folder, lang)
        md = folder / "report.md"
        _atomic_write(md, to_markdown(blocks))
        _atomic_write(folder / "report.html", to_html(blocks, folder, lang))
    except OSError as e:
        raise LabError(
            f"cannot write the report in {folder}: {e.strerror or e} ({e.filename or folder}). "
            f"Make the folder writable, or copy it and report there: cp -r {folder} /tmp/lab "
            "&& sharenorm report /tmp/lab") from None
    return md


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file of a unique name beside ``path``, then rename it over
    ``path``: a reader never sees half a report, and two writers never share a temp file."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


# --------------------------------------------------------------------------- summary
SUMMARY_MARK = "<!-- generated by `sharenorm report DIR --summary PATH`; do not edit by hand -->"


def summary_markdown(folder, lang: str = "en") -> str:
    """The verdicts of the results in ``folder`` as a short Markdown page (``docs/results.md``):
    the lab version, profile, seeds, commit and machine it came from, then one row per claim
    with its kind, verdict, effect sizes and measured numbers.

    The page starts with :data:`SUMMARY_MARK` and a ``<!-- lab_version: N -->`` line, which a
    test compares with the current :data:`~sharenorm.lab.store.LAB_VERSION`.
    """
    import tempfile

    folder = _folder(folder, lang)
    store = ResultsStore.read(folder)
    hdr = store.header or {}
    with tempfile.TemporaryDirectory() as tmp:  # the figures are not part of the summary
        results, _ = _analyze_all(store, Path(tmp), lang)
    claims = all_claims()
    last = store.sessions[-1] if store.sessions else {}
    env = last.get("env", {})
    seeds = len({r["seed"] for r in store.runs.values()})
    wall = math.fsum(s.get("wall_s", 0) for s in store.sessions)
    loads = [s.get("load") for s in store.sessions if s.get("load")]
    commits = list(dict.fromkeys(str(s.get("env", {}).get("git_commit") or "?")
                                 for s in store.sessions)) or ["?"]
    lines = [SUMMARY_MARK, f"<!-- lab_version: {hdr.get('lab_version', '?')} -->", "",
             "# Lab results", "",
             f"Profile **{hdr.get('profile', '?')}**, {seeds} seed(s), {len(store.runs)} runs, "
             f"lab version {hdr.get('lab_version', '?')}, git commit "
             f"{', '.join(f'`{c}`' for c in commits)}, sharenorm {env.get('sharenorm', '?')}, torch "
             f"{env.get('torch', '?')}; {env.get('cpu', '?')}, {env.get('cpu_count', '?')} cores"
             + (f" ({env['cpu_capability']} kernels)" if env.get("cpu_capability") else "")
             + f", {wall / 60:.1f} min wall over {len(store.sessions)} session(s)"
             + (f", load {'; '.join(f'{a:.1f} → {b:.1f}' for a, b in loads)}" if loads else "")
             + f"; finished {last.get('finished', '?')}.", ""]
    if hdr.get("profile") == "quick":
        lines += [_t("quick", lang), ""]
    not_run = [cid for cid in claims if cid not in results]
    # a summary of an unfinished lab says so before any verdict is read
    if last.get("status") not in (None, "complete"):
        lines += [f"**Incomplete**: the last session ended {last.get('status', '?')!s}; the "
                  "same `sharenorm lab` command resumes it.", ""]
    if not_run:
        lines += [f"**Not run**: {len(not_run)} claim(s) ({', '.join(not_run)}); "
                  f"`{lab_command(store, not_run)}` runs them into this results folder (DIR).",
                  ""]
    lines += ["Verdicts are decided by the 95% Welch interval of a difference against the "
              "criterion's margin (inconclusive when it straddles it); demonstrations hold by "
              "construction and are not counted as evidence. The full report is report.html in "
              "the results folder (`sharenorm report DIR` rebuilds it).", "",
              "| claim | statement | kind | verdict | effect [95% CI] vs margin | measured |",
              "|---|---|---|---|---|---|"]
    for cid, claim in claims.items():
        r = results.get(cid)
        cells = [cid, claim.statement_en, _kind(claim, r, lang),
                 _verdict(r.verdict if r else NOT_RUN, lang),
                 "; ".join(str(c) for c in r.comparisons) if r and r.comparisons else "—",
                 r.measured if r else "—"]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(folder, path, lang: str = "en") -> Path:
    """Write :func:`summary_markdown` of ``folder`` to ``path`` (e.g. ``docs/results.md``).

    Raises:
        LabError: no results in ``folder``, or ``path`` cannot be written (a folder, under a
            file, not writable).
    """
    path = Path(path)
    text = summary_markdown(folder, lang)
    if path.is_dir():
        raise LabError(f"--summary {path} is a folder: pass a file path, e.g. {path / 'results.md'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, text)
    except OSError as e:
        raise LabError(f"cannot write the summary {path}: {e.strerror or e} "
                       f"({e.filename or path}); pass a path in a folder you can write to"
                       ) from None
    return path
