"""A tiny synthetic prepared dataset (random interactions with structure, random features)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.data.feature_store import table_path, write_feature_table


def make_dataset(root: Path, n_users: int = 60, n_items: int = 40, per_user: int = 8, seed: int = 0,
                 dims: dict[str, int] | None = None, name: str = "synth") -> DatasetHandle:
    """Users prefer one of 4 item clusters; features are noisy cluster centroids (so modalities help)."""
    rng = np.random.default_rng(seed)
    dims = {"image": 48, "text": 24} if dims is None else dims
    item_cluster = rng.integers(0, 4, n_items)
    rows = []
    for u in range(n_users):
        c = u % 4
        pool = np.flatnonzero(item_cluster == c)
        other = np.flatnonzero(item_cluster != c)
        items = np.concatenate([rng.choice(pool, min(len(pool), per_user - 2), replace=False),
                                rng.choice(other, 2, replace=False)])
        rng.shuffle(items)
        split = ["train"] * (len(items) - 2) + ["valid", "test"]
        rows += [(u, int(i), 5.0, 0, s) for i, s in zip(items, split)]
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    df = pl.DataFrame(rows, schema={"user_idx": pl.Int64, "item_idx": pl.Int64, "rating": pl.Float64,
                                    "timestamp": pl.Int64, "split": pl.Utf8}, orient="row")
    df.write_parquet(d / "interactions.parquet")
    (d / "dataset.json").write_text(json.dumps({"name": name, "n_users": n_users, "n_items": n_items,
                                                "n_interactions": len(rows)}))
    for m, dim in dims.items():
        centres = rng.normal(size=(4, dim))
        vec = centres[item_cluster] + 0.5 * rng.normal(size=(n_items, dim))
        write_feature_table(table_path(d, m, "synthetic"), vec.astype(np.float32), ["ok"] * n_items,
                            {"modality": m, "model": "synthetic", "dim": dim, "source": "test"})
    return DatasetHandle(d)
