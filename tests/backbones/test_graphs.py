"""Backbone graph construction against hand-checked small cases and brute-force reference versions."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mrdib_cli.errors import UsageError
from mrdib_cli.graphs.latent import EdgeGraph, check_dense_budget, dense_knn, dense_laplacian, sparse_knn
from mrdib_cli.graphs.cooccurrence import user_cooccurrence
from mrdib_cli.graphs.knn import knn_graph
from mrdib_cli.graphs.ops import edge_laplacian, mean_adjacency
from mrdib_cli.graphs.pruning import bipartite_degree_weights, pruned_adjacency
from mrdib_cli.graphs.soil import (cached_soil_graphs, interest_graph, interest_pairs, interest_sets,
                                   second_order_triples, ui_second_order)
from mrdib_cli.models.dualgnn import sample_user_graph

# 4 items on a circle: 0 and 1 close, 2 and 3 close
X4 = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])


def test_freedom_binary_knn_is_a_mean_over_k_neighbours_self_included():
    g = torch.from_numpy(knn_graph(X4.numpy(), 2, "sym_binary").toarray())
    expect = torch.tensor([[.5, .5, 0, 0], [.5, .5, 0, 0], [0, 0, .5, .5], [0, 0, .5, .5]])
    assert torch.allclose(g, expect, atol=1e-6)


def test_weighted_knn_sym_normalisation_by_hand():
    g = torch.from_numpy(knn_graph(X4.numpy(), 2, "sym").toarray())
    c = float(torch.nn.functional.cosine_similarity(X4[0:1], X4[1:2]))
    deg = 1.0 + c  # every row keeps itself (1) and its partner (c)
    assert g[0, 0] == pytest.approx(1.0 / deg, rel=1e-5)
    assert g[0, 1] == pytest.approx(c / deg, rel=1e-5)
    assert g[0, 2] == 0.0


def test_edge_laplacian_clamp_and_col_degree():
    rows, cols = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 1])
    w = torch.tensor([1.0, 0.0, 4.0], dtype=torch.float64)
    out = edge_laplacian(rows, cols, w, 2, clamp=1e-7)
    # deg = [1, 4]: 1/1, 0 -> clamped, 4/4
    assert out.tolist() == pytest.approx([1.0, 1e-7, 1.0])
    out2 = edge_laplacian(rows, cols, w, 2, col_deg=torch.tensor([4.0, 16.0], dtype=torch.float64))
    assert out2.tolist() == pytest.approx([1.0 * 1 / 2, 0.0, 4.0 * 0.5 / 4])


def test_pruning_keeps_the_right_count_and_renormalises():
    users = torch.tensor([0, 0, 0, 1, 2, 2])
    items = torch.tensor([0, 1, 2, 0, 1, 2])
    w = bipartite_degree_weights(users, items, 3, 3)
    # user 0 has degree 3, item 0 degree 2: 1/sqrt(3*2)
    assert float(w[0]) == pytest.approx(1 / np.sqrt(6), rel=1e-5)
    adj = pruned_adjacency(users, items, w, 3, 3, 0.5, torch.Generator().manual_seed(0)).to_dense()
    assert int((adj[:3, 3:] > 0).sum()) == 3
    assert torch.allclose(adj, adj.T)
    r = (adj[:3, 3:] > 0).float()
    du, di = r.sum(1), r.sum(0)
    expect = r / torch.sqrt(du[:, None].clamp_min(1e-7) * di[None, :].clamp_min(1e-7))
    assert torch.allclose(adj[:3, 3:], expect * r, atol=1e-5)


def test_pruning_prefers_low_degree_edges():
    # one hub user with 50 edges and 50 users with one edge each; keep half of the edges many times
    users = torch.cat([torch.zeros(50, dtype=torch.long), torch.arange(1, 51)])
    items = torch.cat([torch.arange(50), torch.arange(50, 100)])
    w = bipartite_degree_weights(users, items, 51, 100)
    g = torch.Generator().manual_seed(0)
    hub_kept = np.mean([int((pruned_adjacency(users, items, w, 51, 100, 0.5, g).to_dense()[0, 51:] > 0).sum())
                        for _ in range(20)])
    assert hub_kept < 20  # a uniform draw would keep 25 of the hub's 50 edges


def test_lattice_dense_and_sparse_graphs_agree():
    x = torch.randn(30, 8)
    dense = dense_laplacian(dense_knn(x, 5))
    sparse = sparse_knn(x, 5).laplacian().to_dense()
    assert torch.allclose(dense, sparse, atol=1e-6)
    # mixing two sparse graphs equals mixing the dense ones
    y = torch.randn(30, 4)
    dmix = dense_laplacian(0.3 * dense_knn(x, 5) + 0.7 * dense_knn(y, 5))
    smix = EdgeGraph.cat([sparse_knn(x, 5).scaled(0.3), sparse_knn(y, 5).scaled(0.7)]).laplacian().to_dense()
    assert torch.allclose(dmix, smix, atol=1e-6)
    e = torch.randn(30, 3)
    assert torch.allclose(sparse_knn(x, 5).laplacian().apply(e), dense @ e, atol=1e-5)


def test_lattice_sparse_graph_is_differentiable_like_dense():
    x1 = torch.randn(20, 6, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    e = torch.randn(20, 3)
    (dense_laplacian(dense_knn(x1, 4)) @ e).sum().backward()
    sparse_knn(x2, 4).laplacian().apply(e).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-5)


def test_lattice_memory_guard_is_a_one_line_error():
    check_dense_budget(1000, 8.0)  # 1000^2 floats: fine
    with pytest.raises(UsageError, match="item_graph=sparse"):
        check_dense_budget(63_001, 8.0)  # Amazon Elec


# ---------------------------------------------------------------------------------------------- SOIL
def _naive_second_order(r: sp.csr_matrix, xv: np.ndarray, xt: np.ndarray, ka: int) -> dict:
    """The released code's per-user loop over dense similarity matrices (reference-soil.md §3.3)."""
    nv = xv / np.linalg.norm(xv, axis=1, keepdims=True)
    nt = xt / np.linalg.norm(xt, axis=1, keepdims=True)
    sv, st = nv @ nv.T, nt @ nt.T
    acc: dict = {}
    for u in range(r.shape[0]):
        hist = r.indices[r.indptr[u]:r.indptr[u + 1]]
        n = len(hist)
        if n == 0:
            continue
        p = sv[hist] * st[hist]
        kk = min(ka + n, p.shape[1])
        cand = []
        for row in range(n):
            top = np.argsort(-p[row])[:kk]
            cand += [(p[row, j], j) for j in top]
        cand.sort(key=lambda t: -t[0])
        for val, j in cand[:kk]:
            acc[(u, j)] = acc.get((u, j), 0.0) + val
    return acc


