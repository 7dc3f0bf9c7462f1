"""``mrdib import mmrec|lattice|recbole DIR --name NAME`` and ``mrdib resplit``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mrdib_cli.cli._summary import print_dataset, report_step
from mrdib_cli.cli.common import PANEL_DATA, ForceOption, SeedOption, info, ws
from mrdib_cli.errors import UsageError

import_app = typer.Typer(help="Import a dataset from files you already have (MMRec, LATTICE, RecBole).",
                         no_args_is_help=True)

NameOption = typer.Option(..., "--name", "-n", help="Name of the new dataset in the workdir.",
                          rich_help_panel=PANEL_DATA)
ItemsOption = typer.Option(None, "--items", rich_help_panel=PANEL_DATA,
                           help="Item catalogue to attach (CSV/TSV/Parquet/JSON Lines; as 'mrdib items attach').")


def _run(fmt: str, directory: Path, name: str, force: bool, items: Optional[Path] = None, **options) -> None:
    from mrdib_cli.cli.items import attach, check_catalogue
    from mrdib_cli.data.importers import import_dataset

    check_catalogue(items)
    res, card = import_dataset(ws(), fmt, directory, name, force=force, **options)
    report_step(res, f"import of {directory} as '{name}'")
    print_dataset(card, f"imported '{name}' ({fmt})")
    if items is not None:
        attach(name, items, {}, None, force)
    info(f"active dataset: {name}")


@import_app.command("mmrec")
def import_mmrec(directory: Path = typer.Argument(..., help="MMRec data folder (<name>.inter, optional "
                                                            "image_feat.npy, text_feat.npy, id mappings)."),
                 name: str = NameOption, items: Optional[Path] = ItemsOption, force: bool = ForceOption) -> None:
    """Import an MMRec folder, keeping its x_label split exactly."""
    _run("mmrec", directory, name, force, items)


@import_app.command("lattice")
def import_lattice(directory: Path = typer.Argument(..., help="Folder with train.json, val.json, test.json "
                                                              "(optional item2id.json, user2id.json)."),
                   name: str = NameOption, items: Optional[Path] = ItemsOption, force: bool = ForceOption) -> None:
    """Import a LATTICE-style JSON split, keeping it exactly."""
    _run("lattice", directory, name, force, items)


@import_app.command("recbole")
def import_recbole(
    directory: Path = typer.Argument(..., help="Folder with <prefix>.{train,valid,test}.inter (RecBole "
                                               "sequential), optional .item2index/.user2index/.text/.feat*CLS."),
    name: str = NameOption,
    feature: Optional[list[str]] = typer.Option(None, "--feature", help="MODALITY=FILE raw float32 feature "
                                                "file (default: <prefix>.feat1CLS text, <prefix>.feat3CLS image)."),
    feature_dim: int = typer.Option(512, "--feature-dim", help="Dimension of the raw float32 feature files."),
    items: Optional[Path] = ItemsOption,
    force: bool = ForceOption,
) -> None:
    """Import RecBole leave-one-out files (last item test, second-to-last valid)."""
    feats: dict[str, str] = {}
    for f in feature or []:
        if "=" not in f:
            raise UsageError(f"--feature {f!r}: expected MODALITY=FILE, e.g. --feature text=Scientific.feat1CLS")
        k, v = f.split("=", 1)
        feats[k.strip()] = v.strip()
    if feature_dim <= 0:
        raise UsageError("--feature-dim must be positive")
    _run("recbole", directory, name, force, items, features=feats, feature_dim=feature_dim)




def _register_resplit(app: typer.Typer) -> None:
    @app.command("resplit", rich_help_panel="Data")
    def resplit_cmd(
        dataset: Optional[str] = typer.Argument(None, help="Source dataset (default: the active one)."),
        name: str = typer.Option(..., "--name", "-n", help="Name of the new dataset."),
        scheme: str = typer.Option("mmrec", "--scheme", help="mmrec (MMRec's per-user rule), loo (one valid "
                                   "and one test item per user) or temporal."),
        temporal: bool = typer.Option(False, "--temporal", help="Hold out the latest interactions instead of "
                                      "random ones (mmrec -> temporal, loo -> loo-temporal)."),
        seed: int = SeedOption,
        force: bool = ForceOption,
    ) -> None:
        """A new dataset with the same interactions and feature tables under another split."""
        from mrdib_cli.data.resplit import resplit

        if temporal:
            scheme = {"mmrec": "temporal", "loo": "loo-temporal"}.get(scheme, scheme)
        res, card = resplit(ws(), dataset, name, scheme, seed, force=force)
        report_step(res, f"resplit '{card['source']['from']}' -> '{name}'")
        print_dataset(card, f"'{name}' ({scheme} split of '{card['source']['from']}')")
        info(f"active dataset: {name}")


def register(app: typer.Typer) -> None:
    app.add_typer(import_app, name="import", rich_help_panel="Data")
    _register_resplit(app)
