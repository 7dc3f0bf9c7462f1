"""The engine: FAISS top-K equals a brute-force torch reference; masking, fallback, protocol, saving."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mrdib_cli.data.handle import DatasetHandle
from mrdib_cli.errors import DataError, UsageError
from mrdib_cli.evaluation.engine import Protocol, evaluate, evaluate_split
from mrdib_cli.evaluation.metrics import per_user_metrics

from .helpers import random_csr, write_dataset


def torch_reference(u: np.ndarray, it: np.ndarray, truth: sp.csr_matrix, mask: sp.csr_matrix | None, k: int,
                    ks=(10, 20)):
    """MMRec's way: dense scores, masked items to -inf, torch.topk, metrics with a per-user loop."""
    users = np.flatnonzero(np.diff(truth.indptr) > 0)
    scores = torch.from_numpy(u[users]) @ torch.from_numpy(it).T
    if mask is not None:
        m = torch.from_numpy(mask[users].toarray() > 0)
        scores[m] = -torch.inf
    val, idx = torch.topk(scores, k)
    hits = np.zeros((len(users), k), bool)
    for j, uu in enumerate(users):  # deliberately the slow, obvious way
        t = set(truth[uu].indices.tolist())
        hits[j] = [int(i) in t for i in idx[j]]
    n_truth = np.diff(truth.indptr)[users]
    return users, idx.numpy(), val.numpy(), per_user_metrics(hits, n_truth, ks)


def _random_problem(seed: int, n_users=300, n_items=200, d=16, mask_per_user=(0, 40)):
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((n_users, d)).astype(np.float32)
    it = rng.standard_normal((n_items, d)).astype(np.float32)
    mask = random_csr(rng, n_users, n_items, mask_per_user)
    truth = random_csr(rng, n_users, n_items, (0, 6), exclude=mask)
    return u, it, truth, mask


@pytest.mark.parametrize("seed,batch,cap", [(0, 4096, 1024), (1, 37, 1024), (2, 64, 0), (3, 50, 3)])
def test_faiss_equals_torch_topk_reference(seed: int, batch: int, cap: int) -> None:
    # cap=0/3 forces the exact fallback for every row whose masked items crowd its top
    u, it, truth, mask = _random_problem(seed)
    res = evaluate(u, it, truth, mask, ks=(10, 20), batch_users=batch, overfetch_cap=cap)
    users, ref_idx, ref_val, ref_m = torch_reference(u, it, truth, mask, 20)
    np.testing.assert_array_equal(res.users, users)
    np.testing.assert_allclose(res.scores, ref_val, rtol=1e-5, atol=1e-5)
    gap_ok = np.abs(np.diff(ref_val, axis=1)).min() > 1e-4  # no near-ties: item order must be identical
    if gap_ok:
        np.testing.assert_array_equal(res.topk, ref_idx)
    else:
        assert (res.topk == ref_idx).mean() > 0.995
    for name, v in ref_m.items():
        assert res.metrics[name] == pytest.approx(float(v.mean()), abs=1e-9), name
    if cap < 5:
        assert res.n_fallback > 0


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 15), st.integers(1, 70), st.integers(0, 60))
def test_masked_items_never_returned_and_always_k(seed: int, k: int, batch: int, max_mask: int) -> None:
    n_items = 80
    u, it, truth, mask = _random_problem(seed, n_users=60, n_items=n_items, d=8, mask_per_user=(0, max_mask))
    res = evaluate(u, it, truth, mask, ks=(k,), batch_users=batch, overfetch_cap=seed % 7)
    assert res.topk.shape == (res.n_users, k)
    assert (res.topk >= 0).all()  # 80 - 60 masked >= 15 = K_max: always fillable
    m = mask[res.users]
    for j in range(res.n_users):  # the test (not the engine) may loop
        row = res.topk[j]
        assert len(set(row.tolist())) == k
        assert not set(row.tolist()) & set(m[j].indices.tolist())
    assert np.all(np.diff(res.scores, axis=1) <= 1e-6)  # best first


