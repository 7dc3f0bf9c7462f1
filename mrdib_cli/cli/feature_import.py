"""``mrdib features import``: precomputed item vectors as a feature table (attached to ``features``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mrdib_cli.cli._summary import report_step
from mrdib_cli.cli.common import PANEL_DATA, DatasetOption, ForceOption, info, warn, ws


def register_import(features_app: typer.Typer) -> None:
    @features_app.command("import")
    def features_import(
        path: Path = typer.Argument(..., help="Vectors: .npy, .parquet (a 'vector' list column or numeric columns) "
                                              "or raw float32 rows (any other extension; needs --dim)."),
        modality: str = typer.Option(..., "--modality", "-m", help="image or text.", rich_help_panel=PANEL_DATA),
        dataset: Optional[str] = DatasetOption,
        model: Optional[str] = typer.Option(None, "--model", rich_help_panel=PANEL_DATA,
                                            help="What made the vectors (e.g. 'CLIP ViT-B/32'); recorded in the "
                                                 "provenance and names the table (default: imported-<file>)."),
        dim: Optional[int] = typer.Option(None, "--dim", rich_help_panel=PANEL_DATA,
                                          help="Vector dimension: required for raw float32, checked otherwise."),
        ids: Optional[Path] = typer.Option(None, "--ids", rich_help_panel=PANEL_DATA,
                                           help="File with the original item id of each row, one per line "
                                                "(default: row i is item i)."),
        id_column: Optional[str] = typer.Option(None, "--id-column", rich_help_panel=PANEL_DATA,
                                                help="Parquet: the column with the original item id."),
        force: bool = ForceOption,
    ) -> None:
        """Import precomputed item features (checked: shape, ids, NaN, all-zero rows) as a feature table."""
        from mrdib_cli.features.imported import ImportOptions, import_features

        opts = ImportOptions(modality=modality, model=model, dim=dim, ids=ids, id_column=id_column)
        res, out_path, cov = import_features(ws(), dataset, path, opts, force=force)
        report_step(res, f"{modality} features from {path.name}")
        info(f"{modality}: {cov.get('ok', 0):,} of {cov.get('n_items', 0):,} items imported "
             f"({100 * cov.get('coverage', 0):.1f}%) -> {out_path}")
        if cov.get("missing") or cov.get("all_zero"):
            warn(f"{cov.get('missing', 0):,} items have no row and {cov.get('all_zero', 0):,} rows are all zeros; "
                 "those items get the mean vector (status 'missing' in the table)")
        if cov.get("rows_not_in_dataset"):
            info(f"{cov['rows_not_in_dataset']:,} rows are for items not in the dataset (ignored)")
