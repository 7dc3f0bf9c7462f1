"""k-core and split properties (hypothesis) and exact split counts."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mrdib_cli.data.kcore import dedup_mask, factorize, kcore
from mrdib_cli.data.split import assign_split, loo_counts, mmrec_counts

edges = st.lists(st.tuples(st.integers(0, 25), st.integers(0, 20)), min_size=0, max_size=300)


def _naive_kcore(pairs: list[tuple[int, int]], k: int) -> set[int]:
    rows = set(range(len(pairs)))
    while True:
        du: dict[int, int] = {}
        di: dict[int, int] = {}
        for r in rows:
            du[pairs[r][0]] = du.get(pairs[r][0], 0) + 1
            di[pairs[r][1]] = di.get(pairs[r][1], 0) + 1
        keep = {r for r in rows if du[pairs[r][0]] >= k and di[pairs[r][1]] >= k}
        if keep == rows:
            return rows
        rows = keep


@settings(max_examples=60, deadline=None)
@given(edges, st.integers(1, 5))
def test_kcore_properties(pairs: list[tuple[int, int]], k: int) -> None:
    if not pairs:
        return
    u = np.array([p[0] for p in pairs])
    i = np.array([p[1] for p in pairs])
    res = kcore(u, i, k)
    assert set(res.keep.tolist()) == _naive_kcore(pairs, k)
    if len(res.keep):
        assert np.bincount(res.user_idx).min() >= k and np.bincount(res.item_idx).min() >= k
        # contiguous, first-appearance order, and mapped back to the original ids
        assert res.user_idx[0] == 0 and np.all(np.diff(np.maximum.accumulate(res.user_idx)) <= 1)
        np.testing.assert_array_equal(res.user_codes[res.user_idx], u[res.keep])
        np.testing.assert_array_equal(res.item_codes[res.item_idx], i[res.keep])


def test_factorize_and_dedup() -> None:
    codes, vals = factorize(np.array(["b", "a", "b", "c"]))
    assert codes.tolist() == [0, 1, 0, 2] and vals.tolist() == ["b", "a", "c"]
    m = dedup_mask(np.array([0, 0, 0, 1]), np.array([1, 1, 1, 1]), np.array([5, 5, 6, 5]))
    assert m.tolist() == [True, False, True, True]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.integers(0, 2**31 - 1),
       st.sampled_from(["mmrec", "temporal", "loo", "loo-temporal"]))
def test_split_follows_rule_exactly(sizes: list[int], seed: int, scheme: str) -> None:
    users = np.repeat(np.arange(len(sizes)), sizes)
    rng = np.random.default_rng(seed)
    users = users[rng.permutation(len(users))]  # rows of a user need not be adjacent
    ts = rng.integers(0, 1000, len(users))
    code = assign_split(users, ts, scheme, seed)
    n = np.bincount(users)
    want = (loo_counts if scheme.startswith("loo") else mmrec_counts)(n)
    for s in range(3):
        np.testing.assert_array_equal(np.bincount(users[code == s], minlength=len(n)), want[s])
    if scheme in ("temporal", "loo-temporal"):  # held-out rows are never older than a train row
        for u in range(len(n)):
            t, c = ts[users == u], code[users == u]
            if (c == 0).any() and (c > 0).any():
                assert t[c == 0].max() <= t[c > 0].min()
    np.testing.assert_array_equal(code, assign_split(users, ts, scheme, seed))


def test_mmrec_counts_match_the_rule() -> None:
    n = np.array([3, 5, 9, 10, 14, 15, 19, 20, 37])
    tr, va, te = mmrec_counts(n)
    assert tr.tolist() == [1, 3, 7, 8, 12, 12, 16, 16, 30]
    assert va.tolist() == [1, 1, 1, 1, 1, 1, 1, 2, 3]
    assert te.tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 4]


def test_other_seed_other_split() -> None:
    users = np.repeat(np.arange(50), 12)
    a = assign_split(users, None, "mmrec", 1)
    b = assign_split(users, None, "mmrec", 2)
    assert (a != b).any() and np.array_equal(np.bincount(a), np.bincount(b))
