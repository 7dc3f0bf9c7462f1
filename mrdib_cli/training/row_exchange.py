"""How the ranks of a ``--minibatch sampled`` job combine their gradients each step (docs/scaling.md).

Every rank keeps a copy of the model; each row of an embedding table has an owner rank (:func:`owner_of`), which
alone runs the lazy Adam update of that row and keeps its moments. A step therefore needs two exchanges:
the gradients of the touched rows go to their owners (:meth:`RowExchange.reduce`), and the owners' new row
values go to every rank (:meth:`RowExchange.publish`). Dense parameters are averaged and updated everywhere.

Two carriers, one result:

* :class:`GatherExchange` (any topology, gloo or NCCL): the touched rows travel through collectives, all
  tables packed into one buffer per exchange;
* :class:`SharedExchange` (every rank on one machine, on CPU): the tables and a gradient staging area live in
  shared memory, so the rows do not travel at all: a rank writes its gradient rows once, the owners read
  them after one small sum over the ranks (:mod:`mrdib_cli.local_channel`), and an owner's update is at once
  every rank's. Over loopback TCP, moving the touched rows cost about as much CPU as computing the step; a
  memory copy costs a fraction of that.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mrdib_cli.ids import unique_ids, unique_ids_inverse
from mrdib_cli.launch import local_channel, step_barrier, sum_across_ranks
from mrdib_cli.local_channel import map_shared, shared_setup


def owner_of(ids: Tensor, n_rows: int, world: int) -> Tensor:
    """The rank that owns each row: contiguous blocks of rows, so that sorted ids come grouped by owner."""
    return torch.div(ids * world, n_rows, rounding_mode="floor")


def owned_block(n_rows: int, rank: int, world: int) -> tuple[int, int]:
    """The rows ``lo .. hi-1`` that :func:`owner_of` gives to ``rank``."""
    return -(-rank * n_rows // world), -(-(rank + 1) * n_rows // world)


def gather_block(block: Tensor, n_rows: int, rank: int, world: int) -> Tensor:
    """Every rank's :func:`owned_block` of a table's rows, assembled on rank 0 (the checkpoint's writer);
    other ranks get their own block back. One gather of blocks padded to the largest."""
    size = -(-n_rows // world)
    padded = torch.cat([block, block.new_zeros(size - len(block), *block.shape[1:])])
    parts = [torch.empty_like(padded) for _ in range(world)] if rank == 0 else None
    dist.gather(padded, parts, dst=0)
    if parts is None:
        return block
    return torch.cat([part[:hi - lo] for part, (lo, hi) in
                      zip(parts, (owned_block(n_rows, r, world) for r in range(world)))])


def local_rows(p: nn.Parameter) -> tuple[Tensor, Tensor]:
    """(sorted distinct row ids, their gradient rows) of a table's sparse gradient on this rank."""
    if p.grad is None:
        return torch.empty(0, dtype=torch.int64, device=p.device), p.new_empty(0, *p.shape[1:])
    g = p.grad.coalesce()
    return g.indices()[0], g.values()


def sum_rows(ids: Tensor, vals: Tensor, shape: torch.Size, scale: float) -> Tensor:
    """Sparse gradient of ``shape`` with the rows ``vals`` summed per id and multiplied by ``scale``."""
    uniq, inv = unique_ids_inverse(ids)
    summed = vals.new_zeros(len(uniq), *vals.shape[1:]).index_add_(0, inv, vals).mul_(scale)
    # sorted distinct rows by construction: nothing for torch to check (and no warning that it does not)
    return torch.sparse_coo_tensor(uniq.unsqueeze(0), summed, shape, is_coalesced=True, check_invariants=False)


class RowExchange:
    """The step's two exchanges; subclasses carry the table rows (see the module docstring)."""

    def __init__(self, tables: dict[str, nn.Parameter], rank: int, world: int) -> None:
        self.tables, self.rank, self.world = tables, rank, world

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


class GatherExchange(RowExchange):
    """Rows through collectives: one all-gather of every rank's touched rows and gradients (int64 ids as
    pairs of float32 words, bit for bit), one all-gather of the owners' new values."""

    def __init__(self, tables: dict[str, nn.Parameter], rank: int, world: int) -> None:
        super().__init__(tables, rank, world)
        self.widths = [math.prod(p.shape[1:]) for p in tables.values()]
        self.touched: dict[str, Tensor] = {}

    def _stage(self) -> Tensor:
        self.local = {n: local_rows(p) for n, p in self.tables.items()}
        counts = torch.zeros(self.world, len(self.tables))
        counts[self.rank] = torch.tensor([float(len(ids)) for ids, _ in self.local.values()])
        return counts

    def _combine(self, counts: list) -> None:
        mine = torch.cat([torch.cat([ids.contiguous().view(torch.float32), vals.reshape(-1)])
                          for ids, vals in self.local.values()])
        out = self._all_gather(mine, [sum(c * (2 + w) for c, w in zip(row, self.widths)) for row in counts])
        for t, (name, p) in enumerate(self.tables.items()):
            ids, vals = [], []
            for buf, row in zip(out, counts):
                start = sum(c * (2 + w) for c, w in zip(row[:t], self.widths[:t]))
                n, w = row[t], self.widths[t]
                ids.append(buf[start:start + 2 * n].clone().view(torch.int64))
                vals.append(buf[start + 2 * n:start + n * (2 + w)].view(n, *p.shape[1:]))
            all_ids, all_vals = torch.cat(ids), torch.cat(vals)
            self.touched[name] = unique_ids(all_ids)
            own = owner_of(all_ids, p.shape[0], self.world) == self.rank
            p.grad = sum_rows(all_ids[own], all_vals[own], p.shape, 1.0 / self.world)

    def _all_gather(self, mine: Tensor, sizes: list[int]) -> list[Tensor]:
        """Every rank's buffer (each padded to the longest for the collective, then cut to its size)."""
        out = [mine.new_empty(max(sizes)) for _ in range(self.world)]
        dist.all_gather(out, torch.cat([mine, mine.new_zeros(max(sizes) - len(mine))]))
        return [buf[:n] for buf, n in zip(out, sizes)]

    @torch.no_grad()
    def publish(self) -> None:
        owned = {n: [rows[owner_of(rows, self.tables[n].shape[0], self.world) == k] for k in range(self.world)]
                 for n, rows in self.touched.items()}
        width = {n: math.prod(p.shape[1:]) for n, p in self.tables.items()}
        sizes = [sum(len(owned[n][k]) * width[n] for n in owned) for k in range(self.world)]
        mine = torch.cat([self.tables[n].index_select(0, owned[n][self.rank]).reshape(-1) for n in owned]
                         or [torch.empty(0)])
        for k, buf in enumerate(self._all_gather(mine, sizes)):
            at = 0
            for n, rows in owned.items():
                p, ids = self.tables[n], rows[k]
                if k != self.rank:
                    p.index_copy_(0, ids, buf[at:at + len(ids) * width[n]].view(len(ids), *p.shape[1:]))
                at += len(ids) * width[n]
        self.touched = {}


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
    return GatherExchange(tables, rank, world)
