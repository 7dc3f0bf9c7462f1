"""The evaluation engine: full-ranking top-K evaluation shared by the trainer and ``mrdib eval``.

Scores are inner products of user and item embeddings over **all** items. Each evaluated user (>= 1 item in
the evaluated split) gets its masked items removed (MMRec: train items only, ``mask="train"``; stricter:
``"train+valid"``) and exactly K_max items returned (see :mod:`.topk`). Metrics follow MMRec's definitions
(:mod:`.metrics`). The :class:`Protocol` (data digest, split, mask, metric definitions, index) travels with
every result, and its fingerprint is what ``mrdib compare`` checks before putting numbers side by side.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import polars as pl
import scipy.sparse as sp

from mrdib_cli.cpu import auto_threads
from mrdib_cli.defaults import EVAL_BATCH_USERS, KS
from mrdib_cli.errors import DataError, UsageError
from mrdib_cli.evaluation.metrics import (DEFINITIONS, DEFINITIONS_VERSION, METRICS, average,
                                          parse_ks, per_user_metrics)
from mrdib_cli.evaluation.topk import INDEX_KINDS, ItemIndex, RowKeys, exact_rows, masked_topk
from mrdib_cli.publish import write_index
from mrdib_cli.workspace import atomic_path, digest_obj

if TYPE_CHECKING:
    from mrdib_cli.data.handle import DatasetHandle

MASKS: dict[str, tuple[str, ...]] = {"train": ("train",), "train+valid": ("train", "valid")}
SPLITS = ("valid", "test")


def result_tag(split: str, mask: str = "train", index: str = "flat", ks: tuple[int, ...] | list[int] = KS
               ) -> str:
    """File tag of saved results: the bare split for the default protocol, else e.g. ``test.mask-train+valid``
    or ``test.k-5-50``.

    Results of non-default protocols or cut-offs thus never overwrite the default ones (which the trainer
    writes and ``compare`` reads by default).
    """
    tag = split
    if mask != "train":
        tag += f".mask-{mask}"
    if index != "flat":
        tag += f".index-{index}"
    if tuple(sorted(ks)) != KS:
        tag += ".k-" + "-".join(str(k) for k in sorted(ks))
    return tag


# --------------------------------------------------------------------------------------------- protocol
@dataclass
class Protocol:
    """Everything that decides what an evaluation number means.

    Two results are comparable only when their fingerprints match: same interactions and split (dataset
    digest), same evaluated split, same masking rule, same metric definitions and the same search (exact
    or a given approximate index). The cut-offs are not part of it: recall@20 does not depend on whether
    recall@10 was also computed.
    """

    split: str | None = None
    mask: str = "train"
    ks: tuple[int, ...] = KS
    metrics: tuple[str, ...] = METRICS
    index: str = "flat"
    index_params: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    dataset_digest: str | None = None
    definitions: dict[str, str] = field(default_factory=lambda: dict(DEFINITIONS))
    definitions_version: str = DEFINITIONS_VERSION
    evaluated_users: str = ">= 1 interaction in the evaluated split"
    ranking: str = "inner product over all items; masked items removed; ties in index order"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ks"] = list(self.ks)
        d["metrics"] = list(self.metrics)
        d["fingerprint"] = self.fingerprint()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Protocol:
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in known}
        if "ks" in kw:
            kw["ks"] = tuple(kw["ks"])
        if "metrics" in kw:
            kw["metrics"] = tuple(kw["metrics"])
        return cls(**kw)

    def fingerprint_fields(self) -> dict[str, Any]:
        return {"dataset_digest": self.dataset_digest, "split": self.split, "mask": self.mask,
                "definitions_version": self.definitions_version, "definitions": self.definitions,
                "evaluated_users": self.evaluated_users, "index": self.index,
                "index_params": self.index_params}

    def fingerprint(self) -> str:
        return digest_obj(self.fingerprint_fields())[len("sha256:"):][:16]

    def differences(self, other: Protocol) -> list[str]:
        """Names of the fingerprint fields that differ (for one-line mismatch errors)."""
        a, b = self.fingerprint_fields(), other.fingerprint_fields()
        return [k for k in a if a[k] != b.get(k)]

    def describe(self) -> str:
        """One line for logs and tables."""
        idx = self.index if not self.index_params else \
            f"{self.index}({', '.join(f'{k}={v}' for k, v in self.index_params.items())})"
        ds = f"{self.dataset} " if self.dataset else ""
        dig = (self.dataset_digest or "")[len("sha256:"):][:12] if self.dataset_digest else "n/a"
        return (f"{ds}[data {dig}] split={self.split} mask={self.mask} K={','.join(map(str, self.ks))} "
                f"index={idx} metrics={self.definitions_version} (user-macro) "
                f"fingerprint={self.fingerprint()}")


# --------------------------------------------------------------------------------------------- result
@dataclass
class EvalResult:
    """Metrics (user-macro), per-user metrics, top-K lists and the protocol of one evaluation."""

    metrics: dict[str, float]
    per_user: pl.DataFrame
    topk: np.ndarray  # int64 [n_eval_users, K_max], -1 only where the catalogue ran out
    scores: np.ndarray  # float32 [n_eval_users, K_max]
    users: np.ndarray  # int64 [n_eval_users], ascending
    protocol: Protocol
    timing: dict[str, float] = field(default_factory=dict)
    n_fallback: int = 0
    n_short: int = 0
    ann_check: dict[str, Any] | None = None

    @property
    def n_users(self) -> int:
        return int(len(self.users))

    def to_dict(self) -> dict[str, Any]:
        d = {"protocol": self.protocol.to_dict(), "split": self.protocol.split, "n_users": self.n_users,
             "metrics": self.metrics, "timing": self.timing,
             "n_fallback": self.n_fallback, "n_short": self.n_short}
        if self.ann_check is not None:
            d["ann_check"] = self.ann_check
        return d

    def save(self, run_dir: str | Path, split: str | None = None, embeddings: str | None = None) -> dict[str, Path]:
        """Write ``per_user-<tag>.parquet``, ``topk-<tag>.parquet`` and, last, ``eval-<tag>.json`` as one unit.

        ``tag`` is :func:`result_tag` of ``split`` (default: the protocol's) and the protocol's mask, index
        and cut-offs: just ``test`` under the default protocol (mask train, exact search, K 10 and 20), e.g.
        ``test.mask-train+valid`` otherwise, so one protocol's files never overwrite another's. The JSON is
        the unit's index (:mod:`mrdib_cli.publish`): it names the digests of the two tables, so a set torn by
        a crash between the renames is never read as one result, and of the embeddings scored (``embeddings``).
        """
        tag = result_tag(split or self.protocol.split or "eval", self.protocol.mask, self.protocol.index,
                         self.protocol.ks)
        run_dir = Path(run_dir)
        paths = {"json": run_dir / f"eval-{tag}.json", "per_user": run_dir / f"per_user-{tag}.parquet",
                 "topk": run_dir / f"topk-{tag}.parquet"}
        with atomic_path(paths["per_user"]) as tmp:
            self.per_user.write_parquet(tmp)
        k = self.topk.shape[1]
        topk_df = pl.DataFrame({
            "user_idx": self.users,
            "items": pl.Series("items", self.topk, dtype=pl.Array(pl.Int64, k)),
            "scores": pl.Series("scores", self.scores, dtype=pl.Array(pl.Float32, k)),
        })
        with atomic_path(paths["topk"]) as tmp:
            topk_df.write_parquet(tmp)
        # ``embeddings``: the digest of the run's embeddings.npz these figures score; a resume that finds a better
        # epoch rewrites it, and a reader then knows the saved figures are of another epoch (runs.Run.saved_result)
        record = {**self.to_dict(), **({"embeddings_digest": embeddings} if embeddings else {})}
        write_index(paths["json"], record, [paths["per_user"], paths["topk"]])
        return paths


# --------------------------------------------------------------------------------------------- engine
def as_float32(x: Any, what: str) -> np.ndarray:
    """A C-contiguous float32 numpy view/copy of a torch tensor or array (no copy when already so)."""
    if hasattr(x, "detach"):  # torch.Tensor, on any device
        import torch

        x = x.detach()
        if x.device.type != "cpu" or x.dtype != torch.float32:
            x = x.to(device="cpu", dtype=torch.float32)
        x = x.contiguous().numpy()
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise DataError(f"{what} must be a 2-d matrix, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError(f"{what} contain NaN or inf values; the model diverged (lower the learning rate) "
                        "or the embeddings file is corrupt")
    return arr


@dataclass
class Prepared:
    """Truth/mask of the evaluated users in batch order: computed once, reused every epoch."""

    users: np.ndarray  # ascending user ids with >= 1 truth item
    order: np.ndarray  # positions into ``users``: batch order (by ascending mask count)
    truth: RowKeys  # rows in batch order
    mask: RowKeys  # rows in batch order
    n_users: int
    n_items: int

    @classmethod
    def build(cls, truth: sp.csr_matrix, mask: sp.csr_matrix | None) -> Prepared:
        truth = sp.csr_matrix(truth)
        n_users, n_items = truth.shape
        if mask is not None:
            mask = sp.csr_matrix(mask)
            if mask.shape != truth.shape:
                raise DataError(f"mask shape {mask.shape} differs from truth shape {truth.shape}")
        t = truth.copy()
        t.eliminate_zeros()
        users = np.flatnonzero(np.diff(t.indptr) > 0).astype(np.int64)
        mcount = (np.diff(mask.indptr)[users] if mask is not None else np.zeros(len(users), np.int64))
        order = np.argsort(mcount, kind="stable")
        rows = users[order]
        return cls(users=users, order=order, truth=RowKeys(t, rows, n_items),
                   mask=RowKeys(mask, rows, n_items), n_users=n_users, n_items=n_items)


def _check_shapes(u: np.ndarray, i: np.ndarray, prep: Prepared) -> None:
    if u.shape[1] != i.shape[1]:
        raise DataError(f"user and item embeddings differ in dimension ({u.shape[1]} vs {i.shape[1]})")
    if u.shape[0] != prep.n_users or i.shape[0] != prep.n_items:
        raise DataError(f"embeddings are {u.shape[0]} users x {i.shape[0]} items but the evaluation data "
                        f"has {prep.n_users} x {prep.n_items}; were they trained on another dataset?")


def evaluate(user_emb: Any, item_emb: Any, truth: sp.csr_matrix | Prepared, mask: sp.csr_matrix | None = None,
             ks: tuple[int, ...] | list[int] = KS, batch_users: int = EVAL_BATCH_USERS, index: str = "flat", *,
             protocol: Protocol | None = None, index_params: dict[str, Any] | None = None,
             verify_exact: float = 0.0, seed: int = 0, overfetch_cap: int = 1024,
             metrics: tuple[str, ...] = METRICS, on_batch: Callable[[int], None] | None = None,
             threads: int | None = None) -> EvalResult:
    """Full-ranking evaluation of inner-product scores ``user_emb @ item_emb.T``.

    Users with >= 1 item in ``truth`` are evaluated; items in ``mask`` are never returned. ``truth`` may be
    a :class:`Prepared` (reused across epochs; it already holds the mask, so pass ``mask=None``).
    ``protocol`` carries split/mask/dataset names for the record; ks/index are filled in here.
    ``verify_exact`` (0..1] measures, on that fraction of users, an approximate index's recall@K against
    exact search and the metric drift.
    ``threads`` sets FAISS's OpenMP threads for this call (default: :func:`auto_threads`).
    """
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(auto_threads(before) if threads is None else max(1, int(threads)))
    try:
        return _evaluate(user_emb, item_emb, truth, mask, ks, batch_users, index, protocol, index_params,
                         verify_exact, seed, overfetch_cap, metrics, on_batch)
    finally:
        faiss.omp_set_num_threads(before)


def _evaluate(user_emb: Any, item_emb: Any, truth: sp.csr_matrix | Prepared, mask: sp.csr_matrix | None,
              ks: Any, batch_users: int, index: str, protocol: Protocol | None,
              index_params: dict[str, Any] | None, verify_exact: float, seed: int, overfetch_cap: int,
              metrics: tuple[str, ...], on_batch: Callable[[int], None] | None) -> EvalResult:
    t0 = time.perf_counter()
    ks = parse_ks(ks)
    if index not in INDEX_KINDS:
        raise UsageError(f"unknown index '{index}' (choose from {', '.join(INDEX_KINDS)})")
    if not 0.0 <= verify_exact <= 1.0:
        raise UsageError(f"--verify-exact must be a fraction in [0, 1], got {verify_exact}")
    if isinstance(truth, Prepared) and mask is not None:
        raise ValueError("pass the mask to Prepared.build, not together with a Prepared truth")
    prep = truth if isinstance(truth, Prepared) else Prepared.build(truth, mask)
    u = as_float32(user_emb, "user embeddings")
    it = as_float32(item_emb, "item embeddings")
    _check_shapes(u, it, prep)
    k_max = ks[-1]
    if k_max > prep.n_items:
        raise UsageError(f"K={k_max} is larger than the catalogue ({prep.n_items} items); use a smaller --k")
    if len(prep.users) == 0:
        raise DataError("no user has an interaction in the evaluated split; nothing to evaluate")
    t_prep = time.perf_counter()
    idx = ItemIndex(it, kind=index, params=index_params or {}, seed=seed)
    t_index = time.perf_counter()
    rows = prep.users[prep.order]
    top = masked_topk(u, rows, idx, prep.mask, k_max, batch_users=batch_users, overfetch_cap=overfetch_cap,
                      on_batch=on_batch)
    t_search = time.perf_counter()
    hits = np.zeros(top.items.shape, dtype=bool)
    for s in range(0, len(rows), batch_users):  # batched only to bound the int64 key temporaries
        hits[s:s + batch_users] = prep.truth.contains(s, top.items[s:s + batch_users])
    per_user_sorted = per_user_metrics(hits, prep.truth.counts, ks, metrics)
    # back to ascending user order
    inv = np.empty_like(prep.order)
    inv[prep.order] = np.arange(len(prep.order))
    n_truth = prep.truth.counts[inv]
    cols = {name: v[inv] for name, v in per_user_sorted.items()}
    per_user = pl.DataFrame({"user_idx": prep.users, "n_truth": n_truth, **cols})
    if protocol is None:  # a bare call: say that the mask is the caller's, not a named rule
        protocol = Protocol(mask="none" if mask is None else "custom")
    proto = Protocol(**{**asdict(protocol), "ks": ks, "metrics": tuple(metrics),
                        "index": index, "index_params": idx.params})
    res = EvalResult(metrics=average(cols), per_user=per_user, topk=top.items[inv], scores=top.scores[inv],
                     users=prep.users, protocol=proto, n_fallback=top.n_fallback, n_short=top.n_short)
    t_metrics = time.perf_counter()
    if verify_exact > 0 and not idx.exact:
        res.ann_check = _verify_exact(u, it, prep, rows, res, inv, ks, metrics, verify_exact, seed,
                                      per_user_sorted)
    res.timing = {"prepare_s": round(t_prep - t0, 4), "index_s": round(t_index - t_prep, 4),
                  "search_s": round(t_search - t_index, 4), "metrics_s": round(t_metrics - t_search, 4),
                  "total_s": round(time.perf_counter() - t0, 4)}
    return res


def _verify_exact(u: np.ndarray, it: np.ndarray, prep: Prepared, rows: np.ndarray, res: EvalResult,
                  inv: np.ndarray, ks: tuple[int, ...], metrics: tuple[str, ...], fraction: float, seed: int,
                  ann_sorted: dict[str, np.ndarray]) -> dict[str, Any]:
    """ANN quality on a seeded user sample: overlap with exact top-K and the metric drift it causes."""
    rng = np.random.default_rng(seed)
    n = len(rows)
    m = max(1, int(round(fraction * n)))
    pos = np.sort(rng.choice(n, size=m, replace=False))  # positions in batch order
    k_max = ks[-1]
    ex_items, _ = exact_rows(u, rows, it, prep.mask, pos, k_max)
    # res.topk is in ascending-user order; batch position p sits at ascending index prep.order[p]
    ann_items = res.topk[prep.order[pos]]
    hits = prep.truth.contains_at(pos, ex_items)
    exact_pu = per_user_metrics(hits, prep.truth.counts[pos], ks, metrics)
    exact_m = average(exact_pu)
    ann_m = average({k: v[pos] for k, v in ann_sorted.items()})
    overlap = {}
    for k in ks:
        found = 0
        for j in range(0, m, 4096):  # bounded [block, k, k] comparisons
            a, e = ann_items[j:j + 4096, :k], ex_items[j:j + 4096, :k]
            found += int(((a[:, :, None] == e[:, None, :]) & (e[:, None, :] >= 0)).any(axis=2).sum())
        overlap[f"recall@{k}"] = found / (m * k)
    return {"fraction": fraction, "n_users": int(m), "seed": seed, "ann_recall": overlap,
            "exact_metrics": exact_m, "ann_metrics": ann_m,
            "drift": {k: ann_m[k] - exact_m[k] for k in exact_m}}


# --------------------------------------------------------------------------------------------- datasets
_CACHE: OrderedDict[tuple, Prepared] = OrderedDict()
_CACHE_SIZE = 6


def prepare_split(handle: DatasetHandle, split: str = "valid", mask: str = "train") -> Prepared:
    """Truth (``split``) and mask (``mask`` rule) of a dataset, cached per (dataset content, split, mask)."""
    if split not in SPLITS:
        raise UsageError(f"unknown split '{split}' (choose from {', '.join(SPLITS)})")
    if mask not in MASKS:
        raise UsageError(f"unknown mask '{mask}' (choose from {', '.join(MASKS)})")
    if split in MASKS[mask]:
        raise UsageError(f"mask '{mask}' would hide the {split} items being evaluated; use --mask train")
    key = (str(Path(handle.dir).resolve()), handle.digest, split, mask)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    prep = Prepared.build(handle.csr(split), handle.csr(list(MASKS[mask])))
    _CACHE[key] = prep
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return prep


def evaluate_split(handle: DatasetHandle, user_emb: Any, item_emb: Any, split: str = "valid",
                   mask: str = "train", ks: tuple[int, ...] | list[int] = KS, batch_users: int = EVAL_BATCH_USERS,
                   index: str = "flat", **kw: Any) -> EvalResult:
    """Evaluate embeddings on a dataset split with the named masking rule (truth/mask built from the handle)."""
    prep = prepare_split(handle, split, mask)
    proto = Protocol(split=split, mask=mask, dataset=handle.name, dataset_digest=handle.digest)
    return evaluate(user_emb, item_emb, prep, None, ks=ks, batch_users=batch_users, index=index,
                    protocol=proto, **kw)
