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


def _png_width(path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")  # the IHDR chunk's width


def test_training_curves_add_a_health_panel_only_for_runs_that_logged_health(tmp_path):
    from mrdib_cli.reporting.plots import health_series, training_curves

    def rec(e: int, health: dict | None) -> dict:
        r = {"epoch": e, "loss": {"bpr": 0.7 - 0.01 * e, "total": 0.8 - 0.01 * e},
             "valid": {"recall@20": 0.1 + 0.01 * e, "ndcg@20": 0.05}, "best": e == 3}
        return {**r, "health": health} if health is not None else r

    with_health = [rec(e, {"nats_image": 50.0, "spread_image": 1.0, "offset_image": 2.0 * e,
                           "clamped_image": 0.5 if e == 3 else 0.0}) for e in (1, 2, 3)]
    with_health.append(rec(4, None))  # an epoch without figures (e.g. resumed from an older run) is a gap
    series = health_series(with_health)
    assert list(series) == ["image"]
    assert series["image"]["offset"][:3] == [2.0, 4.0, 6.0] and series["image"]["clamped"][2] == 0.5
    assert series["image"]["spread"][3] != series["image"]["spread"][3]  # NaN
    plain = [rec(e, None) for e in (1, 2, 3)]
    assert health_series(plain) == {}
    a = training_curves("ib", with_health, tmp_path / "ib.png")
    b = training_curves("plain", plain, tmp_path / "plain.png")
    assert a.read_bytes()[:8] == b.read_bytes()[:8] == PNG
    assert _png_width(a) > 1.3 * _png_width(b)  # three panels instead of two
