"""Top-K ranking metrics with MMRec's exact definitions, vectorised over users.

Every metric is computed from a boolean *hit matrix* ``hits[u, r]`` (1 when the item at rank ``r+1`` of user
``u``'s list is one of the user's held-out items) and the number of held-out items ``n_truth[u]`` (|T_u|).
That is all MMRec's ``topk_evaluator`` uses too, so the numbers match it exactly (see
reference-mmrec-backbones.md §1.8):

* Recall@K    = hits@K / |T_u|                (full |T_u|, *not* min(|T_u|, K))
* Precision@K = hits@K / K
* NDCG@K      = DCG@K / IDCG@K, DCG = sum_k rel_k / log2(k+1), IDCG truncated at min(|T_u|, K)
* MAP@K       = sum_{k<=K} Precision@k * rel_k / min(|T_u|, K)
* HitRate@K   = 1 if hits@K > 0 else 0

Users are macro-averaged (each evaluated user counts once). No loops over users: everything is a cumulative
sum along the rank axis, then a column pick per K.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from mrdib_cli.errors import UsageError

METRICS: tuple[str, ...] = ("recall", "ndcg", "precision", "map", "hit")

# Human-readable definitions; part of every protocol (and so of its fingerprint): if a definition ever
# changes, results computed under the old one can no longer be compared silently.
DEFINITIONS: dict[str, str] = {
    "recall": "hits@K / |T_u|",
    "ndcg": "sum_{k<=K} rel_k/log2(k+1) / sum_{k<=min(|T_u|,K)} 1/log2(k+1), binary relevance",
    "precision": "hits@K / K",
    "map": "sum_{k<=K} (hits@k / k) * rel_k / min(|T_u|, K)",
    "hit": "1[hits@K > 0]",
    "averaging": "user-macro over users with >= 1 held-out item",
    "unfilled_ranks": "ranks with no item (catalogue exhausted by the mask) count as misses",
}
DEFINITIONS_VERSION = "mmrec-1"


def parse_ks(ks: Iterable[int] | int) -> tuple[int, ...]:
    """Sorted unique cut-offs; refuses non-positive values."""
    ks = (ks,) if isinstance(ks, (int, np.integer)) else tuple(ks)
    if not ks:
        raise UsageError("no cut-off given: pass at least one K, e.g. --k 10 20")
    out = sorted({int(k) for k in ks})
    if out[0] < 1:
        raise UsageError(f"cut-offs must be positive integers, got {list(ks)}")
    return tuple(out)


def metric_names(ks: Sequence[int], metrics: Sequence[str] = METRICS) -> list[str]:
    """Column names in a stable order: metric-major, then K (recall@10, recall@20, ndcg@10, ...)."""
    return [f"{m}@{k}" for m in metrics for k in ks]


def per_user_metrics(hits: np.ndarray, n_truth: np.ndarray, ks: Sequence[int],
                     metrics: Sequence[str] = METRICS) -> dict[str, np.ndarray]:
    """Per-user metric values (float64) for every metric and K.

    ``hits`` is a boolean [n_users, K_max] matrix with K_max >= max(ks); ``n_truth`` the |T_u| (>= 1).
    """
    hits = np.asarray(hits, dtype=bool)
    n_truth = np.asarray(n_truth, dtype=np.float64)
    ks = parse_ks(ks)
    if hits.ndim != 2 or hits.shape[1] < ks[-1]:
        raise ValueError(f"hit matrix of shape {hits.shape} is too short for K={ks[-1]}")
    if hits.shape[0] != n_truth.shape[0]:
        raise ValueError("hits and n_truth disagree on the number of users")
    if n_truth.size and n_truth.min() < 1:
        raise ValueError("every evaluated user needs at least one held-out item")
    k_max = ks[-1]
    h = hits[:, :k_max].astype(np.float64)
    ranks = np.arange(1, k_max + 1, dtype=np.float64)
    cum_hits = np.cumsum(h, axis=1)  # hits@k for every k
    out: dict[str, np.ndarray] = {}
    need = set(metrics)
    if "ndcg" in need:
        disc = 1.0 / np.log2(ranks + 1.0)
        dcg = np.cumsum(h * disc, axis=1)
        idcg_table = np.cumsum(disc)  # idcg_table[j-1] = ideal DCG with j relevant items
    if "map" in need:
        ap = np.cumsum(h * (cum_hits / ranks), axis=1)
    for m in metrics:
        for k in ks:
            hk = cum_hits[:, k - 1]
            if m == "recall":
                v = hk / n_truth
            elif m == "precision":
                v = hk / k
            elif m == "hit":
                v = (hk > 0).astype(np.float64)
            elif m == "ndcg":
                v = dcg[:, k - 1] / idcg_table[np.minimum(n_truth, k).astype(np.int64) - 1]
            elif m == "map":
                v = ap[:, k - 1] / np.minimum(n_truth, k)
            else:
                raise UsageError(f"unknown metric '{m}' (available: {', '.join(METRICS)})")
            out[f"{m}@{k}"] = v
    return out


def average(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    """User-macro averages (NaN for an empty user set: there is nothing to average, and 0 would lie)."""
    return {name: float(v.mean()) if v.size else float("nan") for name, v in per_user.items()}
