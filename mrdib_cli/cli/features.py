"""``mrdib extract-features`` and ``mrdib features ls``."""

from __future__ import annotations

import json

import os
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, Task,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table
from rich.text import Text

from mrdib_cli.cli.common import (PANEL_DATA, PANEL_MODEL, PANEL_RUNTIME, DatasetOption, DeviceOption,
                                  EndpointOption, ForceOption, NnodesOption, SeedOption, err, info, out,
                                  progress_enabled, target_dataset, warn, ws)
from mrdib_cli.errors import UsageError

PANEL_IMAGE = "Image encoder (open_clip)"
PANEL_TEXT = "Text encoder (sentence-transformers)"


class _RateColumn(ProgressColumn):
    """items/s, the figure that matters for a 20k-item extraction."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} items/s" if speed else "- items/s", style="progress.data.speed")


class RichReporter:
    """Adapts the library's progress hooks to one Rich progress display on stderr."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.tasks = progress, {}

    def start(self, key: str, description: str, total: int) -> None:
        self.tasks[key] = self.progress.add_task(description, total=total)

    def advance(self, key: str, n: int = 1) -> None:
        if key in self.tasks:
            self.progress.advance(self.tasks[key], n)

    def stop(self, key: str) -> None:
        if key in self.tasks:
            self.progress.remove_task(self.tasks.pop(key))


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), _RateColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=err, transient=True, disable=not progress_enabled())


def _coverage_table(results: list) -> Table:
    t = Table(title="Feature extraction", header_style="bold")
    for col in ("modality", "model", "dim", "ok", "missing", "failed", "empty_text", "coverage", "items/s",
                "file"):
        t.add_column(col, justify="right" if col in ("dim", "ok", "missing", "failed", "empty_text",
                                                     "coverage", "items/s") else "left", overflow="fold")
    for r in results:
        c = r.coverage
        rate = "cached" if r.cached else f"{r.timing.get('items_per_s', 0):,.1f}"
        t.add_row(r.modality, _model_label(r.meta), str(r.meta.get("dim", "?")), str(c.get("ok", 0)),
                  str(c.get("missing", 0)), str(c.get("failed", 0)), str(c.get("empty_text", 0)),
                  f"{100 * c.get('coverage', 0):.1f}%", rate, r.path.name)
    return t


def _print_reasons(r) -> None:  # noqa: ANN001 - an ExtractResult
    """The coverage reasons behind the missing/failed/empty counts, with example items."""
    from mrdib_cli.features.extract import describe_reasons

    for line in describe_reasons(r.coverage):
        info(f"{r.modality}: {line}")


def _model_label(meta: dict) -> str:
    w = meta.get("weights")
    model = meta.get("model", "?")
    if w == "pretrained":
        return f"{model} / {meta.get('pretrained')}"
    if w == "checkpoint":
        return f"{model} / ckpt {str(meta.get('weights_digest', ''))[7:19]}"
    if w == "random":
        return f"{model} / [red]RANDOM[/red]"
    return f"{model} ({w})" if w else model


def _render(results: list, as_json: bool) -> None:
    """The extraction summary on stdout: a coverage table, or JSON for scripts."""
    if not as_json:
        out.print(_coverage_table(results))
        return
    out.print_json(json.dumps([{"modality": r.modality, "path": str(r.path), "cached": r.cached,
                                "reason": r.reason, "coverage": r.coverage, "meta": r.meta}
                               for r in results], default=str))