def test_catalogue_exhausted_rows_are_padded_and_counted() -> None:
    rng = np.random.default_rng(0)
    u, it = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((6, 4)).astype(np.float32)
    truth = sp.csr_matrix(np.array([[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0]], np.float32))
    mask = sp.csr_matrix(np.array([[0, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]], np.float32))
    res = evaluate(u, it, truth, mask, ks=(3,))
    assert res.n_short == 1
    assert sorted(res.topk[0][:2].tolist()) == [0, 5] and res.topk[0][2] == -1
    assert res.per_user["hit@3"][0] == 1.0  # item 0 is one of the two that remain


def test_users_without_truth_are_skipped_and_torch_inputs_accepted() -> None:
    u, it, truth, mask = _random_problem(5, n_users=50)
    truth = sp.lil_matrix(truth)
    truth[3, :] = 0
    truth = sp.csr_matrix(truth)
    ut = torch.from_numpy(u).requires_grad_(True)
    res = evaluate(ut, torch.from_numpy(it).double(), truth, mask, ks=(5,))
    assert 3 not in res.users.tolist()
    assert res.per_user.columns[:2] == ["user_idx", "n_truth"]
    assert res.per_user["user_idx"].to_list() == res.users.tolist()


def test_bad_inputs_raise_one_line_errors() -> None:
    u, it, truth, mask = _random_problem(0, n_users=20, n_items=30)
    with pytest.raises(UsageError, match="larger than the catalogue"):
        evaluate(u, it, truth, mask, ks=(31,))
    bad = u.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        evaluate(bad, it, truth, mask)
    with pytest.raises(DataError, match="users x"):
        evaluate(u[:10], it, truth, mask, ks=(5,))
    with pytest.raises(UsageError):
        evaluate(u, it, truth, mask, ks=(5,), index="lsh")


def test_protocol_fingerprint() -> None:
    p = Protocol(split="test", mask="train", dataset_digest="sha256:abc")
    assert p.fingerprint() == Protocol(split="test", mask="train", dataset_digest="sha256:abc",
                                       ks=(5, 50)).fingerprint()
    for other in (Protocol(split="valid", mask="train", dataset_digest="sha256:abc"),
                  Protocol(split="test", mask="train+valid", dataset_digest="sha256:abc"),
                  Protocol(split="test", mask="train", dataset_digest="sha256:abd"),
                  Protocol(split="test", mask="train", dataset_digest="sha256:abc", index="hnsw")):
        assert other.fingerprint() != p.fingerprint()
        assert p.differences(other)
    assert Protocol.from_dict(json.loads(json.dumps(p.to_dict()))).fingerprint() == p.fingerprint()


