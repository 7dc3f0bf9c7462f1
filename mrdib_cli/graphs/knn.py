"""Item-item kNN modality graphs.

Every variant starts from the row-L2-normalised features X̄ and the cosine similarity Sim = X̄ X̄^T, taking
the top-k per row **including the item itself** (its own similarity of 1 is maximal) and **without
symmetrising**. Sim is never materialised: rows are processed in blocks, so memory is
O(block x items + items x k), never items x items.

Normalisations (``norm``):

* ``"sym_binary"`` (FREEDOM, DRAGON, §4.2(a)): keep the indices with value 1 and normalise by
  1/sqrt(r_a r_b) with r the *row* counts (= k), i.e. every entry is 1/k: a mean over the k neighbours.
* ``"sym"`` (LATTICE §4.2(b), MGCN §4.2(c)): keep the top-k similarity values; L = D^-1/2 W D^-1/2 with
  D = row sums of W (MGCN's "scatter-sum over rows" is the same degree; inf -> 0).
* ``"rw"``: D^-1 W, row-stochastic over the kept similarity values.
* ``"none"``: the raw top-k similarity values.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mrdib_cli.errors import UsageError

NORMS = ("sym_binary", "sym", "rw", "none")


#: at most this many similarities (float32) held at once: a 2,048-row block of a 451k-item catalogue would be
#: 3.7 GB (and its argpartition as much again), so large catalogues take fewer rows per block
BLOCK_CELLS = 1 << 26
#: columns per chunk in :func:`_top_k_by_chunks` (451k items, one thread: 128-512 all cost about 45 ms per
#: block of 148 rows, 64 and 2,048 about 77 ms)
CHUNK = 256


def topk_cosine(x: np.ndarray, k: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(indices [n, k] int64, cosine values [n, k] float32) of each row's k most similar rows.

    Rows are L2-normalised (zero rows stay zero). Within a row, neighbours are ordered by decreasing
    similarity, ties by increasing index, so the graph is deterministic. numpy only (no torch import), so
    ``build-graph`` starts fast.
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise UsageError(f"knn_k must be between 1 and the number of items ({n}), got {k}")
    xn = np.array(x, dtype=np.float32)
    norms = np.linalg.norm(xn, axis=1, keepdims=True)
    xn = np.divide(xn, norms, out=np.zeros_like(xn), where=norms > 0)
    idx = np.empty((n, k), dtype=np.int64)
    val = np.empty((n, k), dtype=np.float32)
    block = max(1, min(block, BLOCK_CELLS // n))
    for start in range(0, n, block):
        sim = xn[start:start + block] @ xn.T  # [b, n]: the only block-sized buffer
        part = _top_k(sim, k) if k < n else np.tile(np.arange(n), (len(sim), 1))
        pv = np.take_along_axis(sim, part, 1)
        order = np.lexsort((part, -pv), axis=1)  # by similarity desc, then index asc
        idx[start:start + block] = np.take_along_axis(part, order, 1)
        val[start:start + block] = np.take_along_axis(pv, order, 1)
    return idx, val


def _top_k(sim: np.ndarray, k: int) -> np.ndarray:
    """Column indices [b, k] (in no order) of each row's k largest entries of ``sim`` [b, n], k < n: the set
    ``np.argpartition(-sim, k - 1)[:, :k]`` picks, the same set whenever it is the only one.

    Why not argpartition alone: an indirect partition of every row costs about 17 ms per 1M entries, ten times
    the block's matrix product (451k items: 2.5 s of 2.8 s per block). :func:`_top_k_by_chunks` settles almost
    every row from the maxima of column chunks; a row it cannot settle exactly (ties at the k-th place, where
    argpartition's own choice decides, or a NaN) goes to argpartition, so stored graphs do not change."""
    part = np.empty((len(sim), k), dtype=np.int64)
    done, cols = _top_k_by_chunks(sim, k, min(CHUNK, max(1, sim.shape[1] // (4 * k))))
    part[done] = cols
    rest = np.ones(len(sim), dtype=bool)
    rest[done] = False
    if rest.any():
        part[rest] = np.argpartition(-sim[rest], k - 1, axis=1)[:, :k]
    return part


def _top_k_by_chunks(sim: np.ndarray, k: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, their top-k columns) for the rows whose top k entries are strictly above all the others.

    Each row's k-th largest chunk maximum (chunks of ``c`` columns) is a lower bound on its k-th largest entry
    (k chunk maxima are k distinct entries), so its top k entries lie in the chunks whose maximum reaches that
    bound: usually exactly k chunks, k x c candidates instead of the whole row."""
    b, n = sim.shape
    whole = n // c * c
    cmax = sim[:, :whole].reshape(b, n // c, c).max(axis=2)
    if whole < n:
        cmax = np.concatenate([cmax, sim[:, whole:].max(axis=1, keepdims=True)], axis=1)
    m = cmax.shape[1]
    bound = np.partition(cmax, m - k, axis=1)[:, m - k]
    hot = cmax >= bound[:, None]  # False everywhere in a row with a NaN bound
    rows = np.flatnonzero(hot.sum(axis=1) == k)  # more than k: ties among the maxima
    chunks = np.nonzero(hot[rows])[1].reshape(-1, k)
    cols = (chunks[:, :, None] * c + np.arange(c)).reshape(len(rows), k * c)
    vals = sim[rows[:, None], np.minimum(cols, n - 1)]
    vals[cols >= n] = -np.inf  # the short last chunk's padding
    kth = np.partition(vals, k * c - k, axis=1)[:, k * c - k]
    top = vals >= kth[:, None]
    exact = top.sum(axis=1) == k  # else a tie at the k-th place (or a NaN)
    at = np.nonzero(top[exact])[1].reshape(-1, k)
    return rows[exact], np.take_along_axis(cols[exact], at, 1)


def knn_graph(x: np.ndarray, k: int = 10, norm: str = "sym_binary", block: int = 2048) -> sp.csr_matrix:
    """The normalised item-item kNN graph of a feature matrix, as scipy CSR [n_items, n_items]."""
    if norm not in NORMS:
        raise UsageError(f"unknown kNN normalisation '{norm}' (choose from {', '.join(NORMS)})")
    n = x.shape[0]
    idx, val = topk_cosine(x, k, block)
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    cols = idx.ravel()
    if norm == "sym_binary":
        w = np.ones(n * k, dtype=np.float64)
    else:
        w = val.ravel().astype(np.float64)
    w_mat = sp.csr_matrix((w, (rows, cols)), shape=(n, n))
    if norm == "none":
        out = w_mat
    else:
        if norm == "sym_binary":
            deg = np.asarray((w_mat != 0).sum(axis=1)).ravel().astype(np.float64)
        else:
            deg = np.asarray(w_mat.sum(axis=1)).ravel()
        with np.errstate(divide="ignore"):
            d_half = np.power(deg, -0.5)
            d_one = 1.0 / deg
        d_half[~np.isfinite(d_half)] = 0.0
        d_one[~np.isfinite(d_one)] = 0.0
        if norm == "rw":
            out = sp.diags(d_one) @ w_mat
        else:
            out = sp.diags(d_half) @ w_mat @ sp.diags(d_half)
    out = sp.csr_matrix(out, dtype=np.float32)
    out.sort_indices()
    return out
