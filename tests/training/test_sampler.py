"""The vectorised BPR sampler: valid negatives, uniformity, epoch coverage, resumable state."""

from __future__ import annotations

import numpy as np
import pytest

from mrdib_cli.errors import DataError
from mrdib_cli.training.sampler import BPRSampler


def _data(seed=0, n_users=200, n_items=60, n=3000):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, n_users, n)
    i = (u * 7 + rng.integers(0, 20, n)) % (n_items - 5)  # the last 5 items never occur in train
    return u, i, n_items


def test_negatives_are_outside_history_and_from_train_items():
    u, i, n_items = _data()
    s = BPRSampler(u, i, n_items, batch_size=256, seed=1)
    hist = set(zip(u.tolist(), i.tolist()))
    train_items = set(i.tolist())
    batches = list(s.epoch())
    assert len(batches) == len(s) == int(np.ceil(len(u) / 256))
    for b in batches:
        for uu, nn in zip(b.users.tolist(), b.neg.tolist()):
            assert (uu, nn) not in hist and nn in train_items


def test_epoch_covers_every_positive_once_and_reshuffles():
    u, i, n_items = _data()
    s = BPRSampler(u, i, n_items, batch_size=500, seed=2)
    e1 = [(b.users.numpy(), b.pos.numpy()) for b in s.epoch()]
    e2 = [(b.users.numpy(), b.pos.numpy()) for b in s.epoch()]
    pairs = lambda e: sorted(zip(np.concatenate([x for x, _ in e]).tolist(), np.concatenate([y for _, y in e]).tolist()))
    assert pairs(e1) == sorted(zip(u.tolist(), i.tolist())) == pairs(e2)
    assert not np.array_equal(e1[0][0], e2[0][0])  # a new order each epoch


def test_negatives_are_uniform_over_allowed_items():
    # one user with a fixed history: its negatives must be uniform over the remaining train items
    u = np.r_[np.zeros(10, dtype=np.int64), np.ones(15, dtype=np.int64)]
    i = np.r_[np.arange(10), np.arange(5, 20)]
    s = BPRSampler(u, i, 20, seed=3)
    neg = s.sample_negatives(np.zeros(50_000, dtype=np.int64))
    assert neg.min() >= 10 and neg.max() < 20
    counts = np.bincount(neg, minlength=20)[10:]
    chi2 = ((counts - 5000) ** 2 / 5000).sum()
    assert chi2 < 35  # 9 dof; p ~ 1e-4


def test_state_round_trip_reproduces_the_stream():
    u, i, n_items = _data()
    s = BPRSampler(u, i, n_items, seed=4)
    state = s.state()
    a = [b.neg.numpy().copy() for b in s.epoch()]
    s.set_state(state)
    b = [b.neg.numpy().copy() for b in s.epoch()]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_pairs_mode_and_infeasible_user():
    u, i, n_items = _data()
    b = next(BPRSampler(u, i, n_items, with_negatives=False).epoch())
    assert b.neg is None
    with pytest.raises(DataError, match="interacted with all"):
        BPRSampler(np.zeros(3, dtype=np.int64), np.arange(3), 3)


def test_the_history_check_answers_membership_in_any_order_and_keeps_the_stream():
    """The check searches in the queries' sorted order (much faster on large epochs); it must give each query
    its own answer, whatever the order, for repeated pairs and for pairs above the largest key, so that the
    negatives, and every result trained on them, are those of a plain search."""
    u, i, n_items = _data(seed=5)
    s = BPRSampler(u, i, n_items, seed=6)
    hist = set(zip(u.tolist(), i.tolist()))
    rng = np.random.default_rng(7)
    qu = np.r_[rng.integers(0, 200, 5000), u[:50], np.full(3, 199)]
    qi = np.r_[rng.integers(0, n_items, 5000), i[:50], np.full(3, n_items - 1)]
    assert s._in_history(qu, qi).tolist() == [(a, b) in hist for a, b in zip(qu.tolist(), qi.tolist())]

    class PlainSearch(BPRSampler):
        def _in_history(self, users, items):
            q = users * self.n_items + items
            pos = np.searchsorted(self.keys, q)
            pos[pos == len(self.keys)] = 0
            return self.keys[pos] == q

    plain = PlainSearch(u, i, n_items, seed=6)
    for _ in range(2):  # two epochs: the generator's state after the first must match too
        mine, theirs = ([b.neg.numpy() for b in sampler.epoch()] for sampler in (s, plain))
        assert all(np.array_equal(x, y) for x, y in zip(mine, theirs))