def test_evaluate_split_masks_by_rule_and_saves(workdir) -> None:
    d = write_dataset(workdir, n_users=40, n_items=30)
    h = DatasetHandle(d)
    rng = np.random.default_rng(1)
    u, it = rng.standard_normal((40, 8)).astype(np.float32), rng.standard_normal((30, 8)).astype(np.float32)
    r1 = evaluate_split(h, u, it, split="test", mask="train", ks=(5, 10))
    r2 = evaluate_split(h, u, it, split="test", mask="train+valid", ks=(5, 10))
    train, valid = h.csr("train"), h.csr("valid")
    # MMRec protocol: valid items may be ranked at test time; train+valid hides them too
    assert any(valid[uu, i] for uu, row in zip(r1.users, r1.topk) for i in row)
    assert not any(valid[uu, i] or train[uu, i] for uu, row in zip(r2.users, r2.topk) for i in row)
    assert r1.protocol.split == "test" and r1.protocol.mask == "train"
    assert r1.protocol.dataset_digest == h.digest
    assert r1.protocol.fingerprint() != r2.protocol.fingerprint()
    with pytest.raises(UsageError):
        evaluate_split(h, u, it, split="valid", mask="train+valid")
    paths = r1.save(workdir / "runs" / "r", "test")
    saved = json.loads(paths["json"].read_text())
    assert set(saved) >= {"protocol", "split", "n_users", "metrics"}
    assert saved["protocol"]["fingerprint"] == r1.protocol.fingerprint()
    assert saved["metrics"] == pytest.approx(r1.metrics)
    pu = pl.read_parquet(paths["per_user"])
    assert pu.height == r1.n_users and "ndcg@10" in pu.columns
    tk = pl.read_parquet(paths["topk"])
    assert np.array_equal(np.stack(tk["items"].to_numpy()), r1.topk)
    assert not list((workdir / "runs" / "r").glob(".tmp-*"))


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_ann_indexes_with_exact_verification(index: str) -> None:
    u, it, truth, mask = _random_problem(7, n_users=400, n_items=500, d=16, mask_per_user=(0, 10))
    exact = evaluate(u, it, truth, mask, ks=(10,))
    params = {"nprobe": 1000} if index == "ivf" else {"efSearch": 600}  # exhaustive settings: ~exact
    res = evaluate(u, it, truth, mask, ks=(10,), index=index, index_params=params, verify_exact=0.5, seed=3)
    chk = res.ann_check
    assert chk["n_users"] == round(0.5 * res.n_users)
    assert chk["ann_recall"]["recall@10"] > 0.95
    assert abs(chk["drift"]["recall@10"]) < 0.02
    assert res.metrics["recall@10"] == pytest.approx(exact.metrics["recall@10"], abs=0.02)
    assert res.protocol.index == index and res.protocol.index_params
    m = mask[res.users]
    assert not any(i in set(m[j].indices.tolist()) for j, row in enumerate(res.topk) for i in row)
    # a deliberately poor IVF setting is detected by the verification
    poor = evaluate(u, it, truth, mask, ks=(10,), index="ivf", index_params={"nlist": 64, "nprobe": 1},
                    verify_exact=1.0)
    assert poor.ann_check["ann_recall"]["recall@10"] < 0.9


def test_real_baby_split_matches_mmrec_style_reference() -> None:
    """On the real Baby LATTICE split (train masked, test truth), the engine equals the torch reference."""
    from tests.conftest import shared_data

    base = shared_data("amazon2014-baby-5core") / "lattice"

    def csr(name: str) -> sp.csr_matrix:
        data = json.loads((base / f"{name}.json").read_text())
        rows = np.concatenate([np.full(len(v), int(u)) for u, v in data.items()])
        cols = np.concatenate([np.asarray(v) for v in data.values()])
        m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(19_445, 7_050))
        m.sum_duplicates()
        m.data[:] = 1
        return m

    train, test = csr("train"), csr("test")
    test = sp.csr_matrix(test[:1500])  # the first 1500 users keep the reference loop quick
    test.resize((19_445, 7_050))
    rng = np.random.default_rng(0)
    it = rng.standard_normal((7_050, 32)).astype(np.float32)
    u = (np.asarray(train @ it) / np.maximum(np.diff(train.indptr), 1)[:, None]).astype(np.float32)
    u += 0.3 * rng.standard_normal(u.shape).astype(np.float32)  # train items crowd each user's top
    res = evaluate(u, it, test, train, ks=(10, 20), batch_users=512)
    users, ref_idx, _, ref_m = torch_reference(u, it, test, train, 20)
    assert res.n_users == 1500 and np.array_equal(res.users, users)
    assert (res.topk == ref_idx).mean() > 0.999
    for name, v in ref_m.items():
        assert res.metrics[name] == pytest.approx(float(v.mean()), abs=1e-4), name


def test_prepared_reuse_and_threads_give_identical_results() -> None:
    from mrdib_cli.evaluation.engine import Prepared

    u, it, truth, mask = _random_problem(11)
    a = evaluate(u, it, truth, mask, ks=(5, 10))
    prep = Prepared.build(truth, mask)
    b = evaluate(u, it, prep, ks=(5, 10), threads=1)
    c = evaluate(u, it, prep, ks=(5, 10), batch_users=7)
    for r in (b, c):
        assert np.array_equal(a.topk, r.topk) and a.metrics == r.metrics
    assert a.protocol.mask == "custom"
    with pytest.raises(ValueError):
        evaluate(u, it, prep, mask)
