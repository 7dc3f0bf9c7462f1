"""Operations on tensors of non-negative ids (node, row, item ids): ``torch.unique`` and ``torch.isin``
without the CPU's slow sorting range, and (:class:`IdTable`) set operations with no sort at all.

Why: on the CPU torch sorts an integer tensor of at least 32,768 elements with a radix sort and a smaller
one with a comparison sort, which between roughly 8,000 and 32,767 elements costs two to three times more
(torch 2.14, one thread: 30,000 ids 1.3 ms, 32,768 ids 0.43 ms); ``torch.isin`` sorts both inputs
together and costs more again. A sampled training step sorts its
neighbourhoods and touched rows several times, and splitting a batch across ranks moves those sorts into that
range. Padding such a tensor with a sentinel above every id up to the radix size gives the same result
(the sentinels sort last and are cut off) at the radix sort's cost. Other devices, sizes and tensors that
are mostly sorted already go straight to torch.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: the smallest integer tensor torch sorts with its radix sort on the CPU
RADIX_MIN = 32768
#: from this size up, padding a shuffled tensor to RADIX_MIN is cheaper than the comparison sort (measured,
#: one thread: 12,000 ids 0.52 ms either way, 20,000 ids 1.0 ms against 0.49 ms)
PAD_FROM = 12000
#: above every id: padded entries sort last
SENTINEL = torch.iinfo(torch.int64).max


def _padded(x: Tensor) -> Tensor:
    """``x`` padded to RADIX_MIN when that sorts it faster: a shuffled CPU tensor in the slow range. A tensor
    made of a few sorted runs (a table's sorted rows, two ranks' sorted lists) is left as it is: the comparison
    sort takes it in a third of the time (20,000 ids in two runs: 0.42 ms, padded 0.48 ms)."""
    n = len(x)
    if x.device.type != "cpu" or x.dtype != torch.int64 or not PAD_FROM <= n < RADIX_MIN:
        return x
    if int((x[1:] < x[:-1]).sum()) < n // 8:  # few descents: mostly sorted runs
        return x
    return torch.cat([x, x.new_full((RADIX_MIN - n,), SENTINEL)])


def unique_ids(x: Tensor) -> Tensor:
    """``torch.unique(x)`` (sorted distinct ids)."""
    xp = _padded(x)
    u = torch.unique(xp)
    return u if xp is x else u[:-1]


def unique_ids_inverse(x: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.unique(x, return_inverse=True)``: the sorted distinct ids and where each entry of ``x`` is among them."""
    xp = _padded(x)
    u, inv = torch.unique(xp, return_inverse=True)
    return (u, inv) if xp is x else (u[:-1], inv[:len(x)])


def isin_ids(x: Tensor, table: Tensor) -> Tensor:
    """``torch.isin(x, table)``: whether each id of ``x`` occurs in ``table``."""
    u, inv = unique_ids_inverse(torch.cat([table, x]))
    hit = torch.zeros(len(u), dtype=torch.bool, device=x.device)
    hit[inv[:len(table)]] = True
    return hit[inv[len(table):]]


class IdTable:
    """One int64 slot per node id, reused by every step (one at a time), for the set operations a hop runs on
    node ids: each costs a scatter and a gather over the ids involved instead of sorting them.

    Why: ``positions`` by sorting cost 3.3 ms for 25,000 ids on one thread (torch 2.14), a slot table 0.35 ms;
    ``isin`` 1.2 ms against 0.35 ms. A hop runs both on all its sampled edges, so they were a third of the
    sampling. The results are the same as by sorting. A slot holds a position (>= 0) or a membership mark
    (< 0, a new one per call, so the table is never cleared); the memory is 8 bytes per node of the graph.
    """

    def __init__(self, n: int, device: torch.device) -> None:
        self.slot = torch.zeros(n, dtype=torch.int64, device=device)
        self.mark = 0

    def positions(self, table: Tensor, ids: Tensor) -> Tensor:
        """Position of each of ``ids`` in ``table`` (distinct ids, every one of ``ids`` present)."""
        self.slot.index_copy_(0, table, torch.arange(len(table), device=table.device))
        return self.slot.index_select(0, ids)

    def isin(self, x: Tensor, table: Tensor) -> Tensor:
        """Whether each id of ``x`` occurs in ``table``."""
        self.mark -= 1
        self.slot.index_fill_(0, table, self.mark)
        return self.slot.index_select(0, x) == self.mark

    def distinct(self, ids: Tensor) -> bool:
        """Whether no id occurs twice in ``ids``: each id's slot then keeps its own position (of two equal
        ids, at most one can)."""
        at = torch.arange(len(ids), device=ids.device)
        self.slot.index_copy_(0, ids, at)
        return torch.equal(self.slot.index_select(0, ids), at)


def touched_rows(grad: Tensor, slots: IdTable) -> tuple[Tensor, Tensor]:
    """A sparse gradient's rows, each once, and their gradients (``slots``: an id table of the table's rows).

    A sampled step reads each row once, so its gradient's ids are distinct already and are taken as they
    come, in any order: coalescing would sort them to sum duplicates there are none of (3 ms for 15,000 rows
    on one thread, against 0.4 ms to check). Rows read twice are summed, in sorted order."""
    if grad.is_coalesced():
        return grad.indices()[0], grad.values()
    if slots.distinct(grad._indices()[0]):
        return grad._indices()[0], grad._values()
    grad = grad.coalesce()
    return grad.indices()[0], grad.values()
