"""Per-user splits: MMRec's rule (seeded), temporal, and leave-one-out. Vectorised with numpy.

MMRec rule (``1splitting.ipynb``), applied to each user's interactions in a seeded random order:
n < 10 -> n-2 train, 1 valid, 1 test; n >= 10 -> vt = floor(0.2 n) held out, valid = floor(vt / 2),
test = vt - valid, train = n - vt. MMRec shuffled without a seed; here the order comes from
``numpy.random.default_rng(seed)``, so the split can be regenerated. ``temporal`` holds out each user's
latest interactions by the same counts (ties broken by file order). Users with n < 3 cannot give one
row to each split: n = 2 gives 1 train + 1 test, n = 1 gives 1 train.
"""

from __future__ import annotations

import numpy as np

from mrdib_cli.errors import UsageError

SCHEMES = ("mmrec", "temporal", "loo", "loo-temporal")
LABELS = np.array(["train", "valid", "test"])


def mmrec_counts(n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, valid, test) counts per user for MMRec's rule."""
    n = np.asarray(n, dtype=np.int64)
    vt = np.where(n < 10, 2, (2 * n) // 10)  # floor(0.2 n) in exact integer arithmetic
    valid = np.where(n < 10, 1, vt // 2)
    test = vt - valid
    return _small(n, n - vt, valid, test)


def loo_counts(n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = np.asarray(n, dtype=np.int64)
    return _small(n, n - 2, np.ones_like(n), np.ones_like(n))


def _small(n: np.ndarray, train: np.ndarray, valid: np.ndarray, test: np.ndarray):
    train, valid, test = train.copy(), valid.copy(), test.copy()
    two, one = n == 2, n == 1
    train[two], valid[two], test[two] = 1, 0, 1
    train[one], valid[one], test[one] = 1, 0, 0
    return train, valid, test


def assign_split(users: np.ndarray, timestamps: np.ndarray | None, scheme: str, seed: int) -> np.ndarray:
    """Split label (0 train, 1 valid, 2 test) of every row.

    Rows are ordered within each user (random with ``seed``, or by time for temporal schemes), then the
    first ``train`` rows are train, the next ``valid`` valid and the rest test.
    """
    if scheme not in SCHEMES:
        raise UsageError(f"unknown split scheme '{scheme}' (choose from {', '.join(SCHEMES)})")
    users = np.asarray(users, dtype=np.int64)
    n_rows = len(users)
    rows = np.arange(n_rows)
    if scheme in ("temporal", "loo-temporal"):
        if timestamps is None or np.any(np.isnan(np.asarray(timestamps, dtype=np.float64))):
            raise UsageError(f"split '{scheme}' needs a timestamp for every interaction; use a random scheme")
        order = np.lexsort((rows, np.asarray(timestamps, dtype=np.int64), users))
    else:
        rng = np.random.default_rng(seed)
        key = rng.permutation(n_rows)
        order = np.lexsort((key, users))
    su = users[order]
    n_users = int(users.max()) + 1 if n_rows else 0
    n = np.bincount(users, minlength=n_users)
    start = np.concatenate([[0], np.cumsum(n)[:-1]])
    rank = np.arange(n_rows) - start[su]
    train, valid, _ = (loo_counts if scheme.startswith("loo") else mmrec_counts)(n)
    code_sorted = np.where(rank < train[su], 0, np.where(rank < (train + valid)[su], 1, 2))
    code = np.empty(n_rows, dtype=np.int64)
    code[order] = code_sorted
    return code
