"""House rules read from the source: a module docstring says in a few lines what the module is
for (reasoning goes to docs/design/, a long example onto the function it shows), and comments
carry no history (which issue, what was broken: that belongs in commit messages)."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import sharenorm

SRC = Path(sharenorm.__file__).parent
MAX_DOC_LINES = 12
HISTORY = re.compile(r"\bissue #?\d+|no GPU was available|\bwas broken\b|\bused to be\b", re.I)


def long_module_docstrings(root: Path = SRC, limit: int = MAX_DOC_LINES) -> list[tuple[str, int]]:
    """(file, lines) for every module docstring under ``root`` longer than ``limit`` lines."""
    out = []
    for path in sorted(root.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        lines = len(doc.splitlines()) if doc else 0
        if lines > limit:
            out.append((str(path.relative_to(root.parent)), lines))
    return out


def history_comments(root: Path = SRC) -> list[str]:
    """``file:line: comment`` for every ``#`` comment under ``root`` that tells history."""
    out = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT and HISTORY.search(tok.string):
                out.append(f"{path.relative_to(root.parent)}:{tok.start[0]}: {tok.string}")
    return out


def test_the_checks_fire(tmp_path):
    pkg = tmp_path / "sharenorm"
    pkg.mkdir()
    (pkg / "short.py").write_text('"""One line."""\n# why, not when\n')
    (pkg / "long.py").write_text('"""' + "\n".join(["x"] * 13) + '"""\nx = 1  # see issue 13\n')
    assert long_module_docstrings(pkg) == [("sharenorm/long.py", 13)]
    assert history_comments(pkg) == ["sharenorm/long.py:14: # see issue 13"]


def test_module_docstrings_are_short():
    long = long_module_docstrings()
    assert not long, (
        f"module docstrings over {MAX_DOC_LINES} lines (say what the module is for; move the "
        "reasoning to docs/design/*.md and a long example to the function it shows): "
        + ", ".join(f"{f} ({n})" for f, n in long)
    )


def test_comments_tell_no_history():
    found = history_comments()
    assert not found, "history belongs in commit messages, not comments:\n" + "\n".join(found)
