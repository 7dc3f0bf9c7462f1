"""The sampled mode's row exchanges (collectives, shared memory) give every rank the same averaged gradients
and, after the owners' updates, the same tables."""

from __future__ import annotations

import pytest
import torch


ROWS = {"a": [[1, 2, 5, 2], [2, 3, 9]], "b": [[0], [6, 0, 4]]}  # per rank; row 2 of a twice on rank 0
SHAPES = {"a": (10, 3), "b": (7, 2)}


def _raw_grads(rank: int) -> dict[str, torch.Tensor]:
    """The dense gradient each rank's term gives each table (what the exchange must average)."""
    g = torch.Generator().manual_seed(rank + 1)
    out = {}
    for name, shape in SHAPES.items():
        ids = torch.tensor(ROWS[name][rank])
        w = torch.randn(len(ids), shape[1], generator=g)
        out[name] = torch.zeros(shape).index_add_(0, ids, w)
    return out


def _worker(rank: int, world: int, init: str, kind: str, out: str) -> None:
    import torch.distributed as dist
    import torch.nn.functional as F

    from mrdib_cli.models._common import tables_rows
    from mrdib_cli.training.row_exchange import ShardedExchange, SharedExchange

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same initial tables and dense parameter on every rank
        tables = {"a": torch.nn.Parameter(torch.randn(10, 3)), "b": torch.nn.Parameter(torch.randn(7, 2))}
        dense = torch.nn.Parameter(torch.randn(4))
        ex = (SharedExchange if kind == "shared" else ShardedExchange)(tables, rank, world)
        held = {n: len(p) for n, p in tables.items()}
        ex.begin_step()
        g = torch.Generator().manual_seed(rank + 1)
        reads = [(p, torch.tensor(ROWS[name][rank])) for name, p in tables.items()]
        rows = tables_rows(reads) if ex.sharded else [F.embedding(ids, p, sparse=True) for p, ids in reads]
        loss = 0.0
        for r, (p, ids) in zip(rows, reads):
            term = (r * torch.randn(len(ids), p.shape[1], generator=g)).sum()
            term.backward()
            loss = loss + float(term)
        (dense * (rank + 1)).sum().backward()
        total = ex.reduce([dense], torch.tensor(loss))
        grads = {n: p.grad.coalesce() for n, p in tables.items()}
        with torch.no_grad():  # the owner's "optimiser step": its rows move by their gradient
            for p, gr in zip(tables.values(), grads.values()):
                p.index_add_(0, gr.indices()[0], -gr.values())
        ex.publish()
        ex.assemble()
        whole = {n: p.detach().clone() for n, p in tables.items()}
        ex.release()
        torch.save({"total": total, "loss": loss, "dense": dense.grad.clone(), "held": held,
                    "grads": {n: (gr.indices()[0], gr.values()) for n, gr in grads.items()},
                    "tables": whole, "after": {n: len(p) for n, p in tables.items()}}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["sharded", "shared"])
def test_exchange_averages_owned_rows_and_shares_the_update(tmp_path, kind) -> None:
    """Both carriers give each owner the average over the ranks of its rows' gradients, and every rank the
    owners' new rows; the sharded one keeps only its own block of each table on each rank, reads the rows it
    needs from their owners and numbers its block's rows from 0."""
    import torch.multiprocessing as mp

    from mrdib_cli.training.row_exchange import owned_block

    out = str(tmp_path / "r")
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'rdv'}", kind, out), nprocs=2, join=True)
    r = [torch.load(f"{out}.{k}") for k in (0, 1)]
    assert r[0]["total"] == r[1]["total"] == pytest.approx(r[0]["loss"] + r[1]["loss"], rel=1e-6)
    assert torch.allclose(r[0]["dense"], torch.full((4,), 1.5)) and torch.allclose(r[1]["dense"], r[0]["dense"])
    for name, shape in SHAPES.items():
        both = torch.zeros(shape)  # each rank's gradient holds only its own rows (a block each)
        for k in (0, 1):
            lo, hi = owned_block(shape[0], k, 2)
            ids, vals = r[k]["grads"][name]
            rows = ids + lo if kind == "sharded" else ids
            assert ((rows >= lo) & (rows < hi)).all()
            both.index_add_(0, rows, vals)
            assert r[k]["held"][name] == r[k]["after"][name] == (hi - lo if kind == "sharded" else shape[0])
        assert torch.allclose(both, (_raw_grads(0)[name] + _raw_grads(1)[name]) / 2, atol=1e-6)
        torch.manual_seed(0)
        start = {"a": torch.randn(10, 3), "b": torch.randn(7, 2)}[name]
        # every rank ends with the same table: the start minus the averaged gradient of every touched row
        assert torch.equal(r[0]["tables"][name], r[1]["tables"][name])
        assert torch.allclose(r[0]["tables"][name], start - both, atol=1e-6)
        touched = both.abs().sum(1) > 0
        assert touched.sum() >= 3 and torch.equal(r[0]["tables"][name][~touched], start[~touched])


def _sum_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from mrdib_cli.launch import SMALL_SUM, sum_across_ranks

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(rank + 7)
        got = {}
        for n in (5, SMALL_SUM + 3):  # below the all-gather bound and above it (all-reduce)
            x = torch.randn(n, generator=g)
            mine = x.clone()
            sum_across_ranks(x)
            got[n] = (mine, x)
        torch.save(got, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_sum_across_ranks_gives_every_rank_the_same_sum_at_any_size(tmp_path) -> None:
    import torch.multiprocessing as mp

    out = str(tmp_path / "s")
    mp.spawn(_sum_worker, args=(2, f"file://{tmp_path / 'rdv'}", out), nprocs=2, join=True)
    r0, r1 = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    for n in r0:
        assert torch.equal(r0[n][1], r1[n][1])  # the same bits on both ranks
        assert torch.allclose(r0[n][1], r0[n][0] + r1[n][0], atol=1e-6)


def _gather_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from mrdib_cli.training.row_exchange import gather_block, owned_block

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        table = torch.arange(10 * 3, dtype=torch.float32).view(10, 3)
        lo, hi = owned_block(10, rank, world)
        torch.save(gather_block(table[lo:hi].clone(), 10, rank, world), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_owned_blocks_match_the_owners_and_gather_into_the_whole_table(tmp_path) -> None:
    """Each rank keeps the block of rows owner_of gives it (10 rows over 3 ranks: blocks of 4, 3, 3); rank 0,
    the checkpoint's writer, assembles the whole table from the blocks, and the others keep their own."""
    import torch.multiprocessing as mp

    from mrdib_cli.training.row_exchange import owned_block, owner_of

    for n_rows in (1, 2, 7, 10, 1001):
        for world in (1, 2, 3, 4):
            owners = owner_of(torch.arange(n_rows), n_rows, world)
            for r in range(world):
                lo, hi = owned_block(n_rows, r, world)
                assert torch.equal((owners == r).nonzero().squeeze(1), torch.arange(lo, hi)), (n_rows, world, r)
    out = str(tmp_path / "g")
    mp.spawn(_gather_worker, args=(3, f"file://{tmp_path / 'rdv'}", out), nprocs=3, join=True)
    table = torch.arange(10 * 3, dtype=torch.float32).view(10, 3)
    assert torch.equal(torch.load(f"{out}.0"), table)
    assert torch.equal(torch.load(f"{out}.1"), table[4:7]) and torch.equal(torch.load(f"{out}.2"), table[7:10])
