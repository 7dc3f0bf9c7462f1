"""Masked top-K retrieval over the whole catalogue, batched over users.

The FAISS maintainers' advice for excluding ids ("query a larger k and filter afterwards") returns short
lists whenever a user's excluded items crowd the top; Cornac and implicit then silently return fewer than
K items. We instead

1. order the evaluated users by their number of masked items, so each batch's over-fetch margin is small
   (heavy users end up together in the last batch instead of inflating every batch's k),
2. fetch ``K + max masked count in the batch`` neighbours (capped at ``overfetch_cap``),
3. drop masked items with one vectorised sorted-key lookup (no Python loop over users), and
4. score any row that still has fewer than K survivors exactly (dense row x items, masked to -inf).

So every user gets exactly K items whenever the catalogue minus the mask has K items; the only way to get
fewer is a user who has masked (almost) the entire catalogue, and those rows are padded with -1 and counted.
Memory is bounded by the batch: ``batch_users x (K + margin)`` candidates, never users x items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import faiss
import numpy as np
import scipy.sparse as sp

from mrdib_cli.defaults import EVAL_BATCH_USERS
from mrdib_cli.errors import UsageError

INDEX_KINDS = ("flat", "ivf", "hnsw")
_FALLBACK_CELLS = 1 << 24  # max floats of one dense fallback block (64 MiB)


class RowKeys:
    """The columns of selected CSR rows as sorted int64 keys ``row * n_cols + col``.

    Rows are renumbered 0..len(rows)-1 in the given order, so a batch of consecutive rows owns one
    contiguous key segment and membership of a [B, F] candidate matrix is one ``searchsorted``.
    """

    def __init__(self, csr: sp.csr_matrix | None, rows: np.ndarray, n_cols: int) -> None:
        self.n_cols = int(n_cols)
        n = len(rows)
        if csr is None:
            self.indptr = np.zeros(n + 1, dtype=np.int64)
            self.cols = np.zeros(0, dtype=np.int64)
        else:
            sub = sp.csr_matrix(csr[rows])  # fancy row indexing returns a new matrix
            sub.eliminate_zeros()
            sub.sum_duplicates()  # also sorts indices within rows
            self.indptr = sub.indptr.astype(np.int64)
            self.cols = sub.indices.astype(np.int64)
        self.counts = np.diff(self.indptr)
        self.keys = np.repeat(np.arange(n, dtype=np.int64), self.counts) * self.n_cols + self.cols

    def contains(self, start: int, cand: np.ndarray) -> np.ndarray:
        """Boolean [B, F]: is ``cand[b, f]`` among the columns of row ``start + b``? (-1 is never.)"""
        b = cand.shape[0]
        seg = self.keys[self.indptr[start]:self.indptr[start + b]]
        if seg.size == 0:
            return np.zeros(cand.shape, dtype=bool)
        ck = np.arange(start, start + b, dtype=np.int64)[:, None] * self.n_cols + cand
        pos = np.searchsorted(seg, ck)
        np.minimum(pos, seg.size - 1, out=pos)
        found = seg[pos] == ck
        found &= cand >= 0
        return found

    def contains_at(self, positions: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """Like :meth:`contains` for arbitrary (sorted or not) row positions, in bounded blocks."""
        out = np.zeros(cand.shape, dtype=bool)
        for j in range(0, len(positions), 4096):
            blk = positions[j:j + 4096]
            r_loc, c_loc = self.gather(blk)
            keys = np.sort(r_loc * self.n_cols + c_loc)
            if keys.size == 0:
                continue
            c = cand[j:j + 4096]
            ck = np.arange(len(blk), dtype=np.int64)[:, None] * self.n_cols + c
            p = np.minimum(np.searchsorted(keys, ck), keys.size - 1)
            out[j:j + 4096] = (keys[p] == ck) & (c >= 0)
        return out

    def row(self, i: int) -> np.ndarray:
        return self.cols[self.indptr[i]:self.indptr[i + 1]]

    def gather(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(local row, col) pairs of the rows at ``positions``, local rows numbered 0..len-1 (vectorised)."""
        counts = self.counts[positions]
        total = int(counts.sum())
        local = np.repeat(np.arange(len(positions), dtype=np.int64), counts)
        starts = np.repeat(self.indptr[positions] - (np.cumsum(counts) - counts), counts)
        return local, self.cols[starts + np.arange(total, dtype=np.int64)]


