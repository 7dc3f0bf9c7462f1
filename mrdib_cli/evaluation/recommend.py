"""Top-K recommendations from a trained run, by raw reviewer id or user index, with item titles.

The lists come from the same masked FAISS search as evaluation (:func:`.topk.masked_topk`), so with the
default ``--mask train`` they are exactly the lists ``mrdib eval`` scored; ``held_out`` marks items that are
in the user's valid/test interactions (hits under the evaluation protocol).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from mrdib_cli.defaults import EVAL_BATCH_USERS
from mrdib_cli.errors import MissingInputError, UsageError
from mrdib_cli.evaluation.engine import as_float32
from mrdib_cli.evaluation.runs import Run
from mrdib_cli.evaluation.topk import ItemIndex, RowKeys, TopK, masked_topk
from mrdib_cli.workspace import atomic_path

RECOMMEND_MASKS: dict[str, tuple[str, ...]] = {"train": ("train",), "train+valid": ("train", "valid"),
                                               "all": ("train", "valid", "test"), "none": ()}
OUT_FORMATS = (".parquet", ".csv")


def resolve_users(run: Run, tokens: list[str]) -> np.ndarray:
    """User indices for raw reviewer ids or integer indices (reviewer ids win when a token is both)."""
    h = run.handle
    users = h.users
    ids: dict[str, int] = {}
    if "reviewer_id" in users.columns:
        ids = dict(zip(users["reviewer_id"].cast(pl.Utf8).to_list(), users["user_idx"].to_list()))
    out = []
    for tok in tokens:
        tok = tok.strip()
        if tok in ids:
            out.append(int(ids[tok]))
        elif tok.lstrip("-").isdigit() and 0 <= int(tok) < h.n_users:
            out.append(int(tok))
        else:
            raise UsageError(f"unknown user '{tok}': not a reviewer id of dataset '{h.name}' and not an index in "
                             f"0..{h.n_users - 1}")
    return np.asarray(out, dtype=np.int64)


def topk_for_users(user_emb: np.ndarray, item_emb: np.ndarray, users: np.ndarray, mask, k: int,
                   batch_users: int = EVAL_BATCH_USERS) -> TopK:
    """Masked top-k for ``users`` (in that order); batches sorted by mask count for a small over-fetch."""
    u = as_float32(user_emb, "user embeddings")
    it = as_float32(item_emb, "item embeddings")
    if k > it.shape[0]:
        raise UsageError(f"--k {k} is larger than the catalogue ({it.shape[0]} items); use a smaller --k")
    if k < 1:
        raise UsageError(f"--k must be >= 1, got {k}")
    counts = np.diff(mask.indptr)[users] if mask is not None else np.zeros(len(users), np.int64)
    order = np.argsort(counts, kind="stable")
    rows = users[order]
    top = masked_topk(u, rows, ItemIndex(it), RowKeys(mask, rows, it.shape[0]), k, batch_users=batch_users)
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    return TopK(top.items[inv], top.scores[inv], top.n_fallback, top.n_short)


def recommend(run: Run, users: np.ndarray | None, k: int = 10, mask: str = "train",
              batch_users: int = EVAL_BATCH_USERS, with_titles: bool = True) -> pl.DataFrame:
    """Long table: user_idx, reviewer_id, rank, item_idx, asin, title, score, held_out (all users if None)."""
    if mask not in RECOMMEND_MASKS:
        raise UsageError(f"unknown mask '{mask}' (choose from {', '.join(RECOMMEND_MASKS)})")
    h = run.handle
    user_emb, item_emb = run.embeddings
    if user_emb.shape[0] != h.n_users or item_emb.shape[0] != h.n_items:
        raise MissingInputError(f"run '{run.name}' embeddings do not match dataset '{h.name}' "
                                f"({user_emb.shape[0]}x{item_emb.shape[0]} vs {h.n_users}x{h.n_items})")
    if users is None:
        users = np.arange(h.n_users, dtype=np.int64)
    splits = RECOMMEND_MASKS[mask]
    m = h.csr(list(splits)) if splits else None
    top = topk_for_users(user_emb, item_emb, users, m, k, batch_users)
    held = RowKeys(h.csr(["valid", "test"]), users, h.n_items)
    held_out = np.zeros(top.items.shape, dtype=bool)
    for s in range(0, len(users), batch_users):
        held_out[s:s + batch_users] = held.contains(s, top.items[s:s + batch_users])
    n = len(users)
    df = pl.DataFrame({
        "_pos": np.repeat(np.arange(n, dtype=np.int64), k), "user_idx": np.repeat(users, k), "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
        "item_idx": top.items.reshape(-1), "score": top.scores.reshape(-1), "held_out": held_out.reshape(-1),
    }).filter(pl.col("item_idx") >= 0)
    if "reviewer_id" in h.users.columns:
        df = df.join(h.users.select(["user_idx", "reviewer_id"]), on="user_idx", how="left")
    cols = [c for c in ("item_idx", "asin", "title") if c in h.items.columns]
    if not with_titles:
        cols = [c for c in cols if c != "title"]
    if len(cols) > 1:
        df = df.join(h.items.select(cols), on="item_idx", how="left")
    order = [c for c in ("user_idx", "reviewer_id", "rank", "item_idx", "asin", "title", "score", "held_out")
             if c in df.columns]
    return df.sort(["_pos", "rank"]).select(order)  # joins may reorder rows; restore the request order


def write_table(df: pl.DataFrame, path: str | Path) -> Path:
    """Write recommendations atomically as Parquet or CSV (chosen by the file extension)."""
    p = Path(path)
    if p.suffix.lower() not in OUT_FORMATS:
        raise UsageError(f"--out {p}: use a .parquet or .csv file name")
    with atomic_path(p) as tmp:
        if p.suffix.lower() == ".parquet":
            df.write_parquet(tmp)
        else:
            df.write_csv(tmp)
    return p
