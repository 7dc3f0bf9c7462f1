"""``mrdib sweep CONFIG``: hyper-parameter grid x seeds, selection on validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import typer
from rich.table import Table

from mrdib_cli.cli.common import PANEL_EVAL, PANEL_RUNTIME, info, out, warn, ws
from mrdib_cli.cli.run import on_epoch_printer, on_step_printer, steps_table
from mrdib_cli.errors import UsageError


def sweep_cmd(
    config: Path = typer.Argument(..., help="Study file with a 'sweep: {grid: ..., metric: ...}' section."),
    select_on: str = typer.Option("valid", "--select-on", rich_help_panel=PANEL_EVAL,
                                  help="Split used to pick the winner: valid (default, correct) or test (ONLY "
                                       "for parity checks with MMRec; outputs are labelled as such)."),
    metric: str = typer.Option(None, "--metric", rich_help_panel=PANEL_EVAL,
                               help="Selection metric (default: sweep.metric, else recall@20)."),
    dry_run: bool = typer.Option(False, "--dry-run", "-n", rich_help_panel=PANEL_RUNTIME,
                                 help="List the runs and which are cached; train nothing."),
    device: str = typer.Option(None, "--device", envvar="MRDIB_DEVICE", rich_help_panel=PANEL_RUNTIME,
                               help="Override train.device (auto|cpu|cuda[:N])."),
    as_json: bool = typer.Option(False, "--json", rich_help_panel=PANEL_RUNTIME, help="Print JSON on stdout."),
    select_on_test_bias: bool = typer.Option(
        False, "--select-on-test-bias", rich_help_panel=PANEL_EVAL,
        help="Also report what MMRec's select-on-test rule would have reported over this grid, and the null "
             "control over the winner's seeds (labelled; written to selection-bias.md). Selection stays on "
             "--select-on."),
) -> None:
    """Train a grid of hyper-parameters x seeds (cached) and select the winner on the validation split; writes results.parquet/.csv and summary.json under <workdir>/sweeps/<name>/."""  # noqa: E501
    from mrdib_cli.workflow.config import load_study
    from mrdib_cli.workflow.sweep import PARITY_LABEL, run_sweep, sweep_specs

    if select_on not in ("valid", "test"):
        raise UsageError(f"--select-on must be 'valid' or 'test', got '{select_on}'")
    study = load_study(config)
    if device:
        study.train["device"] = device
    if select_on == "test":
        warn(PARITY_LABEL)
    specs = sweep_specs(study)
    values = {rs.run_name: ", ".join(f"{k.removeprefix('hparams.')}={v}" for k, v in rs.overrides.items())
              for rs in specs}
    res = run_sweep(ws(), study, select_on=select_on, metric=metric, dry_run=dry_run, log=info,
                    on_step=None if dry_run else _counting(on_step_printer, len(specs)), on_epoch=on_epoch_printer)
    if dry_run:
        if as_json:
            out.print_json(json.dumps([{**s.to_dict(), "values": values.get(s.run)} for s in res]))
        else:
            out.print(steps_table(res, f"sweep {study.name}: dry run", values))
        return
    s = res.summary
    if as_json:
        out.print_json(json.dumps({**s, "dir": str(res.dir)}))
        return
    m = s["metric"]
    t = Table(title=f"sweep {res.name}: {s['label']}")
    params = [c for c in res.table.columns if c.startswith("param:")]
    # test is read for the winner only: a test column for every point would invite choosing on it
    for col in ("dataset", "model", *[p[6:] for p in params], "seeds", f"valid {m}", f"test {m} (winner)",
                "winner"):
        t.add_column(col, justify="right" if col.startswith(("valid", "test")) else "left", overflow="fold")
    win = {(w["dataset"], w["backbone"], w["mrdib"], w["point"]) for w in s["winners"]}
    for p in s["points"]:
        key = (p["dataset"], p["backbone"], p["mrdib"], p["point"])
        t.add_row(p["dataset"], p["backbone"] + ("+mrdib" if p["mrdib"] else ""), *[str(p[c]) for c in params],
                  p["seed"], f"{p.get('valid_' + m, float('nan')):.4f}",
                  f"{p.get('test_' + m, float('nan')):.4f}" if key in win else "-",
                  "[bold green]<- selected[/bold green]" if key in win else "")
    out.print(t)
    capped = s.get("epoch_cap_runs") or []
    if capped:
        won = [r for r in capped if r in s.get("winner_runs", [])]
        warn(f"{len(capped)} of {len(s['runs'])} runs stopped at the epoch cap (train.epochs) before early "
             f"stopping{', the winner among them' if won else ''}: {', '.join(capped)}; their validation may "
             "still have been rising, so raise train.epochs and run the sweep again")
    for w in s["winners"]:
        test = "  ".join(f"{k} {v:.4f}" + (f"±{w['test_std'][k]:.4f}" if w["test_std"].get(k) is not None else "")
                         for k, v in w["test"].items() if k.startswith(("recall", "ndcg")))
        out.print(f"[bold]winner[/bold] {w['dataset']}/{w['backbone']}{'+mrdib' if w['mrdib'] else ''} "
                  f"{w['params']} (selected on {w['selected_on']} {m} = {w['selection_score']:.4f}): test {test}",
                  highlight=False)
    if select_on == "test":
        warn(PARITY_LABEL)
    if select_on_test_bias:
        from mrdib_cli.workflow.sweep import selection_bias_report
        from mrdib_cli.workspace import atomic_write_text

        md = selection_bias_report(res.table, s, m, select_on_test=True)
        atomic_write_text(res.dir / "selection-bias.md", md + "\n")
        out.print(md, highlight=False, markup=False)
    info(f"results: {res.dir / 'results.parquet'}, {res.dir / 'results.csv'}, {res.dir / 'summary.json'}")


def _counting(printer: Callable[[Any], None], total: int) -> Callable[[Any], None]:
    """``printer`` plus "run N of TOTAL (M left)" after each training step, so a long sweep shows where it is."""
    done = [0]

    def on_step(s: Any) -> None:
        printer(s)
        if s.kind == "train":
            done[0] += 1
            info(f"sweep: run {done[0]} of {total} done ({total - done[0]} left)")
    return on_step


def register(app: typer.Typer) -> None:
    app.command("sweep", rich_help_panel="Workflow")(sweep_cmd)
