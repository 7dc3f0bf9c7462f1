"""Small sparse-graph primitives shared by the multimodal backbones (FREEDOM, MGCN, SOIL, LATTICE, ...).

Why a separate module: the backbones normalise graphs in several subtly different ways (the reference code
of each model has its own), and parity depends on those details. They are collected here, each with the
formula it computes, so that a backbone states *which* variant it uses instead of re-deriving it:

    sym (edge list)   w'_rc = deg[r]^-1/2 * w_rc * deg[c]^-1/2,  deg[r] = sum_c w_rc   (inf -> 0)
                      optional clamp: w' <= 1e-7 -> 1e-7 (SOIL's variant)
    rw  (edge list)   w'_rc = w_rc / deg[r]

Everything returns coalesced ``torch.sparse_coo_tensor`` on the CPU; callers register them as
non-persistent buffers so ``.to(device)`` moves them with the module (no hard-coded ``.cuda()``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor


def to_sparse(rows: Tensor, cols: Tensor, vals: Tensor, shape: tuple[int, int]) -> Tensor:
    """Coalesced float32 COO tensor (duplicate entries are summed, as torch's coalesce does)."""
    idx = torch.stack([rows.long(), cols.long()])
    return torch.sparse_coo_tensor(idx, vals.float(), shape, check_invariants=False).coalesce()


def scipy_to_sparse(m: sp.spmatrix) -> Tensor:
    coo = m.tocoo()
    return to_sparse(torch.from_numpy(coo.row.astype(np.int64)), torch.from_numpy(coo.col.astype(np.int64)),
                     torch.from_numpy(coo.data.astype(np.float32)), coo.shape)


def bipartite_edges(train: sp.csr_matrix) -> tuple[Tensor, Tensor]:
    """(users, items) int64 tensors of the binary train matrix (duplicates collapsed)."""
    coo = sp.csr_matrix(train).tocoo()
    return torch.from_numpy(coo.row.astype(np.int64)), torch.from_numpy(coo.col.astype(np.int64))


def bipartite_adjacency(train: sp.csr_matrix, *, norm: str = "sym", eps: float = 1e-7,
                        self_loops: bool = False) -> Tensor:
    """Normalised (U+I)x(U+I) user-item adjacency A = [[0, R], [R^T, 0]] from the train matrix.

    norm="sym": D^-1/2 A D^-1/2 with deg = row count + eps (LightGCN/FREEDOM/BM3 use eps=1e-7, MGCN/SOIL
    eps=0 with inf -> 0; identical on every node that has an edge). norm="rw" with self_loops=True is
    LATTICE's D~^-1 (A + I).
    """
    n_users, n_items = train.shape
    u, i = bipartite_edges(train)
    rows = torch.cat([u, i + n_users])
    cols = torch.cat([i + n_users, u])
    n = n_users + n_items
    if self_loops:
        ar = torch.arange(n)
        rows, cols = torch.cat([rows, ar]), torch.cat([cols, ar])
    w = torch.ones(rows.numel(), dtype=torch.float64)
    deg = torch.zeros(n, dtype=torch.float64).index_add_(0, rows, w) + eps
    if norm == "sym":
        dinv = deg.pow(-0.5)
        dinv[torch.isinf(dinv)] = 0.0
        vals = dinv[rows] * dinv[cols]
    elif norm == "rw":
        dinv = deg.pow(-1.0)
        dinv[torch.isinf(dinv)] = 0.0
        vals = dinv[rows]
    else:
        raise ValueError(f"unknown norm {norm!r}")
    return to_sparse(rows, cols, vals.float(), (n, n))


def edge_laplacian(rows: Tensor, cols: Tensor, w: Tensor, n_rows: int, *, norm: str = "sym",
                   clamp: float | None = None, col_deg: Tensor | None = None) -> Tensor:
    """Normalise an edge list the way MGCN/SOIL's ``get_sparse_laplacian`` does; returns new weights.

    deg[r] = scatter-sum of w over rows (length ``n_rows``); sym: deg[r]^-1/2 w deg[c]^-1/2 with inf -> 0,
    where the column factor indexes ``col_deg`` (default: the same row-degree vector, as the reference
    does for square matrices). ``clamp`` (SOIL): every normalised weight <= clamp becomes clamp.
    """
    deg = torch.zeros(n_rows, dtype=w.dtype, device=w.device).index_add_(0, rows, w)
    if norm == "sym":
        dinv = deg.pow(-0.5)
        dinv = dinv.masked_fill(torch.isinf(dinv), 0.0)
        cdinv = dinv if col_deg is None else col_deg.pow(-0.5).masked_fill(torch.isinf(col_deg.pow(-0.5)), 0.0)
        out = dinv[rows] * w * cdinv[cols]
    elif norm == "rw":
        dinv = deg.pow(-1.0).masked_fill(deg == 0, 0.0)
        out = dinv[rows] * w
    else:
        raise ValueError(f"unknown norm {norm!r}")
    if clamp is not None:
        out = torch.where(out <= clamp, torch.full_like(out, clamp), out)
    return out


def l2_normalise(x: Tensor) -> Tensor:
    """Row-wise x / ||x|| (zero rows stay zero rather than NaN)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def cosine_topk(x: Tensor | np.ndarray, k: int, *, block: int = 2048) -> tuple[Tensor, Tensor]:
    """Top-k cosine neighbours of every row of x, self included, computed in row blocks.

    Memory is O(block x n) instead of the reference's dense n x n similarity matrix. Returns
    (values [n, k], indices [n, k]) sorted by decreasing similarity.
    """
    xt = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).float()
    xn = l2_normalise(xt)
    n = xn.shape[0]
    k = min(k, n)
    vals, idx = [], []
    for s in range(0, n, block):
        sim = xn[s:s + block] @ xn.T
        v, i = torch.topk(sim, k, dim=-1)
        vals.append(v)
        idx.append(i)
    return torch.cat(vals), torch.cat(idx)


def knn_graph(x: Tensor | np.ndarray, k: int, *, weighted: bool, clamp: float | None = None) -> Tensor:
    """Item-item kNN graph from raw features, not symmetrised, self included.

    weighted=False: FREEDOM/DRAGON's binary graph, entries 1/sqrt(r_a r_b) with r = row count + 1e-7
    (= 1/k everywhere: a mean over the k neighbours). weighted=True: MGCN/SOIL/LATTICE's top-k cosine
    values, sym-normalised with row degrees (``edge_laplacian``; ``clamp`` for SOIL).
    """
    vals, idx = cosine_topk(x, k)
    n, kk = idx.shape
    rows = torch.arange(n).repeat_interleave(kk)
    cols = idx.reshape(-1)
    if weighted:
        w = edge_laplacian(rows, cols, vals.reshape(-1), n, clamp=clamp)
    else:
        deg = torch.zeros(n).index_add_(0, rows, torch.ones(rows.numel())) + 1e-7
        dinv = deg.pow(-0.5)
        w = dinv[rows] * dinv[cols]
    return to_sparse(rows, cols, w, (n, n))


def cooccurrence_topk(train: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k co-occurrence neighbours of every user: (nbr [U, k] int64, count [U, k] float32, n [U]).

    C = R R^T without the diagonal (number of shared train items); per user the k largest counts in
    decreasing order (MMRec's ``user_graph_dict`` keeps 200 and DualGNN reads the first 40). Rows with
    fewer than k neighbours are padded with index 0 / count 0 and ``n`` says how many are real.
    """
    r = sp.csr_matrix(train, dtype=np.float32)
    c = (r @ r.T).tocoo()
    off = c.row != c.col
    rows, cols, vals = c.row[off], c.col[off], c.data[off]
    srt = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[srt], cols[srt], vals[srt]
    first = np.searchsorted(rows, rows, side="left")
    rank = np.arange(len(rows)) - first
    keep = rank < k
    n_users = r.shape[0]
    nbr = np.zeros((n_users, k), dtype=np.int64)
    cnt = np.zeros((n_users, k), dtype=np.float32)
    nbr[rows[keep], rank[keep]] = cols[keep]
    cnt[rows[keep], rank[keep]] = vals[keep]
    n = np.bincount(rows[keep], minlength=n_users).astype(np.int64)
    return nbr, cnt, n
