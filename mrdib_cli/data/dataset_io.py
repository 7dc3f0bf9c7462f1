"""Writing a dataset folder: the one place that knows the on-disk schema that ``DatasetHandle`` reads.

``prepare``, the importers, ``resplit`` and the demo all end here, so every dataset has the same columns,
dtypes, compression and card fields. Files are written to a staging folder first and then moved into
place (``os.replace``), so an interrupted step never leaves a half-written dataset behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import polars as pl

from mrdib_cli import __version__
from mrdib_cli.data.handle import CARD, INTERACTIONS, ITEMS, PUBLISHING, SPLITS, USERS
from mrdib_cli.errors import DataError
from mrdib_cli.data.feature_store import table_path, write_feature_table
from mrdib_cli.workspace import TMP_PREFIX, atomic_write_json, atomic_write_text, honour_umask, old_copy_prefix

ITEM_TEXT_COLUMNS = ("asin", "title", "brand", "categories", "description", "image_url")
SPLIT_CODE = {"train": 0, "valid": 1, "test": 2}
CORE_FILES = (INTERACTIONS, ITEMS, USERS, CARD)


@dataclass
class ImportedFeature:
    """A feature matrix found beside imported interactions (row i = item i)."""

    modality: str
    vectors: np.ndarray
    source_file: str
    model: str

    def meta(self) -> dict[str, Any]:
        return {"modality": self.modality, "model": self.model, "source": f"imported from {self.source_file}",
                "imported_from": self.source_file, "normalised": False}


def interactions_frame(users: np.ndarray, items: np.ndarray, split: np.ndarray | list[str],
                       rating: np.ndarray | None = None, timestamp: np.ndarray | None = None) -> pl.DataFrame:
    """The canonical interactions table (column order and dtypes fixed by the contract)."""
    n = len(users)
    return pl.DataFrame({
        "user_idx": np.asarray(users, dtype=np.int64),
        "item_idx": np.asarray(items, dtype=np.int64),
        "rating": pl.Series("rating", rating, dtype=pl.Float64) if rating is not None
        else pl.Series("rating", [None] * n, dtype=pl.Float64),
        "timestamp": pl.Series("timestamp", timestamp, dtype=pl.Int64) if timestamp is not None
        else pl.Series("timestamp", [None] * n, dtype=pl.Int64),
        "split": pl.Series("split", split, dtype=pl.Utf8),
    })


def items_frame(n_items: int, **columns: Any) -> pl.DataFrame:
    """``items.parquet``: item_idx plus the text columns (null where unknown)."""
    data: dict[str, Any] = {"item_idx": np.arange(n_items, dtype=np.int64)}
    for col in ITEM_TEXT_COLUMNS:
        vals = columns.get(col)
        data[col] = pl.Series(col, vals if vals is not None else [None] * n_items, dtype=pl.Utf8)
    return pl.DataFrame(data)


def users_frame(n_users: int, reviewer_id: list[str | None] | None = None) -> pl.DataFrame:
    return pl.DataFrame({"user_idx": np.arange(n_users, dtype=np.int64),
                         "reviewer_id": pl.Series("reviewer_id", reviewer_id if reviewer_id is not None
                                                  else [None] * n_users, dtype=pl.Utf8)})


def split_sizes(inter: pl.DataFrame) -> dict[str, int]:
    counts = inter.group_by("split").len()
    got = dict(zip(counts["split"].to_list(), counts["len"].to_list()))
    return {s: int(got.get(s, 0)) for s in SPLITS}


def check_interactions(inter: pl.DataFrame, n_users: int, n_items: int, what: str) -> None:
    """Refuse tables that would break consumers: bad splits, out-of-range ids, users with no train row."""
    bad = set(inter["split"].unique().to_list()) - set(SPLITS)
    if bad:
        raise DataError(f"{what}: unknown split labels {sorted(bad)}; expected {list(SPLITS)}")
    if inter.height == 0:
        raise DataError(f"{what}: no interactions")
    if inter["user_idx"].min() < 0 or inter["user_idx"].max() >= n_users:
        raise DataError(f"{what}: user ids outside 0..{n_users - 1}")
    if inter["item_idx"].min() < 0 or inter["item_idx"].max() >= n_items:
        raise DataError(f"{what}: item ids outside 0..{n_items - 1}")


def make_card(name: str, inter: pl.DataFrame, n_users: int, n_items: int, *, split: dict[str, Any],
              k_core: int | None, source: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The dataset card (``dataset.json``): counts, sparsity, split and provenance."""
    n = inter.height
    n_pairs = inter.select(["user_idx", "item_idx"]).unique().height
    card: dict[str, Any] = {
        "name": name, "n_users": int(n_users), "n_items": int(n_items), "n_interactions": int(n),
        "n_unique_pairs": int(n_pairs), "n_duplicate_pairs": int(n - n_pairs),
        "sparsity": round(1.0 - n_pairs / max(1, n_users * n_items), 6),
        "split_sizes": split_sizes(inter), "split": split, "k_core": k_core, "source": source,
        "items_in_train": int(inter.filter(pl.col("split") == "train")["item_idx"].n_unique()),
        "users_with_train": int(inter.filter(pl.col("split") == "train")["user_idx"].n_unique()),
        "mrdib_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    card.update(extra)
    return card


def _write_parquet(df: pl.DataFrame, path: Path) -> None:
    # statistics off and a fixed row-group size keep the bytes identical for identical content
    df.write_parquet(path, compression="zstd", compression_level=3, statistics=False, row_group_size=1 << 20)


def publish_dataset(ds_dir: Path, inter: pl.DataFrame, items: pl.DataFrame, users: pl.DataFrame,
                    card: dict[str, Any], features: list[ImportedFeature] = (), *,
                    replace_folder: bool = False, copy_tables: list[Path] = ()) -> None:
    """Write a dataset folder atomically.

    Everything is written into a staging folder beside ``ds_dir``. With ``replace_folder`` (importers,
    resplit) the whole folder is swapped, so stale feature tables or graphs of a previous dataset of the
    same name cannot survive; otherwise (prepare) only the core files are replaced one by one and existing
    feature tables, graphs and manifests stay (their own manifests detect changed inputs).
    """
    ds_dir = Path(ds_dir)
    check_interactions(inter, card["n_users"], card["n_items"], str(ds_dir))
    ds_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{ds_dir.name}.", dir=ds_dir.parent))
    honour_umask(stage)
    try:
        _write_parquet(inter, stage / INTERACTIONS)
        _write_parquet(items, stage / ITEMS)
        _write_parquet(users, stage / USERS)
        for f in features:
            p = table_path(stage, f.modality, f.model)
            write_feature_table(p, f.vectors, ["imported"] * len(f.vectors), f.meta())
        for p in copy_tables:  # feature tables of a source dataset (per item, split-independent)
            (stage / "features").mkdir(exist_ok=True)
            shutil.copy2(p, stage / "features" / Path(p).name)
        atomic_write_json(stage / CARD, card)
        if replace_folder or not ds_dir.exists():
            if ds_dir.exists():
                _swap_in(stage, ds_dir)
            else:
                os.replace(stage, ds_dir)
        else:
            # card last: a reader that sees the new card also sees the new tables. The renames are not
            # one atomic step, so a marker makes readers refuse the folder until they are all done.
            atomic_write_text(ds_dir / PUBLISHING, f"{card['name']} {card.get('created', '')}\n")
            for name in (INTERACTIONS, ITEMS, USERS, CARD):
                os.replace(stage / name, ds_dir / name)
            (ds_dir / PUBLISHING).unlink()
            shutil.rmtree(stage, ignore_errors=True)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _swap_in(stage: Path, ds_dir: Path) -> None:
    """Put ``stage`` at ``ds_dir`` so that the name is never empty, then drop the old folder.

    Linux swaps the two names in one step (``renameat2(RENAME_EXCHANGE)``). Elsewhere the old folder is
    first moved to a recognisable side copy (:func:`~mrdib_cli.workspace.old_copy_prefix`), which
    ``Workspace.resolve_dataset`` and ``cache gc`` move back if a crash came before the new one arrived.
    """
    try:
        _exchange(stage, ds_dir)
    except OSError:
        old = Path(tempfile.mkdtemp(prefix=old_copy_prefix(ds_dir.name), dir=ds_dir.parent))
        os.replace(ds_dir, old / "d")
        os.replace(stage, ds_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        shutil.rmtree(stage, ignore_errors=True)  # it now holds the old folder


def _exchange(a: Path, b: Path) -> None:
    """Atomically exchange two paths (Linux >= 3.15, glibc >= 2.28); OSError where unsupported."""
    import ctypes

    fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(b))


@contextlib.contextmanager
def discard_if_unpublished(ds_dir: Path) -> Iterator[None]:
    """On failure, remove a dataset folder that never got a card (only lock/manifest scaffolding)."""
    existed = (Path(ds_dir) / CARD).exists()
    try:
        yield
    except BaseException:
        if not existed and Path(ds_dir).exists() and not (Path(ds_dir) / CARD).exists():
            shutil.rmtree(ds_dir, ignore_errors=True)
        raise