@dataclass
class ItemIndex:
    """A FAISS inner-product index over the item embeddings: exact (flat) or approximate (ivf, hnsw)."""

    items: np.ndarray
    kind: str = "flat"
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise UsageError(f"unknown index '{self.kind}' (choose from {', '.join(INDEX_KINDS)})")
        n, d = self.items.shape
        p = dict(self.params)
        if self.kind == "flat":
            self.index = faiss.IndexFlatIP(d)
            p = {}
        elif self.kind == "ivf":
            # ~4 sqrt(n) lists, but at least 39 training points per list (FAISS's own warning threshold).
            nlist = int(p.get("nlist") or max(1, min(int(4 * np.sqrt(n)), n // 39)))
            nprobe = int(p.get("nprobe") or max(1, nlist // 16))
            quantizer = faiss.IndexFlatIP(d)
            self.index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            self.index.cp.seed = int(self.seed)
            self.index.train(self.items)
            self.index.nprobe = min(nprobe, nlist)
            self._quantizer = quantizer  # keep it alive: the IVF index holds a raw pointer
            p = {"nlist": nlist, "nprobe": int(self.index.nprobe)}
        else:  # hnsw
            m = int(p.get("M") or 32)
            self.index = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = int(p.get("efConstruction") or 80)
            self.ef_search = int(p.get("efSearch") or 128)
            p = {"M": m, "efConstruction": int(self.index.hnsw.efConstruction), "efSearch": self.ef_search}
        self.index.add(self.items)
        self.params = p

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and item ids [B, k], best first; ids are -1 where the index found nothing."""
        if self.kind == "hnsw":  # HNSW needs a beam at least as wide as k
            self.index.hnsw.efSearch = max(self.ef_search, k)
        return self.index.search(queries, k)


@dataclass
class TopK:
    """Top-K lists in the order of the queries; -1 / -inf mark ranks the catalogue could not fill."""

    items: np.ndarray  # int64 [n, k]
    scores: np.ndarray  # float32 [n, k]
    n_fallback: int = 0  # rows completed by exact dense scoring
    n_short: int = 0  # rows with fewer than k unmasked items in the whole catalogue


def exact_rows(user_vecs: np.ndarray, rows: np.ndarray, items: np.ndarray, mask: RowKeys,
               positions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact masked top-k for the users at ``positions`` of ``rows``, by dense scoring in bounded blocks.

    Used for the few rows an over-fetch left short, and as the reference in ``--verify-exact``.
    """
    n_items = items.shape[0]
    out_i = np.full((len(positions), k), -1, dtype=np.int64)
    out_s = np.full((len(positions), k), -np.inf, dtype=np.float32)
    step = max(1, _FALLBACK_CELLS // max(n_items, 1))
    for s in range(0, len(positions), step):
        blk = positions[s:s + step]
        scores = user_vecs[rows[blk]] @ items.T
        r_loc, c_loc = mask.gather(blk)
        scores[r_loc, c_loc] = -np.inf
        kk = min(k, n_items)
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        ps = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-ps, axis=1, kind="stable")
        idx = np.take_along_axis(part, order, axis=1)
        val = np.take_along_axis(ps, order, axis=1)
        idx[~np.isfinite(val)] = -1
        out_i[s:s + len(blk), :kk] = idx
        out_s[s:s + len(blk), :kk] = val
    return out_i, out_s


def masked_topk(user_vecs: np.ndarray, rows: np.ndarray, index: ItemIndex, mask: RowKeys, k: int,
                batch_users: int = EVAL_BATCH_USERS, overfetch_cap: int = 1024,
                on_batch: Callable[[int], None] | None = None) -> TopK:
    """Top-k unmasked items for users ``rows`` (indices into ``user_vecs``), in the order of ``rows``.

    ``mask`` must be a :class:`RowKeys` built on the same ``rows`` order. Best results come when ``rows``
    are sorted by mask count (see module docstring); correctness does not depend on it.
    """
    n = len(rows)
    n_items = index.items.shape[0]
    if k > n_items:
        raise UsageError(f"K={k} is larger than the catalogue ({n_items} items); use a smaller --k")
    if batch_users < 1:
        raise UsageError(f"--batch-users must be >= 1, got {batch_users}")
    out_i = np.empty((n, k), dtype=np.int64)
    out_s = np.empty((n, k), dtype=np.float32)
    short_rows: list[np.ndarray] = []
    for s in range(0, n, batch_users):
        e = min(n, s + batch_users)
        q = np.ascontiguousarray(user_vecs[rows[s:e]])
        cnt = mask.counts[s:e]
        most = int(cnt.max()) if cnt.size else 0
        f = min(k + min(most, overfetch_cap), n_items)
        scores, labels = index.search(q, f)
        bad = labels < 0
        if most:
            bad |= mask.contains(s, labels)
        keep = ~bad
        rank = np.cumsum(keep, axis=1, dtype=np.int32)
        sel = keep & (rank <= k)
        if rank[:, -1].min() >= k:  # the common case: every row has k survivors, in row-major order
            out_i[s:e] = labels[sel].reshape(-1, k)
            out_s[s:e] = scores[sel].reshape(-1, k)
        else:
            r, c = np.nonzero(sel)
            out_i[s:e] = -1
            out_s[s:e] = -np.inf
            out_i[s + r, rank[r, c] - 1] = labels[r, c]
            out_s[s + r, rank[r, c] - 1] = scores[r, c]
            short_rows.append(s + np.flatnonzero(rank[:, -1] < k))
        if on_batch is not None:
            on_batch(e - s)
    n_fallback = n_short = 0
    if short_rows:
        short = np.concatenate(short_rows)
        n_fallback = len(short)
        fi, fs = exact_rows(user_vecs, rows, index.items, mask, short, k)
        out_i[short] = fi
        out_s[short] = fs
        n_short = int((fi[:, -1] < 0).sum())
    return TopK(out_i, out_s, n_fallback=n_fallback, n_short=n_short)
