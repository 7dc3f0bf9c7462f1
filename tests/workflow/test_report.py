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


def test_mrdib_terms_figure(tmp_path):
    from mrdib_cli.reporting.plots import plugin_terms

    hist = [{"epoch": e, "loss": {"bpr": 0.7 - 0.01 * e, "kl": 0.01 / e, "kl_image": 1.0 / e, "red": 0.05,
                                  "mine": -0.1 + 0.02 * e, "uni_text": 0.6}} for e in range(1, 6)]
    p = plugin_terms({"a-mrdib": hist, "b": [{"epoch": 1, "loss": {"bpr": 0.7}}]}, tmp_path / "m.png")
    assert p is not None and p.read_bytes()[:8] == PNG
    assert plugin_terms({"b": [{"epoch": 1, "loss": {"bpr": 0.7}}]}, tmp_path / "none.png") is None
