"""``mrdib doctor [RUN...]``: leakage and protocol checks, each finding explained."""

from __future__ import annotations

import json
from typing import List

import typer

from mrdib_cli.cli.common import info, out, target_run, ws

STYLE = {"error": "red", "warning": "yellow", "info": "cyan"}


def doctor_cmd(
    runs: List[str] = typer.Argument(None, help="Runs to check (default: the latest run)."),
    all_runs: bool = typer.Option(False, "--all", help="Check every run of the workdir."),
    as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON."),
) -> None:
    """Check runs for evaluation leakage and protocol traps: hyper-parameters selected on test, graphs or features built from valid/test interactions, valid items unmasked at test, runs compared across protocols, resumed runs whose RNG state was not restored. Exit code 1 when an error is found."""  # noqa: E501
    from mrdib_cli.reporting.doctor import check_runs

    w = ws()
    names = w.runs() if all_runs else (list(runs) if runs else [target_run("doctor", None)])
    findings = check_runs(w, names)
    n_err = sum(f.severity == "error" for f in findings)
    if as_json:
        out.print_json(json.dumps({"runs": names, "findings": [f.to_dict() for f in findings]}))
    elif not findings:
        out.print(f"[green]no findings[/green] for {len(names)} run(s)")
    else:
        out.print(f"[bold]doctor[/bold]: {len(names)} run(s), {n_err} error(s), {len(findings)} finding(s)")
        for f in findings:
            st = STYLE.get(f.severity, "")
            out.print(f"\n[{st}]{f.severity}[/{st}] [bold]{f.code}[/bold] {f.run or ''}: {f.message}",
                      highlight=False)
            out.print(f"  [dim]{f.explanation}[/dim]", highlight=False)
    if n_err:
        info(f"{n_err} error(s): these results should not be reported as they are")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("doctor", rich_help_panel="Workflow")(doctor_cmd)