def _small_case(seed=0, n_users=12, n_items=9):
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < 0.3).astype(np.float32)
    dense[np.arange(n_users), rng.integers(0, n_items, n_users)] = 1
    r = sp.csr_matrix(dense)
    # non-negative features (like CLIP's mostly positive cosines) so that interest-graph degrees are > 0
    return r, rng.random((n_items, 5)).astype(np.float32), rng.random((n_items, 3)).astype(np.float32)


def test_soil_second_order_matches_the_per_user_loop():
    r, xv, xt = _small_case()
    u, i, w = second_order_triples(r, torch.from_numpy(xv), torch.from_numpy(xt), knn_a=2, block_cells=40)
    got: dict = {}
    for a, b, c in zip(u, i, w):
        got[(int(a), int(b))] = got.get((int(a), int(b)), 0.0) + float(c)
    ref = _naive_second_order(r, xv, xt, 2)
    assert got.keys() == ref.keys()
    assert all(got[k] == pytest.approx(ref[k], rel=1e-5) for k in ref)
    # every history item is among the picks (self-similarity 1 is maximal) plus at most k_a new items
    for user in range(r.shape[0]):
        hist = set(r.indices[r.indptr[user]:r.indptr[user + 1]].tolist())
        picked = {j for (uu, j) in got if uu == user}
        assert hist <= picked and len(picked - hist) <= 2


def test_soil_second_order_hand_case():
    # one user with history {0}; P row = S_v[0]*S_t[0]; k_a = 1 keeps item 0 (1.0) and the best other item
    xv = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    xt = torch.tensor([[1.0, 0.0], [1.0, 0.2], [1.0, 1.0]])
    r = sp.csr_matrix(np.array([[1.0, 0.0, 0.0]]))
    u, i, w = second_order_triples(r, xv, xt, knn_a=1)
    assert sorted(i.tolist()) == [0, 1]
    s1 = (1 / np.sqrt(2)) * (1 / np.sqrt(1.04))
    assert dict(zip(i.tolist(), w.tolist()))[1] == pytest.approx(s1, rel=1e-5)