def register(app: typer.Typer) -> None:
    features_app = typer.Typer(help="Inspect feature tables.", no_args_is_help=True)
    app.add_typer(features_app, name="features", rich_help_panel="Data")
    from mrdib_cli.cli.feature_import import register_import

    register_import(features_app)

    @app.command("extract-features", rich_help_panel="Pipeline")
    def extract_features(
        dataset: Optional[str] = DatasetOption,
        modality: str = typer.Option("all", "--modality", "-m", rich_help_panel=PANEL_DATA,
                                     help="image, text or all."),
        image_dir: Optional[Path] = typer.Option(None, "--image-dir", rich_help_panel=PANEL_DATA,
                                                 help="Folder of <asin>.<ext> or <item_idx>.<ext> images "
                                                      "(default: the card's image_dir, else image_url downloads)."),
        image_model: str = typer.Option("ViT-B-32", "--image-model", rich_help_panel=PANEL_IMAGE,
                                        help="open_clip architecture name."),
        image_pretrained: str = typer.Option("laion2b_s34b_b79k", "--image-pretrained", rich_help_panel=PANEL_IMAGE,
                                             help="open_clip pretrained tag, or 'none' (random weights; needs "
                                                  "--allow-random-weights)."),
        image_checkpoint: Optional[Path] = typer.Option(None, "--image-checkpoint", rich_help_panel=PANEL_IMAGE,
                                                        help="Local open_clip weights file (.pt/.bin/.safetensors); "
                                                             "overrides --image-pretrained."),
        image_model_config: Optional[Path] = typer.Option(None, "--image-model-config", rich_help_panel=PANEL_IMAGE,
                                                          help="Register an open_clip model config JSON (its file "
                                                               "stem becomes a --image-model name)."),
        allow_random_weights: bool = typer.Option(False, "--allow-random-weights", rich_help_panel=PANEL_IMAGE,
                                                  help="Permit --image-pretrained none (recorded in provenance)."),
        text_model: str = typer.Option("all-MiniLM-L6-v2", "--text-model", rich_help_panel=PANEL_TEXT,
                                       help="sentence-transformers name or local folder (MMRec's default)."),
        text_template: str = typer.Option("{title} {brand} {categories} {description}", "--text-template",
                                          rich_help_panel=PANEL_TEXT,
                                          help="Item text; fields are items.parquet columns, {categories} is "
                                               "the first category path."),
        normalize: bool = typer.Option(True, "--normalize/--no-normalize", rich_help_panel=PANEL_MODEL,
                                       help="L2-normalise vectors (also the mean fill)."),
        batch_size: int = typer.Option(64, "--batch-size", min=1, rich_help_panel=PANEL_RUNTIME),
        shard_size: int = typer.Option(2048, "--shard-size", min=1, rich_help_panel=PANEL_RUNTIME,
                                       help="Items per resumable shard."),
        workers: int = typer.Option(min(4, max(0, (os.cpu_count() or 1) - 1)), "--workers", min=0,
                                    rich_help_panel=PANEL_RUNTIME, help="DataLoader workers for image decoding."),
        download_workers: int = typer.Option(8, "--download-workers", min=1, rich_help_panel=PANEL_RUNTIME,
                                             help="Concurrent image downloads."),
        download_timeout: float = typer.Option(20.0, "--download-timeout", min=0.1, rich_help_panel=PANEL_RUNTIME),
        download_retries: int = typer.Option(3, "--download-retries", min=0, rich_help_panel=PANEL_RUNTIME),
        max_image_mb: float = typer.Option(20.0, "--max-image-mb", min=0.01, rich_help_panel=PANEL_RUNTIME,
                                           help="Refuse downloads larger than this."),
        max_pixels: int = typer.Option(40_000_000, "--max-pixels", min=1, rich_help_panel=PANEL_RUNTIME,
                                       help="Decompression-bomb guard: larger images are recorded as failed."),
        device: str = DeviceOption,
        seed: int = SeedOption,
        force: bool = ForceOption,
        threads: Optional[int] = typer.Option(None, "--threads", min=0, rich_help_panel=PANEL_RUNTIME,
                                              help="torch CPU threads for the encoders; 0, as in train, "
                                                   "means the default \\[default: the free "
                                                   "cores: cores minus the 1-minute load, at least 1; with "
                                                   "--nproc, each process's share of the cores]."),
        nproc: Optional[int] = typer.Option(None, "--nproc", min=1, rich_help_panel=PANEL_RUNTIME,
                                            help="Split the item shards over N processes (one GPU each, else "
                                                 "CPU); see docs/scaling.md."),
        nnodes: int = NnodesOption,
        endpoint: Optional[str] = EndpointOption,
        as_json: bool = typer.Option(False, "--json", help="Print paths, coverage and provenance as JSON "
                                     "instead of a table."),
    ) -> None:
        """Encode item images (open_clip) and texts (sentence-transformers) into feature tables."""
        from mrdib_cli.data.handle import DatasetHandle
        from mrdib_cli.features.extract import ImageOptions, RunOptions, TextOptions, extract_image, extract_text

        mods = {"all": ["image", "text"], "image": ["image"], "text": ["text"]}.get(modality.lower())
        if mods is None:
            raise UsageError(f"--modality must be image, text or all (got '{modality}')")
        w = ws()
        handle = DatasetHandle.open(w, target_dataset("extract-features", dataset))
        ro = RunOptions(device=device, batch_size=batch_size, shard_size=shard_size, workers=workers,
                        normalize=normalize, seed=seed, force=force, threads=threads or 0)
        io = ImageOptions(model=image_model, pretrained=image_pretrained, checkpoint=image_checkpoint,
                          allow_random_weights=allow_random_weights, model_config=image_model_config,
                          image_dir=image_dir, download_workers=download_workers, download_timeout=download_timeout,
                          download_retries=download_retries, max_image_bytes=int(max_image_mb * 1024 * 1024),
                          max_pixels=max_pixels)
        to = TextOptions(model=text_model, template=text_template)
        # Resolve everything that can fail cheaply (weights, model names, template) before any work.
        _preflight(mods, io, to)
        from mrdib_cli import launch as distributed

        if distributed.wants_launch(nproc, nnodes, endpoint):
            raise typer.Exit(distributed.launch(nproc, nnodes=nnodes, endpoint=endpoint))
        if distributed.launched():
            from mrdib_cli.features.sharded import extract_sharded

            distributed.init(device)
            try:
                results = [r for m in mods if (r := extract_sharded(
                    (lambda o, m=m: extract_image(w, handle, io, o) if m == "image"
                     else extract_text(w, handle, to, o)), ro)) is not None]
            finally:
                distributed.shutdown()
            if not distributed.is_main():
                return
            for r in results:
                for msg in r.warnings:
                    warn(msg)
                info(f"{r.modality}: {'cached (' + r.reason + ')' if r.cached else 'extracted'} -> {r.path} "
                     f"({distributed.world_size()} processes)")
                _print_reasons(r)
            _render(results, as_json)
            return
        from mrdib_cli.cpu import choose_threads

        n, how = choose_threads(threads)
        info(f"{n} torch CPU thread{'s' if n > 1 else ''} ({how})")
        ro = replace(ro, threads=n)
        results = []
        with _progress() as prog:
            rep = RichReporter(prog)
            for m in mods:
                r = (extract_image(w, handle, io, ro, rep) if m == "image" else extract_text(w, handle, to, ro, rep))
                for msg in r.warnings:
                    warn(msg)
                info(f"{m}: {'cached (' + r.reason + ')' if r.cached else 'extracted'} -> {r.path}")
                _print_reasons(r)
                results.append(r)
        _render(results, as_json)

    @features_app.command("ls")
    def features_ls(dataset: Optional[str] = DatasetOption) -> None:
        """List the dataset's feature tables, newest first, with provenance and coverage."""
        from mrdib_cli.data.handle import DatasetHandle
        from mrdib_cli.data.feature_store import list_tables, read_meta

        handle = DatasetHandle.open(ws(), target_dataset("features ls", dataset))
        tables = list_tables(handle.dir)
        if not tables:
            info(f"dataset '{handle.name}' has no feature tables; run 'mrdib extract-features'")
            return
        t = Table(title=f"Feature tables of {handle.name}", header_style="bold")
        for col in ("modality", "model", "dim", "coverage", "provenance", "default", "file"):
            t.add_column(col, justify="right" if col in ("dim", "coverage") else "left", overflow="fold")
        seen: set[str] = set()
        for p in tables:
            try:
                meta = read_meta(p)
            except Exception:  # noqa: BLE001 - list what we can, flag the rest
                t.add_row("?", "[red]unreadable[/red]", "", "", "", "", p.name)
                continue
            mod = meta.get("modality", "?")
            cov = meta.get("coverage") or {}
            cov_s = f"{100 * cov['coverage']:.1f}% ({cov.get('ok')}/{cov.get('n_items')})" if "coverage" in cov else "-"
            prov = _provenance(meta)
            default = "yes" if mod not in seen else ""
            seen.add(mod)
            t.add_row(mod, _model_label(meta), str(meta.get("dim", "?")), cov_s, prov, default, p.name)
        out.print(t)


