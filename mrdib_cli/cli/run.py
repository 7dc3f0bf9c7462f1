"""``mrdib run CONFIG``: a whole study (prepare/import, features, graphs, train, eval, report), cached."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from mrdib_cli.cli.common import PANEL_RUNTIME, err, info, out, progress_enabled, ws

STATE_STYLE = {"cached": "green", "ran": "yellow", "will run": "yellow", "pending": "dim"}


def steps_table(steps, title: str, values: dict[str, str] | None = None) -> Table:  # noqa: ANN001
    """The steps of a study; ``values`` (run name -> "key=value, ...") adds a sweep's grid point per run."""
    t = Table(title=title)
    cols = ("#", "step", "target", *(("values",) if values else ()), "state", "why", "s")
    for col in cols:
        t.add_column(col, justify="right" if col in ("#", "s") else "left", overflow="fold")
    for i, s in enumerate(steps, 1):
        st = STATE_STYLE.get(s.state, "")
        point = ((values or {}).get(s.run or "", "") if s.kind == "train" else "",) if values else ()
        t.add_row(str(i), s.kind, s.target, *point, f"[{st}]{s.state}[/{st}]" if st else s.state,
                  s.reason if len(s.reason) <= 60 else s.reason[:57] + "...",
                  f"{s.seconds:.1f}" if s.seconds else "")
    return t


def on_step_printer(s) -> None:  # noqa: ANN001
    if progress_enabled():
        err.print(f"[bold]{s.kind}[/bold] {s.target}: {s.state}" + (f" ({s.reason})" if s.reason else "") +
                  (f" in {s.seconds:.1f}s" if s.seconds else ""), highlight=False)


def on_epoch_printer(rec) -> None:  # noqa: ANN001
    if progress_enabled():
        v = rec.valid.get("recall@20")
        err.print(f"  epoch {rec.epoch:>3}  loss {rec.loss.get('total', float('nan')):.4f}  valid R@20 "
                  f"{v:.4f}{'  *best*' if rec.best else ''}", highlight=False)


def run_cmd(
    config: Path = typer.Argument(..., help="Study file (YAML or TOML); see examples/."),
    dry_run: bool = typer.Option(False, "--dry-run", "-n", rich_help_panel=PANEL_RUNTIME,
                                 help="List the steps and which are cached; run nothing."),
    device: str = typer.Option(None, "--device", envvar="MRDIB_DEVICE", rich_help_panel=PANEL_RUNTIME,
                               help="Override train.device / features.device (auto|cpu|cuda[:N])."),
    as_json: bool = typer.Option(False, "--json", rich_help_panel=PANEL_RUNTIME,
                                 help="Print the steps and runs as JSON on stdout."),
) -> None:
    """Run a study: datasets x backbones x seeds (x MRdIB off/on). Each step is cached, so a rerun only does what changed; unknown or mistyped config keys are errors."""  # noqa: E501
    from mrdib_cli.workflow.config import load_study
    from mrdib_cli.workflow.pipeline import run_pipeline

    study = load_study(config)
    if device:
        study.train["device"] = device
        study.features["device"] = device
    res = run_pipeline(ws(), study, dry_run=dry_run, log=info, on_step=None if dry_run else on_step_printer,
                       on_epoch=on_epoch_printer)
    if as_json:
        out.print_json(json.dumps(res.to_dict()))
        return
    title = (f"{study.name}: dry run ({sum(s.state == 'cached' for s in res.steps)} of {len(res.steps)} steps "
             "cached)" if dry_run else f"{study.name}: {res.n_ran} step(s) ran, "
             f"{sum(s.state == 'cached' for s in res.steps)} cached")
    out.print(steps_table(res.steps, title))
    if res.report and not dry_run:
        info(f"report: {res.report / 'report.md'}")


def register(app: typer.Typer) -> None:
    app.command("run", rich_help_panel="Workflow")(run_cmd)
