"""How the ranks of a ``--minibatch sampled`` job combine their gradients each step (docs/scaling.md).

Each row of an embedding table has an owner rank (:func:`owner_of`), which alone runs the lazy Adam update of
that row and keeps its moments. A step therefore sends the gradients of the rows it read to their owners
(:meth:`RowExchange.reduce`), and every rank must then read the owners' new values. Dense parameters are
averaged and updated everywhere.

Two carriers, one result:

* :class:`ShardedExchange` (any topology, gloo or NCCL): the tables themselves are sharded, each rank holding
  its own rows only; a step reads the rows it needs from their owners and sends their gradients back, through
  all-to-all collectives;
* :class:`SharedExchange` (every rank on one machine, on CPU): the tables and a gradient staging area live in
  shared memory, so the rows do not travel at all: a rank writes its gradient rows once, the owners read
  them after one small sum over the ranks (:mod:`mrdib_cli.local_channel`), and an owner's update is at once
  every rank's. Over loopback TCP, moving the touched rows cost about as much CPU as computing the step; a
  memory copy costs a fraction of that.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mrdib_cli.ids import unique_ids_inverse
from mrdib_cli.launch import local_channel, step_barrier, sum_across_ranks
from mrdib_cli.local_channel import map_shared, shared_setup
from mrdib_cli.models._common import ROW_SOURCES, RowSource


def owner_of(ids: Tensor, n_rows: int, world: int) -> Tensor:
    """The rank that owns each row: contiguous blocks of rows, so that sorted ids come grouped by owner."""
    return torch.div(ids * world, n_rows, rounding_mode="floor")


def owned_block(n_rows: int, rank: int, world: int) -> tuple[int, int]:
    """The rows ``lo .. hi-1`` that :func:`owner_of` gives to ``rank``."""
    return -(-rank * n_rows // world), -(-(rank + 1) * n_rows // world)


def gather_block(block: Tensor, n_rows: int, rank: int, world: int) -> Tensor:
    """Every rank's :func:`owned_block` of a table's rows, assembled on rank 0 (the checkpoint's writer);
    other ranks get their own block back. One gather of blocks padded to the largest."""
    padded = _padded(block, n_rows, world)
    parts = [torch.empty_like(padded) for _ in range(world)] if rank == 0 else None
    dist.gather(padded, parts, dst=0)
    return block if parts is None else _joined(parts, n_rows, world)


def all_blocks(block: Tensor, n_rows: int, world: int) -> Tensor:
    """:func:`gather_block` on every rank (one all-gather)."""
    padded = _padded(block, n_rows, world)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return _joined(parts, n_rows, world)


def _padded(block: Tensor, n_rows: int, world: int) -> Tensor:
    """A block padded to the largest block's size (collectives move equal sizes)."""
    return torch.cat([block, block.new_zeros(-(-n_rows // world) - len(block), *block.shape[1:])])


def _joined(parts: list[Tensor], n_rows: int, world: int) -> Tensor:
    """The table from every rank's padded block."""
    return torch.cat([part[:hi - lo] for part, (lo, hi) in
                      zip(parts, (owned_block(n_rows, r, world) for r in range(world)))])


def sum_rows(ids: Tensor, vals: Tensor, shape: torch.Size, scale: float) -> Tensor:
    """Sparse gradient of ``shape`` with the rows ``vals`` summed per id and multiplied by ``scale``."""
    uniq, inv = unique_ids_inverse(ids)
    summed = vals.new_zeros(len(uniq), *vals.shape[1:]).index_add_(0, inv, vals).mul_(scale)
    # sorted distinct rows by construction: nothing for torch to check (and no warning that it does not)
    return torch.sparse_coo_tensor(uniq.unsqueeze(0), summed, shape, is_coalesced=True, check_invariants=False)


class RowExchange:
    """The step's two exchanges; subclasses carry the table rows (see the module docstring)."""

    #: whether each rank holds only its own rows of the tables (see :meth:`assemble`)
    sharded = False
    #: whether the tables are whole on this rank now
    whole = True

    def __init__(self, tables: dict[str, nn.Parameter], rank: int, world: int) -> None:
        self.tables, self.rank, self.world = tables, rank, world

    def begin_step(self) -> None:
        """Called before each step's forward."""

    def assemble(self) -> None:
        """Every table whole on this rank until :meth:`release` (it always is unless :attr:`sharded`)."""

    def release(self) -> None:
        """Back to this rank's own rows, before training steps."""

    def reduce(self, dense: list[nn.Parameter], loss: Tensor) -> float:
        """Average the gradients over the ranks (a table's: only the rows this rank owns) and return the
        global batch loss (a non-finite value on any rank is non-finite here on every rank)."""
        counts = self._stage()
        dev = loss.device
        flat = torch.cat([*(p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), device=dev)
                            for p in dense), loss.reshape(1).float(), counts.reshape(-1).to(dev)])
        sum_across_ranks(flat)  # one collective for every dense gradient, the loss and the row counts
        at = 0
        for p in dense:
            p.grad = flat[at:at + p.numel()].view_as(p) / self.world
            at += p.numel()
        self._combine(flat[at + 1:].long().view(counts.shape).tolist())
        return float(flat[at])

    def _stage(self) -> Tensor:
        """This rank's row counts (zeros in the other ranks' slots), after making its rows available."""
        raise NotImplementedError

    def _combine(self, counts: list) -> None:
        """Every rank's rows of this rank's share, summed and averaged into the tables' ``grad``."""
        raise NotImplementedError

    def publish(self) -> None:
        """After the optimiser step: every rank sees the owners' new values of the touched rows."""
        raise NotImplementedError


@dataclass
class _Read:
    """One read of a sharded table in a step: the rows it got and what its exchanges sent where."""

    name: str
    rows: Tensor  # the distinct rows read, a leaf: its gradient goes back to their owners
    asked: Tensor  # ids (in the whole table) the other ranks read from this rank's block, in rank order
    sent: list[int]  # how many rows this rank read from each owner
    served: list[int]  # how many rows each rank read from this rank's block


def _by_rank(parts: list[Tensor], counts: list[list[int]], world: int) -> Tensor:
    """Flat buffers, each cut into consecutive pieces of ``counts[j][k]`` elements for rank k, packed rank by
    rank (rank k's pieces of every buffer, in buffer order): an all-to-all's send buffer."""
    pieces = [part.split(c) for part, c in zip(parts, counts)]
    return torch.cat([p[k] for k in range(world) for p in pieces])


def _from_ranks(buf: Tensor, counts: list[list[int]], world: int) -> list[Tensor]:
    """The inverse of :func:`_by_rank` on a received buffer: each buffer's pieces from every rank, joined."""
    out: list[list[Tensor]] = [[] for _ in counts]
    at = 0
    for k in range(world):
        for j, c in enumerate(counts):
            out[j].append(buf[at:at + c[k]])
            at += c[k]
    return [torch.cat(p) for p in out]


class ShardedExchange(RowExchange, RowSource):
    """Rows through collectives, the tables sharded: each rank holds only its own block of every table (its
    rows and their moments). A step's forward reads its rows from their owners as it goes (every read goes
    through ``tables_rows``: all-to-alls of the counts, the ids and the rows), and the reduce sends the
    gradients of the rows read back to their owners (one all-to-all for all the step's reads). Nothing is
    published: no rank keeps another's rows. Each rank thus sends and receives what its own slice reads, not
    every rank's touched rows. Evaluation and checkpoints read whole tables, put together by :meth:`assemble`."""

    sharded = True

    def __init__(self, tables: dict[str, nn.Parameter], rank: int, world: int) -> None:
        super().__init__(tables, rank, world)
        self.n_rows = {n: len(p) for n, p in tables.items()}
        self.lo: dict[str, int] = {}
        self.reads: list[_Read] = []
        self.blocks: dict[str, Tensor] = {}  # this rank's rows while the tables are assembled
        self.whole = False
        for name, p in tables.items():
            self.lo[name], hi = owned_block(len(p), rank, world)
            p.data = p.data[self.lo[name]:hi].clone()
            ROW_SOURCES[id(p)] = (self, name)
            weakref.finalize(p, ROW_SOURCES.pop, id(p), None)  # an id is reused once its table is gone

    def begin_step(self) -> None:
        self.reads = []

    def fetch(self, reads: list[tuple[str, Tensor]]) -> list[Tensor]:
        """Rows ``ids`` of each (table name, ids) from their owners: three all-to-alls for all of them (the
        counts, the ids, the rows). A collective: every rank reads at the same point of its forward."""
        if self.whole:  # rows would be looked up in the whole table as if it were this rank's block
            raise RuntimeError("sharded tables read while assembled: release() them before training steps")
        world = self.world
        uniq, inv, sent = [], [], []
        for name, ids in reads:
            u, i = unique_ids_inverse(ids)  # sorted, so grouped by owner
            uniq.append(u)
            inv.append(i)
            sent.append(torch.bincount(owner_of(u, self.n_rows[name], world), minlength=world))
        sent_t = torch.stack(sent, dim=1)  # [owner, read]
        served_t = torch.empty_like(sent_t)  # [reader, read]
        dist.all_to_all_single(served_t, sent_t)
        sent_l, served_l = sent_t.T.tolist(), served_t.T.tolist()  # [read][rank]
        asked_all = uniq[0].new_empty(int(served_t.sum()))
        dist.all_to_all_single(asked_all, _by_rank(uniq, sent_l, world), served_t.sum(1).tolist(),
                               sent_t.sum(1).tolist())
        asked = _from_ranks(asked_all, served_l, world)
        widths = [math.prod(self.tables[name].shape[1:]) for name, _ in reads]
        with torch.no_grad():
            mine = [self.tables[name].index_select(0, a - self.lo[name]).reshape(-1)
                    for (name, _), a in zip(reads, asked)]
            got = self._all_to_all(mine, served_l, sent_l, widths)
        out = []
        for (name, _), g, u, i, a, w_sent, w_served in zip(reads, got, uniq, inv, asked, sent_l, served_l):
            rows = g.view(len(u), *self.tables[name].shape[1:]).requires_grad_(torch.is_grad_enabled())
            self.reads.append(_Read(name, rows, a, w_sent, w_served))
            out.append(rows.index_select(0, i))
        return out

    def _all_to_all(self, parts: list[Tensor], send: list[list[int]], recv: list[list[int]],
                    widths: list[int]) -> list[Tensor]:
        """One all-to-all of several flat buffers, each cut by rank in rows of its width: part j sends
        ``send[j][k]`` rows to rank k and gets ``recv[j][k]`` from it. Returns what each part got."""
        world, like = self.world, next(iter(self.tables.values()))
        rows_to = [[n * w for n in counts] for counts, w in zip(send, widths)]
        rows_from = [[n * w for n in counts] for counts, w in zip(recv, widths)]
        buf = like.new_empty(sum(map(sum, rows_from)))
        dist.all_to_all_single(buf, _by_rank(parts, rows_to, world) if parts else like.new_empty(0),
                               [sum(c[k] for c in rows_from) for k in range(world)],
                               [sum(c[k] for c in rows_to) for k in range(world)])
        return _from_ranks(buf, rows_from, world)

    def _stage(self) -> Tensor:
        return torch.zeros(0)

    def _combine(self, counts: list) -> None:
        """Every read's gradient rows to their owners in one all-to-all; each owner sums, per table, what the
        ranks sent for its rows into the gradient of its block."""
        reads = self.reads
        grads = [(r.rows.grad if r.rows.grad is not None else torch.zeros_like(r.rows)).reshape(-1) for r in reads]
        got = self._all_to_all(grads, [r.sent for r in reads], [r.served for r in reads],
                               [math.prod(r.rows.shape[1:]) for r in reads])
        for name, p in self.tables.items():
            mine = [(r.asked - self.lo[name], g.view(len(r.asked), *p.shape[1:])) for r, g in zip(reads, got)
                    if r.name == name]
            p.grad = (sum_rows(torch.cat([i for i, _ in mine]), torch.cat([v for _, v in mine]), p.shape,
                               1.0 / self.world) if mine else None)
        self.reads = []

    def publish(self) -> None:
        """Nothing to send: each table's rows changed only on their owner, which alone holds them."""

    def assemble(self) -> None:
        """Whole tables on every rank (one all-gather per table) until :meth:`release`: an epoch's evaluation,
        best model and checkpoint all read them, so they are put together once per epoch."""
        if self.whole:
            return
        self.blocks = {n: p.data for n, p in self.tables.items()}
        for n, p in self.tables.items():
            p.data = all_blocks(self.blocks[n], self.n_rows[n], self.world)
        self.whole = True

    def release(self) -> None:
        if not self.whole:
            return
        for n, p in self.tables.items():  # unchanged since assemble: no step runs on whole tables
            p.data = self.blocks[n]
        self.blocks, self.whole = {}, False


class SharedExchange(RowExchange):
    """Rows through shared memory (every rank on this machine, CPU tensors). Each table is replaced by one
    mapping shared by all ranks, and each rank has a staging area of the table's size for its gradient rows,
    written summed per id and sorted, hence grouped by owner; the reduce's sum over the ranks carries every
    (writer, owner) count."""

    def __init__(self, tables: dict[str, nn.Parameter], rank: int, world: int) -> None:
        super().__init__(tables, rank, world)
        self.stage_ids: dict[str, Tensor] = {}
        self.stage_vals: dict[str, Tensor] = {}

        def create(base: Path, made: list[Path]) -> None:  # rank 0 creates and fills, the others map
            for name, p in tables.items():
                shared = map_shared(Path(f"{base}-{name}"), p.shape, p.dtype, made)
                if rank == 0:
                    shared.copy_(p.detach())
                self.stage_ids[name] = map_shared(Path(f"{base}-{name}.ids"), (world, p.shape[0]), torch.int64, made)
                self.stage_vals[name] = map_shared(Path(f"{base}-{name}.rows"), (world, *p.shape), p.dtype, made)
                p.data = shared

        shared_setup(rank, create, "mrdib-rows")

    def _stage(self) -> Tensor:
        """Sum this rank's gradient rows per id straight into its staging area (sorted ids: grouped by owner)."""
        counts = torch.zeros(self.world, self.world, len(self.tables))  # [writer, owner, table]
        for t, (name, p) in enumerate(self.tables.items()):
            if p.grad is None:
                continue
            g = p.grad
            ids, vals = (g.indices()[0], g.values()) if g.is_coalesced() else (g._indices()[0], g._values())
            uniq, inv = unique_ids_inverse(ids)
            self.stage_ids[name][self.rank, :len(uniq)] = uniq
            self.stage_vals[name][self.rank, :len(uniq)].zero_().index_add_(0, inv, vals)
            counts[self.rank, :, t] = torch.bincount(owner_of(uniq, p.shape[0], self.world), minlength=self.world)
        return counts

    def _combine(self, counts: list) -> None:
        for t, (name, p) in enumerate(self.tables.items()):
            spans = []  # where every writer staged this owner's rows, in writer order
            for w in range(self.world):
                start = sum(counts[w][k][t] for k in range(self.rank))
                spans.append((w, start, start + counts[w][self.rank][t]))
            uniq, inv = unique_ids_inverse(torch.cat([self.stage_ids[name][w, a:b] for w, a, b in spans]))
            acc = p.new_zeros(len(uniq), *p.shape[1:])
            at = 0
            for w, a, b in spans:  # read in place from the staging areas
                acc.index_add_(0, inv[at:at + b - a], self.stage_vals[name][w, a:b])
                at += b - a
            p.grad = torch.sparse_coo_tensor(uniq.unsqueeze(0), acc.mul_(1.0 / self.world), p.shape,
                                             is_coalesced=True, check_invariants=False)  # sorted, distinct

    def publish(self) -> None:
        # the owners wrote their rows into the shared tables; wait until all did (and until every owner has
        # read the staging areas, which the next step overwrites)
        step_barrier()


def make_exchange(tables: dict[str, nn.Parameter], rank: int, world: int) -> RowExchange:
    """Shared memory when every rank is on this machine and trains on the CPU, collectives otherwise."""
    on_cpu = all(p.device.type == "cpu" for p in tables.values())
    if on_cpu and local_channel() is not None:
        return SharedExchange(tables, rank, world)
    return ShardedExchange(tables, rank, world)
