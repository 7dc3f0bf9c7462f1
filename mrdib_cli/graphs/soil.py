"""SOIL's graphs: second-order ("attractiveness") user-item edges and interest-aware item-item graphs.

Spec: reference-soil.md §3 (the code's version, which differs from the paper; see §10 there). The
reference builds four dense I x I similarity/accumulator matrices and loops over users in Python; here
everything is block-wise and vectorised, memory O(block x I + edges), and the result is cached under
``<dataset>/graphs/`` keyed by a digest of the feature values, the train split and the parameters (the
reference's cache key omits the features and silently reuses stale graphs).

Second-order edges (§3.3), per user u with train history H, n = |H|, k_a = knn_a:
    P = S_v[H, :] ⊙ S_t[H, :]  (element-wise product of cosine similarities, n x I)
    keep the global top-(k_a + n) entries of P (== top-(k_a+n) per row, then top-(k_a+n) overall),
    as (u, item, weight) triples; duplicates (an item picked from two history rows) are summed.
    Ã2 = sym(A2) on the (U+I)^2 matrix with both directions, R̃2 = sym(R2) on the U x I block with N = U:
    the released code scales item columns by the degree of the *user* with the same index
    (``r2_norm="as_released"``); ``r2_norm="bipartite"`` uses the item's own column degree.

Interest-aware item graph (§3.4), per modality m:
    s_m(u) = Σ_{h∈H(u)} S_m[h, :],  I^a(u) = top_{k_i}(s_v(u)) ∪ top_{k_i}(s_t(u))
    W_m[h, j] += S_m[h, j] for every h ∈ H(u), j ∈ I^a(u) (accumulated over users, as in the code)
    G_m = sym(nonzeros of W_m) + sym(top-k_s per row of S_m)
sym(.) is ``edge_laplacian`` with SOIL's clamp (normalised weights <= 1e-7 become 1e-7).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from mrdib_cli.errors import DataError
from mrdib_cli.graphs.ops import edge_laplacian, l2_normalise, to_sparse
from mrdib_cli.workspace import atomic_path, digest_obj

CLAMP = 1e-7


def _train_arrays(train: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    train = sp.csr_matrix(train)
    train.sort_indices()
    users = np.repeat(np.arange(train.shape[0]), np.diff(train.indptr))
    return users.astype(np.int64), train.indices.astype(np.int64), np.diff(train.indptr).astype(np.int64)


def _item_blocks(n_items: int, width: int, block_cells: int) -> range:
    return range(0, n_items, max(1, block_cells // max(width, 1)))


def second_order_triples(train: sp.csr_matrix, xv: Tensor, xt: Tensor, knn_a: int,
                         block_cells: int = 1 << 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, weights) of the attractiveness picks, before duplicate summing.

    P[h, :] = S_v[h, :] ⊙ S_t[h, :] depends only on the history item h, so it is computed once per item
    (item row blocks, never I x I at once), its top-K_h kept with K_h the largest (k_a + n_u) over the
    users holding h, and each interaction (u, h) reads its first (k_a + n_u) entries.
    """
    users, items, n_u = _train_arrays(train)
    n_items = xv.shape[0]
    xv, xt = l2_normalise(xv.float()), l2_normalise(xt.float())
    kk_row = np.minimum(n_u[users] + knn_a, n_items)  # per interaction row: top-(k_a + n_u)
    k_item = np.zeros(n_items, dtype=np.int64)
    np.maximum.at(k_item, items, kk_row)
    by_item = np.argsort(items, kind="stable")
    starts = np.searchsorted(items[by_item], np.arange(n_items + 1))
    cu, ci, cv = [], [], []
    for a in _item_blocks(n_items, n_items, block_cells):
        b = min(a + max(1, block_cells // n_items), n_items)
        kk = int(k_item[a:b].max())
        if kk == 0:
            continue
        p = (xv[a:b] @ xv.T) * (xt[a:b] @ xt.T)
        val, idx = torch.topk(p, kk, dim=-1)
        val, idx = val.numpy(), idx.numpy()
        rows = by_item[starts[a]:starts[b]]  # interactions whose history item is in [a, b)
        loc = items[rows] - a
        keep = np.arange(kk)[None, :] < kk_row[rows][:, None]
        cu.append(np.broadcast_to(users[rows][:, None], (len(rows), kk))[keep])
        ci.append(idx[loc][keep])
        cv.append(val[loc][keep])
    cu_a, ci_a, cv_a = np.concatenate(cu), np.concatenate(ci), np.concatenate(cv)
    # global top-(k_a + n_u) per user among its candidates
    srt = np.lexsort((-cv_a, cu_a))
    cu_a, ci_a, cv_a = cu_a[srt], ci_a[srt], cv_a[srt]
    first = np.searchsorted(cu_a, cu_a, side="left")
    rank = np.arange(len(cu_a)) - first
    keep = rank < (n_u[cu_a] + knn_a)
    return cu_a[keep], ci_a[keep], cv_a[keep].astype(np.float32)


def interest_sets(train: sp.csr_matrix, feats: dict[str, Tensor], knn_i: int,
                  block_cells: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """I^a(u) for every user: (candidates [U, 2k_i], valid [U, 2k_i]); a text pick already among the
    image picks is marked invalid (the union counts it once).

    s_m(u) = (R S_m)[u] is computed over item column blocks, s_m[:, a:b] = R @ S_m[a:b, :]^T (S is
    symmetric), keeping a running top-k_i per user, so neither I x I nor U x I is ever materialised.
    """
    n_users, n_items = train.shape
    k = min(knn_i, n_items)
    r = sp.csr_matrix(train, dtype=np.float32)
    width = max(n_items, n_users)
    tops = []
    for m in ("image", "text"):
        xn = l2_normalise(feats[m].float())
        best_v = torch.full((n_users, 0), -np.inf)
        best_i = torch.zeros((n_users, 0), dtype=torch.long)
        for a in _item_blocks(n_items, width, block_cells):
            b = min(a + max(1, block_cells // width), n_items)
            s_blk = (xn[a:b] @ xn.T).numpy()  # S[a:b, :]
            su = torch.from_numpy(np.asarray(r @ s_blk.T, dtype=np.float32))  # [U, b - a]
            cat_v = torch.cat([best_v, su], dim=1)
            cat_i = torch.cat([best_i, torch.arange(a, b).expand(n_users, b - a)], dim=1)
            kk = min(k, cat_v.shape[1])
            best_v, pos = torch.topk(cat_v, kk, dim=1)
            best_i = cat_i.gather(1, pos)
        tops.append(best_i.numpy())
    tv, tt = tops
    dup = (tt[:, :, None] == tv[:, None, :]).any(-1)
    return np.concatenate([tv, tt], axis=1), np.concatenate([np.ones_like(tv, dtype=bool), ~dup], axis=1)


def interest_pairs(train: sp.csr_matrix, feats: dict[str, Tensor], knn_i: int,
                   block_cells: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """(h, j) item pairs of the interest graphs: every history item h of u with every j in I^a(u)."""
    users, items, _ = _train_arrays(train)
    cand, valid = interest_sets(train, feats, knn_i, block_cells)
    h = np.repeat(items, cand.shape[1])
    j = cand[users].reshape(-1)
    ok = valid[users].reshape(-1)
    return h[ok], j[ok]


def interest_graph(h: np.ndarray, j: np.ndarray, x: Tensor, block_cells: int = 1 << 22) -> Tensor:
    """Ŝ_m = sym(nonzeros of W_m), W_m[h, j] = Σ over linking users of S_m[h, j] = count(h, j) S_m[h, j]."""
    n = x.shape[0]
    xn = l2_normalise(x.float())
    key, count = np.unique(h.astype(np.int64) * n + j, return_counts=True)
    ht, jt = torch.from_numpy(key // n), torch.from_numpy(key % n)
    chunk = max(1, block_cells // xn.shape[1])  # gathered rows per step: O(block_cells) memory
    sims = [(xn[ht[s:s + chunk]] * xn[jt[s:s + chunk]]).sum(-1) for s in range(0, len(key), chunk)]
    vals = (torch.cat(sims).double() if sims else torch.zeros(0, dtype=torch.float64)) \
        * torch.from_numpy(count).double()
    nz = vals != 0
    rows, cols, v = ht[nz], jt[nz], vals[nz]
    return to_sparse(rows, cols, edge_laplacian(rows, cols, v, n, clamp=CLAMP).float(), (n, n))


def ui_second_order(users: np.ndarray, items: np.ndarray, w: np.ndarray, n_users: int, n_items: int,
                    r2_norm: str = "as_released") -> tuple[Tensor, Tensor]:
    """(Ã2 [(U+I)^2], R̃2 [U x I]) from the attractiveness triples (duplicates summed first)."""
    u, i, v = torch.from_numpy(users), torch.from_numpy(items), torch.from_numpy(w).double()
    n = n_users + n_items
    a2 = to_sparse(torch.cat([u, i + n_users]), torch.cat([i + n_users, u]), torch.cat([v, v]), (n, n))
    ai, av = a2.indices(), a2.values().double()
    a2n = to_sparse(ai[0], ai[1], edge_laplacian(ai[0], ai[1], av, n, clamp=CLAMP).float(), (n, n))
    r2 = to_sparse(u, i, v, (n_users, n_items))
    ri, rv = r2.indices(), r2.values().double()
    if r2_norm == "as_released":
        if n_items > n_users:
            raise DataError("soil: r2_norm=as_released indexes user degrees with item ids and needs "
                            f"n_items <= n_users ({n_items} > {n_users}); use --set r2_norm=bipartite")
        col_deg = None
    elif r2_norm == "bipartite":
        col_deg = torch.zeros(n_items, dtype=torch.float64).index_add_(0, ri[1], rv)
    else:
        raise DataError(f"soil: r2_norm must be 'as_released' or 'bipartite', got {r2_norm!r}")
    r2v = edge_laplacian(ri[0], ri[1], rv, n_users, clamp=CLAMP, col_deg=col_deg)
    return a2n, to_sparse(ri[0], ri[1], r2v.float(), (n_users, n_items))


def to_scipy(t: Tensor) -> sp.csr_matrix:
    """A coalesced torch COO tensor as scipy CSR (float32)."""
    t = t.coalesce()
    idx = t.indices().numpy()
    return sp.csr_matrix((t.values().numpy().astype(np.float32), (idx[0], idx[1])), shape=tuple(t.shape))


def tensor_digest(*arrays: np.ndarray | Tensor) -> str:
    h = hashlib.sha256()
    for a in arrays:
        arr = a.numpy() if isinstance(a, Tensor) else np.asarray(a)
        h.update(str((arr.shape, arr.dtype.str)).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def _sparse_to_arrays(prefix: str, t: Tensor) -> dict[str, np.ndarray]:
    t = t.coalesce()
    return {f"{prefix}_idx": t.indices().numpy(), f"{prefix}_val": t.values().numpy(),
            f"{prefix}_shape": np.asarray(t.shape, dtype=np.int64)}


def _arrays_to_sparse(prefix: str, z: dict[str, np.ndarray]) -> Tensor:
    return torch.sparse_coo_tensor(torch.from_numpy(z[f"{prefix}_idx"]), torch.from_numpy(z[f"{prefix}_val"]),
                                   tuple(int(s) for s in z[f"{prefix}_shape"]), check_invariants=True).coalesce()


GRAPH_NAMES = ("a2", "r2", "interest_image", "interest_text")


def build_soil_graphs(train: sp.csr_matrix, feats: dict[str, Tensor], knn_i: int, knn_a: int,
                      r2_norm: str = "as_released") -> dict[str, Tensor]:
    """Ã2, R̃2 and the two interest graphs Ŝ_m (the kNN parts are added by the backbone)."""
    n_users, n_items = train.shape
    u, i, w = second_order_triples(train, feats["image"], feats["text"], knn_a)
    a2, r2 = ui_second_order(u, i, w, n_users, n_items, r2_norm)
    h, j = interest_pairs(train, feats, knn_i)
    out = {"a2": a2, "r2": r2}
    for m in ("image", "text"):
        g = interest_graph(h, j, feats[m])
        if torch.isnan(g.values()).any():
            raise DataError(f"soil: the {m} interest graph has negative row sums (NaN after normalisation); "
                            "the features contain strongly negative similarities")
        out[f"interest_{m}"] = g
    return out


def cached_soil_graphs(cache_dir: Path | None, train: sp.csr_matrix, feats: dict[str, Tensor], knn_i: int,
                       knn_a: int, r2_norm: str = "as_released") -> dict[str, Tensor]:
    """build_soil_graphs, cached as ``soil-<digest>.npz`` keyed on features, train split and params."""
    if cache_dir is None:
        return build_soil_graphs(train, feats, knn_i, knn_a, r2_norm)
    tr = sp.csr_matrix(train)
    tr.sort_indices()
    key = digest_obj({"v": 1, "train": tensor_digest(tr.indptr, tr.indices),
                      "image": tensor_digest(feats["image"]), "text": tensor_digest(feats["text"]),
                      "knn_i": knn_i, "knn_a": knn_a, "r2_norm": r2_norm}).split(":")[-1][:16]
    path = Path(cache_dir) / f"soil-{key}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = dict(z)
            return {n: _arrays_to_sparse(n, arrays) for n in GRAPH_NAMES}
        except (OSError, KeyError, ValueError):
            pass  # unreadable cache: rebuild below
    graphs = build_soil_graphs(train, feats, knn_i, knn_a, r2_norm)
    arrays: dict[str, np.ndarray] = {}
    for n in GRAPH_NAMES:
        arrays.update(_sparse_to_arrays(n, graphs[n]))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return graphs
