"""Sharded evaluation: users split across ranks, per-user rows merged into the single-process result.

Full-ranking evaluation is embarrassingly parallel over users: a user's top-K list and metrics depend only
on its own embedding row, the item matrix, its truth and its mask. Shard ``r`` of ``w`` evaluates every
``w``-th evaluated user (interleaved, so shards get the same mix of heavy and light users), and the merge
sorts the per-user rows back into ascending user order and recomputes the user-macro averages from them,
exactly as :func:`mrdib_cli.evaluation.engine.evaluate` does. The merged :class:`EvalResult` therefore has
the same per-user metrics, top-K lists and averages as a single-process evaluation.

Two ways to combine shards:

* :func:`evaluate_split_distributed`: inside a torch.distributed job (the trainer's per-epoch validation),
  rows are exchanged in memory with ``all_gather_object`` and every rank gets the merged result;
* :func:`evaluate_run_sharded`: ``mrdib eval --nproc N`` (launched through torchrun): each rank writes its
  per-user metrics and top-K rows as Parquet shards, rank 0 merges them into the usual run-folder files.
"""

from __future__ import annotations

import shutil
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from mrdib_cli.defaults import EVAL_BATCH_USERS, KS
from mrdib_cli.evaluation.engine import (MASKS, EvalResult, Prepared, Protocol, evaluate, prepare_split,
                                         result_tag)
from mrdib_cli.evaluation.metrics import average
from mrdib_cli.workspace import atomic_path

if TYPE_CHECKING:
    from mrdib_cli.data.handle import DatasetHandle

_SHARD_CACHE: OrderedDict[tuple, Prepared] = OrderedDict()


def shard_users(users: np.ndarray, shard: int, n_shards: int) -> np.ndarray:
    """The evaluated users of ``shard``: every ``n_shards``-th one (users are ascending)."""
    return np.asarray(users)[shard::n_shards]


def prepare_shard(handle: DatasetHandle, split: str, mask: str, shard: int, n_shards: int) -> Prepared:
    """Truth/mask restricted to one shard's users (cached: the trainer validates every epoch)."""
    key = (str(Path(handle.dir).resolve()), handle.digest, split, mask, shard, n_shards)
    if key in _SHARD_CACHE:
        return _SHARD_CACHE[key]
    full = prepare_split(handle, split, mask)  # validates split/mask names
    keep = np.zeros(full.n_users, dtype=np.float64)
    keep[shard_users(full.users, shard, n_shards)] = 1.0
    truth = sp.diags(keep).tocsr() @ handle.csr(split)
    prep = Prepared.build(truth, handle.csr(list(MASKS[mask])))
    _SHARD_CACHE[key] = prep
    while len(_SHARD_CACHE) > 6:
        _SHARD_CACHE.popitem(last=False)
    return prep


def evaluate_shard(handle: DatasetHandle, user_emb: Any, item_emb: Any, split: str, mask: str, shard: int,
                   n_shards: int, **kw: Any) -> EvalResult:
    """Evaluate one shard of the users of ``split`` (same arguments as ``evaluate_split``)."""
    prep = prepare_shard(handle, split, mask, shard, n_shards)
    proto = Protocol(split=split, mask=mask, dataset=handle.name, dataset_digest=handle.digest)
    return evaluate(user_emb, item_emb, prep, None, protocol=proto, **kw)


# --------------------------------------------------------------------------------------------- merging
def to_rows(res: EvalResult) -> dict[str, Any]:
    """A shard result as plain arrays (what travels between ranks or goes into shard files)."""
    return {"per_user": {c: res.per_user[c].to_numpy() for c in res.per_user.columns},
            "topk": res.topk, "scores": res.scores, "users": res.users, "n_fallback": res.n_fallback,
            "n_short": res.n_short, "timing": res.timing}


def merge(parts: list[dict[str, Any]], protocol: Protocol) -> EvalResult:
    """Shard rows -> the result of one single-process evaluation (ascending users, macro averages)."""
    users = np.concatenate([p["users"] for p in parts])
    order = np.argsort(users, kind="stable")
    cols = list(parts[0]["per_user"])
    per_user = pl.DataFrame({c: np.concatenate([p["per_user"][c] for p in parts])[order] for c in cols})
    metric_cols = {c: per_user[c].to_numpy() for c in cols if c not in ("user_idx", "n_truth")}
    topk = np.concatenate([p["topk"] for p in parts])[order]
    scores = np.concatenate([p["scores"] for p in parts])[order]
    timing = {k: max(p["timing"].get(k, 0.0) for p in parts) for k in parts[0]["timing"]}
    timing["shards"] = len(parts)
    return EvalResult(metrics=average(metric_cols), per_user=per_user, topk=topk, scores=scores,
                      users=users[order], protocol=protocol, timing=timing,
                      n_fallback=sum(int(p["n_fallback"]) for p in parts),
                      n_short=sum(int(p["n_short"]) for p in parts))


