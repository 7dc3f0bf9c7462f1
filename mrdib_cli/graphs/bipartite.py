"""User-item adjacency matrices built from **train** interactions only.

Symmetric variant (LightGCN, LGMRec, FREEDOM, BM3, MGCN)::

    A = [[0, R], [R^T, 0]]            (U+I) x (U+I), binary, duplicates collapse to 1
    deg = row nnz of A + eps          (eps = 1e-7 as in MMRec; MGCN uses 0 with inf -> 0)
    Â = D^-1/2 A D^-1/2

Random-walk variant with self-loops (LATTICE): D̃^-1 (A + I).

Everything here is scipy on the way in (cheap to cache as .npz) and torch sparse CSR on the way out,
because ``torch.sparse.mm`` on CSR is the fastest CPU propagation in our measurements.
"""

from __future__ import annotations

import warnings

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:
    import torch

DEG_EPS = 1e-7


def bipartite_adjacency(r: sp.csr_matrix) -> sp.csr_matrix:
    """Binary (U+I) x (U+I) adjacency [[0, R], [R^T, 0]] from a user x item matrix."""
    r = sp.csr_matrix(r, dtype=np.float32)
    r.sum_duplicates()
    r.data[:] = 1.0
    return sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)


def norm_adj_symmetric(r: sp.csr_matrix, eps: float = DEG_EPS) -> sp.csr_matrix:
    """Â = D^-1/2 A D^-1/2 with D = deg(A) + eps (eps=0: isolated nodes get 0, not inf)."""
    a = bipartite_adjacency(r)
    deg = np.asarray(a.sum(axis=1)).ravel().astype(np.float64) + eps
    with np.errstate(divide="ignore"):
        d_inv = np.power(deg, -0.5)
    d_inv[~np.isfinite(d_inv)] = 0.0
    d = sp.diags(d_inv)
    out = (d @ a @ d).tocsr().astype(np.float32)
    out.sort_indices()
    return out


def norm_adj_random_walk(r: sp.csr_matrix) -> sp.csr_matrix:
    """LATTICE's D̃^-1 (A + I): row-normalised adjacency with self-loops."""
    a = bipartite_adjacency(r) + sp.eye(sum(r.shape), dtype=np.float32, format="csr")
    deg = np.asarray(a.sum(axis=1)).ravel()
    with np.errstate(divide="ignore"):
        d_inv = 1.0 / deg
    d_inv[~np.isfinite(d_inv)] = 0.0
    out = (sp.diags(d_inv) @ a).tocsr().astype(np.float32)
    out.sort_indices()
    return out


def to_torch_sparse(m: sp.spmatrix, layout: str = "csr") -> "torch.Tensor":
    """A scipy sparse matrix as a torch sparse tensor (``csr`` or ``coo``), float32."""
    import torch  # imported here so that building graphs does not pay torch's import time

    if layout == "csr":
        m = sp.csr_matrix(m, dtype=np.float32)
        with warnings.catch_warnings():  # "CSR support is in beta": we test what we use
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)),
                                           torch.from_numpy(m.indices.astype(np.int64)),
                                           torch.from_numpy(m.data.astype(np.float32)), size=m.shape,
                                           check_invariants=False)
    coo = sp.coo_matrix(m, dtype=np.float32)
    idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    return torch.sparse_coo_tensor(idx, torch.from_numpy(coo.data), size=coo.shape,
                                   check_invariants=False).coalesce()
