"""``mrdib features import``: precomputed item vectors (``.npy``, Parquet, raw float32) as a feature table.

Many users already have embeddings from their own encoder. Rows are matched to the dataset's items either
by position (row i = item i) or through ids (an id column in a Parquet file, or an ids file with one
original item id per line), so a matrix made for another numbering still lands on the right items.
Everything that would silently corrupt training is checked before anything is written: dimension, row
count, duplicate ids, NaN/inf. All-zero rows (a common placeholder for "no input") and dataset items
without a row get status ``missing`` and the mean of the others, as ``extract-features`` does, and are
counted in the table's coverage. The provenance records the source file's digest and the user's
``--model`` description; the table is then used like an extracted one (``features ls``, graphs, training).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.data.importers import read_npy
from mrdib_cli.data.items import item_keys
from mrdib_cli.errors import DataError, MissingInputError, UsageError
from mrdib_cli.data import feature_store as store
from mrdib_cli.features.extract import FILL, finalise_vectors
from mrdib_cli.workspace import StepResult, Workspace, cached_step, file_digest


@dataclass
class ImportOptions:
    modality: str
    model: str | None = None  # the user's description of the encoder; also names the table
    dim: int | None = None  # required for raw float32 files, checked for the others
    ids: Path | None = None  # file with one original item id per row
    id_column: str | None = None  # Parquet: the column holding the item id
    vector_column: str = "vector"

    def validate(self) -> None:
        if self.modality not in store.MODALITIES:
            raise UsageError(f"--modality must be one of {', '.join(store.MODALITIES)}, got {self.modality!r}")
        if self.dim is not None and self.dim <= 0:
            raise UsageError("--dim must be positive")


def _load_parquet(path: Path, opts: ImportOptions) -> tuple[np.ndarray, list[str] | None]:
    """Vectors from a list column (``vector``) or from all numeric columns; ids from ``--id-column``."""
    try:
        df = pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - polars raises several types for unreadable files
        raise DataError(f"cannot read {path} ({type(e).__name__})") from None
    ids = None
    if opts.id_column is not None:
        if opts.id_column not in df.columns:
            raise UsageError(f"--id-column {opts.id_column!r}: not in {path.name} (columns: {', '.join(df.columns)})")
        ids = [str(v) for v in df[opts.id_column].cast(pl.Utf8).to_list()]
        df = df.drop(opts.id_column)
    if opts.vector_column in df.columns:
        col = df[opts.vector_column]
        try:
            arr = np.asarray(col.to_list(), dtype=np.float64)
        except (ValueError, TypeError):
            raise DataError(f"{path}: column {opts.vector_column!r} does not hold equal-length number lists") from None
    else:
        num = [c for c, t in zip(df.columns, df.dtypes) if t.is_numeric()]
        if not num:
            raise DataError(f"{path}: no '{opts.vector_column}' list column and no numeric columns")
        arr = df.select(num).to_numpy().astype(np.float64)
    return arr, ids


def load_matrix(path: Path, opts: ImportOptions) -> tuple[np.ndarray, list[str] | None]:
    """The matrix (float64, rows as in the file) and the ids the file itself carries (Parquet only)."""
    ext = path.suffix.lower()
    if ext == ".npy":
        arr, ids = read_npy(path), None
    elif ext in (".parquet", ".pq"):
        arr, ids = _load_parquet(path, opts)
    else:  # headerless float32 rows (RecBole/UniSRec .feat*CLS, numpy tofile)
        if opts.dim is None:
            raise UsageError(f"{path.name} is read as raw float32 rows: give their dimension with --dim D "
                             "(or use a .npy/.parquet file)")
        size = path.stat().st_size
        if size % (4 * opts.dim):
            raise DataError(f"{path}: {size} bytes is not a whole number of {opts.dim}-d float32 rows; check --dim")
        arr, ids = np.fromfile(path, dtype=np.float32).reshape(-1, opts.dim), None
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a 2-d matrix (items x dim), got shape {arr.shape}")
    if opts.dim is not None and arr.shape[1] != opts.dim:
        raise DataError(f"{path}: vectors are {arr.shape[1]}-d, not the --dim {opts.dim} given")
    store.check_vectors(arr, None, str(path))
    return arr, ids


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise MissingInputError(f"--ids file not found: {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def align(arr: np.ndarray, ids: list[str] | None, keys: list[str], where: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Rows placed at their item index; a row index of -1 marks a dataset item the file has no row for."""
    n = len(keys)
    if ids is None:
        if arr.shape[0] != n:
            raise DataError(f"{where}: has {arr.shape[0]} rows but the dataset has {n} items; rows must be in "
                            "item-index order, or give the row ids with --ids FILE / --id-column COL")
        return arr, np.arange(n), {"rows_not_in_dataset": 0}
    if len(ids) != arr.shape[0]:
        raise DataError(f"{where}: {len(ids)} ids for {arr.shape[0]} rows; the ids must list one id per row")
    row_of: dict[str, int] = {}
    for r, k in enumerate(ids):
        if k in row_of:
            raise DataError(f"{where}: item id {k!r} has several rows ({row_of[k]} and {r}); keep one")
        row_of[k] = r
    rows = np.array([row_of.get(k, -1) for k in keys], dtype=np.int64)
    if (rows < 0).all():
        raise DataError(f"{where}: no id matches a dataset item (file ids like {ids[:3]}, dataset ids like "
                        f"{keys[:3]})")
    out = np.zeros((n, arr.shape[1]), dtype=np.float64)
    out[rows >= 0] = arr[rows[rows >= 0]]
    return out, rows, {"rows_not_in_dataset": int(len(ids) - (rows >= 0).sum())}


