"""Graphs: formulas against dense brute force, memory-safe blocking, caching by input digests."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.errors import UsageError
from mrdib_cli.graphs import (ensure_cooccurrence, ensure_knn, ensure_norm_adj, knn_graph, norm_adj_random_walk,
                              norm_adj_symmetric, to_torch_sparse, topk_cosine, user_cooccurrence)
from tests.synth_data import make_dataset


def _random_r(seed=0, u=30, i=20, density=0.15):
    r = sp.random(u, i, density=density, format="csr", random_state=seed)
    r.data[:] = 1.0
    return r


def test_symmetric_norm_adj_matches_dense_formula():
    r = _random_r()
    dense_r = r.toarray()
    a = np.block([[np.zeros((30, 30)), dense_r], [dense_r.T, np.zeros((20, 20))]])
    d = np.power(a.sum(1) + 1e-7, -0.5)
    expected = d[:, None] * a * d[None, :]
    got = norm_adj_symmetric(r).toarray()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert np.allclose(got, got.T)


def test_duplicates_collapse_and_random_walk_rows_sum_to_one():
    r = sp.csr_matrix((np.array([1.0, 1.0, 1.0]), (np.array([0, 0, 1]), np.array([1, 1, 0]))), shape=(2, 2))
    a = norm_adj_symmetric(r).toarray()
    assert a[0, 3] == pytest.approx(1.0, rel=1e-5)  # user 0 and item 1 both have degree 1 despite duplicate
    rw = norm_adj_random_walk(_random_r()).toarray()
    np.testing.assert_allclose(rw.sum(1), 1.0, rtol=1e-5)


def test_torch_sparse_layouts_propagate_like_scipy():
    m = norm_adj_symmetric(_random_r())
    x = np.random.default_rng(0).standard_normal((m.shape[0], 4)).astype(np.float32)
    for layout in ("csr", "coo"):
        got = torch.sparse.mm(to_torch_sparse(m, layout), torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, m @ x, rtol=1e-5, atol=1e-6)


def test_topk_cosine_matches_brute_force_and_is_block_invariant():
    x = np.random.default_rng(1).standard_normal((57, 9)).astype(np.float32)
    idx, val = topk_cosine(x, 5, block=7)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    ref = np.argsort(-sim, axis=1)[:, :5]
    np.testing.assert_array_equal(np.sort(idx, 1), np.sort(ref, 1))
    assert (idx[:, 0] == np.arange(57)).all()  # the item itself is its top neighbour
    np.testing.assert_allclose(val, np.take_along_axis(sim, idx, 1), rtol=1e-5, atol=1e-6)
    idx2, _ = topk_cosine(x, 5, block=1000)
    np.testing.assert_array_equal(idx, idx2)


def test_topk_cosine_holds_at_most_block_cells_similarities(monkeypatch):
    """A large catalogue takes fewer rows per block (the similarity buffer stays bounded); same result."""
    import mrdib_cli.graphs.knn as knn

    x = np.random.default_rng(3).standard_normal((57, 9)).astype(np.float32)
    shapes: list[tuple[int, ...]] = []
    real = knn._top_k
    monkeypatch.setattr(knn, "_top_k", lambda sim, k: shapes.append(sim.shape) or real(sim, k))
    idx, _ = topk_cosine(x, 5)
    assert shapes == [(57, 57)]
    monkeypatch.setattr(knn, "BLOCK_CELLS", 57 * 10)
    shapes.clear()
    idx2, _ = topk_cosine(x, 5)
    assert max(s[0] for s in shapes) == 10 and sum(s[0] for s in shapes) == 57
    np.testing.assert_array_equal(idx, idx2)


def _topk_by_argpartition(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The definition topk_cosine keeps: every row's argpartition, then (similarity desc, index asc)."""
    xn = np.array(x, dtype=np.float32)
    norms = np.linalg.norm(xn, axis=1, keepdims=True)
    xn = np.divide(xn, norms, out=np.zeros_like(xn), where=norms > 0)
    sim = xn @ xn.T
    part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    pv = np.take_along_axis(sim, part, 1)
    order = np.lexsort((part, -pv), axis=1)
    return np.take_along_axis(part, order, 1), np.take_along_axis(pv, order, 1)


