"""User-user co-occurrence graph (DualGNN, DRAGON).

For every user, the top ``max_neighbours`` (default 200) other users by the number of **train** items they
share, with the counts. Computed as R R^T in sparse blocks of users (memory O(block x U) at worst, never a
dense U x U matrix as in the reference script). Ties are broken by the smaller user index, which makes
the result deterministic.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def user_cooccurrence(r: sp.csr_matrix, max_neighbours: int = 200,
                      block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(neighbours [U, K] int64 padded with -1, counts [U, K] float32 padded with 0), K = max_neighbours.

    Row u lists the users sharing >= 1 train item with u (u itself excluded), most shared first.
    """
    r = sp.csr_matrix(r, dtype=np.float32)
    r.sum_duplicates()
    r.data[:] = 1.0
    n = r.shape[0]
    k = max_neighbours
    nbrs = np.full((n, k), -1, dtype=np.int64)
    cnts = np.zeros((n, k), dtype=np.float32)
    rt = r.T.tocsc()
    for start in range(0, n, block):
        stop = min(start + block, n)
        co = (r[start:stop] @ rt).tocsr()  # [b, U] shared-item counts
        rows = np.repeat(np.arange(stop - start), np.diff(co.indptr))
        co.data[co.indices == rows + start] = 0  # a user is not its own neighbour
        co.eliminate_zeros()
        co.sort_indices()
        indptr, cols, vals = co.indptr, co.indices, co.data
        rows = np.repeat(np.arange(stop - start), np.diff(indptr))
        # sort within each row by (-count, col): lexsort keys are applied last-first
        order = np.lexsort((cols, -vals, rows))
        rows_s, cols_s, vals_s = rows[order], cols[order], vals[order]
        rank = np.arange(len(rows_s)) - indptr[rows_s]
        keep = rank < k
        nbrs[start + rows_s[keep], rank[keep]] = cols_s[keep]
        cnts[start + rows_s[keep], rank[keep]] = vals_s[keep]
    return nbrs, cnts