def import_features(ws: Workspace, dataset: str | None, path: Path, opts: ImportOptions, *,
                    force: bool = False) -> tuple[StepResult, Path, dict[str, Any]]:
    """Write ``path`` as a feature table of ``dataset`` (cached on the file, ids and items digests)."""
    opts.validate()
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"feature file not found: {path}")
    handle = DatasetHandle.open(ws, dataset)
    if opts.ids is not None and opts.id_column is not None:
        raise UsageError("give the row ids either with --ids FILE or with --id-column COL, not both")
    label = opts.model or f"imported-{path.name}"
    out = store.table_path(handle.dir, opts.modality, label)
    digest = file_digest(path)
    inputs = {"file": digest, "interactions": handle.digest}
    if opts.ids is not None:
        inputs["ids"] = file_digest(opts.ids) if Path(opts.ids).is_file() else "missing"
    if (handle.dir / "items.parquet").exists():
        inputs["items"] = file_digest(handle.dir / "items.parquet")
    params = {"modality": opts.modality, "model": label, "dim": opts.dim, "id_column": opts.id_column,
              "vector_column": opts.vector_column, "source": str(path.resolve())}

    def run() -> dict[str, Any]:
        arr, file_ids = load_matrix(path, opts)
        ids = _read_ids(Path(opts.ids)) if opts.ids is not None else file_ids
        vec, rows, facts = align(arr, ids, item_keys(handle), str(path))
        zero = (rows >= 0) & ~np.any(vec != 0, axis=1)
        status = np.where(rows < 0, "missing", np.where(zero, "missing", "imported")).astype(object)
        if not (status == "imported").any():
            raise DataError(f"{path}: every matched row is all zeros; nothing usable to import")
        vectors = finalise_vectors(vec, np.where(status == "imported", "ok", "missing"), normalize=False)
        cov = {"n_items": handle.n_items, "ok": int((status == "imported").sum()),
               "missing": int((rows < 0).sum()), "all_zero": int(zero.sum()),
               "coverage": round(float((status == "imported").mean()), 6), **facts}
        meta = {"modality": opts.modality, "model": label, "source": f"imported from {path.name}",
                "imported_from": str(path.resolve()), "source_digest": digest, "normalised": False,
                "ids": str(Path(opts.ids).resolve()) if opts.ids else opts.id_column or "row = item index",
                "fill": FILL if (status != "imported").any() else None, "coverage": cov}
        store.write_feature_table(out, vectors, status, meta)
        return {"coverage": cov}

    res = cached_step(f"features-{out.stem}", handle.dir, inputs, params, run,
                      [str(out.relative_to(handle.dir))], force=force)
    return res, out, res.manifest.extra.get("coverage", {})
