"""``mrdib build-graph``: build (or confirm cached) the graphs backbones train on."""

from __future__ import annotations

from typing import List

import typer
from rich.table import Table

from mrdib_cli.cli.common import PANEL_DATA, DatasetOption, ForceOption, out, status, target_dataset, ws
from mrdib_cli.data.handle import DatasetHandle


def build_graph(
    dataset: str = DatasetOption,
    knn_k: int = typer.Option(10, "--knn-k", min=1, rich_help_panel=PANEL_DATA,
                              help="Neighbours per item in the item-item kNN graphs (self included)."),
    knn_norm: List[str] = typer.Option(["sym_binary"], "--knn-norm", rich_help_panel=PANEL_DATA,
                                       help="kNN normalisation(s): sym_binary (FREEDOM/DRAGON), sym "
                                            "(LATTICE/MGCN), rw, none. Repeatable."),
    adj: List[str] = typer.Option(["sym"], "--adj", rich_help_panel=PANEL_DATA,
                                  help="User-item adjacency variant(s): sym (D^-1/2 A D^-1/2), rw (LATTICE "
                                       "D^-1(A+I)). Repeatable."),
    cooccurrence: int = typer.Option(0, "--cooccurrence", min=0, rich_help_panel=PANEL_DATA,
                                     help="Also build the user-user co-occurrence graph with this many "
                                          "neighbours per user (DualGNN/DRAGON use 200); 0 = skip."),
    force: bool = ForceOption,
    as_json: bool = typer.Option(False, "--json", help="Print the graphs as JSON on stdout."),
) -> None:
    """Build the user-item adjacency (train interactions only), item-item kNN graphs per feature table
    and optionally the user-user co-occurrence graph. Cached by input digests: reruns are instant."""
    from mrdib_cli.errors import UsageError
    from mrdib_cli.graphs.knn import NORMS
    from mrdib_cli.graphs.store import ADJ_VARIANTS, build_graphs

    for n in knn_norm:
        if n not in NORMS:
            raise UsageError(f"unknown kNN normalisation '{n}' (choose from {', '.join(NORMS)})")
    for a in adj:
        if a not in ADJ_VARIANTS:
            raise UsageError(f"unknown adjacency variant '{a}' (choose from {', '.join(ADJ_VARIANTS)})")
    handle = DatasetHandle.open(ws(), target_dataset("build-graph", dataset))
    with status(f"building graphs of {handle.name}"):
        infos = build_graphs(handle, knn_k=knn_k, knn_norms=tuple(knn_norm), adj_variants=tuple(adj),
                             cooccurrence=cooccurrence or None, force=force)
    if as_json:
        import json

        out.print_json(json.dumps([{"graph": g.name, "shape": list(g.shape), "nnz": g.nnz, "cached": g.cached,
                                    "seconds": round(g.seconds, 3), "path": str(g.path)} for g in infos]))
        return
    t = Table(title=f"graphs of {handle.name}")
    for col in ("graph", "shape", "nnz", "state", "seconds", "file"):
        t.add_column(col, justify="right" if col in ("nnz", "seconds") else "left", overflow="fold")
    for g in infos:
        t.add_row(g.name, f"{g.shape[0]} x {g.shape[1]}", f"{g.nnz:,}", "cached" if g.cached else "built",
                  f"{g.seconds:.2f}", str(g.path.relative_to(handle.dir)))
    out.print(t)


def register(app: typer.Typer) -> None:
    app.command("build-graph", rich_help_panel="Pipeline")(build_graph)