@pytest.mark.parametrize("n,k", [(2000, 10), (301, 7), (40, 9), (12, 11)])
def test_topk_cosine_picks_what_argpartition_picks_ties_included(n, k):
    """The chunked selection must not change a stored graph: the same neighbours as a plain argpartition of
    every row, also where ties at the k-th place leave the choice to argpartition (duplicated items, items
    without features, all of whose similarities are 0)."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 16)).astype(np.float32)
    x[rng.choice(n, n // 4)] = x[rng.choice(n, n // 4)]  # duplicates: equal similarities
    x[rng.choice(n, max(1, n // 20))] = 0.0  # no features: a row of zeros
    x[: n // 10, :4] = np.round(x[: n // 10, :4])  # coarse values: more exact ties
    idx, val = topk_cosine(x, k)
    ref_idx, ref_val = _topk_by_argpartition(x, k)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(val, ref_val)


def test_chunked_selection_settles_untied_rows_and_leaves_tied_ones():
    from mrdib_cli.graphs import knn

    rng = np.random.default_rng(5)
    sim = rng.standard_normal((6, 500)).astype(np.float32)
    sim[1, [3, 77]] = 9.0  # a tie at the top is no problem
    sim[2, :] = 0.0  # every entry tied
    sim[3, 10] = np.nan
    order4 = np.argsort(-sim[4])
    sim[4, order4[5]] = sim[4, order4[4]]  # the 5th and 6th largest equal: a tie at the k-th place (k=5)
    rows, cols = knn._top_k_by_chunks(sim, 5, 20)
    assert list(rows) == [0, 1, 5]
    for r, c in zip(rows, cols):
        np.testing.assert_array_equal(np.sort(c), np.sort(np.argsort(-sim[r], kind="stable")[:5]))


def test_knn_normalisations():
    x = np.random.default_rng(2).random((40, 6)).astype(np.float32)
    k = 4
    binary = knn_graph(x, k, "sym_binary")
    assert binary.nnz == 40 * k and np.allclose(binary.data, 1.0 / k)  # FREEDOM: mean over k neighbours
    w = knn_graph(x, k, "none").toarray()
    deg = w.sum(1)
    expected = w / np.sqrt(deg)[:, None] / np.sqrt(deg)[None, :]
    np.testing.assert_allclose(knn_graph(x, k, "sym").toarray(), expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(knn_graph(x, k, "rw").toarray().sum(1), 1.0, rtol=1e-5)
    assert not np.allclose(w, w.T)  # not symmetrised, as in the reference
    with pytest.raises(UsageError):
        knn_graph(x, k, "bogus")
    with pytest.raises(UsageError):
        knn_graph(x, 41)


def test_user_cooccurrence_matches_dense_counts():
    r = _random_r(3, u=25, i=12, density=0.3)
    nb, ct = user_cooccurrence(r, max_neighbours=6, block=4)
    co = (r @ r.T).toarray()
    np.fill_diagonal(co, 0)
    for u in range(25):
        n_real = int((co[u] > 0).sum())
        kept = nb[u][nb[u] >= 0]
        assert len(kept) == min(6, n_real) and u not in kept
        np.testing.assert_array_equal(ct[u][: len(kept)], co[u, kept])
        # counts are the largest ones, in non-increasing order
        assert (np.diff(ct[u][: len(kept)]) <= 0).all()
        if len(kept):
            assert ct[u][len(kept) - 1] >= np.sort(co[u])[::-1][len(kept) - 1]


def test_cached_graphs_use_train_only_and_rebuild_on_change(tmp_path):
    d = make_dataset(tmp_path)
    h = DatasetHandle(d)
    adj, info = ensure_norm_adj(h)
    assert not info.cached
    r = h.csr("train").toarray()
    nz = adj.toarray()[: h.n_users, h.n_users:] > 0
    np.testing.assert_array_equal(nz, r > 0)  # valid/test edges never enter the graph
    _, info2 = ensure_norm_adj(h)
    assert info2.cached
    info.path.write_bytes(b"corrupted")  # a modified output is detected and rebuilt
    adj3, info3 = ensure_norm_adj(h)
    assert not info3.cached and (adj3 != adj).nnz == 0
    g, gi = ensure_knn(h, "image", k=3, norm="sym")
    assert g.shape == (h.n_items, h.n_items) and g.nnz == 3 * h.n_items and not gi.cached
    assert ensure_knn(h, "image", k=3, norm="sym")[1].cached
    assert not ensure_knn(h, "image", k=4, norm="sym")[1].cached  # new params, new graph
    (nb, _), ci = ensure_cooccurrence(h, 10)
    assert nb.shape == (h.n_users, 10) and not ci.cached


def test_build_graph_cli(cli, workdir):
    make_dataset(workdir)
    rc, out, err = cli("build-graph", "--knn-k", "3", "--knn-norm", "sym_binary", "--knn-norm", "sym",
                       "--cooccurrence", "5")
    assert rc == 0, err
    for name in ("adj-sym", "knn-image-k3-sym_binary", "knn-text-k3-sym", "uu-cooccurrence-5"):
        assert name in out
    assert "built" in out
    rc, out, _ = cli("build-graph", "--knn-k", "3")
    assert rc == 0 and "cached" in out and "built" not in out
    rc, _, err = cli("build-graph", "--knn-norm", "nope")
    assert rc == 2 and "unknown kNN normalisation" in err
