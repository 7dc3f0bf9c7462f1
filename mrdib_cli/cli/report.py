"""``mrdib report RUNS... --out DIR``: PNG figures and a Markdown report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import typer

from mrdib_cli.cli.common import PANEL_EVAL, info, out, status, ws


def report_cmd(
    runs: List[str] = typer.Argument(None, help="Runs to report (default: all runs of the workdir)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Folder for report.md and the PNGs."),
    metric: List[str] = typer.Option([], "--metric", "-m", rich_help_panel=PANEL_EVAL,
                                      help="Metrics to tabulate (default: recall and ndcg at every K). Repeatable."),
    mask: str = typer.Option("train", "--mask", rich_help_panel=PANEL_EVAL,
                             help="Test mask of the compared results: train (MMRec) or train+valid."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """PNG figures and a Markdown report: training curves, test-metric bars with error bars over seeds, MRdIB diagnostics, tables with protocol fingerprints and paired significance tests, the doctor's findings."""  # noqa: E501
    from mrdib_cli.reporting.report import build_report

    w = ws()
    names = list(runs or []) or w.runs()
    with status("writing report"):
        res = build_report(w, names, out_dir, metric or None, mask=mask, log=info)
    if as_json:
        out.print_json(json.dumps(res.to_dict()))
        return
    out.print(f"wrote {res.markdown} and {len(res.figures)} figure(s)")


def register(app: typer.Typer) -> None:
    app.command("report", rich_help_panel="Workflow")(report_cmd)