def test_soil_r2_normalisation_as_released_uses_user_degrees_for_items():
    users, items, w = np.array([0, 0, 1]), np.array([0, 1, 1]), np.array([1.0, 3.0, 2.0], dtype=np.float32)
    _, r2 = ui_second_order(users, items, w, 3, 2, "as_released")
    d = r2.to_dense()
    du = np.array([4.0, 2.0, 0.0])  # user degrees; item column c is scaled by du[c] (the quirk)
    assert float(d[0, 1]) == pytest.approx(3.0 / np.sqrt(du[0] * du[1]), rel=1e-5)
    _, r2b = ui_second_order(users, items, w, 3, 2, "bipartite")
    di = np.array([1.0, 5.0])
    assert float(r2b.to_dense()[0, 1]) == pytest.approx(3.0 / np.sqrt(du[0] * di[1]), rel=1e-5)


def _sims(feats: dict) -> dict:
    out = {}
    for m, x in feats.items():
        n = x / np.linalg.norm(x, axis=1, keepdims=True)
        out[m] = n @ n.T
    return out


def test_soil_interest_sets_are_the_top_k_of_summed_similarities():
    r, xv, xt = _small_case(seed=1)
    cand, valid = interest_sets(r, {"image": torch.from_numpy(xv), "text": torch.from_numpy(xt)}, 3)
    sims = _sims({"image": xv, "text": xt})
    for u in range(r.shape[0]):
        hist = r.indices[r.indptr[u]:r.indptr[u + 1]]
        for half, m in ((slice(0, 3), "image"), (slice(3, 6), "text")):
            s = sims[m][hist].sum(0)
            chosen = cand[u, half]
            rest = np.setdiff1d(np.arange(len(s)), chosen)
            assert len(set(chosen.tolist())) == 3
            assert s[chosen].min() >= s[rest].max() - 1e-5  # top-k up to ties
        picks = cand[u][valid[u]].tolist()
        assert len(picks) == len(set(picks)) and set(picks) == set(cand[u].tolist())  # union, once each


def _naive_interest(r: sp.csr_matrix, feats: dict, sets: np.ndarray) -> dict:
    """Dense accumulators W_m[h, j] += S_m[h, j], looping over users (the released code)."""
    out = {}
    sims = _sims(feats)
    for m in feats:
        w = np.zeros_like(sims[m])
        for u in range(r.shape[0]):
            hist = r.indices[r.indptr[u]:r.indptr[u + 1]]
            ia = set(sets[u].tolist())
            for h in hist:
                for j in ia:
                    w[h, j] += sims[m][h, j]
        out[m] = w
    return out


def test_soil_interest_graph_matches_the_dense_loop():
    r, xv, xt = _small_case(seed=1)
    feats = {"image": torch.from_numpy(xv), "text": torch.from_numpy(xt)}
    h, j = interest_pairs(r, feats, knn_i=3, block_cells=20)
    cand, _ = interest_sets(r, feats, 3, block_cells=20)
    ref = _naive_interest(r, {"image": xv, "text": xt}, cand)
    for m in ("image", "text"):
        g = interest_graph(h, j, feats[m]).to_dense().numpy()
        w = ref[m]
        rows, cols = np.nonzero(w)
        with np.errstate(divide="ignore"):
            dinv = w.sum(1) ** -0.5
        dinv[~np.isfinite(dinv)] = 0.0  # items never in a history have no row: inf -> 0
        expect = np.zeros_like(w)
        expect[rows, cols] = dinv[rows] * w[rows, cols] * dinv[cols]
        expect[rows, cols] = np.where(expect[rows, cols] <= 1e-7, 1e-7, expect[rows, cols])  # SOIL's clamp
        np.testing.assert_allclose(g, expect, rtol=1e-4, atol=1e-6)


def test_soil_cache_is_keyed_on_features(tmp_path):
    r, xv, xt = _small_case(seed=2)
    feats = {"image": torch.from_numpy(xv), "text": torch.from_numpy(xt)}
    g1 = cached_soil_graphs(tmp_path, r, feats, 3, 2)
    assert len(list(tmp_path.glob("soil-*.npz"))) == 1
    g1b = cached_soil_graphs(tmp_path, r, feats, 3, 2)  # reused
    assert torch.equal(g1["a2"].to_dense(), g1b["a2"].to_dense())
    assert len(list(tmp_path.glob("soil-*.npz"))) == 1
    feats2 = {"image": torch.from_numpy(xv[::-1].copy()), "text": torch.from_numpy(xt)}
    g2 = cached_soil_graphs(tmp_path, r, feats2, 3, 2)  # new features: new graph, not the stale one
    assert len(list(tmp_path.glob("soil-*.npz"))) == 2
    assert not torch.equal(g1["interest_image"].to_dense(), g2["interest_image"].to_dense())


