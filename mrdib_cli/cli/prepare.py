"""``mrdib prepare NAME``: raw Amazon 2014 reviews (or the offline demo) to a split Parquet dataset."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from mrdib_cli.cli._summary import print_dataset, report_step
from mrdib_cli.cli.common import PANEL_DATA, ForceOption, SeedOption, err, info, out, progress_enabled, ws
from mrdib_cli.errors import MrdibError, UsageError


def _list() -> None:
    from mrdib_cli.data.sources import AMAZON_2014, DEMO, base_url

    t = Table(title="datasets for 'mrdib prepare NAME'", header_style="bold")
    for col in ("name", "source", "files", "5-core reviews"):
        t.add_column(col, overflow="fold")
    t.add_row(DEMO, "synthetic, offline (seconds)", "generated", "~20,000")
    for c in AMAZON_2014:
        t.add_row(c.name, f"Amazon 2014 {c.category}", f"{c.reviews_file}, {c.meta_file}",
                  f"{c.n_reviews_5core:,}" if c.n_reviews_5core else "")
    out.print(t)
    info(f"files are fetched from {base_url()} (override with --base-url or MRDIB_AMAZON_BASE_URL)")
    _list_2023()


def _list_2023() -> None:
    from mrdib_cli.data.amazon2023 import BASE_URL_ENV, CATEGORIES_2023, Category2023

    t = Table(title="Amazon Reviews 2023 for 'mrdib prepare amazon2023:<Category>'", header_style="bold")
    for col in ("name", "files", "dataset name"):
        t.add_column(col, overflow="fold")
    for c in map(Category2023, CATEGORIES_2023):
        t.add_row(c.name, f"{c.reviews_file}, {c.meta_file}", c.default_name)
    out.print(t)
    info(f"2023 files are fetched from {Category2023('Baby_Products').url_for('X').rsplit('/', 2)[0]} "
         f"(override with --base-url or {BASE_URL_ENV}; --raw-dir also accepts the uncompressed .jsonl files)")


@contextmanager
def _keeps_active_dataset() -> Iterator[None]:
    """A failed prepare leaves the active dataset as it was; its error says what the next commands use, so
    that nobody trains on a previous dataset believing the new one is there."""
    try:
        yield
    except MrdibError as e:
        note = ws().active_dataset_note()
        nxt = ("the next commands without -d would use it" if note.startswith("the active")
               else "the next commands will refuse until a dataset is prepared or imported")
        raise type(e)(f"{e}; {note} ({nxt})", exit_code=e.exit_code) from None


def register(app: typer.Typer) -> None:
    @app.command("prepare", rich_help_panel="Data")
    def prepare_cmd(
        dataset: Optional[str] = typer.Argument(None, help="Amazon 2014 category (baby, sports, clothing, ...), "
                                                           "amazon2023:<Category> or 'demo'. See --list."),
        list_: bool = typer.Option(False, "--list", help="List the datasets prepare knows and exit."),
        name: Optional[str] = typer.Option(None, "--name", "-n", help="Dataset name in the workdir "
                                           "[default: the dataset's name].", rich_help_panel=PANEL_DATA),
        k_core: int = typer.Option(5, "--k-core", help="Keep users and items with >= k interactions "
                                   "(iterated until stable).", rich_help_panel=PANEL_DATA),
        split: str = typer.Option("mmrec", "--split", help="mmrec (seeded per-user random, MMRec's rule) or "
                                  "temporal (latest interactions held out).", rich_help_panel=PANEL_DATA),
        seed: int = SeedOption,
        raw_dir: Optional[Path] = typer.Option(None, "--raw-dir", help="Folder with the raw files you already "
                                               "have; never touches the network.", rich_help_panel=PANEL_DATA),
        base_url: Optional[str] = typer.Option(None, "--base-url", envvar="MRDIB_AMAZON_BASE_URL",
                                               help="Where to download from (files are <base-url>/<file>).",
                                               rich_help_panel=PANEL_DATA),
        max_malformed: float = typer.Option(0.01, "--max-malformed", help="Stop when more than this fraction "
                                            "of lines is malformed.", rich_help_panel=PANEL_DATA),
        users: int = typer.Option(2000, "--users", help="demo only: number of users.", rich_help_panel="Demo"),
        items: int = typer.Option(1000, "--items", help="demo only: number of items.", rich_help_panel="Demo"),
        interactions: int = typer.Option(20000, "--interactions", help="demo only: number of interactions.",
                                         rich_help_panel="Demo"),
        image_size: int = typer.Option(64, "--image-size", help="demo only: PNG side in pixels.",
                                       rich_help_panel="Demo"),
        force: bool = ForceOption,
        as_json: bool = typer.Option(False, "--json", help="Print the dataset card as JSON instead of a table."),
    ) -> None:
        """Download (or read) raw reviews, dedup, k-core, split per user, write Parquet + a dataset card."""
        from mrdib_cli.data.prepare import PrepareOptions, prepare

        if list_:
            _list()
            return
        if not dataset:
            raise UsageError("give a dataset name, e.g. 'mrdib prepare demo' or 'mrdib prepare baby' "
                             "(see 'mrdib prepare --list')")
        opts = PrepareOptions(k_core=k_core, seed=seed, split=split, max_malformed=max_malformed)
        demo = {"n_users": users, "n_items": items, "n_interactions": interactions, "image_size": image_size}
        progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                            TransferSpeedColumn(), TimeRemainingColumn(), console=err, transient=True,
                            disable=not progress_enabled())

        def on_file(fname: str):
            task = progress.add_task(f"download {fname}", total=None)

            def cb(done: int, total: int | None) -> None:
                progress.update(task, completed=done, total=total)
            return cb

        with progress, _keeps_active_dataset():
            res, card = prepare(ws(), dataset, opts, name=name, raw_dir=raw_dir, url=base_url, force=force,
                                demo=demo if dataset.strip().lower() == "demo" else None, log=info,
                                on_file=on_file)
        report_step(res, f"dataset '{card['name']}'")
        if as_json:
            out.print_json(json.dumps({"cached": res.cached, "reason": res.reason,
                                       "dir": str(ws().dataset_dir(card["name"])), "card": card}, default=str))
        else:
            print_dataset(card)
        info(f"active dataset: {card['name']}  ({ws().dataset_dir(card['name'])})")
