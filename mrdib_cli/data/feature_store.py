"""Feature tables: one Parquet per modality and encoder, with provenance in the file metadata.

Schema: ``item_idx`` (int64), ``vector`` (fixed-size list of float32), ``status`` (string: ok, missing,
failed, empty_text, imported). The Parquet key-value metadata ``mrdib`` holds a JSON object with at least
``modality``, ``model``, ``dim`` and ``source``; extraction adds pretrained tag / checkpoint digest,
preprocessing, normalisation, package versions and coverage. ``extract-features`` and the importers both
write through :func:`write_feature_table`, so every consumer reads one format.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mrdib_cli.errors import DataError, MissingInputError, UsageError
from mrdib_cli.workspace import atomic_path

META_KEY = b"mrdib"
MODALITIES = ("image", "text")
STATUSES = ("ok", "missing", "failed", "empty_text", "imported")


def model_slug(model: str) -> str:
    """A file-name-safe slug of a model name/tag (``ViT-B-32/laion2b`` -> ``vit-b-32-laion2b``)."""
    return re.sub(r"[^a-z0-9.]+", "-", model.lower()).strip("-") or "model"


def table_path(dataset_dir: Path, modality: str, model: str) -> Path:
    return Path(dataset_dir) / "features" / f"{modality}-{model_slug(model)}.parquet"


@dataclass
class FeatureTable:
    """A loaded feature table: vectors in item order, per-item status, provenance metadata."""

    path: Path
    vectors: np.ndarray  # float32 [n_items, dim]
    status: np.ndarray  # object/str [n_items]
    meta: dict[str, Any]

    @property
    def modality(self) -> str:
        return self.meta.get("modality", "?")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def check_vectors(vectors: np.ndarray, n_items: int | None, what: str) -> np.ndarray:
    """Refuse features that would silently corrupt training: wrong shape, NaN/inf."""
    if vectors.ndim != 2:
        raise DataError(f"{what}: expected a 2-d feature matrix, got shape {vectors.shape}")
    if n_items is not None and vectors.shape[0] != n_items:
        raise DataError(f"{what}: has {vectors.shape[0]} rows but the dataset has {n_items} items; "
                        "features must have one row per item in item-index order")
    bad = ~np.isfinite(vectors)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise DataError(f"{what}: {len(rows)} rows contain NaN/inf (first row {int(rows[0])}); "
                        "fix or re-extract the features")
    return vectors


def write_feature_table(path: Path, vectors: np.ndarray, status: list[str] | np.ndarray,
                        meta: dict[str, Any]) -> Path:
    """Write a feature table atomically; ``vectors[i]`` belongs to item ``i``."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    check_vectors(vectors, None, str(path))
    n, d = vectors.shape
    status = np.asarray(status, dtype=object)
    if len(status) != n:
        raise ValueError("status must have one entry per item")
    unknown = set(status.tolist()) - set(STATUSES)
    if unknown:
        raise ValueError(f"unknown status values {sorted(unknown)}")
    if meta.get("modality") not in MODALITIES:
        raise UsageError(f"feature modality must be one of {MODALITIES}, got {meta.get('modality')!r}")
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    vec = pa.FixedSizeListArray.from_arrays(flat, d)
    table = pa.table({"item_idx": pa.array(np.arange(n, dtype=np.int64)), "vector": vec,
                      "status": pa.array(status.tolist(), type=pa.string())})
    meta = {**meta, "dim": d, "n_items": n}
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True, default=str).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def read_meta(path: Path) -> dict[str, Any]:
    """Provenance metadata without reading the vectors."""
    md = pq.read_schema(path).metadata or {}
    if META_KEY not in md:
        raise DataError(f"{path} is not an mrdib feature table (no provenance metadata)")
    return json.loads(md[META_KEY])


def read_feature_table(path: Path, n_items: int | None = None) -> FeatureTable:
    """Load and validate a feature table (row count vs. dataset, contiguous ids, finite values)."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"feature table not found: {path}")
    try:
        table = pq.read_table(path)
        meta = read_meta(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path} is not a readable Parquet file ({e}); delete it and re-extract") from None
    ids = table.column("item_idx").to_numpy()
    if not np.array_equal(ids, np.arange(len(ids))):
        raise DataError(f"{path}: item_idx must be 0..n-1 in order")
    col = table.column("vector").combine_chunks()
    d = col.type.list_size
    vectors = col.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, d)
    check_vectors(vectors, n_items, str(path))
    status = np.asarray(table.column("status").to_pylist(), dtype=object)
    return FeatureTable(path=path, vectors=vectors, status=status, meta=meta)


def list_tables(dataset_dir: Path) -> list[Path]:
    """Feature tables of a dataset, newest first."""
    d = Path(dataset_dir) / "features"
    if not d.exists():
        return []
    files = [p for p in d.glob("*.parquet") if not p.name.startswith(".")]
    return sorted(files, key=lambda p: p.stat().st_mtime_ns, reverse=True)


def select_table(dataset_dir: Path, modality: str, name: str | None = None) -> Path | None:
    """The table to use for a modality: ``name`` (file name or model slug) or the newest of the modality."""
    tables = [p for p in list_tables(dataset_dir) if p.name.startswith(modality + "-")]
    if name is not None:
        for p in tables:
            if name in (p.name, p.stem, p.stem[len(modality) + 1:]) or model_slug(name) == p.stem[len(modality) + 1:]:
                return p
        have = ", ".join(p.name for p in tables) or "none"
        raise MissingInputError(f"no {modality} feature table '{name}' (available: {have})")
    return tables[0] if tables else None