# ---------------------------------------------------------------------------------------------- DualGNN
def test_mmgcn_mean_adjacency_by_hand():
    r = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 0]], dtype=np.float32))
    a = mean_adjacency(r).toarray()
    # user 0 averages items 0 and 1; item 1 averages users 0 and 1; item 2 has no neighbour
    assert a[0, 2:].tolist() == [0.5, 0.5, 0.0]
    assert a[3, :2].tolist() == [0.5, 0.5]
    assert a[4].sum() == 0.0


def test_dualgnn_cooccurrence_input_by_hand(tmp_path):
    # users 0,1 share 2 items; 0,2 share 1; 3 shares nothing
    r = sp.csr_matrix(np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32))
    nbr, cnt = user_cooccurrence(r, 3)
    assert (nbr >= 0).sum(1).tolist() == [2, 1, 1, 0]
    assert nbr[0, :2].tolist() == [1, 2] and cnt[0, :2].tolist() == [2.0, 1.0]
    assert nbr[2, 0] == 0 and cnt[2, 0] == 1.0


def test_dualgnn_user_graph_sampling_pads_with_own_neighbours():
    nbr = torch.tensor([[1, 2, 0, 0], [0, 0, 0, 0], [3, 1, 0, 4]])
    cnt = torch.tensor([[3.0, 1.0, 0, 0], [0, 0, 0, 0], [2.0, 2.0, 1.0, 1.0]])
    n = torch.tensor([2, 0, 4])
    idx, w = sample_user_graph(nbr, cnt, n, torch.Generator().manual_seed(0))
    assert set(idx[0].tolist()) <= {1, 2} and idx[0, :2].tolist() == [1, 2]
    assert torch.all(w[1] == 0)
    assert idx[2].tolist() == [3, 1, 0, 4]
    assert torch.allclose(w[2], torch.softmax(cnt[2], 0))
    assert torch.allclose(w.sum(1), torch.tensor([1.0, 0.0, 1.0]))
    # a padded copy carries its neighbour's count into the softmax
    c0 = torch.where(idx[0] == 1, 3.0, 1.0)
    assert torch.allclose(w[0], torch.softmax(c0, 0))


def test_precomputed_transpose_spmm_matches_dense_values_and_gradients():
    """The backbones' graph product (CSR buffers, Aᵀ precomputed for backward) must give exactly what
    a dense A @ x gives, forward and backward, for a non-symmetric rectangular graph (like SOIL's R')."""
    from torch import nn

    from mrdib_cli.models._common import add_graph, prop

    rng = np.random.default_rng(0)
    a = sp.random(7, 5, density=0.4, random_state=1, format="csr", dtype=np.float32)
    mod = nn.Module()
    add_graph(mod, "R", a)
    x = torch.from_numpy(rng.standard_normal((5, 3)).astype(np.float32)).requires_grad_()
    w = torch.from_numpy(rng.standard_normal((7, 3)).astype(np.float32))
    (prop(mod, "R", x) * w).sum().backward()
    xd = x.detach().clone().requires_grad_()
    ad = torch.from_numpy(a.toarray())
    (ad @ xd * w).sum().backward()
    assert torch.allclose(prop(mod, "R", x.detach()), ad @ x.detach(), atol=1e-6)
    assert torch.allclose(x.grad, xd.grad, atol=1e-6)


def test_soil_interest_graph_bounded_gathers_equal_the_per_pair_sum():
    """The memory fix (one similarity per unique (h, j) pair times its count, gathers of block_cells / d
    rows instead of 262k rows x d at once: 13 GB at 4096-d on Baby) must not change the graph: compare
    with the plain per-pair sum (duplicates summed by coalescing) and across block sizes."""
    from mrdib_cli.graphs.ops import l2_normalise, to_sparse

    rng = np.random.default_rng(3)
    n, d = 12, 6
    x = torch.from_numpy(rng.random((n, d), dtype=np.float32))
    h = rng.integers(0, n, 200)
    j = rng.integers(0, n, 200)  # many repeated pairs, as when several users link the same (h, j)
    xn = l2_normalise(x)
    w = to_sparse(torch.from_numpy(h), torch.from_numpy(j), (xn[h] * xn[j]).sum(-1).double(), (n, n)).coalesce()
    rows, cols = w.indices()
    expect = edge_laplacian(rows, cols, w.values(), n, clamp=1e-7).float()
    for cells in (1, 7, 1 << 22):  # one gathered row per step, a ragged block, everything at once
        got = interest_graph(h, j, x, block_cells=cells).coalesce()
        assert torch.equal(got.indices(), w.indices())
        assert torch.allclose(got.values(), expect, rtol=1e-6, atol=1e-7)
