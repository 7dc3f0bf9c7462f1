"""``mrdib cache ls`` and ``mrdib cache gc``."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from mrdib_cli.cli.common import info, out, ws

cache_app = typer.Typer(help="Inspect and clean the workdir's cached artefacts.", no_args_is_help=True)


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@cache_app.command("ls")
def ls(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List artefacts: kind, name, size, what they were built from, when."""
    from mrdib_cli.data.cache import describe, list_artefacts

    rows = list_artefacts(ws())
    if as_json:
        out.print_json(json.dumps([describe(a) for a in rows]))
        return
    t = Table(title=f"artefacts in {ws().root}", header_style="bold")
    for c, j in (("kind", "left"), ("name", "left"), ("size", "right"), ("built from", "left"), ("when", "left")):
        t.add_column(c, justify=j, overflow="fold")
    for a in rows:
        d = describe(a)
        t.add_row(d["kind"], d["name"], _human(d["size"]), d["built_from"], d["when"])
    out.print(t)
    info(f"{len(rows)} artefacts, {_human(sum(a.size for a in rows))} in total")


@cache_app.command("gc")
def gc_cmd(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed."),
    min_age: float = typer.Option(600.0, "--min-age", help="Only remove temp files older than this many seconds "
                                  "(protects steps that are running now)."),
    keep_partial: bool = typer.Option(False, "--keep-partial", help="Keep partial downloads (resumable)."),
) -> None:
    """Remove orphans and temp files: interrupted writes, partial downloads, unused demo files, stale locks."""
    from mrdib_cli.data.cache import gc

    removed, freed = gc(ws(), dry_run=dry_run, min_age=min_age, keep_partial=keep_partial)
    t = Table(title="would remove" if dry_run else "removed", header_style="bold")
    t.add_column("path", overflow="fold")
    t.add_column("why", overflow="fold")
    for p, why in removed:
        t.add_row(str(p.relative_to(ws().root)) if p.is_relative_to(ws().root) else str(p), why)
    out.print(t)
    info(f"{'would free' if dry_run else 'freed'} {_human(freed)} ({len(removed)} entries)")


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache", rich_help_panel="Workspace")
