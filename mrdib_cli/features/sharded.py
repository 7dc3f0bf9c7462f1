"""Sharded feature extraction: the items' shards split across ranks, merged into the usual Parquet table.

The extractor already encodes items in fixed shards of ``shard_size`` items and writes each finished shard
to ``features/.shards/<key>/`` so that an interrupted run resumes (:func:`~mrdib_cli.features.extract.
run_shards`). Sharding across processes reuses exactly that: rank ``r`` of ``w`` encodes shards
``k % w == r`` (a ``shards_only`` pass, one CUDA device per local rank or a share of the CPU cores), all
ranks meet at a barrier, then rank 0 runs the ordinary extraction, which finds every shard finished and
only merges, fills and writes the table and its manifest. Shard boundaries and the batches inside a shard
depend only on the items, so the table equals a single-process one on the same device type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar


from mrdib_cli.errors import UsageError
from mrdib_cli.features.extract import RunOptions
from mrdib_cli import launch as distributed

T = TypeVar("T")


def worker_options(ro: RunOptions) -> RunOptions:
    """This rank's device (``cuda:LOCAL_RANK`` or cpu) and CPU-thread share."""
    dev = distributed.worker_device(ro.device)
    if dev == "cpu":
        return replace(ro, device=dev, threads=ro.threads or distributed.default_threads())
    return replace(ro, device=dev)


def extract_sharded(extract: Callable[[RunOptions], T], ro: RunOptions) -> T | None:
    """Run one modality's extraction across the job's ranks; rank 0 returns the result, others None.

    ``extract(ro)`` is e.g. ``lambda ro: extract_text(ws, handle, to, ro)``. Must be called on every rank of
    an initialised process group.
    """
    import torch.distributed as dist

    r, w = dist.get_rank(), dist.get_world_size()
    ro = worker_options(ro)
    failure: str | None = None
    try:
        extract(replace(ro, shard_rank=r, shard_world=w, shards_only=True))
    except Exception as e:  # noqa: BLE001 - every rank must learn about it before the barrier
        failure = f"rank {r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        error: BaseException | None = e
    else:
        error = None
    failures: list[Any] = [None] * w
    dist.all_gather_object(failures, failure)
    if error is not None:
        raise error
    if any(failures):
        raise UsageError(next(f for f in failures if f), exit_code=1)
    if r != 0:
        dist.barrier()
        return None
    try:
        return extract(ro)  # every shard is on disk: merge, fill, write table and manifest
    finally:
        dist.barrier()
