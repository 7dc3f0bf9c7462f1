"""Tiny synthetic dataset folders (per the dataset-folder contract) for training/graph/model tests.

Users and items belong to latent clusters; a user mostly interacts with items of its cluster, and the item
features are noisy cluster codes, so a model that learns anything beats random ranking.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from mrdib_cli.data.feature_store import table_path, write_feature_table


def make_dataset(workdir: Path, name: str = "tiny", n_users: int = 80, n_items: int = 50,
                 per_user: int = 8, n_clusters: int = 4, seed: int = 0, features: bool = True,
                 activate: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    ucl = rng.integers(0, n_clusters, n_users)
    icl = np.arange(n_items) % n_clusters
    rows = []
    for u in range(n_users):
        own = np.flatnonzero(icl == ucl[u])
        other = np.flatnonzero(icl != ucl[u])
        k_own = min(len(own), per_user - 2)
        items = np.concatenate([rng.choice(own, k_own, replace=False), rng.choice(other, 2, replace=False)])
        rng.shuffle(items)
        for pos, i in enumerate(items):
            split = "test" if pos == len(items) - 1 else "valid" if pos == len(items) - 2 else "train"
            rows.append((u, int(i), 5.0, 1_000_000 + pos, split))
    df = pl.DataFrame(rows, schema={"user_idx": pl.Int64, "item_idx": pl.Int64, "rating": pl.Float64,
                                    "timestamp": pl.Int64, "split": pl.Utf8}, orient="row")
    d = Path(workdir) / "datasets" / name
    d.mkdir(parents=True, exist_ok=True)
    df.write_parquet(d / "interactions.parquet")
    sizes = {s: int((df["split"] == s).sum()) for s in ("train", "valid", "test")}
    card = {"name": name, "n_users": n_users, "n_items": n_items, "n_interactions": df.height,
            "split_sizes": sizes, "split": {"scheme": "synthetic-loo", "seed": seed}, "k_core": 0,
            "source": {"kind": "synthetic"}}
    (d / "dataset.json").write_text(json.dumps(card))
    if features:
        codes = np.eye(n_clusters, dtype=np.float32)[icl]
        img = np.hstack([codes, np.zeros((n_items, 12), np.float32)]) + 0.3 * rng.standard_normal(
            (n_items, 16)).astype(np.float32)
        txt = np.hstack([codes, np.zeros((n_items, 4), np.float32)]) + 0.3 * rng.standard_normal(
            (n_items, 8)).astype(np.float32)
        for m, x in (("image", img), ("text", txt)):
            write_feature_table(table_path(d, m, "synthetic"), x, ["ok"] * n_items,
                                {"modality": m, "model": "synthetic", "source": "test"})
    if activate:
        (Path(workdir) / "state.json").write_text(json.dumps({"active_dataset": name}))
    return d
