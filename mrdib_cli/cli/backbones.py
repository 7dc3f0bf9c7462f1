"""``mrdib backbones``: the available backbones, the modalities they need and their defaults."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from mrdib_cli.cli.common import PANEL_MODEL, out


def backbones(
    name: Optional[str] = typer.Argument(None, help="Show one backbone's defaults in full."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the backbones: needed modalities, training mode, MRdIB hook points and default hyper-parameters."""
    from mrdib_cli.models._catalog import catalog, describe, needs_text

    rows = [describe(name)] if name else catalog()
    if as_json:
        out.print_json(json.dumps(rows if not name else rows[0]))
        return
    if name:
        d = rows[0]
        t = Table(title=f"{d['name']}: {d['summary']}", header_style="bold")
        t.add_column("hyper-parameter")
        t.add_column("default", justify="right")
        for ds in d["dataset_defaults"]:
            t.add_column(ds, justify="right")
        for k, v in d["defaults"].items():
            t.add_row(k, repr(v), *[repr(o[k]) if k in o else "" for o in d["dataset_defaults"].values()])
        out.print(t)
        out.print(f"modalities: {needs_text(d)}; training: {d['training_mode']}; hook points: "
                  f"{', '.join(d['hook_points']) or 'none'}"
                  + (f"; lr x {d['lr_schedule'][0]}^(epoch/{d['lr_schedule'][1]})" if d["lr_schedule"] else ""))
        out.print("override with: mrdib train --backbone " + d["name"] + " --set key=value")
        return
    t = Table(title="backbones", header_style="bold")
    for c in ("name", "modalities", "training", "hook points", "defaults"):
        t.add_column(c, overflow="fold")
    for d in rows:
        defaults = ", ".join(f"{k}={v}" for k, v in d["defaults"].items())
        extra = f"; lr x {d['lr_schedule'][0]}^(epoch/{d['lr_schedule'][1]})" if d["lr_schedule"] else ""
        t.add_row(d["name"], needs_text(d), d["training_mode"], ", ".join(d["hook_points"]) or "-",
                  defaults + extra)
    out.print(t)


def register(app: typer.Typer) -> None:
    app.command("backbones", rich_help_panel=PANEL_MODEL)(backbones)
