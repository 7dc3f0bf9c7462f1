"""Metric definitions against hand-computed cases and properties (MMRec's definitions, §1.8)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrdib_cli.errors import UsageError
from mrdib_cli.evaluation.metrics import METRICS, average, parse_ks, per_user_metrics

L2, L3, L4 = 1 / math.log2(2), 1 / math.log2(3), 1 / math.log2(4)


def test_hand_computed_user_with_more_truth_than_k() -> None:
    # |T_u| = 3, ranking hits at ranks 1 and 3 of 4
    hits = np.array([[1, 0, 1, 0]], dtype=bool)
    m = per_user_metrics(hits, np.array([3]), ks=(2, 4))
    # K=2 (|T_u| > K): recall uses the full |T_u|, IDCG and MAP use min(|T_u|, K) = 2
    assert m["recall@2"][0] == pytest.approx(1 / 3)
    assert m["precision@2"][0] == pytest.approx(1 / 2)
    assert m["ndcg@2"][0] == pytest.approx(L2 / (L2 + L3))
    assert m["map@2"][0] == pytest.approx((1 / 1) / 2)
    assert m["hit@2"][0] == 1.0
    # K=4 (|T_u| < K)
    assert m["recall@4"][0] == pytest.approx(2 / 3)
    assert m["precision@4"][0] == pytest.approx(2 / 4)
    assert m["ndcg@4"][0] == pytest.approx((L2 + L4) / (L2 + L3 + L4))
    assert m["map@4"][0] == pytest.approx((1 / 1 + 2 / 3) / 3)
    assert m["hit@4"][0] == 1.0


def test_hand_computed_user_with_fewer_truth_than_k_and_macro_average() -> None:
    hits = np.array([[0, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    m = per_user_metrics(hits, np.array([1, 2]), ks=(2, 4))
    assert m["recall@2"].tolist() == pytest.approx([1.0, 0.0])
    assert m["ndcg@2"][0] == pytest.approx(L3 / L2)
    assert m["map@2"][0] == pytest.approx((1 / 2) / 1)
    assert m["precision@4"][0] == pytest.approx(1 / 4)
    assert m["hit@4"].tolist() == [1.0, 0.0]
    avg = average(m)
    assert avg["recall@2"] == pytest.approx(0.5)  # user-macro: (1 + 0) / 2
    assert avg["ndcg@4"] == pytest.approx(L3 / 2)


def test_recall_is_not_truncated_at_k() -> None:
    # 10 held-out items, all 5 slots hit: MMRec's recall is 5/10, not 1 (a common reimplementation bug)
    m = per_user_metrics(np.ones((1, 5), bool), np.array([10]), ks=(5,))
    assert m["recall@5"][0] == pytest.approx(0.5)
    assert m["ndcg@5"][0] == pytest.approx(1.0)
    assert m["map@5"][0] == pytest.approx(1.0)


def test_bad_inputs() -> None:
    with pytest.raises(UsageError):
        parse_ks([0, 10])
    with pytest.raises(ValueError):
        per_user_metrics(np.zeros((2, 5), bool), np.array([1, 1]), ks=(10,))
    with pytest.raises(ValueError):
        per_user_metrics(np.zeros((2, 5), bool), np.array([1, 0]), ks=(5,))
    assert parse_ks([20, 10, 20]) == (10, 20)


@st.composite
def ranked_lists(draw):
    n_users = draw(st.integers(1, 8))
    k_max = draw(st.integers(1, 12))
    hits = np.array(draw(st.lists(st.lists(st.booleans(), min_size=k_max, max_size=k_max),
                                  min_size=n_users, max_size=n_users)), dtype=bool)
    extra = np.array(draw(st.lists(st.integers(0, 15), min_size=n_users, max_size=n_users)))
    n_truth = np.maximum(hits.sum(1) + extra, 1)  # a user cannot hit more items than it holds out
    ks = sorted(set(draw(st.lists(st.integers(1, k_max), min_size=1, max_size=3))))
    return hits, n_truth, ks


@settings(max_examples=150, deadline=None)
@given(ranked_lists())
def test_metrics_lie_in_unit_interval(case) -> None:
    hits, n_truth, ks = case
    for name, v in per_user_metrics(hits, n_truth, ks).items():
        assert np.all(v >= -1e-12) and np.all(v <= 1 + 1e-12), name


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 30), st.integers(1, 20))
def test_perfect_ranking_scores_one(n_truth: int, k: int) -> None:
    # a perfect list puts the held-out items first
    hits = np.zeros((1, k), bool)
    hits[0, :min(n_truth, k)] = True
    m = per_user_metrics(hits, np.array([n_truth]), [k])
    assert m[f"ndcg@{k}"][0] == pytest.approx(1.0)
    assert m[f"map@{k}"][0] == pytest.approx(1.0)
    assert m[f"hit@{k}"][0] == 1.0
    assert m[f"recall@{k}"][0] == pytest.approx(min(n_truth, k) / n_truth)
    assert m[f"precision@{k}"][0] == pytest.approx(min(n_truth, k) / k)
    if n_truth <= k:
        assert m[f"recall@{k}"][0] == pytest.approx(1.0)


@settings(max_examples=100, deadline=None)
@given(ranked_lists())
def test_metrics_are_monotone_in_k_where_defined(case) -> None:
    hits, n_truth, _ = case
    ks = list(range(1, hits.shape[1] + 1))
    m = per_user_metrics(hits, n_truth, ks)
    rec = np.stack([m[f"recall@{k}"] for k in ks], 1)
    hit = np.stack([m[f"hit@{k}"] for k in ks], 1)
    assert np.all(np.diff(rec, axis=1) >= -1e-12)
    assert np.all(np.diff(hit, axis=1) >= 0)
    assert set(METRICS) == {n.split("@")[0] for n in m}
