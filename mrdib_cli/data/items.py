"""``mrdib items attach``: an item catalogue (titles, descriptions, images, ...) joined onto a dataset.

Interaction files (``import table``, the research formats) carry no item side information, so text and
image features have nothing to read. A catalogue in CSV, TSV, Parquet or JSON Lines, keyed by the
original item id, fills ``items.parquet``; list values (a description given as a list of paragraphs, a
category path) are kept: lists of text are joined, categories are stored as JSON like ``prepare`` does.
Image paths go into an ``image_path`` column that ``extract-features`` reads before any URL; an
``--image-dir`` of files named by item id is recorded in the card. Rows for items that are not in the
dataset are counted and ignored (a catalogue is usually larger than a k-core).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mrdib_cli.data.dataset_io import ITEM_TEXT_COLUMNS
from mrdib_cli.data.handle import CARD, ITEMS, DatasetHandle
from mrdib_cli.data.table import read_any_table
from mrdib_cli.errors import DataError, MissingInputError, UsageError
from mrdib_cli.workspace import StepResult, Workspace, atomic_path, atomic_write_json, cached_step, file_digest

# items.parquet column -> catalogue column names tried when the user names none (first present wins)
DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "id": ("item", "item_id", "itemID", "asin", "parent_asin", "id"),
    "title": ("title", "name"),
    "description": ("description", "text"),
    "categories": ("categories", "category"),
    "brand": ("brand", "store"),
    "image_path": ("image_path", "image_file"),
    "image_url": ("image_url", "imUrl", "image"),
}
IMAGE_PATH = "image_path"


Catalogue = dict[str, list[Any]]  # column -> values, as read (lists stay lists)


def read_catalogue(path: Path) -> Catalogue:
    """The catalogue's columns. JSON Lines are parsed line by line: a field that is a list on some lines and
    a string on others (common in scraped catalogues) must stay as given, not be coerced to one type."""
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        df = read_any_table(path)
        return {c: df[c].to_list() for c in df.columns}
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n} is not JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}: line {n} is not a JSON object")
            rows.append(obj)
    if not rows:
        raise DataError(f"{path}: the catalogue has no rows")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return {c: [r.get(c) for r in rows] for c in cols}


def _pick(cat: Catalogue, field: str, given: str | None) -> str | None:
    if given is not None:
        if given not in cat:
            raise UsageError(f"--{field.replace('_', '-')} {given!r}: no such column in the catalogue "
                             f"(columns: {', '.join(cat)})")
        return given
    return next((c for c in DEFAULT_COLUMNS[field] if c in cat), None)


def _as_text(v: Any, field: str) -> str | None:
    """One catalogue value as the text stored in items.parquet (None when empty)."""
    if v is None:
        return None
    if isinstance(v, pl.Series):
        v = v.to_list()
    if isinstance(v, (list, tuple)):
        if field == "categories":
            return json.dumps(v, ensure_ascii=False) if v else None
        v = " ".join(str(x).strip() for x in v if x is not None and str(x).strip())
    if isinstance(v, float) and np.isnan(v):
        return None
    s = str(v).strip()
    return s or None


def item_keys(handle: DatasetHandle) -> list[str]:
    """The id each dataset item is known by: its original id, else its index (as text)."""
    items = handle.items
    asins = dict(zip(items["item_idx"].to_list(), items["asin"].to_list())) if "asin" in items.columns else {}
    return [str(asins[i]) if asins.get(i) is not None else str(i) for i in range(handle.n_items)]


def merge_catalogue(handle: DatasetHandle, cat: Catalogue, columns: dict[str, str | None],
                    where: str, base: Path) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The new items table and a report (matched, unmatched, per-column coverage)."""
    id_col = _pick(cat, "id", columns.get("id"))
    if id_col is None:
        raise UsageError(f"{where}: no item id column (looked for {', '.join(DEFAULT_COLUMNS['id'])}); "
                         "name it with --id COL")
    picked = {f: _pick(cat, f, columns.get(f)) for f in DEFAULT_COLUMNS if f != "id"}
    if not any(picked.values()):
        raise UsageError(f"{where}: none of title, description, categories, brand, image path or URL found "
                         f"(columns: {', '.join(cat)}); name them with --title COL etc.")
    ids = [None if v is None else str(v).strip() for v in cat[id_col]]
    dup = pl.Series(ids).drop_nulls().is_duplicated()
    if dup.any():
        raise DataError(f"{where}: item id {pl.Series(ids).drop_nulls().filter(dup)[0]!r} occurs on several "
                        "rows; keep one row per item")
    keys = item_keys(handle)
    row_of = {k: r for r, k in enumerate(ids) if k is not None}
    rows = [row_of.get(k) for k in keys]
    matched = sum(r is not None for r in rows)
    if matched == 0:
        raise DataError(f"{where}: no catalogue id matches a dataset item (catalogue ids like "
                        f"{[i for i in ids[:3]]}, dataset ids like {keys[:3]}); check --id COL")
    old = handle.items
    new: dict[str, Any] = {"item_idx": np.arange(handle.n_items, dtype=np.int64)}
    for col in ITEM_TEXT_COLUMNS + (IMAGE_PATH,):
        prev = _column_in_order(old, col, handle.n_items)
        src = picked.get(col)
        if src is None:
            new[col] = prev
            continue
        vals = cat[src]
        got = [_as_text(vals[r], col) if r is not None else None for r in rows]
        if col == IMAGE_PATH:
            got = [str((base / g).resolve()) if g is not None else None for g in got]
        new[col] = [g if g is not None else p for g, p in zip(got, prev)]
    new["asin"] = keys if "asin" not in old.columns else new["asin"]
    table = pl.DataFrame({k: (pl.Series(k, v, dtype=pl.Utf8) if k != "item_idx" else v) for k, v in new.items()})
    unmatched = [k for k in row_of if k not in set(keys)]
    report = {"catalogue_rows": len(ids), "matched_items": matched, "items_without_row": handle.n_items - matched,
              "catalogue_rows_not_in_dataset": len(unmatched), "examples_not_in_dataset": unmatched[:3],
              "columns": {f: c for f, c in picked.items() if c}, "id_column": id_col,
              "filled": {c: int(table[c].is_not_null().sum()) for c in table.columns if c != "item_idx"}}
    return table, report


