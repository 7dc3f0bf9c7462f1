"""Small sparse-graph primitives shared by the multimodal backbones (FREEDOM, MGCN, SOIL, LATTICE, ...).

Why a separate module: the backbones normalise graphs in several subtly different ways (the reference code
of each model has its own), and parity depends on those details. They are collected here, each with the
formula it computes, so that a backbone states *which* variant it uses instead of re-deriving it:

    sym (edge list)   w'_rc = deg[r]^-1/2 * w_rc * deg[c]^-1/2,  deg[r] = sum_c w_rc   (inf -> 0)
                      optional clamp: w' <= 1e-7 -> 1e-7 (SOIL's variant)
    rw  (edge list)   w'_rc = w_rc / deg[r]

The standard graphs (Â, item kNN, user co-occurrence) come from ``graphs/{bipartite,knn,cooccurrence}``
(cached by ``graphs/store``); this module only adds what those do not have.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from mrdib_cli.graphs.bipartite import bipartite_adjacency


def to_sparse(rows: Tensor, cols: Tensor, vals: Tensor, shape: tuple[int, int]) -> Tensor:
    """Coalesced float32 COO tensor (duplicate entries are summed, as torch's coalesce does)."""
    idx = torch.stack([rows.long(), cols.long()])
    return torch.sparse_coo_tensor(idx, vals.float(), shape, check_invariants=False).coalesce()


def bipartite_edges(train: sp.csr_matrix) -> tuple[Tensor, Tensor]:
    """(users, items) int64 tensors of the binary train matrix (duplicates collapsed)."""
    coo = sp.csr_matrix(train).tocoo()
    return torch.from_numpy(coo.row.astype(np.int64)), torch.from_numpy(coo.col.astype(np.int64))


def mean_adjacency(train: sp.csr_matrix) -> sp.csr_matrix:
    """D^-1 A of the bipartite graph, no self loops: mean aggregation over neighbours (MMGCN's PyG
    ``aggr='mean'`` on the doubled U-I edge list; isolated nodes get 0)."""
    a = bipartite_adjacency(train)
    deg = np.asarray(a.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        inv = 1.0 / deg
    inv[~np.isfinite(inv)] = 0.0
    return sp.csr_matrix(sp.diags(inv) @ a, dtype=np.float32)


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
