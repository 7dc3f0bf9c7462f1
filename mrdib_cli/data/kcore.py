"""Deduplication, iterative k-core filtering and re-indexing, on integer codes with numpy.

MMRec's recipe (``0rating2inter.ipynb``): drop duplicate (user, item, time) rows; then repeatedly remove,
in the same pass, every user and every item with fewer than k rows, until nothing changes; then number
users and items 0.. in order of first appearance in the filtered rows. Every pass is a pair of
``bincount`` calls and one boolean mask: no Python loop over interactions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class KCoreResult:
    keep: np.ndarray  # indices of the kept rows, in input order
    user_idx: np.ndarray  # 0-based, first-appearance order, aligned with keep
    item_idx: np.ndarray
    user_codes: np.ndarray  # input user code of each new user index
    item_codes: np.ndarray
    passes: int


def factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes in order of first appearance, and the unique values in that order."""
    uniq, first, inv = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inv].astype(np.int64), uniq[order]


def dedup_mask(users: np.ndarray, items: np.ndarray, times: np.ndarray) -> np.ndarray:
    """True for the first occurrence of each (user, item, time) triple."""
    key = np.stack([users, items, times], axis=1)
    _, first = np.unique(key, axis=0, return_index=True)
    mask = np.zeros(len(users), dtype=bool)
    mask[first] = True
    return mask


def kcore(users: np.ndarray, items: np.ndarray, k: int) -> KCoreResult:
    """Iterative k-core on integer user/item codes; re-indexes the survivors by first appearance."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    keep = np.arange(len(users))
    nu = int(users.max()) + 1 if len(users) else 0
    ni = int(items.max()) + 1 if len(items) else 0
    passes = 0
    while len(keep) and k > 1:
        u, i = users[keep], items[keep]
        ok = (np.bincount(u, minlength=nu)[u] >= k) & (np.bincount(i, minlength=ni)[i] >= k)
        passes += 1
        if ok.all():
            break
        keep = keep[ok]
    u_new, u_codes = factorize(users[keep])
    i_new, i_codes = factorize(items[keep])
    return KCoreResult(keep=keep, user_idx=u_new, item_idx=i_new, user_codes=u_codes, item_codes=i_codes,
                       passes=passes)