# --------------------------------------------------------------------------------------------- in a job
def evaluate_split_distributed(handle: DatasetHandle, user_emb: Any, item_emb: Any, split: str = "valid",
                               mask: str = "train", **kw: Any) -> EvalResult:
    """Collective ``evaluate_split``: every rank evaluates its shard, every rank returns the merged result."""
    import torch.distributed as dist

    world, r = dist.get_world_size(), dist.get_rank()
    res = evaluate_shard(handle, user_emb, item_emb, split, mask, r, world, **kw)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, to_rows(res))
    return merge(gathered, res.protocol)


# --------------------------------------------------------------------------------------------- eval CLI
def _shard_dir(run_dir: Path, tag: str) -> Path:
    return run_dir / f".shards-eval-{tag}"


def write_shard(run_dir: Path, tag: str, shard: int, res: EvalResult) -> None:
    """Per-user metrics and top-K rows of one shard, as Parquet files written atomically."""
    d = _shard_dir(run_dir, tag)
    d.mkdir(parents=True, exist_ok=True)
    k = res.topk.shape[1]
    with atomic_path(d / f"per_user-{shard:05d}.parquet") as tmp:
        res.per_user.write_parquet(tmp)
    topk = pl.DataFrame({"user_idx": res.users,
                         "items": pl.Series("items", res.topk, dtype=pl.Array(pl.Int64, k)),
                         "scores": pl.Series("scores", res.scores, dtype=pl.Array(pl.Float32, k)),
                         "n_fallback": [res.n_fallback] * len(res.users),
                         "n_short": [res.n_short] * len(res.users)})
    with atomic_path(d / f"topk-{shard:05d}.parquet") as tmp:
        topk.write_parquet(tmp)


def read_shards(run_dir: Path, tag: str, n_shards: int) -> list[dict[str, Any]]:
    d = _shard_dir(run_dir, tag)
    parts = []
    for s in range(n_shards):
        pu = pl.read_parquet(d / f"per_user-{s:05d}.parquet")
        tk = pl.read_parquet(d / f"topk-{s:05d}.parquet")
        parts.append({"per_user": {c: pu[c].to_numpy() for c in pu.columns},
                      "users": tk["user_idx"].to_numpy(), "topk": tk["items"].to_numpy(),
                      "scores": tk["scores"].to_numpy(),
                      "n_fallback": int(tk["n_fallback"][0]) if len(tk) else 0,
                      "n_short": int(tk["n_short"][0]) if len(tk) else 0, "timing": {}})
    return parts


def evaluate_run_sharded(run: Any, split: str = "test", mask: str = "train", ks: tuple[int, ...] = KS,
                         batch_users: int = EVAL_BATCH_USERS, save: bool = True, threads: int | None = None
                         ) -> tuple[EvalResult | None, dict[str, Path]]:
    """One rank's part of ``mrdib eval --nproc N``: evaluate a shard, write it, rank 0 merges and saves.

    Returns the merged result on rank 0 and ``(None, {})`` on the others. Exact search only: an
    approximate index built per rank would make the shards' candidate sets differ from one index's.
    """
    import torch.distributed as dist

    world, r = dist.get_world_size(), dist.get_rank()
    user, item = run.embeddings
    res = evaluate_shard(run.handle, user, item, split, mask, r, world, ks=ks, batch_users=batch_users,
                         threads=threads)
    tag = result_tag(split, mask, "flat")
    write_shard(run.dir, tag, r, res)
    dist.barrier()
    if r != 0:
        dist.barrier()
        return None, {}
    merged = merge(read_shards(run.dir, tag, world), res.protocol)
    merged.timing = {**res.timing, "shards": world}
    paths = merged.save(run.dir, split) if save else {}
    shutil.rmtree(_shard_dir(run.dir, tag), ignore_errors=True)
    dist.barrier()
    return merged, paths
