"""Sampled L-hop neighbourhoods of a sparse graph, vectorised (torch ops only, no loop over nodes).

Why our own: PyTorch Geometric's neighbour loaders need pyg-lib or torch-sparse for the sampling kernel,
and neither has a wheel for the torch this project runs on (they would have to be compiled). The sampler
below is a few tensor operations on the CSR arrays of the graph, so it runs wherever torch runs.

For a frontier of nodes V and a fan-out k, every v in V keeps all its neighbours when deg(v) <= k and
otherwise k neighbours drawn uniformly with replacement, each weighted by Â[v,u] · deg(v) / k. The
weighted sum over the kept neighbours is then an unbiased estimate of (Â h)[v], and exact when
deg(v) <= k (so a fan-out above the largest degree reproduces the full-graph propagation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Block:
    """One sampled hop: ``out[dst] += w * x[src]``, ``dst`` indexing the frontier, ``src`` the next hop."""

    dst: Tensor
    src: Tensor
    weight: Tensor
    n_dst: int


class CSRGraph:
    """A constant sparse matrix kept as CSR arrays, with its row degrees, for neighbour sampling."""

    def __init__(self, m: Tensor) -> None:
        csr = m.to_sparse_csr() if m.layout != torch.sparse_csr else m
        self.indptr = csr.crow_indices().to(torch.int64)
        self.indices = csr.col_indices().to(torch.int64)
        self.values = csr.values()
        self.degree = self.indptr[1:] - self.indptr[:-1]

    def sample(self, nodes: Tensor, fanout: int, generator: torch.Generator | None = None
               ) -> tuple[Tensor, Tensor, Tensor]:
        """(position in ``nodes``, neighbour id, weight) for the kept neighbours of every node."""
        dev = nodes.device
        deg = self.degree[nodes]
        count = deg.clamp(max=fanout)
        owner = torch.repeat_interleave(torch.arange(len(nodes), device=dev), count)
        first = torch.cumsum(count, 0) - count
        offset = torch.arange(len(owner), device=dev) - first[owner]  # 0..count-1 within each node
        full = (deg <= fanout)[owner]
        # drawn on the generator's device (the trainer's is a CPU one), then moved
        u = torch.rand(len(owner), generator=generator,
                       device=generator.device if generator is not None else dev).to(dev)
        drawn = (u * deg[owner]).long()
        edge = self.indptr[nodes][owner] + torch.where(full, offset, drawn)
        scale = deg[owner].to(self.values.dtype) / count[owner].clamp(min=1).to(self.values.dtype)
        return owner, self.indices[edge], self.values[edge] * scale


def sample_blocks(graph: CSRGraph, seeds: Tensor, fanouts: list[int], generator: torch.Generator | None = None
                  ) -> tuple[list[Tensor], list[Block]]:
    """Nested node sets N_0 = unique(seeds) ⊆ N_1 ⊆ ... ⊆ N_L and the hops between them.

    Each N_{t+1} starts with N_t in the same order (so ``x[N_{t+1}][:len(N_t)]`` is ``x[N_t]``), which lets
    :func:`horner_mean` add a layer's own rows without another gather.
    """
    nodes = [torch.unique(seeds)]
    blocks: list[Block] = []
    for k in fanouts:
        cur = nodes[-1]
        owner, nbr, w = graph.sample(cur, int(k), generator)
        new = nbr[~torch.isin(nbr, cur)].unique()
        nxt = torch.cat([cur, new])
        # position of each sampled neighbour in nxt: cur keeps its order, new ones follow sorted
        pos = torch.empty(0, dtype=torch.int64, device=nbr.device)
        if len(nbr):
            order = torch.argsort(nxt)
            pos = order[torch.searchsorted(nxt[order], nbr)]
        blocks.append(Block(owner, pos, w, len(cur)))
        nodes.append(nxt)
    return nodes, blocks


def aggregate(block: Block, x: Tensor) -> Tensor:
    """Sampled Â x on the block's frontier rows."""
    msg = x.index_select(0, block.src) * block.weight.unsqueeze(1).to(x.dtype)
    return torch.zeros(block.n_dst, x.shape[1], dtype=x.dtype, device=x.device).index_add(0, block.dst, msg)


def horner_mean(blocks: list[Block], ego: Tensor) -> Tensor:
    """mean_{l=0..L} Â^l E on the rows of N_0, from ``ego`` = E at the rows of N_L (LightGCN's readout).

    Horner's form E + Â(E + Â(E + ...)) needs one sampled product per hop instead of L(L+1)/2.
    """
    acc = ego
    for block in reversed(blocks):
        acc = ego[:block.n_dst] + aggregate(block, acc)
    return acc / (len(blocks) + 1)
