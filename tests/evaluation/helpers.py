"""Tiny on-disk fixtures written with the dataset-folder and run-folder contracts (no trainer needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp


def random_csr(rng: np.random.Generator, n_users: int, n_items: int, per_user: tuple[int, int],
               exclude: sp.csr_matrix | None = None) -> sp.csr_matrix:
    """A binary CSR with a random number of items per user in [lo, hi], optionally disjoint from ``exclude``."""
    lo, hi = per_user
    cnt = rng.integers(lo, hi + 1, n_users)
    r = np.repeat(np.arange(n_users), cnt)
    c = rng.integers(0, n_items, len(r))
    m = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(n_users, n_items))
    m.sum_duplicates()
    m.data[:] = 1
    if exclude is not None:
        m = m - m.multiply(exclude)
        m = sp.csr_matrix(m)
        m.eliminate_zeros()
    return m


def write_dataset(workdir: Path, name: str = "tiny", n_users: int = 40, n_items: int = 30, seed: int = 0,
                  activate: bool = True) -> Path:
    """A dataset folder (interactions/items/users parquet + dataset.json) with every user in all splits."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.permutation(n_items)[:8]
        for j, i in enumerate(items):
            split = "train" if j < 5 else ("valid" if j < 6 else "test")
            rows.append((u, int(i), 5.0, 1_400_000_000 + j, split))
    inter = pl.DataFrame(rows, schema={"user_idx": pl.Int64, "item_idx": pl.Int64, "rating": pl.Float64,
                                       "timestamp": pl.Int64, "split": pl.Utf8}, orient="row")
    d = workdir / "datasets" / name
    d.mkdir(parents=True, exist_ok=True)
    inter.write_parquet(d / "interactions.parquet")
    pl.DataFrame({"item_idx": np.arange(n_items), "asin": [f"B{i:05d}" for i in range(n_items)],
                  "title": [f"Item number {i}" for i in range(n_items)],
                  "brand": [None] * n_items, "categories": [None] * n_items,
                  "description": [None] * n_items, "image_url": [None] * n_items},
                 schema_overrides={"brand": pl.Utf8, "categories": pl.Utf8, "description": pl.Utf8,
                                   "image_url": pl.Utf8}).write_parquet(d / "items.parquet")
    pl.DataFrame({"user_idx": np.arange(n_users),
                  "reviewer_id": [f"A{u:04d}X" for u in range(n_users)]}).write_parquet(d / "users.parquet")
    sizes = {s: int((inter["split"] == s).sum()) for s in ("train", "valid", "test")}
    card = {"name": name, "n_users": n_users, "n_items": n_items, "n_interactions": inter.height,
            "split_sizes": sizes, "split": {"scheme": "fixture", "seed": seed}, "k_core": 0,
            "source": {"kind": "test-fixture"}}
    (d / "dataset.json").write_text(json.dumps(card))
    if activate:
        state = workdir / "state.json"
        st = json.loads(state.read_text()) if state.exists() else {}
        st["active_dataset"] = name
        state.write_text(json.dumps(st))
    return d


def write_run(workdir: Path, run: str, dataset: str, user: np.ndarray, item: np.ndarray, seed: int = 999,
              backbone: str = "lightgcn", hparams: dict | None = None) -> Path:
    """A finished run folder as the trainer writes it: config.json, embeddings.npz, results.json (the run
    written last is the newest finished one, which commands without --run take)."""
    from mrdib_cli.data.handle import DatasetHandle

    dsdir = workdir / "datasets" / dataset
    rd = workdir / "runs" / run
    rd.mkdir(parents=True, exist_ok=True)
    cfg = {"run_name": run, "dataset": dataset, "dataset_dir": str(dsdir),
           "dataset_digest": DatasetHandle(dsdir).digest, "backbone": backbone,
           "hparams": hparams or {"embedding_dim": int(user.shape[1])},
           "train": {"epochs": 1, "patience": 20, "lr": 0.001, "batch_size": 2048, "seed": seed,
                     "device": "cpu"},
           "plugin": None, "features": {}, "version": "test", "created": f"2026-01-01T00:00:{seed % 60:02d}"}
    (rd / "config.json").write_text(json.dumps(cfg))
    np.savez(rd / "embeddings.npz", user=user.astype(np.float32), item=item.astype(np.float32))
    (rd / "results.json").write_text(json.dumps({"status": "finished"}))
    return rd
