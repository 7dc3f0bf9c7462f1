"""Rich rendering of a dataset card, shared by prepare, import and resplit."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from mrdib_cli.cli.common import info, out
from mrdib_cli.workspace import StepResult


def report_step(result: StepResult, what: str) -> None:
    """Say whether the step reused its cached result or why it recomputed."""
    if result.cached:
        info(f"[green]cached:[/green] {what} is up to date ({result.reason}); reusing it "
             "(use --force to recompute)")
    else:
        info(f"[cyan]built:[/cyan] {what} ({result.reason}) in {result.manifest.wall_time_s:.1f}s")


def dataset_table(card: dict[str, Any], title: str | None = None) -> Table:
    """Counts, sparsity, split sizes and provenance of a dataset, as one table."""
    t = Table(title=title or f"dataset '{card['name']}'", show_header=True, header_style="bold")
    t.add_column("property")
    t.add_column("value", justify="right")
    sizes = card.get("split_sizes", {})
    n = max(1, card.get("n_interactions", 0))
    rows = [
        ("users", f"{card['n_users']:,}"), ("items", f"{card['n_items']:,}"),
        ("interactions", f"{card['n_interactions']:,}"),
        ("sparsity", f"{100 * card.get('sparsity', 0):.4f}%"),
    ]
    for s in ("train", "valid", "test"):
        rows.append((s, f"{sizes.get(s, 0):,} ({100 * sizes.get(s, 0) / n:.1f}%)"))
    if card.get("n_duplicate_pairs"):
        rows.append(("duplicate user-item rows (kept)", f"{card['n_duplicate_pairs']:,}"))
    split = card.get("split", {})
    rows.append(("split", f"{split.get('scheme')}" + (f" (seed {split['seed']})" if split.get("seed") is not None
                                                       else "")))
    if card.get("k_core") is not None:
        rows.append(("k-core", str(card["k_core"])))
    for key, label in (("n_malformed_reviews", "malformed review lines"), ("n_malformed_meta", "malformed meta lines"),
                       ("n_duplicates_dropped", "duplicate reviews dropped"),
                       ("n_duplicate_pairs_dropped", "repeated user-item rows dropped"),
                       ("n_items_without_meta", "items without metadata")):
        if card.get(key) is not None:
            rows.append((label, f"{card[key]:,}"))
    for f in card.get("features", []) or []:
        rows.append((f"{f['modality']} features", f"{f['dim']}-d, {f['source']}"))
    if card.get("image_dir"):
        rows.append(("images", card["image_dir"]))
    for k, v in rows:
        t.add_row(k, v)
    return t


def print_dataset(card: dict[str, Any], title: str | None = None) -> None:
    out.print(dataset_table(card, title))
