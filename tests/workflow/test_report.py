"""``mrdib report``: non-empty PNGs and a Markdown file that references them."""

from __future__ import annotations

import re

from mrdib_cli.reporting.report import build_report

PNG = b"\x89PNG\r\n\x1a\n"


def test_report_writes_pngs_referenced_by_markdown(tiny_ws, tmp_path):
    ws, study, first = tiny_ws
    res = build_report(ws, first.runs, tmp_path / "out")
    md = res.markdown.read_text()
    names = {p.name for p in res.figures}
    assert {"bars-tiny.png", *(f"curves-{r}.png" for r in first.runs)} <= names
    for p in res.figures:
        data = p.read_bytes()
        assert data[:8] == PNG and len(data) > 5000
    linked = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md))
    assert names == linked
    # tables: both seeds grouped into one system with mean ± std, and the protocol fingerprint
    assert "| lightgcn |" in md and " ± " in md
    fp = res.comparisons["tiny"]["protocol"]["fingerprint"]
    assert fp in md
    assert "valid-unmasked" in md  # doctor section present


def test_report_cli_json(cli, tiny_ws, tmp_path):
    ws, study, first = tiny_ws
    import json

    rc, out, err = cli("--workdir", str(ws.root), "report", *first.runs, "--out", str(tmp_path / "r"), "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["markdown"].endswith("report.md") and len(d["figures"]) == 3
