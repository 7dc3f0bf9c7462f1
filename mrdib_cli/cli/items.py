"""``mrdib items attach`` and ``mrdib import table``: a user's own interaction table and item catalogue."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from mrdib_cli.cli._summary import print_dataset, report_step
from mrdib_cli.cli.common import PANEL_DATA, DatasetOption, ForceOption, SeedOption, info, out, warn, ws

items_app = typer.Typer(help="Item side information: titles, descriptions, categories, images.",
                        no_args_is_help=True)

ImageDirOption = typer.Option(None, "--image-dir", rich_help_panel=PANEL_DATA,
                              help="Folder of images named by original item id (<id>.jpg, .png, ...).")


def catalogue_columns(**given: Optional[str]) -> dict[str, str | None]:
    """The --id/--title/... options as the column mapping ``attach_items`` takes (unset ones omitted)."""
    return {k: v for k, v in given.items() if v is not None}


def check_catalogue(path: Optional[Path]) -> None:
    """Refuse a missing --items file before the import does any work."""
    from mrdib_cli.errors import MissingInputError

    if path is not None and not Path(path).is_file():
        raise MissingInputError(f"--items {path}: file not found")


def attach(dataset: Optional[str], path: Optional[Path], columns: dict[str, str | None],
           image_dir: Optional[Path], force: bool) -> None:
    """Run the attach step and show what matched."""
    from mrdib_cli.data.items import attach_items

    res, report = attach_items(ws(), dataset, path, columns=columns, image_dir=image_dir, force=force)
    report_step(res, f"item catalogue {path or image_dir}")
    t = Table(title="item catalogue", header_style="bold")
    t.add_column("property")
    t.add_column("value", justify="right", overflow="fold")
    for k in ("catalogue_rows", "matched_items", "items_without_row", "catalogue_rows_not_in_dataset"):
        if k in report:
            t.add_row(k.replace("_", " "), f"{report[k]:,}")
    for col, n in (report.get("filled") or {}).items():
        t.add_row(f"items with {col}", f"{n:,}")
    if report.get("image_dir"):
        t.add_row("image folder", str(report["image_dir"]))
    out.print(t)
    if report.get("items_without_row"):
        warn(f"{report['items_without_row']:,} dataset items have no catalogue row; their features will be "
             "filled with the mean (see the coverage of extract-features)")


def _catalogue_options() -> dict[str, Any]:
    mk = lambda flag, what: typer.Option(None, flag, rich_help_panel=PANEL_DATA, help=what)  # noqa: E731
    return {"id": mk("--id", "Column with the original item id (default: item, item_id, asin, parent_asin, id)."),
            "title": mk("--title", "Title column (default: title)."),
            "description": mk("--description", "Description column (a list is joined) (default: description)."),
            "categories": mk("--categories", "Categories column (a list or a list of paths) (default: categories)."),
            "brand": mk("--brand", "Brand column (default: brand, store)."),
            "image_path": mk("--image-path", "Column of image file paths (relative to the catalogue's folder)."),
            "image_url": mk("--image-url", "Column of image URLs (default: image_url, imUrl).")}


_O = _catalogue_options()


@items_app.command("attach")
def items_attach(
    path: Optional[Path] = typer.Argument(None, help="Catalogue: CSV, TSV, Parquet or JSON Lines, one row per item."),
    dataset: Optional[str] = DatasetOption,
    id_col: Optional[str] = _O["id"], title: Optional[str] = _O["title"],
    description: Optional[str] = _O["description"], categories: Optional[str] = _O["categories"],
    brand: Optional[str] = _O["brand"], image_path: Optional[str] = _O["image_path"],
    image_url: Optional[str] = _O["image_url"], image_dir: Optional[Path] = ImageDirOption,
    force: bool = ForceOption,
) -> None:
    """Join item texts and images onto a dataset, by original item id, so extract-features has inputs."""
    attach(dataset, path, catalogue_columns(id=id_col, title=title, description=description, categories=categories,
                                            brand=brand, image_path=image_path, image_url=image_url),
           image_dir, force)


def _register_table(import_app: typer.Typer) -> None:
    @import_app.command("table")
    def import_table_cmd(
        path: Path = typer.Argument(..., help="Interaction table: .csv, .tsv, .inter (RecBole atomic), .parquet."),
        name: str = typer.Option(..., "--name", "-n", help="Name of the new dataset.", rich_help_panel=PANEL_DATA),
        user: str = typer.Option(..., "--user", help="User id column.", rich_help_panel=PANEL_DATA),
        item: str = typer.Option(..., "--item", help="Item id column.", rich_help_panel=PANEL_DATA),
        rating: Optional[str] = typer.Option(None, "--rating", help="Rating column.", rich_help_panel=PANEL_DATA),
        time: Optional[str] = typer.Option(None, "--time", help="Time column (numbers, or ISO dates).",
                                           rich_help_panel=PANEL_DATA),
        split: str = typer.Option("mmrec", "--split", rich_help_panel=PANEL_DATA,
                                  help="A column holding a given split (kept), or a scheme: mmrec, temporal, loo, "
                                       "loo-temporal."),
        split_values: Optional[str] = typer.Option(None, "--split-values", rich_help_panel=PANEL_DATA,
                                                   help="Labels of a split column: train=A,valid=B,test=C "
                                                        "(default: train/valid(val,dev)/test spellings)."),
        seed: int = SeedOption,
        min_rating: Optional[float] = typer.Option(None, "--min-rating", rich_help_panel=PANEL_DATA,
                                                   help="Keep rows with rating >= R (implicit feedback)."),
        k_core: int = typer.Option(1, "--k-core", rich_help_panel=PANEL_DATA,
                                   help="Keep users and items with >= k rows, iterated (1 keeps all; 5 is "
                                        "MMRec's recipe)."),
        items: Optional[Path] = typer.Option(None, "--items", rich_help_panel=PANEL_DATA,
                                             help="Item catalogue to attach (as 'mrdib items attach')."),
        force: bool = ForceOption,
    ) -> None:
        """Import your own interaction table: dedup, k-core, split (given or per user), Parquet + card."""
        from mrdib_cli.data.table import TableOptions, import_table, parse_split_values

        check_catalogue(items)
        opts = TableOptions(user=user, item=item, rating=rating, time=time, split=split,
                            split_values=parse_split_values(split_values), seed=seed, min_rating=min_rating,
                            k_core=k_core)
        res, card = import_table(ws(), path, name, opts, force=force)
        report_step(res, f"import of {path} as '{name}'")
        print_dataset(card, f"imported '{name}' (table)")
        if items is not None:
            attach(name, items, {}, None, force)
        info(f"active dataset: {name}")


def register(app: typer.Typer) -> None:
    from mrdib_cli.cli.importers import import_app

    app.add_typer(items_app, name="items", rich_help_panel="Data")
    _register_table(import_app)