def _provenance(meta: dict) -> str:
    parts = []
    if meta.get("weights"):
        parts.append(f"weights={meta['weights']}")
    if meta.get("weights_digest"):
        parts.append(f"digest={str(meta['weights_digest'])[7:19]}")
    if meta.get("normalize") is not None:
        parts.append("l2" if meta["normalize"] else "raw")
    if meta.get("precision"):
        parts.append(meta["precision"])
    if meta.get("source") and meta["source"] != "extract-features":
        parts.append(f"source={meta['source']}")
    pk = meta.get("packages") or {}
    if pk.get("open_clip_torch") and meta.get("modality") == "image":
        parts.append(f"open_clip {pk['open_clip_torch']}")
    if pk.get("sentence-transformers") and meta.get("modality") == "text":
        parts.append(f"st {pk['sentence-transformers']}")
    return " ".join(parts)


def _preflight(mods: list[str], io, to) -> None:  # noqa: ANN001
    """Fail before any download or encoding when a requested model cannot be had."""
    from mrdib_cli.features.resolve import register_model_config, resolve_image_weights, resolve_text_model
    from mrdib_cli.features.text import template_fields

    if "image" in mods:
        if io.model_config is not None:
            register_model_config(io.model_config)
        resolve_image_weights(io.model, io.pretrained, io.checkpoint, io.allow_random_weights)
    if "text" in mods:
        template_fields(to.template)
        resolve_text_model(to.model)
