"""Module docstrings and comments cite files that exist in the repository, and no notes from outside it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cited_docs_exist_and_no_outside_notes_are_cited():
    missing, outside = [], []
    for path in sorted((ROOT / "mrdib_cli").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(ROOT)
        missing += [f"{where}: {ref}" for ref in re.findall(r"docs/[\w./-]+\.md", text) if not (ROOT / ref).exists()]
        outside += [f"{where}: {m}" for m in re.findall(r"reference notes|mrdib-method|\.\./shared/docs", text)]
    assert not missing, "cited files that do not exist:\n" + "\n".join(missing)
    assert not outside, "citations of notes outside the repository:\n" + "\n".join(outside)