def _column_in_order(items: pl.DataFrame, col: str, n: int) -> list[str | None]:
    out: list[str | None] = [None] * n
    if col in items.columns:
        for i, v in zip(items["item_idx"].to_list(), items[col].to_list()):
            out[i] = v
    return out


def attach_items(ws: Workspace, dataset: str | None, path: Path | None, *, columns: dict[str, str | None] | None = None,
                 image_dir: Path | None = None, force: bool = False) -> tuple[StepResult, dict[str, Any]]:
    """Join a catalogue (and/or an image folder) onto ``dataset``'s items; cached on both digests."""
    if path is None and image_dir is None:
        raise UsageError("give a catalogue file, --image-dir DIR, or both")
    handle = DatasetHandle.open(ws, dataset)
    if image_dir is not None and not Path(image_dir).is_dir():
        raise MissingInputError(f"--image-dir {image_dir} is not a directory")
    # items.parquet is this step's output, so it cannot also be an input: a re-import changes it and the
    # manifest's output check notices; the interactions identify the dataset
    inputs = {"interactions": handle.digest}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise MissingInputError(f"catalogue not found: {path}")
        inputs[f"file:{path.name}"] = file_digest(path)
    params = {"columns": columns or {}, "image_dir": str(Path(image_dir).resolve()) if image_dir else None}
    facts: dict[str, Any] = {}

    def run() -> dict[str, Any]:
        table, report = (merge_catalogue(handle, read_catalogue(path), columns or {}, str(path), path.parent)
                         if path is not None else (handle.items, {}))
        card = dict(handle.card)
        if image_dir is not None:
            card["image_dir"] = str(Path(image_dir).resolve())
        card["items_attached"] = {"source": str(path.resolve()) if path else None,
                                  "digest": inputs.get(f"file:{path.name}") if path else None,
                                  "image_dir": card.get("image_dir"), **report}
        with atomic_path(handle.dir / ITEMS) as tmp:
            table.write_parquet(tmp, compression="zstd", statistics=False)
        atomic_write_json(handle.dir / CARD, card)
        facts.update(card["items_attached"])
        return {"report": card["items_attached"]}

    res = cached_step("items", handle.dir, inputs, params, run, outputs=[ITEMS], force=force)
    return res, res.manifest.extra.get("report", facts)
